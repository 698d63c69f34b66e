"""What a job does on one gateway host over SSH: install this package, start gateways, reap them.

Shared by the ``ssh`` provisioner (the user's hosts) and the ``aws`` provisioner (fresh instances).

Host layout, under ``remote_dir`` (default ``~/.skyplane``)::

    venv-<content hash>/            private venv with exactly the orchestrator's version (kept as a cache)
    wheels/<wheel>                  the shipped wheel (cache)
    jobs/<job_id>/job.json          {"job_id", "created_at", "provisioner", "host", "pids": {gateway_id: pid}}
    jobs/<job_id>/gw-<slug>/        config.json (0600: it holds the job's secrets), gateway.log,
                                    ready.json, gateway.pid

Gateways run detached (``setsid``: own session and process group, pid file), so they survive a lost
SSH connection; a dead orchestrator's gateways are found again by ``deprovision`` through job.json
and the pid files. A pid is only ever signalled after checking that its command line names the
job's directory, so a recycled pid is never killed by mistake.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from planner.errors import ProvisionError, SkyplaneError

from .base import GatewayHandle, GatewaySpec
from .package_wheel import PackagedWheel
from .ssh_connection import LocalForward, SSHHost, SSHSession

log = logging.getLogger(__name__)

DEFAULT_REMOTE_DIR = "~/.skyplane"

#: POSIX sh: ``reap_job DIR`` stops every gateway started under DIR and removes their files.
#: Only pids whose command line contains DIR are signalled (whole process group, TERM then KILL).
#: DIR itself is removed only when nothing else lives in it (a detached transfer on the same host
#: may share the job's directory).
REAP_SH = r"""
alive() { [ -r /proc/$1/stat ] && [ "$(sed 's/.*) //' /proc/$1/stat | cut -c1)" != Z ]; }
reap_job() {
  d=$1; pids=""
  for f in "$d"/gw-*/gateway.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f"); case "$p" in ''|*[!0-9]*) continue;; esac
    if alive "$p" && tr '\0' ' ' < /proc/$p/cmdline | grep -qF "$d/"; then
      kill -TERM "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; pids="$pids $p"
    fi
  done
  i=0; left=$pids
  while [ -n "$left" ] && [ $i -lt 50 ]; do
    sleep 0.1; i=$((i+1)); still=""
    for p in $left; do alive "$p" && still="$still $p"; done; left=$still
  done
  for p in $left; do kill -KILL "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
  rm -rf "$d"/gw-* "$d/job.json"; rmdir "$d" 2>/dev/null; true
}
"""


def gateway_slug(gateway_id: str) -> str:
    """``aws:us-east-1/0`` -> ``gw-aws_us-east-1_0`` (a safe file name)."""
    return "gw-" + re.sub(r"[^A-Za-z0-9._-]", "_", gateway_id)


def resolve_remote_dir(session: SSHSession, remote_dir: str) -> str:
    """``~/...`` -> an absolute path on the host."""
    if remote_dir == "~" or remote_dir.startswith("~/"):
        return session.home().rstrip("/") + remote_dir[1:]
    return remote_dir.rstrip("/")


@dataclass
class RemoteGateway:
    """A gateway process on a host, and the tunnel to its control API."""

    gateway_id: str
    directory: str
    pid: int
    control_port: int
    data_port: int
    forward: LocalForward


class HostBootstrap:
    """One job on one host: install the package once, start gateways, tear everything down."""

    def __init__(self, session: SSHSession, job_id: str, *, remote_dir: str, created_at: str,
                 provisioner: str) -> None:
        self.session = session
        self.job_id = job_id
        self.created_at = created_at
        self.provisioner = provisioner
        self.base = resolve_remote_dir(session, remote_dir)
        self.job_dir = f"{self.base}/jobs/{job_id}"
        self.venv_python: str | None = None
        self.gateways: dict[str, RemoteGateway] = {}
        self._torn_down = False

    @property
    def label(self) -> str:
        return self.session.host.label

    # -- install -------------------------------------------------------------------------------
    def install(self, wheel: PackagedWheel, wheelhouse: Path | None = None) -> str:
        """Make ``<base>/venv-<hash>`` hold exactly ``wheel``; returns its python. Skipped when done before.

        The venv sees the site-packages of the host's ``python`` (which must provide the
        dependencies), unless a ``wheelhouse`` of dependency wheels is shipped and installed from.
        Nothing is fetched from a package index on the host.
        """
        host = self.session.host
        venv = f"{self.base}/venv-{wheel.content_hash}"
        marker = f"{venv}/.skyplane-complete"
        q = shlex.quote
        rc, _, _ = self.session.run(f"test -f {q(marker)}", check=False)
        if rc != 0:
            self.session.run(f"mkdir -p {q(self.base)}/wheels && chmod 700 {q(self.base)}")
            remote_wheel = f"{self.base}/wheels/{wheel.filename}"
            self.session.put_file(wheel.path, remote_wheel)
            find_links = ""
            if wheelhouse is not None:
                remote_wh = f"{self.base}/wheelhouse"
                self.session.run(f"mkdir -p {q(remote_wh)}")
                for whl in sorted(Path(wheelhouse).glob("*.whl")):
                    self.session.put_file(whl, f"{remote_wh}/{whl.name}")
                find_links = f"--find-links {q(remote_wh)}"
            deps = "" if wheelhouse is not None else "--no-deps"
            # One installer at a time per host (flock); an unfinished venv (no marker) is redone.
            script = (
                f"set -e; test -f {q(marker)} && exit 0; rm -rf {q(venv)}; "
                f"{q(host.python)} -m venv --without-pip --system-site-packages {q(venv)}; "
                f"{q(host.python)} -c 'import sysconfig; p=sysconfig.get_paths(); "
                f"print(p[\"purelib\"]); print(p[\"platlib\"])' "
                f"> \"$({q(venv)}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')"
                f"/_skyplane_host_deps.pth\"; "
                f"{q(host.python)} -m pip --python {q(venv)}/bin/python install -q --no-index {deps} "
                f"{find_links} {q(remote_wheel)}; "
                f"touch {q(marker)}")
            self.session.run(f"flock {q(self.base)}/.install.lock sh -c {q(script)}", timeout=300)
        python = f"{venv}/bin/python"
        check = ("import importlib.metadata as m, gateway, planner; "
                 "print(m.version('skyplane-provider')); print(gateway.__file__)")
        _, out, _ = self.session.run(f"{q(python)} -c {q(check)}")
        version, where = (out.strip().splitlines() + ["", ""])[:2]
        if version != wheel.version or not where.startswith(venv + "/"):
            raise ProvisionError(
                f"the venv on {self.label} runs skyplane-provider {version} from {where}, "
                f"expected {wheel.version} from {venv}",
                hint=f"remove {venv} on the host and retry")
        self.venv_python = python
        return python

    # -- gateways ------------------------------------------------------------------------------
    def _write_job_record(self) -> None:
        record = {"job_id": self.job_id, "created_at": self.created_at, "provisioner": self.provisioner,
                  "host": self.label, "pids": {g.gateway_id: g.pid for g in self.gateways.values()}}
        self.session.put_bytes(json.dumps(record).encode(), f"{self.job_dir}/job.json")

    def start(self, spec: GatewaySpec, host: SSHHost, *, health_timeout: float,
              data_port: int = 0) -> GatewayHandle:
        """Start one gateway detached and wait until it answers on its control API through a tunnel."""
        if self.venv_python is None:
            raise ProvisionError(f"no package installed on {self.label} yet")
        q = shlex.quote
        gdir = f"{self.job_dir}/{gateway_slug(spec.gateway_id)}"
        self.session.run(f"mkdir -p {q(gdir)} && chmod 700 {q(self.job_dir)} {q(gdir)}")
        if not self.gateways:
            self._write_job_record()
        config = {**spec.config, "gateway_id": spec.gateway_id, "job_id": self.job_id, "region": spec.region,
                  "bind_host": host.bind_address, "advertise_host": host.peer_address,
                  "control_host": "127.0.0.1", "data_port": data_port, "control_port": 0,
                  "ready_file": f"{gdir}/ready.json"}
        self.session.put_bytes(json.dumps(config).encode(), f"{gdir}/config.json", mode=0o600)
        start = (f"cd {q(gdir)} && setsid nohup {q(self.venv_python)} -m gateway.daemon "
                 f"--config {q(gdir + '/config.json')} > gateway.log 2>&1 < /dev/null & "
                 f"echo $! > {q(gdir)}/gateway.pid; cat {q(gdir)}/gateway.pid")
        _, out, _ = self.session.run(start)
        pid = int(out.strip())
        ready = self._wait_ready(spec.gateway_id, gdir, pid, health_timeout)
        forward = self.session.forward("127.0.0.1", int(ready["control_port"]))
        gw = RemoteGateway(spec.gateway_id, gdir, pid, int(ready["control_port"]), int(ready["data_port"]), forward)
        self.gateways[spec.gateway_id] = gw
        self._write_job_record()
        handle = GatewayHandle(
            gateway_id=spec.gateway_id, region=spec.region, control_url=f"http://127.0.0.1:{forward.port}",
            control_token=config["control_token"], data_host=host.peer_address, data_port=gw.data_port, pid=pid,
            extra={"ssh_host": self.label, "directory": gdir})
        self._wait_healthy(handle, health_timeout)
        return handle

    def _wait_ready(self, gateway_id: str, gdir: str, pid: int, timeout: float) -> dict:
        """Wait on the host (one round trip) for the daemon's ready file, or its death."""
        q = shlex.quote
        tries = max(1, int(timeout / 0.1))
        script = (f"{REAP_SH}\ni=0; while [ $i -lt {tries} ]; do "
                  f"[ -s {q(gdir)}/ready.json ] && cat {q(gdir)}/ready.json && exit 0; "
                  f"alive {pid} || exit 3; sleep 0.1; i=$((i+1)); done; exit 4")
        rc, out, _ = self.session.run(script, timeout=timeout + 30, check=False)
        if rc == 0:
            try:
                return json.loads(out)
            except ValueError:
                pass
        what = {3: "exited", 4: f"did not become ready within {timeout:.0f} s"}.get(rc, f"failed ({rc})")
        raise ProvisionError(f"gateway {gateway_id} on {self.label} {what}; log tail:\n{self.log_tail(gateway_id, gdir)}",
                             hint="see the gateway log above")

    def _wait_healthy(self, handle: GatewayHandle, timeout: float) -> None:
        from gateway.control_client import GatewayClient

        client = GatewayClient(handle.control_url, handle.control_token)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.health().get("ok"):
                    return
                problem = "health answered not ok"
            except (SkyplaneError, OSError) as exc:
                problem = str(exc)
            if time.monotonic() > deadline:
                raise ProvisionError(
                    f"gateway {handle.gateway_id} on {self.label} is not healthy through its SSH tunnel: "
                    f"{problem}; log tail:\n{self.log_tail(handle.gateway_id)}")
            time.sleep(0.1)

    def log_tail(self, gateway_id: str, directory: str | None = None, tail: int = 40) -> str:
        gdir = directory or (self.gateways[gateway_id].directory if gateway_id in self.gateways
                             else f"{self.job_dir}/{gateway_slug(gateway_id)}")
        try:
            _, out, _ = self.session.run(f"tail -n {int(tail)} {shlex.quote(gdir)}/gateway.log", check=False,
                                         timeout=15)
        except ProvisionError as exc:
            return f"(log unavailable: {exc})"
        return out

    def alive(self, gateway_id: str) -> bool:
        gw = self.gateways.get(gateway_id)
        if gw is None or self._torn_down or not self.session.active:
            return False
        try:
            rc, _, _ = self.session.run(f"{REAP_SH}\nalive {gw.pid}", check=False, timeout=15)
        except ProvisionError:
            return False
        return rc == 0

    def teardown(self) -> None:
        """Stop this job's gateways on the host, remove their files, close tunnels and the session."""
        if self._torn_down:
            return
        self._torn_down = True
        try:
            self.session.run(f"{REAP_SH}\nreap_job {shlex.quote(self.job_dir)}", timeout=60)
        except ProvisionError as exc:
            log.warning("teardown on %s incomplete: %s (run skyplane-provider deprovision)", self.label, exc)
        finally:
            self.session.close()
