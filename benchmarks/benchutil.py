"""What the benchmarks share: process figures from /proc, the machine's load, sample data, the
result lines. Imported by the scripts in this directory (``python benchmarks/x.py`` puts it on the path).
"""

from __future__ import annotations

import os
import random
import time
from datetime import datetime, timezone
from pathlib import Path

MiB = 1024**2


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (start-up included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, field: str) -> int | None:
    """One ``kB`` field of /proc/PID/status (``VmHWM``, ``VmRSS``); None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), MiB."""
    kib = status_kib(pid, "VmHWM")
    return float("nan") if kib is None else kib / 1024


def machine_line() -> str:
    """When and under what load a run happened, for the record in docs/benchmarks.md."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}, {os.cpu_count()} cores, "
            f"load average {load}")


def mixed_objects(count: int, size: int, seed: int = 2026) -> dict[str, bytes]:
    """``count`` objects of ``size`` bytes named ``obj-NNNN.csv|bin``: even ones CSV-like text (lz4
    shrinks it), odd ones random bytes (it does not). Same seed, same bytes."""
    rng = random.Random(seed)
    objects = {}
    for i in range(count):
        if i % 2 == 0:
            rows = b"".join(b"%d,sensor-%d,%d.%d,%s\n" % (j, rng.randrange(500), rng.randrange(1000),
                                                           rng.randrange(10), rng.choice((b"ok", b"late", b"err")))
                            for j in range(size // 24 + 1))
            objects[f"obj-{i:04d}.csv"] = rows[:size]
        else:
            objects[f"obj-{i:04d}.bin"] = rng.randbytes(size)
    return objects


def ratio_line(name: str, ours_seconds: float, base_seconds: float, detail: str) -> str:
    """``NAME ours/baseline=R (detail)``: R = baseline time / our time (above 1: we are faster)."""
    return f"{name} ours/baseline={base_seconds / ours_seconds:.2f} ({detail})"


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
