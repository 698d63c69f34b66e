"""The ``local`` provisioner: every gateway is a process on this host (the embedded default).

    get_provisioner("local")                              # all on 127.0.0.1
    get_provisioner("local", placement=testbed.gateway_placement())   # one netns per region

State of a job, under ``$SKYPLANE_HOME/jobs/<job_id>/`` (default ``~/.skyplane``), directories 0700::

    pids.json                 {"job_id", "created_at", "provisioner": "local",
                               "gateways": [{"gateway_id", "pid", "cmdline_marker"}]}
    gw-<gateway>/config.json  the daemon config, 0600 (job secret, control token, key, credentials)
    gw-<gateway>/ready.json   written by the daemon once its ports are bound
    gw-<gateway>/gateway.log  the daemon's stdout and stderr
    gw-ahead-<K>/             the same, for a gateway whose process was started before the job was
                              planned (spares.py): the directory its command line names

Each gateway runs ``python -m gateway.daemon --config <dir>/config.json`` in its own session and
process group, so ``cmdline_marker`` (the config path, which names the job) identifies it for
``deprovision`` even after this process died. Teardown asks each gateway to shut down, then sends
SIGTERM and finally SIGKILL to its process group, and removes the job's files (secrets first).
Should this process die without a teardown (SIGKILL, OOM), each gateway notices within a second
that its parent (``parent_pid`` in its config) is gone and stops by itself.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.control_client import GatewayClient
from gateway.exits import wait_exits
from gateway.wire import is_loopback
from planner.errors import BadOptionError, ProvisionError, SkyplaneError
from skyplane_provider.paths import skyplane_home

from . import spares, teardown_hooks
from .base import Fleet, GatewayHandle, GatewaySpec, Provisioner, check_stop

log = logging.getLogger(__name__)

PIDS_FILE = "pids.json"
#: Seconds a gateway has to answer ``POST /shutdown`` (it answers before it stops); one that does not
#: gets SIGTERM. Calls go one after the other: a fleet of hung gateways costs this much per gateway.
SHUTDOWN_CALL_TIMEOUT = 1.0
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PLACEMENT_FIELDS = {"netns", "bind_host", "control_host"}


def gateway_dir_name(gateway_id: str) -> str:
    """``aws:us-east-1/0`` -> ``gw-aws_us-east-1_0`` (a safe file name)."""
    return "gw-" + re.sub(r"[^A-Za-z0-9._-]", "_", gateway_id)


class _LocalGateway:
    """One started daemon process and its files."""

    def __init__(self, spec: GatewaySpec, directory: Path, proc: subprocess.Popen, token: str,
                 control_host: str, data_host: str) -> None:
        self.spec, self.directory, self.proc, self.token = spec, directory, proc, token
        self.control_host, self.data_host = control_host, data_host
        self.handle: GatewayHandle | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "config.json"

    def log_tail(self, tail: int) -> str:
        try:
            lines = (self.directory / "gateway.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def wait_ready(self, deadline: float, stop: threading.Event | None) -> dict:
        ready = self.directory / "ready.json"
        while True:
            check_stop(stop)
            if ready.exists():
                try:
                    return json.loads(ready.read_text())
                except ValueError:
                    pass  # being renamed into place
            if self.proc.poll() is not None:
                raise ProvisionError(f"gateway {self.spec.gateway_id} exited with code {self.proc.returncode} "
                                     f"while starting; log tail:\n{self.log_tail(30)}", hint="see the log above")
            if time.monotonic() > deadline:
                raise ProvisionError(f"gateway {self.spec.gateway_id} did not bind its ports in time; "
                                     f"log tail:\n{self.log_tail(30)}")
            time.sleep(0.01)  # a gateway started ahead is ready ~20 ms after its go: every job waits here

class LocalFleet(Fleet):
    """Gateway processes of one job on this host; up to ``replacements`` dead ones are replaced."""

    can_replace = True

    def __init__(self, job_id: str, job_dir: Path, members: list[_LocalGateway], *, grace: float,
                 keep_logs: bool, provisioner: "LocalProvisioner | None" = None, record: dict | None = None,
                 replacements: int = 0, stop: threading.Event | None = None) -> None:
        self.job_id = job_id
        self.job_dir = job_dir
        self._members = {m.spec.gateway_id: m for m in members}
        self.gateways = [m.handle for m in members if m.handle is not None]
        self._grace, self._keep_logs = grace, keep_logs
        self._provisioner, self._record = provisioner, record
        self._replacements_left = replacements if provisioner is not None else 0
        self._replaced = 0
        self._lock = threading.Lock()
        self._done = False
        self._stop = stop  # the job's cancel: a replacement's start ends at it too

    def replace(self, gateway_id: str) -> GatewayHandle:
        with self._lock:
            if self._done:
                raise ProvisionError(f"cannot replace {gateway_id}: the fleet of job {self.job_id} is torn down")
            if self._replacements_left <= 0:
                raise ProvisionError(f"cannot replace {gateway_id}: this job's replacements are used up",
                                     hint="raise the local provisioner's 'replacements' setting")
            self._replacements_left -= 1
            self._replaced += 1
            n = self._replaced
        old = self._members[gateway_id].spec
        spec = GatewaySpec(f"{old.region}/r{n}", old.region,
                           {**old.config, "control_token": secrets.token_urlsafe(32)})
        member = self._provisioner._launch(self.job_id, self.job_dir, spec)  # noqa: SLF001 - its own provisioner
        with self._lock:
            self._members[spec.gateway_id] = member
        self._record["gateways"].append(_pid_entry(member))
        _write_private(self.job_dir / PIDS_FILE, json.dumps(self._record, indent=1))
        _bring_up([member], time.monotonic() + self._provisioner.health_timeout, self._stop)
        with self._lock:
            self.gateways.append(member.handle)
        log.warning("gateway %s replaces the dead %s", spec.gateway_id, gateway_id)
        return member.handle

    def logs(self, gateway_id: str, tail: int = 200) -> str:
        m = self._members.get(gateway_id)
        return m.log_tail(tail) if m else ""

    def alive(self, gateway_id: str) -> bool:
        m = self._members.get(gateway_id)
        return bool(m and not self._done and m.proc.poll() is None)

    def teardown(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        members = list(self._members.values())
        _stop_all(members, self._grace)
        _remove_job_files(self.job_dir, members, keep_logs=self._keep_logs)
        teardown_hooks.unregister(self)
        log.info("local fleet of job %s torn down", self.job_id)


class LocalProvisioner(Provisioner):
    """Gateways as processes on this host.

    ``bind_host``: the address every gateway binds (default ``127.0.0.1``). ``placement``: per
    region ``{"netns", "bind_host", "control_host"}`` (what ``Testbed.gateway_placement()`` returns):
    the gateway runs in that network namespace (``ip netns exec``; needs root), binds ``bind_host``
    and serves its control API on ``control_host``; an entry keyed by a gateway id (``region/k``, one
    namespace per gateway VM) takes precedence over its region's. ``netns``: per region just the namespace.
    ``health_timeout``: seconds to wait for each gateway; ``stop_grace``: seconds between shutdown
    steps; ``keep_logs``: leave the gateway logs in the job directory after teardown;
    ``replacements``: how many dead gateways a job may replace (default 2), so a region whose
    gateways all died gets a new one instead of failing the transfer. ``coordinator_host``: an
    address of this host where the job's coordinator serves its API over TLS (a certificate of its
    own, pinned by the job's handle), for clients on other hosts such as an Airflow triggerer; by
    default it listens on 127.0.0.1 only.
    """

    name = "local"
    shares_environment = True  # the gateways are our children

    def __init__(self, *, bind_host: str = "127.0.0.1", placement: dict[str, dict] | None = None,
                 netns: dict[str, str] | None = None, health_timeout: float = 30.0, stop_grace: float = 3.0,
                 keep_logs: bool = False, replacements: int = 2, coordinator_host: str | None = None,
                 one_gateway: bool = True, **unknown: Any) -> None:
        if unknown:
            raise BadOptionError(f"unknown local provisioner settings {sorted(unknown)}",
                                 hint="allowed: bind_host, placement, netns, health_timeout, stop_grace, keep_logs, "
                                      "replacements, coordinator_host, one_gateway")
        if not isinstance(one_gateway, bool):
            raise BadOptionError(f"one_gateway must be true or false, not {one_gateway!r}")
        if not isinstance(replacements, int) or replacements < 0:
            raise BadOptionError(f"replacements must be a whole number >= 0, not {replacements!r}")
        self.replacements = replacements
        self.bind_host = bind_host
        self.placement: dict[str, dict] = {}
        for region, p in (placement or {}).items():
            if not isinstance(p, dict) or set(p) - _PLACEMENT_FIELDS:
                raise BadOptionError(f"placement[{region!r}] must be a dict with keys from {sorted(_PLACEMENT_FIELDS)}")
            self.placement[region] = dict(p)
        for region, ns in (netns or {}).items():
            self.placement.setdefault(region, {})["netns"] = ns
        self.health_timeout = health_timeout
        self.stop_grace = stop_grace
        self.keep_logs = keep_logs
        self.coordinator_host = coordinator_host
        self.loopback_fleet = is_loopback(bind_host) and not self.placement
        self.writes_at_source = self.loopback_fleet and one_gateway

    def launch_coordinator(self, job_id: str, document: dict, fleet: Fleet | None = None) -> dict:
        from skyplane_provider.coordinator.launcher import launch_local

        return launch_local(job_id, document, host=self.coordinator_host)

    def provision(self, job_id: str, specs: list[GatewaySpec], stop: threading.Event | None = None) -> LocalFleet:
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise BadOptionError(f"job id {job_id!r} cannot name a directory", hint="use letters, digits, '-', '_'")
        job_dir = skyplane_home() / "jobs" / job_id
        job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {"job_id": job_id, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "provisioner": self.name, "gateways": []}
        members: list[_LocalGateway] = []
        try:
            workers = local_workers(len(os.sched_getaffinity(0)), len(specs))
            for spec in specs:
                member = self._launch(job_id, job_dir, spec, workers)
                members.append(member)
                record["gateways"].append(_pid_entry(member))
                _write_private(job_dir / PIDS_FILE, json.dumps(record, indent=1))
            spares.drop()  # daemons started ahead for gateways this fleet does not have
            _bring_up(members, time.monotonic() + self.health_timeout, stop)
        except BaseException:
            spares.drop()
            LocalFleet(job_id, job_dir, members, grace=self.stop_grace, keep_logs=self.keep_logs).teardown()
            raise
        fleet = LocalFleet(job_id, job_dir, members, grace=self.stop_grace, keep_logs=self.keep_logs,
                           provisioner=self, record=record, replacements=self.replacements, stop=stop)
        teardown_hooks.register(fleet)
        log.info("local fleet of job %s: %d gateway(s) up", job_id, len(members))
        return fleet

    def _launch(self, job_id: str, job_dir: Path, spec: GatewaySpec, workers: int = 1) -> _LocalGateway:
        place = self.placement.get(spec.gateway_id) or self.placement.get(spec.region, {})
        bind_host = place.get("bind_host", self.bind_host)
        control_host = place.get("control_host", bind_host)
        netns = place.get("netns")
        _check_reachable(control_host, spec.gateway_id)
        # A spare daemon (spares.py): this gateway's own, else on loopback one started before the job's
        # plan, in the directory its command line names.
        own = job_dir / gateway_dir_name(spec.gateway_id) / "config.json"
        spare = spares.take(own, loopback=not netns and self.loopback_fleet)
        directory = (spare[0] if spare is not None else own).parent
        directory.mkdir(mode=0o700, exist_ok=True)
        (directory / "ready.json").unlink(missing_ok=True)
        config = {"workers": workers, **spec.config, "gateway_id": spec.gateway_id, "job_id": job_id,
                  "region": spec.region,
                  "bind_host": bind_host, "advertise_host": bind_host, "control_host": control_host,
                  "data_port": 0, "control_port": 0, "ready_file": str(directory / "ready.json"),
                  "parent_pid": os.getpid()}
        config.pop("log_file", None)  # stdout/stderr already go to the gateway's log
        config_path = directory / "config.json"
        _write_private(config_path, json.dumps(config))
        # A spare imported its modules while this process was busy: it reads the config now.
        if spare is not None and spares.go(spare[1]):
            proc = spare[1]
            log.debug("gateway %s: its process %d was started ahead", spec.gateway_id, proc.pid)
        else:
            proc = self._start_process(spec.gateway_id, directory, netns)
        log.debug("started gateway %s as pid %d", spec.gateway_id, proc.pid)
        return _LocalGateway(spec, directory, proc, config.get("control_token", ""), control_host, bind_host)

    def _start_process(self, gateway_id: str, directory: Path, netns: str | None) -> subprocess.Popen:
        """The daemon of ``gateway_id``, its log in ``directory``."""
        with open(directory / "gateway.log", "ab") as logf:
            try:
                return subprocess.Popen(spares.daemon_argv(directory / "config.json", netns),
                                        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                        cwd=directory, start_new_session=True)
            except OSError as exc:
                raise ProvisionError(f"cannot start gateway {gateway_id}: {exc}") from exc

    def start_ahead(self, job_id: str, gateway_ids: list[str], regions: list[str]) -> None:
        """Start spare daemons (spares.py) for a job's gateways before their configs exist (the job's
        coordinator calls this before importing its own modules): each imports its modules meanwhile,
        ~0.2 CPU-s and a third of a second on a loaded 2-core host that no longer stand between the
        coordinator and its first chunk, then waits on stdin. :meth:`provision` writes each config,
        then says go. One never told (the job needed fewer gateways, or none) exits when
        :func:`spares.drop` or the end of this process closes its stdin. Best effort: a gateway that
        cannot be started ahead is started by :meth:`provision` as usual."""
        job_dir = skyplane_home() / "jobs" / job_id
        for gateway_id, region in zip(gateway_ids, regions):
            place = self.placement.get(gateway_id) or self.placement.get(region, {})
            if not spares.start(job_dir / gateway_dir_name(gateway_id) / "config.json", place.get("netns")):
                log.debug("gateway %s not started ahead", gateway_id)


def _pid_entry(member: _LocalGateway) -> dict:
    return {"gateway_id": member.spec.gateway_id, "pid": member.proc.pid, "cmdline_marker": str(member.config_path)}


def _bring_up(members: list[_LocalGateway], deadline: float, stop: threading.Event | None) -> None:
    """Wait until each started gateway bound its ports (then give it its handle) and is healthy;
    ``ProvisionError`` once ``stop`` is set."""
    for m in members:
        ready = m.wait_ready(deadline, stop)
        m.handle = GatewayHandle(
            gateway_id=m.spec.gateway_id, region=m.spec.region,
            control_url=f"http://{_url_host(m.control_host)}:{int(ready['control_port'])}",
            control_token=m.token, data_host=m.data_host, data_port=int(ready["data_port"]),
            pid=m.proc.pid, extra={"directory": str(m.directory), "log": str(m.directory / "gateway.log")})
    for m in members:
        _wait_healthy(m, deadline, stop)


def local_workers(cpus: int, gateways: int) -> int:
    """Worker processes per gateway of a local fleet: this host's CPUs shared among its gateways (a
    job's config may ask for fewer: :func:`skyplane_provider.transfer.launch.workers_for`). The job's
    coordinator runs here too, but it costs about a third of its gateways' CPU per object (100,000 x
    1 KiB: 0.026 against 0.085 CPU-s per 1,000), so leaving it a CPU of its own left one idle on 2 CPUs:
    there one gateway of 2 workers moved 100,000 x 1 KiB at 19,500-21,600 objects/s against 12,100 with
    1 worker, with less CPU per object (0.081-0.091 against 0.117), and 20,000 x 4 KiB through `cp -r` in
    1.57 s against 2.74 s (2026-12-07 00:22-00:30 UTC, load ~2, docs/benchmarks.md, Small files)."""
    return max(1, cpus // max(1, gateways))


def _stop_all(members: list[_LocalGateway], grace: float) -> None:
    """``POST /shutdown`` to every gateway, then SIGTERM, then SIGKILL to the process groups of those
    still running, waiting up to ``grace`` seconds after each step; every process is reaped. A
    gateway that did not take the shutdown (it hangs, or never bound its ports) is not waited for
    before its SIGTERM.

    Steps go to all gateways at once, without helper threads: this also runs from ``atexit``, when
    new threads may no longer be started."""
    asked = []
    for m in members:
        if m.proc.poll() is None and m.handle is not None:
            try:
                GatewayClient(m.handle.control_url, m.token, timeout=SHUTDOWN_CALL_TIMEOUT).shutdown()
                asked.append(m)
            except SkyplaneError:
                pass
    _wait_all(asked, grace)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        running = [m for m in members if m.proc.poll() is None]
        for m in running:
            try:
                os.killpg(m.proc.pid, sig)
                if sig == signal.SIGTERM:  # a stopped process (SIGSTOP, a debugger) acts on it once it runs
                    os.killpg(m.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        _wait_all(running, wait)
    for m in members:
        if m.proc.poll() is None:
            log.error("gateway %s (pid %d) survived SIGKILL", m.spec.gateway_id, m.proc.pid)


def _wait_all(members: list[_LocalGateway], seconds: float) -> None:
    wait_exits([m.proc for m in members], seconds)  # every job's end waits here: woken by each exit


def _wait_healthy(member: _LocalGateway, deadline: float, stop: threading.Event | None) -> None:
    client = GatewayClient(member.handle.control_url, member.token, timeout=2.0)
    while True:
        check_stop(stop)
        try:
            if client.health().get("ok"):
                return
            problem = "health answered not ok"
        except SkyplaneError as exc:
            problem = str(exc)
        if member.proc.poll() is not None or time.monotonic() > deadline:
            raise ProvisionError(f"gateway {member.spec.gateway_id} is not healthy: {problem}; "
                                 f"log tail:\n{member.log_tail(30)}")
        time.sleep(0.05)


def _check_reachable(host: str, gateway_id: str) -> None:
    """The orchestrator talks to a gateway's control API from here: only over loopback or a link of
    this host's own (a namespace's veth), never through a router to somewhere else."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        raise BadOptionError(f"control host {host!r} of {gateway_id} is not an IP address") from None
    from skyplane_provider.testbed import iproute

    route = iproute.route_get(host)
    default_devs = {r.get("dev") for r in iproute.ip_json("route", "show", "default")}
    if route is None or route.get("gateway") or route.get("dev") in default_devs:
        raise ProvisionError(f"refusing to start {gateway_id}: its control address {host} does not route over a "
                             f"link of this host ({route})", hint="bring the testbed up first, or use 127.0.0.1")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (it may hold secrets)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _remove_job_files(job_dir: Path, members: list[_LocalGateway], *, keep_logs: bool) -> None:
    """Secrets go first and always; logs stay only when asked; the job directory goes when empty
    (a detached transfer runner may share it)."""
    for m in members:
        m.config_path.unlink(missing_ok=True)
        (m.directory / "ready.json").unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(m.directory, ignore_errors=True)
    if all(m.proc.poll() is not None for m in members):
        (job_dir / PIDS_FILE).unlink(missing_ok=True)
    try:
        job_dir.rmdir()
    except OSError:
        pass
