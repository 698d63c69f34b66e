"""A local stand-in for the Azure Resource Manager APIs the ``azure`` provisioner calls (tests only).

**This is a stand-in, not Microsoft's API.** No emulator of Azure Resource Manager exists (Azurite
covers storage only); this serves the resources the ``azure`` provisioner and ``deprovision`` use,
with the shapes of the public REST reference, so that the real ``azure-mgmt-compute`` and
``azure-mgmt-network`` clients, pointed at it with their own ``base_url``, cannot tell the difference
on those calls. It speaks https only (the SDK sends bearer tokens over nothing else) with a
certificate made for the run: clients trust it through ``REQUESTS_CA_BUNDLE``.

- Microsoft.Compute ``virtualMachines`` (learn.microsoft.com/rest/api/compute/virtual-machines) and
  ``sshPublicKeys`` (.../compute/ssh-public-keys); Microsoft.Network ``publicIPAddresses``,
  ``networkInterfaces``, ``networkSecurityGroups``, ``virtualNetworks``
  (learn.microsoft.com/rest/api/virtualnetwork): PUT (create or replace), GET, DELETE, and the
  subscription-wide GET list (``listAll`` / ``listBySubscription``); ``api-version`` is required.
- Long-running operations as ARM does them (learn.microsoft.com/azure/azure-resource-manager/
  management/async-operations): a VM PUT answers 201 ``Creating`` with an ``Azure-AsyncOperation``
  URL that reports ``InProgress`` until ``boot_seconds`` passed, then ``Succeeded``; a VM DELETE
  answers 202 likewise. The other resources complete at once.
- ARM's dependency rules: a NIC needs its subnet, public IP and NSG to exist and cannot be deleted
  while a VM uses it; a public IP or NSG cannot be deleted while a NIC uses it, a virtual network
  while a NIC sits in one of its subnets (``...InUse...`` errors, 400). DELETE of a missing resource
  answers 204. Resources go into ``resource_groups`` only (else ``ResourceGroupNotFound``).
- Credentials: ``GET /msi/token`` is the App Service managed-identity endpoint (protocol
  2019-08-01, learn.microsoft.com/azure/app-service/overview-managed-identity): with
  ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` (:meth:`AzureARMStandIn.identity_env`),
  ``DefaultAzureCredential`` gets its tokens here. Every ARM call must carry one of them. Like
  Entra ID's, they are JWTs naming the ``resource`` asked for (``aud``), the tenant's issuer
  (``iss``) and their expiry (``exp``), which is what Azurite reads of a token in its ``--oauth
  basic`` mode; they are not signed with a key anyone could check (Azurite does not).

VMs get addresses from documentation ranges (RFC 5737; never contacted: tests map VMs to local sshd
servers with ``address_map``); the SSH keys of a running VM's OS profile are installed by
:class:`GuestKeys`, as the Linux provisioning agent does. ``quota_vms`` refuses VMs beyond that many.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import re
import secrets
import threading
import time
from pathlib import Path

from .standin_http import HTTPError, Request, Response, StandIn, StandInServer

SUB = "/subscriptions/(?P<sub>[^/]+)"
TYPES = {"Microsoft.Compute": ("virtualMachines", "sshPublicKeys"),
         "Microsoft.Network": ("publicIPAddresses", "networkInterfaces", "networkSecurityGroups", "virtualNetworks")}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,78}[A-Za-z0-9_]?")


#: The tenant whose issuer the managed-identity tokens name.
TENANT = "5c7a3d1e-0000-4000-8000-00000000abcd"


def entra_token(resource: str, seconds: int) -> tuple[str, int]:
    """``(token, expires_on)``: a JWT-shaped access token for ``resource`` (its audience) from
    :data:`TENANT`'s issuer that expires in ``seconds``. Its signature is random bytes: nothing here
    checks it (Azurite's ``--oauth basic`` does not)."""
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"aud": resource, "iss": f"https://sts.windows.net/{TENANT}/", "tid": TENANT,
              "oid": "00000000-0000-0000-0000-00000000c11e", "iat": now, "nbf": now - 60, "exp": now + seconds,
              "jti": secrets.token_urlsafe(12)}
    return ".".join([part(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()), part(json.dumps(claims).encode()),
                     part(secrets.token_bytes(32))]), now + seconds


def _error(status: int, code: str, message: str) -> HTTPError:
    return HTTPError(status, {"error": {"code": code, "message": message}})


class AzureARMStandIn(StandIn):
    """``AzureARMStandIn(subscription, resource_groups).start()`` -> its URL (``base_url`` for the clients)."""

    def __init__(self, subscription: str, resource_groups: list[str], *, boot_seconds: float = 0.2,
                 authorized_keys: list[Path] | tuple[Path, ...] = (), quota_vms: int | None = None,
                 certificate_dir: Path | None = None) -> None:
        self.subscription = subscription
        self.resource_groups = {g.lower() for g in resource_groups}
        self.boot_seconds = boot_seconds
        self.quota_vms = quota_vms
        self.resources: dict[str, dict] = {}  # lowercased id -> resource
        self._operations: dict[str, dict] = {}  # id -> {"done_at", "then", "resource_id"}
        self.identity_header = secrets.token_urlsafe(16)
        self._tokens: set[str] = set()
        self._ips = itertools.count(10)
        self._lock = threading.RLock()
        resource = f"{SUB}/resourceGroups/(?P<rg>[^/]+)/providers/(?P<ns>[^/]+)/(?P<kind>[^/]+)/(?P<name>[^/]+)"
        super().__init__(StandInServer([
            ("GET", "/msi/token", self._token),
            ("PUT", resource, self._put),
            ("GET", resource, self._get),
            ("DELETE", resource, self._delete),
            ("GET", f"{SUB}/providers/(?P<ns>[^/]+)/(?P<kind>[^/]+)", self._list),
            ("GET", f"{SUB}/providers/(?P<ns>[^/]+)/locations/(?P<location>[^/]+)/operations/(?P<op>[^/]+)",
             self._operation),
        ], tls=True, certificate_dir=certificate_dir), authorized_keys)

    @property
    def ca_file(self) -> Path | None:
        return self.server.ca_file

    def identity_env(self) -> dict[str, str]:
        """The environment under which ``DefaultAzureCredential`` takes its tokens from here."""
        return {"IDENTITY_ENDPOINT": f"{self.url}/msi/token", "IDENTITY_HEADER": self.identity_header}

    def of_kind(self, kind: str, tag: str | None = None, value: str | None = None) -> list[dict]:
        """Live resources of one type, optionally only those tagged ``tag`` (= ``value``)."""
        with self._lock:
            self._settle()
            return [r for r in self.resources.values() if r["type"].endswith(f"/{kind}")
                    and (tag is None or (tag in r.get("tags", {}) and value in (None, r["tags"][tag])))]

    # -- auth ----------------------------------------------------------------------------------------
    def _token(self, req: Request) -> Response:
        if req.headers.get("x-identity-header") != self.identity_header:
            raise HTTPError(400, {"statusCode": 400, "message": "Unable to load the proper Managed Identity."})
        if req.query.get("api-version") != "2019-08-01" or not req.query.get("resource"):
            raise HTTPError(400, {"statusCode": 400, "message": "api-version and resource are required"})
        token, expires_on = entra_token(req.query["resource"], 3600)
        self._tokens.add(token)
        return Response(200, {"access_token": token, "expires_on": str(expires_on),
                              "resource": req.query["resource"], "token_type": "Bearer",
                              "client_id": "00000000-0000-0000-0000-00000000c11e"})

    def _check(self, req: Request, sub: str) -> None:
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self._tokens:
            raise _error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is "
                                                      "missing or invalid.")
        if not req.query.get("api-version"):
            raise _error(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        if sub != self.subscription:
            raise _error(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")

    # -- operations ------------------------------------------------------------------------------------
    def _settle(self) -> None:
        """Finish the operations whose time has come."""
        now = time.monotonic()
        for op in self._operations.values():
            if op["status"] == "InProgress" and now >= op["done_at"]:
                op["status"] = "Succeeded"
                op["then"]()

    def _start_operation(self, location: str, then) -> str:
        op_id = secrets.token_hex(8)
        self._operations[op_id] = {"status": "InProgress", "done_at": time.monotonic() + self.boot_seconds,
                                   "then": then}
        return (f"{self.url}/subscriptions/{self.subscription}/providers/Microsoft.Compute/locations/{location}"
                f"/operations/{op_id}?api-version=2024-07-01")

    def _operation(self, req: Request, sub: str, ns: str, location: str, op: str) -> Response:
        self._check(req, sub)
        with self._lock:
            self._settle()
            if op not in self._operations:
                raise _error(404, "NotFound", f"operation {op} not found")
            return Response(200, {"name": op, "status": self._operations[op]["status"]})

    # -- resources -----------------------------------------------------------------------------------
    def _rid(self, sub: str, rg: str, ns: str, kind: str, name: str) -> str:
        return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{kind}/{name}"

    def _target(self, req: Request, sub: str, rg: str, ns: str, kind: str) -> None:
        self._check(req, sub)
        if kind not in TYPES.get(ns, ()):
            raise _error(400, "InvalidResourceType", f"The resource type '{kind}' could not be found in the "
                                                     f"namespace '{ns}'.")
        if rg.lower() not in self.resource_groups:
            raise _error(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")

    def _ref(self, ref: dict | None, what: str) -> dict:
        found = self.resources.get(((ref or {}).get("id") or "").lower())
        if found is None:
            raise _error(400, "InvalidResourceReference", f"Resource {(ref or {}).get('id')} referenced by {what} "
                                                          "was not found.")
        return found

    def _put(self, req: Request, sub: str, rg: str, ns: str, kind: str, name: str) -> Response:
        self._target(req, sub, rg, ns, kind)
        body = req.body if isinstance(req.body, dict) else {}
        if not _NAME.fullmatch(name):
            raise _error(400, "InvalidResourceName", f"Resource name {name} is invalid.")
        if not body.get("location"):
            raise _error(400, "LocationRequired", "The location property is required for this definition.")
        if not all(isinstance(v, str) for v in (body.get("tags") or {}).values()):
            raise _error(400, "InvalidTag", "Tag values must be strings.")
        rid = self._rid(sub, rg, ns, kind, name)
        resource = {**body, "id": rid, "name": name, "type": f"{ns}/{kind}", "location": body["location"],
                    "tags": body.get("tags") or {}, "properties": dict(body.get("properties") or {})}
        with self._lock:
            self._settle()
            shape = getattr(self, f"_shape_{kind}")
            pending = shape(resource)
            resource["properties"]["provisioningState"] = "Creating" if pending else "Succeeded"
            existed = rid.lower() in self.resources
            self.resources[rid.lower()] = resource
            if not pending:
                return Response(200 if existed else 201, resource)
            url = self._start_operation(resource["location"], pending)
            return Response(201, resource, {"Azure-AsyncOperation": url})

    def _get(self, req: Request, sub: str, rg: str, ns: str, kind: str, name: str) -> Response:
        self._target(req, sub, rg, ns, kind)
        with self._lock:
            self._settle()
            found = self.resources.get(self._rid(sub, rg, ns, kind, name).lower())
            if found is None:
                raise _error(404, "ResourceNotFound", f"The Resource '{ns}/{kind}/{name}' under resource group "
                                                      f"'{rg}' was not found.")
            return Response(200, found)

    def _list(self, req: Request, sub: str, ns: str, kind: str) -> Response:
        self._check(req, sub)
        return Response(200, {"value": self.of_kind(kind)})

    def _delete(self, req: Request, sub: str, rg: str, ns: str, kind: str, name: str) -> Response:
        self._target(req, sub, rg, ns, kind)
        rid = self._rid(sub, rg, ns, kind, name).lower()
        with self._lock:
            self._settle()
            found = self.resources.get(rid)
            if found is None:
                return Response(204)
            users = [r["id"] for r in self.resources.values() if r is not found and rid in repr(r).lower()]
            if users:
                code = {"networkInterfaces": "NicInUse", "publicIPAddresses": "PublicIPAddressCannotBeDeleted",
                        "networkSecurityGroups": "InUseNetworkSecurityGroupCannotBeDeleted",
                        "virtualNetworks": "InUseSubnetCannotBeDeleted"}.get(kind, "InUse")
                raise _error(400, code, f"{kind}/{name} is in use by {users[0]} and cannot be deleted.")
            if kind != "virtualMachines":
                del self.resources[rid]
                return Response(200)
            found["properties"]["provisioningState"] = "Deleting"

            def gone() -> None:
                self.resources.pop(rid, None)
                self.guest.remove(rid)

            url = self._start_operation(found["location"], gone)
            return Response(202, None, {"Azure-AsyncOperation": url, "Location": url})

    # -- per type: check references, fill in what Azure assigns; a callable finishes it later ----------------
    def _shape_sshPublicKeys(self, r: dict) -> None:
        if not str(r["properties"].get("publicKey", "")).startswith("ssh-"):
            raise _error(400, "InvalidParameter", "The value of parameter publicKey is invalid.")

    def _shape_publicIPAddresses(self, r: dict) -> None:
        r["properties"]["ipAddress"] = f"203.0.113.{next(self._ips)}"

    def _shape_networkSecurityGroups(self, r: dict) -> None:
        priorities = set()
        for rule in r["properties"].get("securityRules", []):
            p = rule.get("properties", {})
            if not 100 <= int(p.get("priority", 0)) <= 4096 or p["priority"] in priorities:
                raise _error(400, "SecurityRuleInvalidPriority", f"Security rule {rule.get('name')} has an invalid "
                                                                 "or duplicate priority.")
            priorities.add(p["priority"])
            for prefix in p.get("sourceAddressPrefixes") or [p.get("sourceAddressPrefix")]:
                if prefix not in ("*", "Internet", "VirtualNetwork", "AzureLoadBalancer"):
                    ipaddress.ip_network(prefix, strict=False)
            rule["id"] = f"{r['id']}/securityRules/{rule['name']}"

    def _shape_virtualNetworks(self, r: dict) -> None:
        prefixes = r["properties"].get("addressSpace", {}).get("addressPrefixes")
        if not prefixes:
            raise _error(400, "InvalidAddressSpace", "addressSpace.addressPrefixes is required.")
        for subnet in r["properties"].get("subnets", []):
            subnet["id"] = f"{r['id']}/subnets/{subnet['name']}"

    def _shape_networkInterfaces(self, r: dict) -> None:
        n = next(self._ips)
        for config in r["properties"].get("ipConfigurations", []):
            p = config.setdefault("properties", {})
            vnet_id, _, subnet = (p.get("subnet") or {}).get("id", "").partition("/subnets/")
            vnet = self._ref({"id": vnet_id}, f"NIC {r['name']}")
            if subnet not in {s["name"] for s in vnet["properties"].get("subnets", [])}:
                raise _error(400, "InvalidResourceReference", f"Subnet {subnet} was not found.")
            if vnet["location"] != r["location"]:
                raise _error(400, "InvalidResourceReference", "The subnet is in another location than the NIC.")
            if p.get("publicIPAddress"):
                self._ref(p["publicIPAddress"], f"NIC {r['name']}")
            p["privateIPAddress"] = f"192.0.2.{n}"
            config["id"] = f"{r['id']}/ipConfigurations/{config['name']}"
        if r["properties"].get("networkSecurityGroup"):
            self._ref(r["properties"]["networkSecurityGroup"], f"NIC {r['name']}")

    def _shape_virtualMachines(self, r: dict):
        p = r["properties"]
        if not p.get("hardwareProfile", {}).get("vmSize"):
            raise _error(400, "InvalidParameter", "Required parameter 'hardwareProfile.vmSize' is missing.")
        nics = p.get("networkProfile", {}).get("networkInterfaces") or []
        if not nics:
            raise _error(400, "InvalidParameter", "At least one network interface is required.")
        for nic in nics:
            if self._ref(nic, f"VM {r['name']}")["location"] != r["location"]:
                raise _error(400, "NicInOtherLocation", "The network interface is in another location than the VM.")
        live = [v for v in self.resources.values() if v["type"].endswith("/virtualMachines") and v["id"] != r["id"]]
        if self.quota_vms is not None and len(live) >= self.quota_vms:
            raise _error(409, "OperationNotAllowed", "Operation could not be completed as it results in exceeding "
                                                     f"approved Total Regional Cores quota (at most {self.quota_vms} "
                                                     f"VMs) in location {r['location']}.")
        keys = [k.get("keyData", "") for k in p.get("osProfile", {}).get("linuxConfiguration", {})
                .get("ssh", {}).get("publicKeys", [])]
        p["vmId"] = secrets.token_hex(16)
        rid = r["id"].lower()

        def running() -> None:
            if rid in self.resources:
                self.resources[rid]["properties"]["provisioningState"] = "Succeeded"
                self.guest.add(rid, keys)

        return running
