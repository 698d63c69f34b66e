"""benchmarks/benchutil.py's TreeCPU: whose CPU a run is charged with (real processes, nothing faked)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from benchutil import TreeCPU, _own_cpu_parent_start  # noqa: E402

_BURN = "import sys, time\nend = time.process_time() + float(sys.argv[1])\nwhile time.process_time() < end: pass\ntime.sleep(60)"


def _burner(marker: str, seconds: float) -> subprocess.Popen:
    """A detached process that names ``marker``, spends ``seconds`` of CPU, then sleeps (as a
    coordinator lingering after its job does)."""
    return subprocess.Popen([sys.executable, "-c", _BURN, str(seconds), marker], start_new_session=True)


def _wait_spent(proc: subprocess.Popen, seconds: float) -> None:
    """Until ``proc`` has spent ``seconds`` of CPU (however loaded the machine is)."""
    deadline = time.monotonic() + 60
    while _own_cpu_parent_start(proc.pid)[0] < seconds - 0.02:
        assert time.monotonic() < deadline, "the burner never got its CPU"
        time.sleep(0.05)


def test_a_marked_process_of_the_run_before_is_not_charged_to_this_run(tmp_path):
    marker = str(tmp_path / "home")
    earlier = _burner(marker, 0.6)
    try:
        _wait_spent(earlier, 0.6)  # then it lingers
        root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
        tree = TreeCPU(root.pid, interval=0.05, marker=marker)
        later = _burner(marker, 0.3)  # this run's: detached, found by its marker
        try:
            root.wait()
            _wait_spent(later, 0.3)
            time.sleep(0.2)  # a sample after it
            cpu = tree.total()
        finally:
            later.kill()
            later.wait()
    finally:
        earlier.kill()
        earlier.wait()
    # The later burner's 0.3 CPU-s (and a little start-up), found although it detached, and not the
    # earlier one's 0.6.
    assert 0.25 <= cpu < 0.5, cpu
