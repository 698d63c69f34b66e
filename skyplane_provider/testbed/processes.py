"""Processes started inside testbed namespaces, remembered well enough to stop them after a crash.

A PID alone may be reused once its process is gone, so every record also keeps the process's start
time (field 22 of ``/proc/PID/stat``); a PID whose start time differs is someone else's.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_time: int
    region: str
    argv: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProcessRecord":
        return cls(pid=int(d["pid"]), start_time=int(d["start_time"]), region=d["region"], argv=list(d["argv"]))

    def alive(self) -> bool:
        return start_time(self.pid) == self.start_time


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when it is gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def record(pid: int, region: str, argv: list[str]) -> ProcessRecord:
    started = start_time(pid)
    return ProcessRecord(pid=pid, start_time=started if started is not None else -1, region=region, argv=argv)


def stop(pids: list[int], *, grace: float = 3.0) -> None:
    """SIGTERM each live PID, then SIGKILL whatever still runs after ``grace`` seconds.

    The caller vouches that the PIDs are its own (a matching record, or a member of its namespace).
    """
    started = {pid: start_time(pid) for pid in pids}
    live = [pid for pid, st in started.items() if st is not None]
    for pid in live:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(0.02)
        live = [pid for pid in live if start_time(pid) == started[pid]]
    for pid in live:
        log.warning("pid %d ignored SIGTERM for %.1fs: killing it", pid, grace)
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
