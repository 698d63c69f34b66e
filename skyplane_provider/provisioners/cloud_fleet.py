"""What every cloud provisioner (``aws``, ``gcp``, ``azure``) shares: one job's VMs, bootstrapped over SSH.

A cloud provisioner only knows how to create, open and delete its cloud's resources (a
:class:`CloudJob`); the rest is here, once for all clouds:

1. settings common to all clouds (instance type, SSH user, the orchestrator's address, the data port,
   an ``address_map``, timeouts), checked before anything is created;
2. the provisioning flow: launch per region, wait until the VMs run, open SSH and the coordinator's
   API to the orchestrator and the data and control ports to the fleet's own addresses
   (:func:`fleet_ports`), then the shared SSH bootstrap (``ssh.bootstrap_fleet``) installs this exact
   package and starts the gateways; any failure tears everything down;
3. the job's coordinator on the source region's first VM (``ssh.launch_on_fleet``, as for ``ssh``
   hosts), given no cloud credentials: the client keeps deleting the VMs (docs/provisioners.md);
4. :class:`CloudFleet`, the running fleet: teardown stops the gateways, then deletes the VMs and
   everything else the job created, and the per-job SSH key (:class:`JobKey`);
5. cost: each VM counts from launch to confirmed deletion.

``address_map`` (tests against a stand-in API, or hosts behind NAT): instance id or gateway index ->
an SSH host to use instead of the VM's address. With a map, every connection goes through one
allow-list (``ssh_connection.open_socket``), so the VMs' own addresses are never contacted.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from planner.errors import BadOptionError, ProvisionError
from skyplane_provider.paths import DEFAULT_REMOTE_DIR, skyplane_home
from skyplane_provider.redaction import is_secret_name

from . import teardown_hooks
from .base import Fleet, GatewaySpec, Provisioner, check_stop
from .ssh import SSHFleet, bootstrap_fleet, launch_on_fleet, utc_now
from .ssh_connection import ConnectPolicy, SSHHost

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetPorts:
    """The fixed ports of a job's VMs, which their firewall opens: ``data`` and ``control`` (the
    gateways') to the fleet's own addresses, ``coordinator`` (the job's API, on the source region's
    first VM) to the orchestrator's, as SSH is."""

    data: int
    control: int
    coordinator: int


def fleet_ports(data_port: int) -> FleetPorts:
    """The data port and the two after it."""
    return FleetPorts(data_port, data_port + 1, data_port + 2)


class JobKey:
    """One ed25519 SSH key per job: the private half 0600 in ``$SKYPLANE_HOME/keys/<job_id>.key``,
    the public half given to the cloud (a key pair, instance metadata, a VM's OS profile)."""

    def __init__(self, job_id: str) -> None:
        self.path = skyplane_home() / "keys" / f"{job_id}.key"
        self._public: str | None = None

    @property
    def public_openssh(self) -> str:
        """``ssh-ed25519 AAAA...``; the key is generated (and its private half written) on first use."""
        if self._public is None:
            key = ed25519.Ed25519PrivateKey.generate()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(mode=0o600)
            self.path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()))
            self._public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH).decode()
        return self._public

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Instance:
    """One running VM of the job as the SSH bootstrap needs it."""

    instance_id: str
    public_ip: str | None
    private_ip: str | None


class CloudJob(ABC):
    """Every cloud resource of one job, created step by step and always removable as a whole.

    Subclasses create (``launch``), wait for (``wait_running``), open (``authorize``) and delete
    (``_teardown``) their cloud's resources, call :meth:`launched` / :meth:`ended` with instance ids
    so that VM time is counted, and report a region whose teardown failed with :meth:`incomplete`.
    """

    #: How messages name the cloud ("AWS", "GCP", "Azure").
    cloud: str = ""

    def __init__(self, job_id: str, *, poll_seconds: float) -> None:
        self.job_id = job_id
        self.created_at = utc_now()
        self.poll_seconds = poll_seconds
        self.key = JobKey(job_id)
        self._launched: dict[str, float] = {}  # instance id -> monotonic launch time
        self._ended: dict[str, float] = {}
        self._lock = threading.Lock()
        self._torn_down = False

    @abstractmethod
    def launch(self, region: str, specs: list[GatewaySpec]) -> None:
        """Create the region's network rules (closed), whatever carries the SSH key, and one VM per gateway."""

    @abstractmethod
    def wait_running(self, timeout: float) -> dict[str, Instance]:
        """Wait until every VM runs; gateway id -> its instance, with current addresses."""

    @abstractmethod
    def authorize(self, orchestrator_cidr: str, ports: FleetPorts, fleet_addresses: list[str]) -> None:
        """Admit SSH (22) and ``ports.coordinator`` from ``orchestrator_cidr`` only, and ``ports.data``
        and ``ports.control`` from the fleet's addresses only."""

    @abstractmethod
    def _teardown(self) -> None:
        """Delete the VMs (and wait), then everything else the job created. Must not raise."""

    @abstractmethod
    def deprovision_command(self, region: str) -> str:
        """The ``skyplane-provider deprovision`` command that removes this job's leftovers in ``region``."""

    def launched(self, instance_ids: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            self._launched.update({i: now for i in instance_ids})

    def ended(self, instance_ids: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            self._ended.update({i: now for i in instance_ids if i in self._launched})

    def vm_seconds(self) -> float:
        """Seconds of every VM from launch to confirmed deletion (or now)."""
        now = time.monotonic()
        with self._lock:
            return sum(self._ended.get(i, now) - t for i, t in self._launched.items())

    def incomplete(self, region: str, exc: BaseException) -> None:
        log.warning("%s %s: teardown of job %s incomplete (%s); run %s", self.cloud, region, self.job_id, exc,
                    self.deprovision_command(region))

    def teardown(self) -> None:
        """Remove everything, once; the local private key last. Never raises."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        try:
            self._teardown()
        finally:
            self.key.remove()


def poll_until(done, *, timeout: float, poll_seconds: float, what: str) -> None:
    """Call ``done()`` every ``poll_seconds`` until it is true; ``ProvisionError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise ProvisionError(f"timed out after {timeout:.0f} s {what}",
                                 hint="raise boot_timeout, or check the cloud console")
        time.sleep(poll_seconds)


class CloudFleet(Fleet):
    """SSH-bootstrapped gateways on a job's VMs; teardown also removes the VMs and their resources."""

    def __init__(self, job_id: str, job: CloudJob, ssh_fleet: SSHFleet, price_per_hour: float) -> None:
        self.job_id = job_id
        self.job = job
        self._ssh = ssh_fleet
        self.gateways = ssh_fleet.gateways
        self._price = price_per_hour

    def logs(self, gateway_id: str, tail: int = 200) -> str:
        return self._ssh.logs(gateway_id, tail)

    def alive(self, gateway_id: str) -> bool:
        return self._ssh.alive(gateway_id)

    @property
    def ssh_fleet(self) -> SSHFleet:
        """The gateways on the VMs, as SSH hosts."""
        return self._ssh

    def hand_over(self) -> None:
        """The coordinator on the source VM drives the fleet now and stops the gateways when the job
        ends: this process no longer tears anything down when it exits (a deferred Airflow task's
        does at once). The VMs and the rest stay until :meth:`teardown` (``Transfer.reap()``, at the
        job's end when the client is still there) or ``deprovision``: deleting them needs the cloud
        credentials, which never leave the client."""
        self._ssh.hand_over()
        teardown_hooks.unregister(self)

    def teardown(self) -> None:
        try:
            self._ssh.teardown()
        finally:
            self.job.teardown()
            teardown_hooks.unregister(self)

    def vm_seconds(self) -> float:
        return self.job.vm_seconds()

    def vm_usd(self) -> float:
        """What the VMs cost so far at the on-demand price."""
        return self.vm_seconds() * self._price / 3600.0


def require_sdk(modules: tuple[str, ...], provisioner: str) -> None:
    """Refuse a cloud provisioner whose SDK is not installed, before anything starts."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            raise BadOptionError(f"the {provisioner} provisioner needs {module}, which is not installed",
                                 hint=f"pip install 'skyplane-provider[{provisioner}]'")


def per_region(value: Any, region: str) -> Any:
    """A setting given once for all regions, or as a dict region -> value."""
    return value.get(region) if isinstance(value, dict) else value


class CloudProvisioner(Provisioner):
    """The settings and provisioning flow shared by the cloud provisioners (see the module docstring)."""

    #: How messages name the cloud, and the planner's provider name of its regions.
    cloud: str = ""
    #: USD per hour of instance types other than the planner's gateway VM (on-demand, cheapest US region).
    hourly_prices: dict[str, float] = {}
    #: The coordinator runs on the source region's first VM (docs/coordinator.md).
    coordinator_on_fleet = True
    #: Settings that authenticate to the cloud: never in the job document a VM gets (nor any setting
    #: whose name says it is a secret).
    credential_settings: frozenset[str] = frozenset()

    def __init__(self, *, instance_type: str, ssh_user: str, python: str = "python3",
                 orchestrator_cidr: str | None = None, data_port: int = 47800, address_map: dict | None = None,
                 known_hosts: str | None = None, accept_unknown_host_keys: bool = True,
                 remote_dir: str = DEFAULT_REMOTE_DIR, wheelhouse: str | None = None, boot_timeout: float = 600.0,
                 health_timeout: float = 60.0, poll_seconds: float = 5.0, **unknown: Any) -> None:
        if unknown:
            raise BadOptionError(f"unknown {self.name} provisioner settings {sorted(unknown)}",
                                 hint=f"see docs/provisioners.md for the {self.name} settings")
        if not isinstance(data_port, int) or not 0 < data_port < 65534 or 20 <= data_port <= 22:
            raise BadOptionError(f"bad data_port {data_port!r}",
                                 hint="use a TCP port number below 65534 such that neither it nor the two after it "
                                      "(the control API's, the coordinator's) is 22, e.g. 47800")
        for setting, value in (("boot_timeout", boot_timeout), ("health_timeout", health_timeout),
                               ("poll_seconds", poll_seconds)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise BadOptionError(f"bad {setting} {value!r}", hint=f"give {setting} as a positive number of seconds")
        self.instance_type = instance_type
        self.ssh_user, self.python = ssh_user, python
        self.orchestrator_cidr = orchestrator_cidr
        self.data_port = data_port
        self.address_map = {str(k): v for k, v in (address_map or {}).items()}
        self.known_hosts = known_hosts and str(Path(known_hosts).expanduser())
        self.accept_unknown_host_keys = accept_unknown_host_keys
        self.remote_dir, self.wheelhouse = remote_dir, wheelhouse
        self.boot_timeout, self.health_timeout, self.poll_seconds = boot_timeout, health_timeout, poll_seconds

    # -- what each cloud provides --------------------------------------------------------------
    @abstractmethod
    def new_job(self, job_id: str) -> CloudJob:
        """The job's (still empty) resources, with credentials checked. Creates nothing."""

    @abstractmethod
    def _deprovision(self, job_id: str, regions: list[str]) -> list:
        """``deprovision --job job_id`` in ``regions`` (names without the cloud) with this provisioner's
        credentials and endpoint; the ``Reaped`` records."""

    def region_name(self, tag: str) -> str:
        """``gcp:us-central1`` -> ``us-central1``; a region of another cloud is refused."""
        cloud, _, name = tag.partition(":")
        if cloud != self.name or not name:
            raise BadOptionError(f"the {self.name} provisioner cannot run a gateway in {tag}",
                                 hint=f"use {self.name}:<region> regions, or another provisioner for other clouds")
        return name

    def check_regions(self, regions: list[str]) -> None:
        """Refuse per-region settings that cannot work in ``regions`` (before anything is created)."""

    # -- shared --------------------------------------------------------------------------------
    def hourly_price(self, region: str) -> float:
        """The planner's price when it plans with this instance type, else :attr:`hourly_prices`."""
        from planner.providers import provider_of

        vm = provider_of(region)
        if vm.name == self.name and vm.vm_type == self.instance_type:
            return vm.usd_per_hour
        return self.hourly_prices.get(self.instance_type, 0.0)

    def allowed_addresses(self) -> frozenset[tuple[str, int]] | None:
        """The only (host, port) pairs contacted in address-map mode (``None``: no restriction)."""
        if not self.address_map:
            return None
        return frozenset((h.host, h.port) for h in (self._mapped(v, Path("/")) for v in self.address_map.values()))

    def _mapped(self, entry: Any, key_file: Path) -> SSHHost:
        if isinstance(entry, (list, tuple)):
            entry = {"host": entry[0], "port": entry[1]}
        defaults = {"user": self.ssh_user, "key_file": str(key_file), "python": self.python}
        return SSHHost.from_setting(entry, defaults)

    def ssh_host(self, index: int, instance: Instance, key_file: Path) -> SSHHost:
        """Where the orchestrator reaches gateway ``index``'s VM over SSH."""
        if self.address_map:
            entry = self.address_map.get(instance.instance_id, self.address_map.get(str(index)))
            if entry is None:
                raise ProvisionError(
                    f"instance {instance.instance_id} (gateway #{index}) has no address_map entry; "
                    "refusing to contact its own address while an address map is in use",
                    hint="map every instance id or gateway index")
            return self._mapped(entry, key_file)
        if not instance.public_ip:
            raise ProvisionError(f"instance {instance.instance_id} has no public IP address",
                                 hint="use a network that assigns public addresses")
        # The public address is a NAT's (every cloud maps it 1:1 onto the VM's private one): the
        # gateways bind the private address and peers dial the public one.
        return SSHHost(host=instance.public_ip, port=22, user=self.ssh_user, key_file=str(key_file), python=self.python,
                       data_host=instance.private_ip, advertise_host=instance.public_ip)

    def check_orchestrator_cidr(self) -> str:
        if not self.orchestrator_cidr:
            raise BadOptionError(f"the {self.name} provisioner needs orchestrator_cidr",
                                 hint="pass your public address as orchestrator_cidr='203.0.113.7/32': "
                                      "only it may open SSH to the gateways")
        try:
            return str(ipaddress.ip_network(self.orchestrator_cidr, strict=False))
        except ValueError as exc:
            raise BadOptionError(f"bad orchestrator_cidr {self.orchestrator_cidr!r}: {exc}",
                                 hint="write an address with its prefix length, e.g. 203.0.113.7/32") from None

    def provision(self, job_id: str, specs: list[GatewaySpec], stop: threading.Event | None = None) -> Fleet:
        by_region: dict[str, list[GatewaySpec]] = {}
        for spec in specs:
            by_region.setdefault(self.region_name(spec.region), []).append(spec)
        cidr = self.check_orchestrator_cidr()
        self.check_regions(list(by_region))
        job = self.new_job(job_id)
        try:
            for region, region_specs in by_region.items():
                check_stop(stop)
                job.launch(region, region_specs)
            instances = job.wait_running(self.boot_timeout)
            check_stop(stop)
            addresses = sorted({a for i in instances.values() for a in (i.public_ip, i.private_ip) if a})
            ports = fleet_ports(self.data_port)
            job.authorize(cidr, ports, addresses)
            assignments = [(spec, self.ssh_host(i, instances[spec.gateway_id], job.key.path))
                           for i, spec in enumerate(specs)]
            policy = ConnectPolicy(known_hosts=self.known_hosts, accept_unknown_host_keys=self.accept_unknown_host_keys,
                                   retry_seconds=self.boot_timeout, allowed=self.allowed_addresses())
            ssh_fleet = bootstrap_fleet(
                job_id, assignments, policy=policy, remote_dir=self.remote_dir, wheelhouse=self.wheelhouse,
                health_timeout=self.health_timeout, provisioner=self.name, stop=stop, control_tls=True,
                # mapped hosts may share an address (tests: loopback): free ports there
                data_port=0 if self.address_map else ports.data, control_port=0 if self.address_map else ports.control)
        except BaseException:
            job.teardown()
            raise
        fleet = CloudFleet(job_id, job, ssh_fleet, self.hourly_price(specs[0].region) if specs else 0.0)
        teardown_hooks.register(fleet)
        return fleet

    def reap_job(self, job_id: str, regions: list[str]) -> None:
        """Delete every VM, network rule and key tagged with ``job_id``, and its local key (the client's
        share of a job whose coordinator ran on the fleet: docs/provisioners.md, "Who deletes what")."""
        for reaped in self._deprovision(job_id, sorted({self.region_name(r) for r in regions})):
            log.info("job %s: %s", job_id, reaped)

    def launch_coordinator(self, job_id: str, document: dict, fleet: Fleet | None = None) -> dict:
        """Start the job's coordinator on the source region's first VM (as ``ssh`` does on its first
        host), serving on the VM's private address and reached at its public one, on
        :func:`fleet_ports`' ``coordinator`` port. Its job document holds the request without the
        settings that authenticate to the cloud: the coordinator stops the gateways, the client
        deletes the VMs."""
        if not isinstance(fleet, CloudFleet):
            raise ProvisionError(f"job {job_id}: a coordinator on a gateway VM needs the fleet started first")
        request = document["request"]
        settings = {k: v for k, v in request.get("provisioner_settings", {}).items()
                    if k not in self.credential_settings and not is_secret_name(k)}
        document = {**document, "request": {**request, "provisioner_settings": settings}}
        return launch_on_fleet(job_id, document, fleet.ssh_fleet, health_timeout=self.health_timeout, behind_nat=True,
                               port=0 if self.address_map else fleet_ports(self.data_port).coordinator)
