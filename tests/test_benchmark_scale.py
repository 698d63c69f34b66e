"""benchmarks/scale.py: one tiny real run (rclone and our copy on a local tree), so its plumbing (tree,
checks, peak RSS and first-byte sampling, CPU by role) stays working between full runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (make setup)")
def test_scale_small_run_prints_memory_first_byte_and_ratio():
    out = subprocess.run([sys.executable, str(BENCHMARKS / "scale.py"), "--objects", "300"], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rclone copy --transfers 16 --checkers 16 |" in out.stdout
    assert "coordinator" in out.stdout and "gateways" in out.stdout  # peak RSS of each role was sampled
    assert "first byte" in out.stdout and "scale ours/baseline=" in out.stdout
