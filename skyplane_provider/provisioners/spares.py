"""Local gateway daemons started before their configs exist (docs/coordinator.md, "Start-up").

A spare is ``gateway.daemon --wait-for-config --log-beside-config`` for a config path: it imports its
modules, then waits for a line on stdin: the go (its config is written) or the end of input (it was
not needed, and exits). Its imports so run beside the work of whoever will write its config, instead
of after it. Nothing is written for it until its go: its output goes nowhere, and provisioning makes
the directory its command line names (so ``deprovision`` finds it as any gateway of the job), writes
its config there and says go; the daemon then sends its output to ``gateway.log`` beside the config.

Spares are held in this process (the job's coordinator, whose children local gateways are) and
started for one of two kinds of config path:

- a planned gateway's own (``LocalProvisioner.start_ahead``, the coordinator was handed a plan): only
  that gateway takes it;
- ``gw-ahead-K`` (:func:`start_unnamed`, before any plan exists: the coordinator's own process starts
  ahead of its client's checks and planning, ``--gateways-ahead``): the first gateways on loopback
  that have no spare of their own take these, in the order started.

Imports: the standard library only, so that a coordinator can start one before its own imports.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

#: Spares not yet taken, by config path: the process, and whether any gateway may take it (gw-ahead-K).
_held: dict[str, tuple[subprocess.Popen, bool]] = {}
_lock = threading.Lock()
#: The directory of the K-th spare started before the job's plan.
UNNAMED_DIR = "gw-ahead-{}"


def daemon_argv(config_path: Path, netns: str | None = None) -> list[str]:
    """The command line of a local gateway reading ``config_path`` (in network namespace ``netns``)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, sys.executable, "-m", "gateway.daemon", "--config", str(config_path)]


def start(config_path: Path, netns: str | None = None, *, any_gateway: bool = False,
          store_fd: int | None = None, schemes: tuple[str, ...] = ()) -> bool:
    """Start and hold a spare for ``config_path`` (in ``netns``); ``any_gateway``: any gateway on
    loopback may take it (:func:`take`); ``store_fd``: a socket it serves the job's client's store
    operations on until its go (gateway/store_channel.py); ``schemes``: the job's stores' URI schemes,
    whose SDKs it imports first. Best effort: False when it cannot start."""
    channel = ["--store-fd", str(store_fd)] if store_fd is not None else []
    if schemes:
        channel += ["--preload", ",".join(schemes)]
    try:
        proc = subprocess.Popen([*daemon_argv(config_path, netns), "--wait-for-config", "--log-beside-config", *channel],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, pass_fds=(store_fd,) if store_fd is not None else ())
    except OSError:
        return False
    with _lock:
        _held[str(config_path)] = (proc, any_gateway)
    return True


def start_unnamed(job_dir: Path, count: int, store_fd: int | None = None, schemes: tuple[str, ...] = ()) -> None:
    """Start ``count`` spares for the first gateways of the job of ``job_dir`` (which need not exist) on
    this host's loopback, before the job is planned. ``store_fd``: the first serves the job's client's
    store operations on it meanwhile (:func:`start`); the caller closes its copy after this call.
    ``schemes``: the job's stores' URI schemes, whose SDKs each imports first."""
    for k in range(count):
        if not start(job_dir / UNNAMED_DIR.format(k) / "config.json", any_gateway=True,
                     store_fd=store_fd if k == 0 else None, schemes=schemes):
            return


def unnamed_held() -> int:
    """How many spares any gateway may take wait to be taken."""
    with _lock:
        return sum(any_gateway for _, any_gateway in _held.values())


def take(config_path: Path, *, loopback: bool) -> tuple[Path, subprocess.Popen] | None:
    """The spare started for ``config_path``, else (``loopback``: the gateway runs on this host's
    loopback) the first one alive that any gateway may take, and the config path it reads; not yet
    told to go (:func:`go`: once that config is written). None when there is neither."""
    with _lock:
        own = _held.pop(str(config_path), None)
        if own is not None:
            return config_path, own[0]
        while loopback and (path := next((p for p, (_, a) in _held.items() if a), None)) is not None:
            proc, _ = _held.pop(path)
            if proc.poll() is None:
                return Path(path), proc
    return None


def go(proc: subprocess.Popen) -> bool:
    """Tell a spare taken with :func:`take` that its config is written; False (and it is reaped) when
    it died meanwhile: provisioning starts another."""
    try:
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    except OSError:
        proc.kill()
        proc.wait()
        return False
    return True


def drop() -> None:
    """End every spare not taken (a job cancelled before its fleet started, or that needed fewer
    gateways; none had written anything). Killed, not asked: before its go a daemon holds nothing (no
    config, no port, no child), and one still importing, or stopped, kept the job's end (or a refused
    command's) waiting for it."""
    with _lock:
        procs = [proc for proc, _ in _held.values()]
        _held.clear()
    for proc in procs:
        proc.kill()
        proc.wait()
        proc.stdin.close()
