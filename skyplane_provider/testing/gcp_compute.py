"""A local stand-in for the Compute Engine REST API (v1), for the ``gcp`` provisioner's tests.

**This is a stand-in, not Google's API.** No emulator of Compute Engine exists; this serves the
few calls the ``gcp`` provisioner and ``deprovision`` make, with the request and response shapes of
the public reference, so that the real ``google-cloud-compute`` client, pointed at it with its own
``client_options={"api_endpoint": ...}``, cannot tell the difference on those calls:

- ``instances``: insert, get, delete, list, aggregatedList (``filter`` of the form ``labels.KEY:*``
  or ``labels.KEY = "VALUE"``) -- cloud.google.com/compute/docs/reference/rest/v1/instances
- ``firewalls``: insert, get, delete, list -- .../rest/v1/firewalls
- ``regions.get`` (the region's zones) -- .../rest/v1/regions/get
- ``zoneOperations.get`` / ``wait``, ``globalOperations.get`` / ``wait``: every mutation answers an
  ``Operation`` that is ``RUNNING`` and ``DONE`` once asked again -- .../rest/v1/zoneOperations
- errors as ``{"error": {"code", "message", "errors": [{"reason", "message"}]}}``
  (cloud.google.com/compute/docs/api/how-tos/api-requests-responses)

Credentials: :meth:`GCPComputeStandIn.adc_file` writes a service-account key file (the
Application Default Credentials of GOOGLE_APPLICATION_CREDENTIALS) whose ``token_uri`` points at
``POST /token``, an OAuth 2.0 token endpoint for the JWT-bearer grant (RFC 7523) that checks the
assertion's signature with the account's public key (developers.google.com/identity/protocols/oauth2/service-account).
Every compute call must carry a token issued there, or a JWT self-signed by the account, which
Google's APIs also accept and the client library prefers.

Instances start ``PROVISIONING``, then ``STAGING`` and ``RUNNING`` after ``boot_seconds``; they get
addresses from documentation ranges (RFC 5737; never contacted: tests map instances to local sshd
servers with ``address_map``). The ``ssh-keys`` metadata of a running instance is installed by
:class:`GuestKeys` as the guest environment does. ``quota_instances`` answers ``QUOTA_EXCEEDED``
beyond that many live instances.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .standin_http import HTTPError, Request, Response, StandIn, StandInServer

BASE = "/compute/v1/projects/(?P<project>[^/]+)"
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_FILTER = re.compile(r'labels\.(?P<key>[a-z0-9_-]+)\s*(?::\s*\*|=\s*"?(?P<value>[a-z0-9_-]*)"?)')


def _error(code: int, reason: str, message: str) -> HTTPError:
    return HTTPError(code, {"error": {"code": code, "message": message,
                                      "errors": [{"reason": reason, "message": message, "domain": "global"}]}})


class GCPComputeStandIn(StandIn):
    """``GCPComputeStandIn(project, regions).start()`` -> its URL (``api_endpoint`` for the client).

    ``regions``: region -> zone suffixes, e.g. ``{"us-central1": ["a", "b"]}``.
    """

    def __init__(self, project: str, regions: dict[str, list[str]], *, boot_seconds: float = 0.2,
                 authorized_keys: list[Path] | tuple[Path, ...] = (), quota_instances: int | None = None) -> None:
        self.project = project
        self.zones = {f"{r}-{z}": r for r, zs in regions.items() for z in zs}
        self.regions = regions
        self.boot_seconds = boot_seconds
        self.quota_instances = quota_instances
        self.instances: dict[tuple[str, str], dict] = {}  # (zone, name) -> instance
        self.firewalls: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        self._booted: dict[tuple[str, str], float] = {}
        self._tokens: set[str] = set()
        self.account = f"skyplane-standin@{project}.iam.gserviceaccount.com"
        self._account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._account_cert = self._account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self._ids = itertools.count(4_000_000_000_000_000_000)
        self._ips = itertools.count(10)
        self._lock = threading.RLock()
        zone = f"{BASE}/zones/(?P<zone>[^/]+)"
        super().__init__(StandInServer([
            ("POST", "/token", self._token),
            ("GET", f"{BASE}/regions/(?P<region>[^/]+)", self._region),
            ("POST", f"{zone}/instances", self._insert_instance),
            ("GET", f"{zone}/instances", self._list_instances),
            ("GET", f"{zone}/instances/(?P<name>[^/]+)", self._get_instance),
            ("DELETE", f"{zone}/instances/(?P<name>[^/]+)", self._delete_instance),
            ("GET", f"{BASE}/aggregated/instances", self._aggregated_instances),
            ("POST", f"{BASE}/global/firewalls", self._insert_firewall),
            ("GET", f"{BASE}/global/firewalls", self._list_firewalls),
            ("GET", f"{BASE}/global/firewalls/(?P<name>[^/]+)", self._get_firewall),
            ("DELETE", f"{BASE}/global/firewalls/(?P<name>[^/]+)", self._delete_firewall),
            ("GET", f"{zone}/operations/(?P<op>[^/]+)", self._get_operation),
            ("POST", f"{zone}/operations/(?P<op>[^/]+)/wait", self._get_operation),
            ("GET", f"{BASE}/global/operations/(?P<op>[^/]+)", self._get_operation),
            ("POST", f"{BASE}/global/operations/(?P<op>[^/]+)/wait", self._get_operation),
        ]), authorized_keys)

    def adc_file(self, path: Path, universe_domain: str | None = None) -> Path:
        """A service-account key file (Application Default Credentials) whose tokens come from here.

        ``universe_domain``: the key file's field of that name. google-auth builds the URLs of
        Google's other services from it (``iamcredentials.<universe_domain>``), and a service
        account outside ``googleapis.com`` signs its own JWTs instead of asking ``token_uri``.
        """
        pem = self._account_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode()
        key = {"type": "service_account", "project_id": self.project, "private_key_id": "standin",
               "private_key": pem, "client_email": self.account, "client_id": "100000000000000000001",
               "token_uri": f"{self.url}/token"}
        if universe_domain:
            key["universe_domain"] = universe_domain
        path.touch(mode=0o600)
        path.write_text(json.dumps(key))
        return path

    def live_instances(self, label: str | None = None, value: str | None = None) -> list[dict]:
        """Instances not deleted, optionally only those carrying ``label`` (= ``value``)."""
        with self._lock:
            return [self._refresh(i) for i in self.instances.values()
                    if label is None or (label in i.get("labels", {}) and value in (None, i["labels"][label]))]

    # -- auth --------------------------------------------------------------------------------------
    def caller(self, token: str) -> str | None:
        """The account a bearer token stands for: a token issued by ``/token`` or a JWT the account
        signed itself; None for anything else."""
        return self.account if token in self._tokens or self._signed_by_account(token) else None

    def _signed_by_account(self, token: str) -> bool:
        """Whether ``token`` is an unexpired JWT signed with the service account's key."""
        from google.auth import jwt

        try:
            claims = jwt.decode(token, certs=self._account_cert, verify=True)
        except ValueError:
            return False
        return claims.get("iss") == self.account

    def _token(self, req: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs(req.body or "").items()} if isinstance(req.body, str) else {}
        if (form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer"
                or not self._signed_by_account(form.get("assertion", ""))):
            raise HTTPError(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        token = "ya29.standin-" + secrets.token_urlsafe(16)
        self._tokens.add(token)
        return Response(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer",
                              "scope": "https://www.googleapis.com/auth/cloud-platform"})

    def _check(self, req: Request, project: str) -> None:
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or self.caller(auth[7:]) is None:
            raise _error(401, "authError", "Request had invalid authentication credentials.")
        if project != self.project:
            raise _error(403, "forbidden", f"Required 'compute.instances.create' permission for 'projects/{project}'")

    def _zone(self, zone: str) -> str:
        if zone not in self.zones:
            raise _error(404, "notFound", f"The resource 'projects/{self.project}/zones/{zone}' was not found")
        return zone

    def _link(self, path: str) -> str:
        return f"https://www.googleapis.com/compute/v1/projects/{self.project}/{path}"

    # -- operations ----------------------------------------------------------------------------------
    def _operation(self, kind: str, target: str, zone: str | None) -> Response:
        name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(6)}"
        scope = f"zones/{zone}" if zone else "global"
        op = {"kind": "compute#operation", "id": str(next(self._ids)), "name": name, "operationType": kind,
              "targetLink": self._link(target), "status": "RUNNING", "progress": 0,
              "insertTime": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()),
              "selfLink": self._link(f"{scope}/operations/{name}")}
        if zone:
            op["zone"] = self._link(f"zones/{zone}")
        self.operations[name] = op
        return Response(200, dict(op))

    def _get_operation(self, req: Request, project: str, op: str, zone: str | None = None) -> Response:
        self._check(req, project)
        if op not in self.operations:
            raise _error(404, "notFound", f"The resource '{op}' was not found")
        self.operations[op].update(status="DONE", progress=100,
                                   endTime=time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()))
        return Response(200, self.operations[op])

    # -- regions ---------------------------------------------------------------------------------------
    def _region(self, req: Request, project: str, region: str) -> Response:
        self._check(req, project)
        if region not in self.regions:
            raise _error(404, "notFound", f"The resource 'projects/{project}/regions/{region}' was not found")
        return Response(200, {"kind": "compute#region", "name": region, "status": "UP",
                              "zones": [self._link(f"zones/{region}-{z}") for z in self.regions[region]],
                              "selfLink": self._link(f"regions/{region}")})

    # -- instances -------------------------------------------------------------------------------------
    def _insert_instance(self, req: Request, project: str, zone: str) -> Response:
        self._check(req, project)
        self._zone(zone)
        body = req.body if isinstance(req.body, dict) else {}
        name = body.get("name", "")
        if not _NAME.fullmatch(name):
            raise _error(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. Must be a match of "
                                         "regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        machine = body.get("machineType", "")
        if not re.fullmatch(rf"(.*/)?zones/{zone}/machineTypes/[a-z0-9-]+", machine):
            raise _error(400, "invalid", f"Invalid value for field 'resource.machineType': '{machine}'.")
        disks = body.get("disks") or []
        if not disks or not disks[0].get("initializeParams", {}).get("sourceImage"):
            raise _error(400, "required", "Required field 'resource.disks[0].initializeParams.sourceImage' not specified")
        for key, value in (body.get("labels") or {}).items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise _error(400, "invalid", f"Invalid value for field 'resource.labels': '{key}={value}'")
        with self._lock:
            if (zone, name) in self.instances:
                raise _error(409, "alreadyExists", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                                                   "already exists")
            if self.quota_instances is not None and len(self.instances) >= self.quota_instances:
                raise _error(403, "QUOTA_EXCEEDED", f"Quota 'INSTANCES' exceeded. Limit: {self.quota_instances}.0 "
                                                    f"in region {self.zones[zone]}.")
            n = next(self._ips)
            nics = body.get("networkInterfaces") or [{}]
            for nic in nics:
                nic.setdefault("network", self._link("global/networks/default"))
                nic["networkIP"] = f"192.0.2.{n}"
                for ac in nic.get("accessConfigs", []):
                    ac["natIP"] = f"198.51.100.{n}"
            instance = {**body, "kind": "compute#instance", "id": str(next(self._ids)), "status": "PROVISIONING",
                        "zone": self._link(f"zones/{zone}"),
                        "machineType": self._link(f"zones/{zone}/machineTypes/{machine.rsplit('/', 1)[-1]}"),
                        "networkInterfaces": nics, "selfLink": self._link(f"zones/{zone}/instances/{name}"),
                        "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()),
                        "labelFingerprint": secrets.token_urlsafe(8)}
            self.instances[(zone, name)] = instance
            self._booted[(zone, name)] = time.monotonic() + self.boot_seconds
        return self._operation("insert", f"zones/{zone}/instances/{name}", zone)

    def _refresh(self, instance: dict) -> dict:
        """PROVISIONING -> STAGING -> RUNNING with time; keys installed once it runs."""
        key = (instance["zone"].rsplit("/", 1)[-1], instance["name"])
        left = self._booted.get(key, 0) - time.monotonic()
        if instance["status"] == "PROVISIONING" and left < self.boot_seconds / 2:
            instance["status"] = "STAGING"
        if instance["status"] == "STAGING" and left <= 0:
            instance["status"] = "RUNNING"
            meta = {i["key"]: i.get("value", "") for i in instance.get("metadata", {}).get("items", [])}
            keys = [line.split(":", 1)[1] for line in meta.get("ssh-keys", "").splitlines() if ":" in line]
            self.guest.add(f"{key[0]}/{key[1]}", keys)
        return instance

    def _get_instance(self, req: Request, project: str, zone: str, name: str) -> Response:
        self._check(req, project)
        with self._lock:
            instance = self.instances.get((self._zone(zone), name))
            if instance is None:
                raise _error(404, "notFound", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                                              "was not found")
            return Response(200, self._refresh(instance))

    def _delete_instance(self, req: Request, project: str, zone: str, name: str) -> Response:
        self._check(req, project)
        with self._lock:
            if self.instances.pop((self._zone(zone), name), None) is None:
                raise _error(404, "notFound", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                                              "was not found")
            self._booted.pop((zone, name), None)
        self.guest.remove(f"{zone}/{name}")
        return self._operation("delete", f"zones/{zone}/instances/{name}", zone)

    def _filtered(self, req: Request) -> list[dict]:
        flt = req.query.get("filter", "").strip()
        if not flt:
            return self.live_instances()
        match = _FILTER.fullmatch(flt)
        if match is None:
            raise _error(400, "invalid", f"Invalid list filter expression '{flt}'.")
        return self.live_instances(match["key"], match["value"])

    def _list_instances(self, req: Request, project: str, zone: str) -> Response:
        self._check(req, project)
        self._zone(zone)
        items = [i for i in self._filtered(req) if i["zone"].endswith(f"/zones/{zone}")]
        return Response(200, {"kind": "compute#instanceList", "items": items})

    def _aggregated_instances(self, req: Request, project: str) -> Response:
        self._check(req, project)
        found = self._filtered(req)
        items = {}
        for zone in self.zones:
            mine = [i for i in found if i["zone"].endswith(f"/zones/{zone}")]
            items[f"zones/{zone}"] = {"instances": mine} if mine else {"warning": {
                "code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'zones/{zone}' on this page."}}
        return Response(200, {"kind": "compute#instanceAggregatedList", "items": items})

    # -- firewalls ---------------------------------------------------------------------------------------
    def _insert_firewall(self, req: Request, project: str) -> Response:
        self._check(req, project)
        body = req.body if isinstance(req.body, dict) else {}
        name = body.get("name", "")
        if not _NAME.fullmatch(name):
            raise _error(400, "invalid", f"Invalid value for field 'resource.name': '{name}'.")
        if not body.get("allowed") and not body.get("denied"):
            raise _error(400, "required", "Required field 'resource.allowed' not specified")
        if not body.get("sourceRanges") and not body.get("sourceTags"):
            raise _error(400, "required", "Required field 'resource.sourceRanges' not specified")
        with self._lock:
            if name in self.firewalls:
                raise _error(409, "alreadyExists", f"The resource 'projects/{project}/global/firewalls/{name}' "
                                                   "already exists")
            self.firewalls[name] = {**body, "kind": "compute#firewall", "id": str(next(self._ids)),
                                    "direction": body.get("direction", "INGRESS"),
                                    "network": body.get("network") or self._link("global/networks/default"),
                                    "selfLink": self._link(f"global/firewalls/{name}"),
                                    "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())}
        return self._operation("insert", f"global/firewalls/{name}", None)

    def _list_firewalls(self, req: Request, project: str) -> Response:
        self._check(req, project)
        return Response(200, {"kind": "compute#firewallList", "items": list(self.firewalls.values())})

    def _get_firewall(self, req: Request, project: str, name: str) -> Response:
        self._check(req, project)
        if name not in self.firewalls:
            raise _error(404, "notFound", f"The resource 'projects/{project}/global/firewalls/{name}' was not found")
        return Response(200, self.firewalls[name])

    def _delete_firewall(self, req: Request, project: str, name: str) -> Response:
        self._check(req, project)
        if self.firewalls.pop(name, None) is None:
            raise _error(404, "notFound", f"The resource 'projects/{project}/global/firewalls/{name}' was not found")
        return self._operation("delete", f"global/firewalls/{name}", None)
