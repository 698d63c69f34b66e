"""The ``ssh`` provisioner: gateways on hosts you bring, reached with paramiko.

    get_provisioner("ssh", hosts={"aws:us-east-1": [{"host": "10.0.0.5", "user": "ubuntu",
                                                     "key_file": "~/.ssh/id_ed25519"}]},
                    known_hosts="~/.ssh/known_hosts")

``hosts`` is either a dict region -> list of hosts, or one list used round-robin for every region.
A host is a dict of :class:`SSHHost` fields or ``"user@host:port"``; ``user``, ``key_file`` and
``python`` given to the provisioner are defaults for hosts that leave them out. Each host gets this
exact version of the package in a private venv, gateways are started detached with their secrets in
0600 files, data ports bind to the host's address. The job's coordinator runs on the source region's
first host (:meth:`SSHProvisioner.launch_coordinator`): the gateways' control APIs listen on their
hosts' addresses over TLS (pinned certificates) so that it reaches them, and this process reaches
them through SSH tunnels while it provisions. See docs/provisioners.md and docs/coordinator.md.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planner.errors import BadOptionError, ProvisionError, SkyplaneError

from . import teardown_hooks
from .base import Fleet, GatewayHandle, GatewaySpec, Provisioner, check_stop
from .handed import fleet_document
from skyplane_provider.paths import DEFAULT_REMOTE_DIR, skyplane_home
from .package_wheel import package_wheel
from .ssh_bootstrap import HostBootstrap
from .ssh_connection import ConnectPolicy, SSHHost, SSHSession

log = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SSHFleet(Fleet):
    """Gateways on SSH hosts; one :class:`HostBootstrap` (and SSH session) per host."""

    def __init__(self, job_id: str, hosts: list[HostBootstrap], gateways: list[GatewayHandle]) -> None:
        self.job_id = job_id
        self.gateways = gateways
        self._hosts = hosts
        self._lock = threading.Lock()
        self._done = False

    def host_of(self, gateway_id: str) -> HostBootstrap | None:
        """The host (its bootstrap and SSH session) that runs ``gateway_id``."""
        return next((h for h in self._hosts if gateway_id in h.gateways), None)

    def logs(self, gateway_id: str, tail: int = 200) -> str:
        host = self.host_of(gateway_id)
        return host.log_tail(gateway_id, tail=tail) if host and not self._done else ""

    def alive(self, gateway_id: str) -> bool:
        host = self.host_of(gateway_id)
        return bool(host and host.alive(gateway_id))

    def hand_over(self) -> None:
        """The job's coordinator drives the fleet now and tears it down (``POST /shutdown``): this
        process no longer does when it ends (a deferred Airflow task's does, at once); it only closes
        its tunnels. :meth:`teardown` still reaps the hosts, for a client still there at the job's end."""
        teardown_hooks.unregister(self)
        for boot in self._hosts:
            boot.close_tunnels()

    def teardown(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        teardown_hosts(self._hosts)
        teardown_hooks.unregister(self)


def teardown_hosts(hosts: list[HostBootstrap]) -> None:
    """Tear down every host, in parallel when threads can still start; never raises.

    It also runs from the ``atexit`` hook, after ``concurrent.futures`` has stopped taking work, hence
    plain threads with a one-by-one fallback.
    """
    threads = []
    for boot in hosts:
        t = threading.Thread(target=boot.teardown, name=f"teardown-{boot.label}", daemon=True)
        try:
            t.start()
        except RuntimeError:  # interpreter shutting down
            boot.teardown()
            continue
        threads.append(t)
    for t in threads:
        t.join()


def bootstrap_fleet(job_id: str, assignments: list[tuple[GatewaySpec, SSHHost]], *, policy: ConnectPolicy,
                    remote_dir: str, wheelhouse: str | None, health_timeout: float, provisioner: str,
                    data_port: int = 0, stop: threading.Event | None = None,
                    control_tls: bool = False, control_port: int = 0) -> SSHFleet:
    """Install the package on every host, start every gateway, wait for health through tunnels.

    Hosts are prepared in parallel, gateways of one host one after the other. On any failure every
    host touched so far is torn down and a ``ProvisionError`` naming the host is raised. First every
    host is asked whether a coordinator of the job still runs there (``CoordinatorError``: then no
    host is touched).
    """
    wheel = package_wheel(skyplane_home() / "wheels")
    created_at = utc_now()
    by_host: dict[SSHHost, list[GatewaySpec]] = defaultdict(list)
    for spec, host in assignments:
        by_host[host].append(spec)
    started: list[HostBootstrap] = []
    boots: dict[SSHHost, HostBootstrap] = {}
    lock = threading.Lock()

    def connect(host: SSHHost) -> None:
        boot = HostBootstrap(SSHSession(host, policy), job_id, remote_dir=host.remote_dir or remote_dir,
                             created_at=created_at, provisioner=provisioner)
        with lock:
            boots[host] = boot
        boot.refuse_running()

    def prepare(host: SSHHost) -> list[GatewayHandle]:
        boot = boots[host]
        with lock:
            started.append(boot)
        boot.install(wheel, Path(wheelhouse).expanduser() if wheelhouse else None)
        check_stop(stop)  # cancelled while installing: start no gateway
        return boot.start(by_host[host], host, health_timeout=health_timeout, data_port=data_port,
                          control_tls=control_tls, control_port=control_port)

    # Every host is asked first whether an earlier try of the job still runs there: if one does, this
    # try leaves every host as it found it.
    try:
        with ThreadPoolExecutor(max_workers=min(16, len(by_host))) as pool:
            futures = {host: pool.submit(connect, host) for host in by_host}
            for f in futures.values():
                _result(f, futures)
    except BaseException:
        for boot in boots.values():
            boot.close()
        raise
    try:
        with ThreadPoolExecutor(max_workers=min(16, len(by_host))) as pool:
            futures = {host: pool.submit(prepare, host) for host in by_host}
            handles = {h.gateway_id: h for f in futures.values() for h in _result(f, futures)}
    except BaseException:
        teardown_hosts(started)
        raise
    return SSHFleet(job_id, started, [handles[spec.gateway_id] for spec, _ in assignments])


def _result(future, futures) -> list[GatewayHandle]:
    """The future's result; on error, wait for the others first so none is left half-started."""
    try:
        return future.result()
    except SkyplaneError:
        _drain(futures)
        raise
    except Exception as exc:
        _drain(futures)
        host = next(h for h, f in futures.items() if f is future)
        raise ProvisionError(f"provisioning on {host.label} failed: {exc}") from exc


def _drain(futures) -> None:
    for f in futures.values():
        try:
            f.result()
        except Exception:
            pass


class SSHProvisioner(Provisioner):
    """Gateways on the user's own hosts over SSH."""

    name = "ssh"
    coordinator_on_fleet = True

    def __init__(self, hosts: dict[str, list] | list | None = None, *, known_hosts: str | None = None,
                 accept_unknown_host_keys: bool = False, remote_dir: str = DEFAULT_REMOTE_DIR,
                 wheelhouse: str | None = None, user: str | None = None, key_file: str | None = None,
                 python: str | None = None, connect_timeout: float = 10.0, health_timeout: float = 30.0,
                 **unknown: Any) -> None:
        if unknown:
            raise BadOptionError(f"unknown ssh provisioner settings {sorted(unknown)}",
                                 hint="see docs/provisioners.md for the ssh settings")
        if not hosts:
            raise BadOptionError("the ssh provisioner needs hosts",
                                 hint='set "hosts" in its settings, e.g. {"hosts": {"aws:us-east-1": '
                                      '["user@host:22"]}} or one list for every region (docs/provisioners.md)')
        defaults = {k: v for k, v in {"user": user, "key_file": key_file, "python": python}.items() if v}

        def parse(value) -> SSHHost:
            return SSHHost.from_setting(value, defaults)

        if isinstance(hosts, dict):
            self.hosts: dict[str, list[SSHHost]] | list[SSHHost] = {r: [parse(h) for h in hs] for r, hs in hosts.items()}
        else:
            self.hosts = [parse(h) for h in hosts]
        if known_hosts is None and (Path.home() / ".ssh" / "known_hosts").exists():
            known_hosts = str(Path.home() / ".ssh" / "known_hosts")
        self.policy = ConnectPolicy(known_hosts=known_hosts and str(Path(known_hosts).expanduser()),
                                    accept_unknown_host_keys=accept_unknown_host_keys, timeout=connect_timeout)
        self.remote_dir = remote_dir
        self.wheelhouse = wheelhouse
        self.health_timeout = health_timeout

    def assign(self, specs: list[GatewaySpec]) -> list[tuple[GatewaySpec, SSHHost]]:
        """Which host runs which gateway: round-robin within the region's list (or the one list)."""
        counters: dict[str, int] = defaultdict(int)
        out = []
        for spec in specs:
            if isinstance(self.hosts, dict):
                pool = self.hosts.get(spec.region)
                if not pool:
                    raise BadOptionError(f"no ssh host for region {spec.region}",
                                         hint=f"add hosts[{spec.region!r}]; regions with hosts: {sorted(self.hosts)}")
                key = spec.region
            else:
                pool, key = self.hosts, ""
            out.append((spec, pool[counters[key] % len(pool)]))
            counters[key] += 1
        return out

    def provision(self, job_id: str, specs: list[GatewaySpec], stop: threading.Event | None = None) -> Fleet:
        fleet = bootstrap_fleet(job_id, self.assign(specs), policy=self.policy, remote_dir=self.remote_dir,
                                wheelhouse=self.wheelhouse, health_timeout=self.health_timeout, provisioner=self.name,
                                stop=stop, control_tls=True)
        teardown_hooks.register(fleet)
        return fleet

    def launch_coordinator(self, job_id: str, document: dict, fleet: Fleet | None = None) -> dict:
        """Start the job's coordinator on the host of ``fleet``'s first gateway in the source region
        (the plan's ``src``), with the fleet handed to it; ``{"url", "cert"}`` once its API listens
        there over TLS. The package is installed there already (provisioning did it)."""
        if not isinstance(fleet, SSHFleet):
            raise ProvisionError(f"job {job_id}: a coordinator on a gateway host needs the fleet started first")
        return launch_on_fleet(job_id, document, fleet, health_timeout=self.health_timeout)


def launch_on_fleet(job_id: str, document: dict, fleet: SSHFleet, *, health_timeout: float,
                    behind_nat: bool = False, port: int = 0) -> dict:
    """``launch_coordinator`` for a fleet on SSH hosts (``ssh``, and the cloud provisioners' VMs): the
    coordinator on the source region's first gateway host, serving over TLS on that host's peer
    address. ``behind_nat`` (a cloud VM): it binds the host's own ``data_host`` and is reached at the
    peer address a NAT maps onto it; ``port``: a fixed port that the VM's firewall opens (0: a free one)."""
    src = document.get("coordinator_region")
    first = next((g for g in fleet.gateways if g.region == src), None)
    boot = fleet.host_of(first.gateway_id) if first else None
    if boot is None:
        raise ProvisionError(f"job {job_id}: no gateway of the source region {src} to run the coordinator on")
    host = boot.session.host
    doc = {**document, "fleet": fleet_document(fleet)}
    started = boot.start_coordinator(doc, address=host.peer_address, timeout=health_timeout + 30,
                                     bind=host.bind_address if behind_nat else None, port=port)
    log.info("job %s: coordinator %s on %s at %s", job_id, started.get("pid"), boot.label, started["url"])
    return {"url": started["url"], "cert": started.get("cert"), "host": boot.label, "pid": started.get("pid")}
