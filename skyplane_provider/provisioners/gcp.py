"""The ``gcp`` provisioner: gateways on fresh Compute Engine instances, bootstrapped over SSH.

Per region of the plan (``gcp:<region>``), in one zone of it (``zone`` setting, else the region's
first zone): one instance per gateway, labelled ``skyplane-job-id`` / ``skyplane-created-at``, with
the network tag ``skyplane-<job>``, the job's SSH key in its ``ssh-keys`` metadata (OS Login off for
the instance) and its boot disk deleted with it. Once they run, two firewall rules of the job open
SSH (22) from ``orchestrator_cidr`` and the data port from the fleet's own addresses, to that network
tag only. Firewall rules cannot carry labels: they are named ``skyplane-<job>-ssh|data`` and their
description holds the job id and creation time. Credentials are Application Default Credentials
(``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, a VM's service
account); ``endpoint`` is the client's own ``api_endpoint`` override. The flow, the common settings
and teardown are ``cloud_fleet.py``'s.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone
from typing import Any

from planner.errors import BadOptionError, CredentialsError, ProvisionError

from .base import GatewaySpec
from .cloud_fleet import CloudJob, CloudProvisioner, FleetPorts, Instance, per_region, poll_until, require_sdk

log = logging.getLogger(__name__)

LABEL_JOB = "skyplane-job-id"
LABEL_CREATED = "skyplane-created-at"
META_GATEWAY = "skyplane-gateway-id"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
#: Firewall rules have no labels; their description carries the job (parsed by ``deprovision``).
FIREWALL_DESCRIPTION = "skyplane gateways: skyplane-job-id={job_id} skyplane-created-at={created_at}"
FIREWALL_DESCRIPTION_RE = re.compile(r"skyplane-job-id=(?P<job_id>\S+) skyplane-created-at=(?P<created_at>\S+)")
#: Label values allow only lowercase letters, digits, ``-`` and ``_`` (at most 63 characters).
_LABEL_TIME = "%Y%m%dt%H%M%Sz"
_JOB_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")

#: USD per instance-hour, on-demand in us-central1 (cloud.google.com/compute/vm-instance-pricing, 2024),
#: for machine types other than the planner's gateway VM.
HOURLY_PRICE = {
    "n2-standard-2": 0.0971, "n2-standard-4": 0.1942, "n2-standard-8": 0.3885, "n2-standard-16": 0.7769,
    "n2-standard-32": 1.5539, "e2-medium": 0.0335, "e2-standard-2": 0.067, "e2-standard-4": 0.134,
}
_QUOTA_REASONS = {"QUOTA_EXCEEDED", "quotaExceeded", "rateLimitExceeded", "ZONE_RESOURCE_POOL_EXHAUSTED"}
CREDENTIALS_HINT = ("set up Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS=<key file> or "
                    "`gcloud auth application-default login`, and GOOGLE_CLOUD_PROJECT (or the project setting)")


def label_time(iso: str) -> str:
    """``2026-12-04T17:40:54+00:00`` -> ``20261204t174054z`` (a valid label value)."""
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime(_LABEL_TIME)


def parse_label_time(value: str | None) -> datetime | None:
    try:
        return datetime.strptime(value or "", _LABEL_TIME).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def api_error(where: str, what: str, exc: Exception) -> Exception:
    """A google-api-core / google-auth failure as our error, naming where and what to do."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, auth_exc.GoogleAuthError):
        return CredentialsError(f"GCP {where}: no usable credentials for {what}: {exc}", hint=CREDENTIALS_HINT)
    text = str(exc)
    reasons = {e.get("reason") for e in getattr(exc, "errors", None) or [] if isinstance(e, dict)}
    if isinstance(exc, gexc.Unauthenticated):
        return CredentialsError(f"GCP {where}: {what} was refused: {text}", hint=CREDENTIALS_HINT)
    if reasons & _QUOTA_REASONS or any(reason in text for reason in _QUOTA_REASONS):
        return ProvisionError(f"GCP {where}: {what} failed: {text}",
                              hint="request a quota increase for this region or choose another region or zone")
    if isinstance(exc, gexc.Forbidden):
        return CredentialsError(f"GCP {where}: {what} was refused: {text}",
                                hint="the credentials need the Compute Instance Admin and Security Admin roles "
                                     "on the project")
    return ProvisionError(f"GCP {where}: {what} failed: {text}", hint="check the region's settings and your project")


def gcp_credentials(project: str | None) -> tuple[Any, str]:
    """Application Default Credentials, refreshed once (so a bad chain fails before anything is
    created), and the project to use."""
    import google.auth
    from google.auth.transport.requests import Request

    try:
        credentials, adc_project = google.auth.default(scopes=[CLOUD_PLATFORM])
        credentials.refresh(Request())
    except Exception as exc:
        raise CredentialsError(f"no usable Google Cloud credentials for the gcp provisioner: {exc}",
                               hint=CREDENTIALS_HINT) from None
    project = project or adc_project
    if not project:
        raise BadOptionError("the gcp provisioner does not know which project to use",
                             hint="pass project='my-project' or set GOOGLE_CLOUD_PROJECT")
    return credentials, project


class GCPClients:
    """The Compute Engine clients the provisioner and ``deprovision`` use, all on one endpoint."""

    def __init__(self, credentials, project: str, endpoint: str | None) -> None:
        from google.api_core.client_options import ClientOptions
        from google.cloud import compute_v1

        self.project = project
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        self.instances = compute_v1.InstancesClient(credentials=credentials, client_options=options)
        self.firewalls = compute_v1.FirewallsClient(credentials=credentials, client_options=options)
        self.regions = compute_v1.RegionsClient(credentials=credentials, client_options=options)
        # Operations are polled with clients of our own: the ones the library makes for
        # ``ExtendedOperation.result()`` are built without the client options, so they would ignore
        # ``api_endpoint`` (google/cloud/compute_v1/services/*/transports/base.py).
        self.zone_operations = compute_v1.ZoneOperationsClient(credentials=credentials, client_options=options)
        self.global_operations = compute_v1.GlobalOperationsClient(credentials=credentials, client_options=options)

    def wait(self, op, zone: str | None, *, timeout: float, poll_seconds: float) -> None:
        """Block until the operation ``op`` (as an insert or delete returned it) is done; raise its error."""
        from google.api_core import exceptions as gexc

        deadline = time.monotonic() + timeout
        while True:
            got = (self.zone_operations.get(project=self.project, zone=zone, operation=op.name) if zone
                   else self.global_operations.get(project=self.project, operation=op.name))
            if got.status == got.Status.DONE:
                if got.error and got.error.errors:
                    message = "; ".join(f"{e.code}: {e.message}" for e in got.error.errors)
                    raise gexc.from_http_status(got.http_error_status_code or 400, message)
                return
            if time.monotonic() > deadline:
                raise ProvisionError(f"GCP operation {op.name} not done after {timeout:.0f} s",
                                     hint="check the operation in the cloud console")
            time.sleep(poll_seconds)


class GCPJob(CloudJob):
    """Every Compute Engine resource of one job: its instances (any zones) and its firewall rules."""

    cloud = "GCP"

    def __init__(self, job_id: str, clients: GCPClients, project: str, *, poll_seconds: float,
                 settings: "GCPProvisioner | None" = None) -> None:
        super().__init__(job_id, poll_seconds=poll_seconds)
        self.clients, self.project = clients, project
        self._settings = settings  # None when only tearing down (deprovision)
        self.slug = job_id.replace("_", "-")
        self.network_tag = f"skyplane-{self.slug}"
        self.instances: list[dict] = []  # {"zone", "name", "gateway_id"}, recorded before each insert
        self.firewalls: list[str] = []   # names, recorded before each insert

    def _zone(self, region: str) -> str:
        zone = per_region(self._settings.zone, region)
        if zone:
            return zone
        try:
            zones = self.clients.regions.get(project=self.project, region=region).zones
        except Exception as exc:
            raise api_error(region, "regions.get", exc) from exc
        if not zones:
            raise ProvisionError(f"GCP {region}: the region has no zones", hint="pass zone for this region")
        return sorted(z.rsplit("/", 1)[-1] for z in zones)[0]

    def _instance_resource(self, name: str, zone: str, region: str, spec: GatewaySpec) -> dict:
        s = self._settings
        metadata = [{"key": "ssh-keys", "value": f"{s.ssh_user}:{self.key.public_openssh} skyplane-{self.slug}"},
                    {"key": "enable-oslogin", "value": "FALSE"}, {"key": META_GATEWAY, "value": spec.gateway_id}]
        if s.user_data:
            metadata.append({"key": "startup-script", "value": s.user_data})
        nic: dict[str, Any] = {"network": s.network,
                               "access_configs": [{"name": "External NAT", "type_": "ONE_TO_ONE_NAT"}]}
        subnetwork = per_region(s.subnetwork, region)
        if subnetwork:
            nic["subnetwork"] = subnetwork
        resource = {
            "name": name, "machine_type": f"zones/{zone}/machineTypes/{s.instance_type}",
            "labels": {LABEL_JOB: self.job_id, LABEL_CREATED: label_time(self.created_at)},
            "tags": {"items": [self.network_tag]}, "metadata": {"items": metadata},
            "disks": [{"boot": True, "auto_delete": True, "initialize_params": {
                "source_image": per_region(s.image, region), "disk_size_gb": s.disk_gb}}],
            "network_interfaces": [nic]}
        if s.spot:
            resource["scheduling"] = {"provisioning_model": "SPOT", "instance_termination_action": "DELETE"}
        return resource

    def launch(self, region: str, specs: list[GatewaySpec]) -> None:
        """One instance per gateway in the region's zone; waits until Compute Engine accepted each."""
        from google.cloud import compute_v1

        zone = self._zone(region)
        ops = []
        try:
            for spec in specs:
                name = f"skyplane-{self.slug}-{len(self.instances)}"
                self.instances.append({"zone": zone, "name": name, "gateway_id": spec.gateway_id})
                ops.append(self.clients.instances.insert(
                    project=self.project, zone=zone,
                    instance_resource=compute_v1.Instance(self._instance_resource(name, zone, region, spec))))
                self.launched([f"{zone}/{name}"])
            for op in ops:
                self.clients.wait(op, zone, timeout=300, poll_seconds=self.poll_seconds)
        except Exception as exc:
            raise api_error(f"{region} ({zone})", f"instances.insert ({len(specs)} x {self._settings.instance_type})",
                            exc) from exc

    def wait_running(self, timeout: float) -> dict[str, Instance]:
        out: dict[str, Instance] = {}

        def all_running() -> bool:
            for inst in self.instances:
                if inst["gateway_id"] in out:
                    continue
                try:
                    got = self.clients.instances.get(project=self.project, zone=inst["zone"], instance=inst["name"])
                except Exception as exc:
                    raise api_error(inst["zone"], f"instances.get {inst['name']}", exc) from exc
                if got.status in ("STOPPING", "STOPPED", "SUSPENDED", "TERMINATED"):
                    raise ProvisionError(f"GCP {inst['zone']}: instance {inst['name']} is {got.status} "
                                         "instead of starting", hint="a spot instance may have been preempted; retry")
                if got.status == "RUNNING":
                    nic = got.network_interfaces[0] if got.network_interfaces else None
                    nat = nic.access_configs[0].nat_i_p if nic and nic.access_configs else None
                    out[inst["gateway_id"]] = Instance(inst["name"], nat or None, nic.network_i_p if nic else None)
            return len(out) == len(self.instances)

        poll_until(all_running, timeout=timeout, poll_seconds=self.poll_seconds,
                   what="waiting for the GCP instances to run")
        return out

    def authorize(self, orchestrator_cidr: str, ports: FleetPorts, fleet_addresses: list[str]) -> None:
        """Two rules for the job's network tag: SSH and the coordinator's API from the orchestrator,
        the gateways' data and control ports from the fleet."""
        from google.cloud import compute_v1

        description = FIREWALL_DESCRIPTION.format(job_id=self.job_id, created_at=label_time(self.created_at))
        rules = [("ssh", ["22", str(ports.coordinator)], [orchestrator_cidr]),
                 ("data", [str(ports.data), str(ports.control)], [f"{a}/32" for a in fleet_addresses])]
        ops = []
        try:
            for suffix, port_list, sources in rules:
                name = f"skyplane-{self.slug}-{suffix}"
                self.firewalls.append(name)
                ops.append(self.clients.firewalls.insert(project=self.project, firewall_resource=compute_v1.Firewall(
                    name=name, network=self._settings.network, direction="INGRESS", priority=1000,
                    description=description, target_tags=[self.network_tag], source_ranges=sources,
                    allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=port_list)])))
            for op in ops:
                self.clients.wait(op, None, timeout=300, poll_seconds=self.poll_seconds)
        except Exception as exc:
            raise api_error("global", "firewalls.insert", exc) from exc

    def deprovision_command(self, region: str) -> str:
        return f"skyplane-provider deprovision --provisioner gcp --gcp-project {self.project} --job {self.job_id}"

    def _teardown(self) -> None:
        """Delete the instances (and wait), then the firewall rules; what is already gone is fine."""
        from google.api_core.exceptions import NotFound

        pending = []
        for inst in self.instances:
            try:
                pending.append((inst, self.clients.instances.delete(project=self.project, zone=inst["zone"],
                                                                    instance=inst["name"])))
            except NotFound:
                self.ended([f"{inst['zone']}/{inst['name']}"])
            except Exception as exc:
                self.incomplete(inst["zone"], exc)
        for inst, op in pending:
            try:
                self.clients.wait(op, inst["zone"], timeout=600, poll_seconds=self.poll_seconds)
                self.ended([f"{inst['zone']}/{inst['name']}"])
            except NotFound:
                self.ended([f"{inst['zone']}/{inst['name']}"])
            except Exception as exc:
                self.incomplete(inst["zone"], exc)
        for name in self.firewalls:
            try:
                self.clients.wait(self.clients.firewalls.delete(project=self.project, firewall=name), None,
                                  timeout=300, poll_seconds=self.poll_seconds)
            except NotFound:
                pass
            except Exception as exc:
                self.incomplete("global", exc)


class GCPProvisioner(CloudProvisioner):
    """Gateways on Compute Engine instances started for the job (see the module docstring)."""

    name = "gcp"
    cloud = "GCP"
    hourly_prices = HOURLY_PRICE

    def __init__(self, *, instance_type: str = "n2-standard-32", project: str | None = None,
                 zone: str | dict | None = None, image: str | dict = "projects/debian-cloud/global/images/family/debian-12",
                 network: str = "global/networks/default", subnetwork: str | dict | None = None,
                 disk_gb: int = 20, spot: bool = False, user_data: str | None = None, ssh_user: str = "skyplane",
                 endpoint: str | None = None, **common: Any) -> None:
        super().__init__(instance_type=instance_type, ssh_user=ssh_user, **common)
        require_sdk(("google.cloud.compute_v1",), self.name)
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", ssh_user or ""):
            raise BadOptionError(f"bad ssh_user {ssh_user!r} for GCP",
                                 hint="use a lowercase Linux user name such as 'skyplane'")
        if not isinstance(disk_gb, int) or disk_gb < 10:
            raise BadOptionError(f"bad disk_gb {disk_gb!r}", hint="give the boot disk size in GB, at least 10")
        self.project, self.zone, self.image = project, zone, image
        self.network, self.subnetwork, self.disk_gb = network, subnetwork, disk_gb
        self.spot, self.user_data, self.endpoint = spot, user_data, endpoint

    def check_regions(self, regions: list[str]) -> None:
        for region in regions:
            zone = per_region(self.zone, region)
            if zone and not zone.startswith(f"{region}-"):
                raise BadOptionError(f"zone {zone} is not in region {region}",
                                     hint=f"give a zone of {region} (e.g. {region}-b), or a dict region -> zone")

    def _deprovision(self, job_id: str, regions: list[str]) -> list:
        from skyplane_provider.deprovision import Selection, deprovision_gcp

        return deprovision_gcp(Selection(job_id=job_id), project=self.project, endpoint=self.endpoint,
                               poll_seconds=self.poll_seconds)  # the project's every zone: regions not needed

    def new_job(self, job_id: str) -> GCPJob:
        if not _JOB_ID.fullmatch(job_id):
            raise BadOptionError(f"the gcp provisioner cannot label resources with job id {job_id!r}",
                                 hint="use a job id of at most 40 lowercase letters, digits, '-' and '_' "
                                      "(the default, a uuid4 hex, is fine)")
        credentials, project = gcp_credentials(self.project)
        return GCPJob(job_id, GCPClients(credentials, project, self.endpoint), project, poll_seconds=self.poll_seconds,
                      settings=self)
