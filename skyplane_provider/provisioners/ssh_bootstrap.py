"""What a job does on one gateway host over SSH: install this package, start gateways, reap them.

Shared by the ``ssh`` provisioner (the user's hosts) and the ``aws`` provisioner (fresh instances).

Host layout, under ``remote_dir`` (default ``~/.skyplane``)::

    venv-<content hash>/            private venv with exactly the orchestrator's version (kept as a cache)
    wheels/<wheel>                  the shipped wheel (cache)
    jobs/<job_id>/job.json          {"job_id", "created_at", "provisioner", "host", "pids": {gateway_id: pid}}
    jobs/<job_id>/gw-<slug>/        config.json (0600: it holds the job's secrets; removed once the
                                    gateway is ready), gateway.log, ready.json, gateway.pid
    jobs/<job_id>/coordinator.pid   the job's coordinator, on the source region's first host
                                    (its own files there: skyplane_provider/coordinator/jobdir.py)

Gateways run detached (``setsid``: own session and process group, pid file), so they survive a lost
SSH connection; a dead orchestrator's gateways are found again by ``deprovision`` through job.json
and the pid files. A pid is only ever signalled after checking that its command line names the
job's directory, so a recycled pid is never killed by mistake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from planner.errors import CoordinatorError, ProvisionError, SkyplaneError

from skyplane_provider.coordinator.jobdir import ADDRESS, LOG, REQUEST, RESULT
from skyplane_provider.paths import DEFAULT_REMOTE_DIR

from .base import GatewayHandle, GatewaySpec
from .local import gateway_dir_name
from .package_wheel import PackagedWheel
from .ssh_connection import LocalForward, SSHHost, SSHSession

log = logging.getLogger(__name__)

#: POSIX sh: ``reap_job DIR`` stops every gateway started under DIR, and the job's coordinator when it
#: runs on this host (``coordinator.pid``: it cancels and stops the fleet on TERM), and removes their files.
#: Only pids whose command line contains DIR are signalled (whole process group, TERM then KILL).
#: DIR itself is removed only when nothing else lives in it (a detached transfer on the same host
#: may share the job's directory).
REAP_SH = r"""
alive() { [ -r /proc/$1/stat ] && [ "$(sed 's/.*) //' /proc/$1/stat | cut -c1)" != Z ]; }
reap_job() {
  d=$1; pids=""
  for f in "$d"/gw-*/gateway.pid "$d/coordinator.pid"; do
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
  rm -rf "$d"/gw-* "$d/job.json" "$d/coordinator.pid"; rmdir "$d" 2>/dev/null; true
}
"""


def resolve_remote_dir(session: SSHSession, remote_dir: str) -> str:
    """``~/...`` or a relative path -> an absolute path on the host (relative to the login's home)."""
    path = remote_dir.rstrip("/") or "/"
    if path == "~" or path.startswith("~/"):
        path = path[2:]
    if path.startswith("/"):
        return path
    home = session.home().rstrip("/")
    return f"{home}/{path}" if path else home


def _url_host(address: str) -> str:
    """``address`` as the host part of a URL (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address else address


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
        """Make ``<base>/venv-<hash>-<python>`` hold exactly ``wheel``; returns its python. Skipped when done
        before for this wheel and this host python.

        The venv sees the site-packages of the host's ``python`` (which must provide the
        dependencies), unless a ``wheelhouse`` of dependency wheels is shipped and installed from.
        Nothing is fetched from a package index on the host. The venv is marked complete only after
        its python imported the shipped version from the venv itself.
        """
        host = self.session.host
        # Keyed on the host's python too: the venv reads that python's site-packages through a .pth
        # file, so a venv made for another interpreter (one since deleted) must not be reused.
        venv = f"{self.base}/venv-{wheel.content_hash}-{hashlib.sha256(host.python.encode()).hexdigest()[:8]}"
        marker = f"{venv}/.skyplane-complete"
        self.venv_python = f"{venv}/bin/python"
        if self.session.exists(marker):
            return self.venv_python
        q = shlex.quote
        self.session.makedirs(f"{self.base}/wheels")
        remote_wheel = f"{self.base}/wheels/{wheel.filename}"
        self.session.put_file(wheel.path, remote_wheel)
        find_links = ""
        if wheelhouse is not None:
            remote_wh = f"{self.base}/wheelhouse"
            self.session.makedirs(remote_wh)
            for whl in sorted(Path(wheelhouse).glob("*.whl")):
                self.session.put_file(whl, f"{remote_wh}/{whl.name}")
            find_links = f"--find-links {q(remote_wh)}"
        deps = "" if wheelhouse is not None else "--no-deps"
        check = ("import sys, importlib.metadata as m, gateway; "
                 "print(m.version('skyplane-provider'), gateway.__file__.startswith(sys.prefix + '/'))")
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
            f"got=$({q(venv)}/bin/python -c {q(check)}); "
            f"if [ \"$got\" != {q(wheel.version + ' True')} ]; then "
            f"echo \"the venv imports $got, expected {wheel.version} from the venv\" >&2; exit 5; fi; "
            f"touch {q(marker)}")
        rc, _, err = self.session.run(f"flock {q(self.base)}/.install.lock sh -c {q(script)}", timeout=300,
                                      check=False)
        if rc != 0:
            raise ProvisionError(f"installing skyplane-provider {wheel.version} into {venv} on {self.label} "
                                 f"failed: {err.strip()[-1500:]}",
                                 hint=f"the host's python ({host.python}) must be Python >= 3.11 with pip >= 22.3 "
                                      "and the dependencies, or pass a wheelhouse")
        return self.venv_python

    # -- gateways ------------------------------------------------------------------------------
    def _write_job_record(self) -> None:
        record = {"job_id": self.job_id, "created_at": self.created_at, "provisioner": self.provisioner,
                  "host": self.label, "pids": {g.gateway_id: g.pid for g in self.gateways.values()}}
        self.session.put_bytes(json.dumps(record).encode(), f"{self.job_dir}/job.json")

    def start(self, specs: list[GatewaySpec], host: SSHHost, *, health_timeout: float,
              data_port: int = 0, control_tls: bool = False, control_port: int = 0) -> list[GatewayHandle]:
        """Start the gateways detached (one round trip for all of them) and wait until each answers
        on its control API through a tunnel. ``control_tls``: the control APIs listen on the host's
        address over TLS (certificates pinned in the handles), for a coordinator on another host;
        ``extra["host_control_url"]`` is where it reaches them. Otherwise they listen on the host's
        127.0.0.1, reached only through the tunnels. ``data_port`` / ``control_port``: 0 for free ones
        (a cloud VM's firewall opens fixed ones)."""
        if self.venv_python is None:
            raise ProvisionError(f"no package installed on {self.label} yet")
        q = shlex.quote
        # What an earlier try of the job left here (gateways its dead coordinator no longer drives) goes;
        # its manifest and report stay, for a resumed job to continue from.
        self.session.run(f"{REAP_SH}\nif [ -d {q(self.job_dir)} ]; then reap_job {q(self.job_dir)}; fi", timeout=60)
        self.session.makedirs(self.job_dir)
        self._write_job_record()
        control_host = host.bind_address if control_tls else "127.0.0.1"
        dirs, tokens = [], []
        for spec in specs:
            gdir = f"{self.job_dir}/{gateway_dir_name(spec.gateway_id)}"
            self.session.makedirs(gdir)
            config = {**spec.config, "gateway_id": spec.gateway_id, "job_id": self.job_id, "region": spec.region,
                      "bind_host": host.bind_address, "advertise_host": host.peer_address,
                      "control_host": control_host, "control_tls": control_tls, "data_port": data_port,
                      "control_port": control_port, "ready_file": f"{gdir}/ready.json"}
            config.pop("log_file", None)  # stdout and stderr already go to gateway.log
            self.session.put_bytes(json.dumps(config).encode(), f"{gdir}/config.json", mode=0o600)
            dirs.append(gdir)
            tokens.append(config["control_token"])
        launch = "".join(
            f"cd {q(d)} && setsid nohup {q(self.venv_python)} -m gateway.daemon --config {q(d + '/config.json')} "
            f"> gateway.log 2>&1 < /dev/null & echo $! > {q(d)}/gateway.pid\n" for d in dirs)
        tries = max(1, int(health_timeout / 0.1))
        # Wait on the host for every ready file, or stop at the first gateway that died. A ready gateway
        # has read its config (a supervisor too, before it starts its workers): the file, with the job's
        # secrets and store credentials, goes, so that a gateway stopped without a reap (POST /shutdown
        # from a coordinator whose client is gone) leaves none on the host.
        wait = (f"i=0; while :; do all=1; for d in {' '.join(q(d) for d in dirs)}; do "
                f"[ -s \"$d/ready.json\" ] && continue; all=0; "
                f"alive \"$(cat \"$d/gateway.pid\")\" || {{ echo \"$d\"; exit 3; }}; done; "
                f"[ $all = 1 ] && {{ rm -f {' '.join(q(d + '/config.json') for d in dirs)}; exit 0; }}; "
                f"i=$((i+1)); [ $i -ge {tries} ] && exit 4; sleep 0.1; done")
        rc, out, _ = self.session.run(f"{REAP_SH}\n{launch}{wait}", timeout=health_timeout + 30, check=False)
        if rc != 0:
            last = out.strip().splitlines()[-1] if out.strip() else ""
            gdir = last if rc == 3 and last in dirs else dirs[0]
            gateway_id = specs[dirs.index(gdir)].gateway_id
            what = {3: "exited while starting",
                    4: f"did not bind its ports within {health_timeout:.0f} s"}.get(rc, f"could not start ({rc})")
            raise ProvisionError(f"gateway {gateway_id} on {self.label} {what}; log tail:\n"
                                 f"{self.log_tail(gateway_id, gdir)}", hint="see the gateway log above")
        handles = []
        for spec, gdir, token in zip(specs, dirs, tokens):
            ready = json.loads(self.session.read_bytes(f"{gdir}/ready.json"))
            pid = int(self.session.read_bytes(f"{gdir}/gateway.pid"))
            port = int(ready["control_port"])
            forward = self.session.forward(control_host, port)
            self.gateways[spec.gateway_id] = RemoteGateway(spec.gateway_id, gdir, pid, port,
                                                           int(ready["data_port"]), forward)
            extra = {"ssh_host": self.label, "directory": gdir}
            if control_tls:
                extra["host_control_url"] = f"https://{_url_host(host.peer_address)}:{port}"
            handles.append(GatewayHandle(
                gateway_id=spec.gateway_id, region=spec.region,
                control_url=f"{'https' if control_tls else 'http'}://127.0.0.1:{forward.port}",
                control_token=token, data_host=host.peer_address, data_port=int(ready["data_port"]), pid=pid,
                extra=extra, control_cert=ready.get("control_cert")))
        self._write_job_record()
        for handle in handles:
            self._wait_healthy(handle, health_timeout)
        return handles

    def refuse_running(self) -> None:
        """Raise ``CoordinatorError`` when a coordinator of this job still runs on this host (an earlier
        try whose client was killed). Asked of every host before any is touched: this try must then
        leave the running one's gateways, on whatever host, alone."""
        q = shlex.quote
        d = self.job_dir
        rc, _, _ = self.session.run(
            f"{REAP_SH}\np=$(cat {q(d)}/coordinator.pid 2>/dev/null); case \"$p\" in ''|*[!0-9]*) exit 0;; esac; "
            f"alive \"$p\" && tr '\\0' ' ' < /proc/$p/cmdline | grep -qF {q(d + '/')} && exit 6; exit 0",
            timeout=60, check=False)
        if rc == 6:
            raise CoordinatorError(f"job {self.job_id} is still running under its coordinator from an earlier "
                                   f"try on {self.label}",
                                   hint="wait for it to finish (the next retry then resumes it), or stop it with "
                                        f"`skyplane-provider deprovision --job {self.job_id}`")

    def close(self) -> None:
        """Close the session without touching the host (a try refused before it started anything)."""
        self._torn_down = True
        self.session.close()

    def start_coordinator(self, document: dict, *, address: str, timeout: float, bind: str | None = None,
                          port: int = 0) -> dict:
        """Start the job's coordinator on this host, detached, with its job ``document`` in a 0600 file
        (never in argv or the environment); its API listens over TLS on ``bind`` (default ``address``)
        and ``port`` (0: a free one), and its URL names ``address`` (a cloud VM binds its private
        address and is reached at its public one, which a NAT maps onto it). Returns its
        ``coordinator.json`` (``{"job_id", "url", "pid", "cert", ...}``) once it listens; raises
        ``ProvisionError`` with its log's tail when it exits first or takes longer than ``timeout``."""
        if self.venv_python is None:
            raise ProvisionError(f"no package installed on {self.label} yet")
        q = shlex.quote
        d = self.job_dir
        self.session.makedirs(d)
        self.session.put_bytes(json.dumps({**document, "host": address, "bind_host": bind or address, "port": port,
                                           "tls": True}).encode(),
                               f"{d}/{REQUEST}", mode=0o600)
        tries = max(1, int(timeout / 0.1))
        # SKYPLANE_HOME makes its job directory this one (its manifest and report go here); the trailing
        # slash in argv lets reap_job recognise it by "$d/".
        script = (f"{REAP_SH}\ncd {q(d)} && rm -f {ADDRESS} {RESULT} || exit 5\nSKYPLANE_HOME={q(self.base)} setsid nohup "
                  f"{q(self.venv_python)} -m skyplane_provider.coordinator --foreground {q(d + '/')} "
                  f">> {LOG} 2>&1 < /dev/null & echo $! > {q(d)}/coordinator.pid\n"
                  f"i=0; while [ ! -s {q(d)}/{ADDRESS} ]; do alive \"$(cat {q(d)}/coordinator.pid)\" || exit 3; "
                  f"i=$((i+1)); [ $i -ge {tries} ] && exit 4; sleep 0.1; done")
        rc, _, _ = self.session.run(script, timeout=timeout + 30, check=False)
        if rc != 0:
            self.session.run(f"rm -f {q(d)}/{REQUEST}", check=False, timeout=15)
            what = {3: "exited while starting", 4: f"did not listen within {timeout:.0f} s"}.get(rc, f"failed ({rc})")
            _, tail, _ = self.session.run(f"tail -n 30 {q(d)}/{LOG}", check=False, timeout=15)
            raise ProvisionError(f"the coordinator of job {self.job_id} on {self.label} {what}; log tail:\n{tail}",
                                 hint=f"see {d}/{LOG} on {self.label}")
        return json.loads(self.session.read_bytes(f"{d}/{ADDRESS}"))

    def _wait_healthy(self, handle: GatewayHandle, timeout: float) -> None:
        client = handle.client(timeout=2.0)
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
                             else f"{self.job_dir}/{gateway_dir_name(gateway_id)}")
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

    def close_tunnels(self) -> None:
        """Close the tunnels to this host's control APIs (the SSH session stays, for :meth:`teardown`)."""
        for gw in self.gateways.values():
            gw.forward.close()

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
