"""What the benchmarks share: process figures from /proc, the machine's load, sample data, the
result lines. Imported by the scripts in this directory (``python benchmarks/x.py`` puts it on the path).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

MiB = 1024**2
REPO = Path(__file__).resolve().parents[1]


def compile_ours(root: Path = REPO) -> None:
    """Byte-compile our packages (of the checkout at ``root``), as pip does when it installs them (a
    wheel on a gateway VM, or into a user's environment). An editable checkout run with
    ``PYTHONDONTWRITEBYTECODE`` set, as the benchmark machine's shells are, would compile every module
    from source in each of a job's processes (CLI, coordinator, every gateway): 0.1-0.3 CPU-s each
    (cProfile of the CLI: 108 modules compiled, 0.28 s of a 1-file copy's 2.2 s at load 9), not what
    a user pays. The baselines' code is compiled already (rclone's binary, Airflow's site-packages)."""
    import compileall

    for package in ("gateway", "planner", "skyplane_provider"):
        compileall.compile_dir(root / package, quiet=2)


def clean_up(scratch: Path, emulators=None) -> None:
    """Stop the emulators a benchmark started (``None``: it started none) and remove its scratch directory."""
    if emulators is not None:
        emulators.stop()
    shutil.rmtree(scratch, ignore_errors=True)


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


def _own_cpu_parent_start(pid: int) -> tuple[float, int, int] | None:
    """(user + system CPU of the process itself, its parent PID, its start time); None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class TreeCPU:
    """The CPU seconds of a process and of every process it starts, its gateways and their workers
    included, however they detach: every ``interval`` the descendants of ``root`` are found by parent
    PID, and so is every process whose command line contains ``marker`` (a path only this run's
    processes name, such as its ``SKYPLANE_HOME``: a coordinator is started in a session of its own
    and is nobody's child) and started no earlier than ``root`` (a coordinator of the run before, still
    lingering while it closes, is not this run's); each one's own CPU is remembered and ``total()``
    adds the last figure of each. What a process spends after its last sample is missed (at most
    ``interval`` each).
    ``from_now``: count only what the processes already running spend from now on (``root`` may be
    this very process, then)."""

    def __init__(self, root: int, interval: float = 0.1, marker: str | None = None, from_now: bool = False) -> None:
        import threading

        self.root, self.interval, self.marker = root, interval, marker
        self._seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> its CPU when last seen
        self._marked: dict[tuple[int, int], bool] = {}
        self._base: dict[tuple[int, int], float] = {}
        self._names: dict[tuple[int, int], str] = {}
        root_stat = _own_cpu_parent_start(root)
        self._root_start = root_stat[2] if root_stat else 0
        self._stop = threading.Event()
        if from_now:
            self._sample()
            self._base = dict(self._seen)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        procs: dict[int, tuple[float, int, int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                got = _own_cpu_parent_start(int(entry))
                if got is not None:
                    procs[int(entry)] = got
        inside = {pid for pid, (_, _, start) in procs.items() if (pid, start) in self._seen or pid == self.root}
        if self.marker:
            for pid, (_, _, start) in procs.items():
                key = (pid, start)
                if key not in self._marked:
                    if start < self._root_start:
                        self._marked[key] = False  # not this run's, whatever it names: no command line read
                    else:
                        line = _cmdline(pid)
                        # Between fork and exec a process shows its parent's command line: ask again later.
                        if self.marker in line or line != _cmdline(procs[pid][1]):
                            self._marked[key] = self.marker in line
                if self._marked.get(key):
                    inside.add(pid)
        changed = True
        while changed:
            changed = False
            for pid, (_, parent, _) in procs.items():
                if parent in inside and pid not in inside:
                    inside.add(pid)
                    changed = True
        for pid in inside:
            cpu, _, start = procs[pid]
            self._seen[(pid, start)] = cpu
            if (pid, start) not in self._names:
                self._names[(pid, start)] = _cmdline(pid)

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self.interval):
            self._sample()

    def total(self) -> float:
        """Stop sampling; the CPU seconds seen over the whole tree."""
        return sum(self.by(lambda _: "").values())

    def by(self, label) -> dict[str, float]:
        """Stop sampling; the CPU seconds per ``label(command line)``."""
        self._stop.set()
        self._thread.join()
        out: dict[str, float] = {}
        for key, cpu in self._seen.items():
            name = label(self._names.get(key, ""))
            out[name] = out.get(name, 0.0) + cpu - self._base.get(key, 0.0)
        return out


@contextlib.contextmanager
def sampled_alike(marker: str) -> Iterator[None]:
    """Run a baseline under the sampler that measures our runs (:class:`TreeCPU`, every 0.1 s), its
    figures dropped. Each sample reads every process's ``stat`` and new ones' command lines: ~0.035
    CPU-s per second here, taken from the two cores the stores and the tool under test share. A
    baseline timed without it had that CPU for itself, and ours did not."""
    tree = TreeCPU(os.getpid(), marker=marker, from_now=True)
    try:
        yield
    finally:
        tree.total()


def our_role(cmdline: str) -> str:
    """Which of our processes a command line is: gateway, coordinator or client (CLI, caller)."""
    if "gateway.daemon" in cmdline or "skyplane-gateway" in cmdline:
        return "gateways"
    if "skyplane_provider.coordinator" in cmdline:
        return "coordinator"
    return "client"
