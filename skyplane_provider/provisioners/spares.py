"""Local gateway daemons started before their configs exist (docs/coordinator.md, "Start-up").

A daemon started with ``--wait-for-config`` imports its modules, then waits for a line on stdin: the
go (its config is written) or the end of input (it was not needed, and exits). Its imports so run
beside the work of whoever will write its config, instead of after it. Two kinds, both held in this
process (the job's coordinator, whose children local gateways are):

- *named*: for a gateway of a plan the coordinator was handed (``LocalProvisioner.start_ahead``),
  its directory and log the ones provisioning would give it;
- *unnamed* (:func:`start_unnamed`): before any plan exists, when the coordinator's own process
  starts ahead of its client's checks and planning (``--gateways-ahead``). Nothing is written for it
  until its go: its output goes nowhere, its directory (``gw-ahead-K``, named in its command line,
  so ``deprovision`` finds it as any gateway of the job) is made by provisioning, which writes its
  config there and says go; the daemon then sends its output to ``gateway.log`` beside the config.

Imports: the standard library only, so that a coordinator can start an unnamed one before its own imports.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

#: Daemons started ahead, by config path: named ones, then unnamed ones (taken in the order started).
_named: dict[str, subprocess.Popen] = {}
_unnamed: dict[str, subprocess.Popen] = {}
_lock = threading.Lock()
#: The directory of the K-th unnamed daemon of a job.
UNNAMED_DIR = "gw-ahead-{}"


def daemon_argv(config_path: Path, netns: str | None = None) -> list[str]:
    """The command line of a local gateway reading ``config_path`` (in network namespace ``netns``)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, sys.executable, "-m", "gateway.daemon", "--config", str(config_path)]


def add_named(config_path: Path, proc: subprocess.Popen) -> None:
    """Hold ``proc``, started with ``--wait-for-config`` for ``config_path``, until it is taken or dropped."""
    with _lock:
        _named[str(config_path)] = proc


def start_unnamed(job_dir: Path, count: int, store_fd: int | None = None) -> None:
    """Start ``count`` daemons for gateways of the job of ``job_dir`` (which need not exist) on this
    host's loopback, before the job is planned. Best effort: one that cannot start is not started.
    ``store_fd``: a socket the first serves the job's client's store operations on meanwhile
    (gateway/store_channel.py); the caller closes its copy after this call."""
    for k in range(count):
        config_path = job_dir / UNNAMED_DIR.format(k) / "config.json"
        channel = ["--store-fd", str(store_fd)] if store_fd is not None and k == 0 else []
        try:
            proc = subprocess.Popen([*daemon_argv(config_path), "--wait-for-config", "--log-beside-config", *channel],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, pass_fds=(store_fd,) if channel else ())
        except OSError:
            return
        with _lock:
            _unnamed[str(config_path)] = proc


def held(config_path: Path) -> bool:
    """Whether a named daemon waits for ``config_path``."""
    with _lock:
        return str(config_path) in _named


def unnamed_held() -> int:
    """How many unnamed daemons wait to be taken."""
    with _lock:
        return len(_unnamed)


def take(config_path: Path) -> subprocess.Popen | None:
    """The named daemon for ``config_path``, told to go (its config must be written), or None."""
    with _lock:
        proc = _named.pop(str(config_path), None)
    return proc if proc is not None and _go(proc) else None


def take_unnamed() -> tuple[Path, subprocess.Popen] | None:
    """An unnamed daemon and the config path it reads, not yet told to go (:func:`go`: once its
    directory and config are written), or None."""
    with _lock:
        while _unnamed:
            path, proc = next(iter(_unnamed.items()))
            del _unnamed[path]
            if proc.poll() is None:
                return Path(path), proc
    return None


def go(proc: subprocess.Popen) -> bool:
    """Tell a daemon taken with :func:`take_unnamed` that its config is written; False when it died."""
    return _go(proc)


def _go(proc: subprocess.Popen) -> bool:
    """Write the go to ``proc``'s stdin; False (and it is reaped) when it died."""
    try:
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    except OSError:  # it died meanwhile: provisioning starts another
        proc.kill()
        proc.wait()
        return False
    return True


def drop() -> None:
    """End every daemon held and not taken, and remove the directory made for a named one (a job
    cancelled before its fleet started leaves no gateway state; an unnamed one had none). Killed, not
    asked: before its go a daemon holds nothing (no config, no port, no child), and one still
    importing, or stopped, kept the job's end (or a refused command's) waiting for it."""
    with _lock:
        named, unnamed = list(_named.items()), list(_unnamed.values())
        _named.clear()
        _unnamed.clear()
    for config_path, _ in named:
        shutil.rmtree(Path(config_path).parent, ignore_errors=True)
    for proc in [p for _, p in named] + unnamed:
        proc.kill()
        proc.wait()
        proc.stdin.close()
