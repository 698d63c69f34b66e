"""benchmarks/scale.py: one tiny real run of each source (rclone and our copy of a local tree, and of a moto
bucket seeded from it), so its plumbing (tree, seeding, checks, peak RSS and first-byte sampling, CPU by
role and moto's apart) stays working between full runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (make setup)")
@pytest.mark.parametrize("source", ["local", "s3"])
def test_scale_small_run_prints_memory_first_byte_and_ratio(source):
    out = subprocess.run([sys.executable, str(BENCHMARKS / "scale.py"), "--objects", "300", "--from", source],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rclone copy --transfers 16 --checkers 16 |" in out.stdout
    assert "coordinator" in out.stdout and "gateways" in out.stdout  # peak RSS of each role was sampled
    assert "first byte" in out.stdout and "scale ours/baseline=" in out.stdout
    if source == "s3":  # moto's CPU per tool apart, never in ours
        assert "moto's peak RSS" in out.stdout and "store" not in out.stdout.split("| ours |")[1].split("|")[2]
