"""The ``azure`` provisioner: gateways on fresh Azure VMs, bootstrapped over SSH.

Every resource goes into an existing ``resource_group`` and carries the tags ``skyplane-job-id`` /
``skyplane-created-at`` (VMs also ``skyplane-gateway-id``). Per region of the plan (``azure:<location>``):
an SSH public key resource holding the job's key, a network security group that denies all inbound
traffic (also from the virtual network) until the fleet runs and then admits SSH (22) from
``orchestrator_cidr`` and the data port from the fleet's own addresses only, a virtual network with
one subnet (unless ``subnet_id`` is given), and per gateway a public IP, a NIC and a VM whose OS disk
is deleted with it. Teardown deletes the VMs (and waits), then the NICs, public IPs, virtual
networks, security groups and keys, in the order Azure's dependency rules allow. Credentials come
from ``DefaultAzureCredential`` (environment, workload identity, managed identity, Azure CLI, ...);
``base_url`` is the SDK clients' own endpoint override. The flow, the common settings and teardown
are ``cloud_fleet.py``'s.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import re
from typing import Any

from planner.errors import BadOptionError, CredentialsError, ProvisionError

from .base import GatewaySpec
from .cloud_fleet import CloudJob, CloudProvisioner, FleetPorts, Instance, per_region, require_sdk

log = logging.getLogger(__name__)

TAG_JOB = "skyplane-job-id"
TAG_CREATED = "skyplane-created-at"
TAG_GATEWAY = "skyplane-gateway-id"
ARM_SCOPE = "https://management.azure.com/.default"
DEFAULT_IMAGE = {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}

#: USD per VM-hour, pay-as-you-go Linux in East US (azure.microsoft.com/pricing/details/virtual-machines/linux,
#: 2024), for sizes other than the planner's gateway VM.
HOURLY_PRICE = {
    "Standard_D2s_v5": 0.096, "Standard_D4s_v5": 0.192, "Standard_D8s_v5": 0.384, "Standard_D16s_v5": 0.768,
    "Standard_D32s_v5": 1.536, "Standard_B2s": 0.0416, "Standard_F8s_v2": 0.338,
}
#: (kind, client attribute, operations attribute) in the order teardown deletes them.
KINDS = [("virtualMachines", "compute", "virtual_machines"), ("networkInterfaces", "network", "network_interfaces"),
         ("publicIPAddresses", "network", "public_ip_addresses"), ("virtualNetworks", "network", "virtual_networks"),
         ("networkSecurityGroups", "network", "network_security_groups"),
         ("sshPublicKeys", "compute", "ssh_public_keys")]
_QUOTA_HINTS = ("quota", "SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed", "OverconstrainedAllocation")
CREDENTIALS_HINT = ("give DefaultAzureCredential something to use: AZURE_TENANT_ID, AZURE_CLIENT_ID and "
                    "AZURE_CLIENT_SECRET, `az login`, workload identity or a managed identity")


def api_error(where: str, what: str, exc: Exception) -> Exception:
    """An azure-core failure as our error, naming where and what to do."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    if isinstance(exc, ClientAuthenticationError) or (isinstance(exc, HttpResponseError) and exc.status_code == 403):
        return CredentialsError(f"Azure {where}: {what} was refused: {exc.message if hasattr(exc, 'message') else exc}",
                                hint=CREDENTIALS_HINT + "; the identity needs the Contributor role on the resource group")
    text = getattr(exc, "message", None) or str(exc)
    if any(h.lower() in text.lower() for h in _QUOTA_HINTS):
        return ProvisionError(f"Azure {where}: {what} failed: {text}",
                              hint="request a quota increase for this location, or choose another VM size or region")
    return ProvisionError(f"Azure {where}: {what} failed: {text}", hint="check the region's settings and your subscription")


def azure_credential():
    """``DefaultAzureCredential``, with a token taken once so that a broken chain fails before anything is created."""
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    try:
        credential.get_token(ARM_SCOPE)
    except Exception as exc:
        raise CredentialsError(f"no usable Azure credentials for the azure provisioner: {exc}",
                               hint=CREDENTIALS_HINT) from None
    return credential


class AzureClients:
    """The compute and network clients, both on one endpoint."""

    def __init__(self, credential, subscription_id: str, base_url: str | None, poll_seconds: float) -> None:
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.network import NetworkManagementClient

        kwargs: dict[str, Any] = {"polling_interval": poll_seconds}
        if base_url:
            kwargs["base_url"] = base_url
        self.compute = ComputeManagementClient(credential, subscription_id, **kwargs)
        self.network = NetworkManagementClient(credential, subscription_id, **kwargs)

    def operations(self, kind: str):
        client, attr = next((c, a) for k, c, a in KINDS if k == kind)
        return getattr(getattr(self, client), attr)


def parse_resource_id(resource_id: str) -> tuple[str, str]:
    """``/subscriptions/S/resourceGroups/RG/providers/NS/KIND/NAME`` -> (RG, NAME)."""
    parts = resource_id.strip("/").split("/")
    return parts[parts.index("resourceGroups") + 1], parts[-1]


class AzureJob(CloudJob):
    """Every Azure resource of one job, as (kind, resource group, name), recorded before each creation."""

    cloud = "Azure"

    def __init__(self, job_id: str, clients: AzureClients, *, subscription_id: str, poll_seconds: float,
                 settings: "AzureProvisioner | None" = None) -> None:
        super().__init__(job_id, poll_seconds=poll_seconds)
        self.clients = clients
        self.subscription_id = subscription_id
        self._settings = settings  # None when only tearing down (deprovision)
        self.tags = {TAG_JOB: job_id, TAG_CREATED: self.created_at}
        self.created: dict[str, list[tuple[str, str, str]]] = {k: [] for k, _, _ in KINDS}  # kind -> (rg, name, region)
        self._vms: list[dict] = []  # {"name", "gateway_id", "poller", "nic", "ip", "region"}
        self._nsg: dict[str, dict] = {}  # region -> NSG body (rules are added by authorize)

    def _rid(self, ns: str, kind: str, name: str) -> str:
        rg = self._settings.resource_group
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{rg}/providers/{ns}/{kind}/{name}"

    def _create(self, kind: str, name: str, region: str, body: dict):
        """Create (or replace) one resource; returns the poller, or the result of a synchronous call."""
        rg = self._settings.resource_group
        entry = (rg, name, region)
        if entry not in self.created[kind]:
            self.created[kind].append(entry)
        ops = self.clients.operations(kind)
        if kind == "sshPublicKeys":
            return ops.create(rg, name, body)
        return ops.begin_create_or_update(rg, name, body)

    def _nsg_body(self, region: str, allow: list[dict]) -> dict:
        deny = {"name": "deny-all-inbound", "properties": {
            "priority": 4096, "direction": "Inbound", "access": "Deny", "protocol": "*", "sourceAddressPrefix": "*",
            "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": "*"}}
        return {"location": region, "tags": self.tags, "properties": {"securityRules": allow + [deny]}}

    def launch(self, region: str, specs: list[GatewaySpec]) -> None:
        s = self._settings
        name = f"skyplane-{self.job_id}"
        step = "creating the SSH public key"
        try:
            self._create("sshPublicKeys", f"{name}-{region}", region, {
                "location": region, "tags": self.tags, "properties": {"publicKey": self.key.public_openssh}})
            step = "creating the network security group"
            nsg = f"{name}-{region}"
            self._create("networkSecurityGroups", nsg, region, self._nsg_body(region, [])).result()
            subnet_id = per_region(s.subnet_id, region)
            if not subnet_id:
                step = "creating the virtual network"
                space = s.address_space
                self._create("virtualNetworks", f"{name}-{region}", region, {
                    "location": region, "tags": self.tags, "properties": {
                        "addressSpace": {"addressPrefixes": [space]},
                        "subnets": [{"name": "gateways", "properties": {"addressPrefix": space}}]}}).result()
                subnet_id = self._rid("Microsoft.Network", "virtualNetworks", f"{name}-{region}") + "/subnets/gateways"
            for spec in specs:
                vm = f"{name}-{len(self._vms)}"
                step = f"creating the public IP and NIC of {vm}"
                self._create("publicIPAddresses", f"{vm}-ip", region, {
                    "location": region, "tags": self.tags, "sku": {"name": "Standard"},
                    "properties": {"publicIPAllocationMethod": "Static"}}).result()
                self._create("networkInterfaces", f"{vm}-nic", region, {
                    "location": region, "tags": self.tags, "properties": {
                        "networkSecurityGroup": {"id": self._rid("Microsoft.Network", "networkSecurityGroups", nsg)},
                        "ipConfigurations": [{"name": "primary", "properties": {
                            "subnet": {"id": subnet_id}, "privateIPAllocationMethod": "Dynamic",
                            "publicIPAddress": {"id": self._rid("Microsoft.Network", "publicIPAddresses",
                                                                f"{vm}-ip")}}}]}}).result()
                step = f"creating VM {vm} ({s.instance_type})"
                poller = self._create("virtualMachines", vm, region, self._vm_body(vm, region, spec))
                self.launched([vm])
                self._vms.append({"name": vm, "gateway_id": spec.gateway_id, "poller": poller, "region": region})
        except Exception as exc:
            raise api_error(region, step, exc) from exc

    def _vm_body(self, vm: str, region: str, spec: GatewaySpec) -> dict:
        s = self._settings
        image = per_region(s.image, region)
        properties: dict[str, Any] = {
            "hardwareProfile": {"vmSize": s.instance_type},
            "storageProfile": {"imageReference": {"id": image} if isinstance(image, str) else image,
                               "osDisk": {"createOption": "FromImage", "deleteOption": "Delete",
                                          "managedDisk": {"storageAccountType": "Premium_LRS"}}},
            "osProfile": {"computerName": vm.replace("_", "-").replace(".", "-"), "adminUsername": s.ssh_user, "linuxConfiguration": {
                "disablePasswordAuthentication": True, "ssh": {"publicKeys": [{
                    "path": f"/home/{s.ssh_user}/.ssh/authorized_keys", "keyData": self.key.public_openssh}]}}},
            "networkProfile": {"networkInterfaces": [{
                "id": self._rid("Microsoft.Network", "networkInterfaces", f"{vm}-nic"),
                "properties": {"primary": True, "deleteOption": "Detach"}}]}}
        if s.user_data:
            properties["osProfile"]["customData"] = base64.b64encode(s.user_data.encode()).decode()
        if s.spot:
            properties.update(priority="Spot", evictionPolicy="Delete", billingProfile={"maxPrice": -1})
        return {"location": region, "tags": {**self.tags, TAG_GATEWAY: spec.gateway_id}, "properties": properties}

    def wait_running(self, timeout: float) -> dict[str, Instance]:
        out = {}
        rg = self._settings.resource_group
        for vm in self._vms:
            try:
                vm["poller"].result(timeout=timeout)
                got = self.clients.compute.virtual_machines.get(rg, vm["name"])
                if got.properties.provisioning_state != "Succeeded":
                    raise ProvisionError(f"Azure {vm['region']}: VM {vm['name']} is "
                                         f"{got.properties.provisioning_state}", hint="see the VM in the Azure portal")
                ip = self.clients.network.public_ip_addresses.get(rg, f"{vm['name']}-ip").properties.ip_address
                nic = self.clients.network.network_interfaces.get(rg, f"{vm['name']}-nic")
                private = nic.properties.ip_configurations[0].properties.private_ip_address
            except ProvisionError:
                raise
            except Exception as exc:
                raise api_error(vm["region"], f"waiting for VM {vm['name']}", exc) from exc
            out[vm["gateway_id"]] = Instance(vm["name"], ip, private)
        return out

    def authorize(self, orchestrator_cidr: str, ports: FleetPorts, fleet_addresses: list[str]) -> None:
        """SSH and the coordinator's API from the orchestrator only; the gateways' data and control
        ports from the fleet's own addresses only."""
        def allow(name: str, priority: int, port: int | str, sources: list[str]) -> dict:
            return {"name": name, "properties": {
                "priority": priority, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                "sourceAddressPrefixes": sources, "sourcePortRange": "*", "destinationAddressPrefix": "*",
                "destinationPortRange": str(port)}}

        rules = [allow("skyplane-ssh", 100, 22, [orchestrator_cidr]),
                 allow("skyplane-api", 105, ports.coordinator, [orchestrator_cidr]),
                 allow("skyplane-data", 110, f"{ports.data}-{ports.control}", [f"{a}/32" for a in fleet_addresses])]
        for _, name, region in self.created["networkSecurityGroups"]:
            try:
                self._create("networkSecurityGroups", name, region, self._nsg_body(region, rules)).result()
            except Exception as exc:
                raise api_error(region, "opening the network security group", exc) from exc

    def deprovision_command(self, region: str) -> str:
        return (f"skyplane-provider deprovision --provisioner azure --azure-subscription {self.subscription_id} "
                f"--job {self.job_id}")

    def _teardown(self) -> None:
        """VMs first (and wait: their NICs stay in use until they are gone), then the rest in dependency order."""
        for kind, _, _ in KINDS:
            ops = self.clients.operations(kind)
            pollers = []
            for rg, name, region in self.created[kind]:
                try:
                    if kind == "sshPublicKeys":
                        ops.delete(rg, name)
                    else:
                        pollers.append((rg, name, region, ops.begin_delete(rg, name)))
                except Exception as exc:
                    self.incomplete(region, exc)
            for rg, name, region, poller in pollers:
                try:
                    poller.result(timeout=600)
                    if kind == "virtualMachines":
                        self.ended([name])
                except Exception as exc:
                    self.incomplete(region, exc)


class AzureProvisioner(CloudProvisioner):
    """Gateways on Azure VMs started for the job (see the module docstring)."""

    name = "azure"
    cloud = "Azure"
    hourly_prices = HOURLY_PRICE

    def __init__(self, *, instance_type: str = "Standard_D32_v5", subscription_id: str | None = None,
                 resource_group: str | None = None, image: str | dict | None = None,
                 subnet_id: str | dict | None = None, address_space: str = "10.213.0.0/24", spot: bool = False,
                 user_data: str | None = None, ssh_user: str = "skyplane", base_url: str | None = None,
                 **common: Any) -> None:
        super().__init__(instance_type=instance_type, ssh_user=ssh_user, **common)
        require_sdk(("azure.mgmt.compute", "azure.mgmt.network", "azure.identity"), self.name)
        self.subscription_id = subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID")
        if not self.subscription_id:
            raise BadOptionError("the azure provisioner needs a subscription",
                                 hint="pass subscription_id='...' or set AZURE_SUBSCRIPTION_ID")
        if not resource_group:
            raise BadOptionError("the azure provisioner needs resource_group",
                                 hint="name an existing resource group: every resource of the job goes there")
        try:
            ipaddress.ip_network(address_space)
        except ValueError as exc:
            raise BadOptionError(f"bad address_space {address_space!r}: {exc}",
                                 hint="give a private network such as 10.213.0.0/24") from None
        if ssh_user in ("root", "admin", "administrator") or not ssh_user:
            raise BadOptionError(f"Azure does not allow the admin user name {ssh_user!r}",
                                 hint="use another ssh_user, such as 'skyplane'")
        self.resource_group, self.image = resource_group, image or DEFAULT_IMAGE
        self.subnet_id, self.address_space = subnet_id, address_space
        self.spot, self.user_data, self.base_url = spot, user_data, base_url

    def _deprovision(self, job_id: str, regions: list[str]) -> list:
        from skyplane_provider.deprovision import Selection, deprovision_azure

        return deprovision_azure(Selection(job_id=job_id), subscription_id=self.subscription_id,
                                 base_url=self.base_url, poll_seconds=self.poll_seconds)  # the whole subscription

    def new_job(self, job_id: str) -> AzureJob:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}", job_id):
            raise BadOptionError(f"the azure provisioner cannot name resources after job id {job_id!r}",
                                 hint="use a job id of at most 48 letters, digits, '-', '_' and '.' "
                                      "(the default, a uuid4 hex, is fine)")
        credential = azure_credential()
        return AzureJob(job_id, AzureClients(credential, self.subscription_id, self.base_url, self.poll_seconds),
                        subscription_id=self.subscription_id, poll_seconds=self.poll_seconds, settings=self)
