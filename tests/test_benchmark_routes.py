"""benchmarks/routes.py: its options, and one tiny real run (rclone and our CLI on moto -> fake-gcs),
so the table's plumbing (remotes, prefixes, checks, CPU accounting) stays working between full runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / "routes.py"), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_routes_help_and_bad_options():
    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert "--scale" in helped.stdout and "s3-azure" in helped.stdout
    assert "unknown route 'ftp-s3'" in run("--routes", "ftp-s3").stderr
    assert "unknown mix 'huge'" in run("--mixes", "huge").stderr


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (make setup)")
def test_routes_small_run_checks_every_copy_and_prints_ratios():
    # --before: this very checkout as the other code (its packages on PYTHONPATH), so the plumbing is tested
    out = run("--routes", "s3-azure", "--mixes", "small", "--scale", "0.005", "--tools", "rclone,ours,ours-2gw",
              "--before", str(BENCHMARKS.parent), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line.strip().split(":")[0] for line in out.stdout.splitlines() if line.startswith("  S3 -> Azure small")]
    tools = ["rclone --transfers 16", "ours (cp -r, default flags)", "ours-2gw (cp -r, one_gateway false)",
             "before (cp -r, default flags, --before's code)"]
    # Two rounds (the default), the second in the reverse order: no tool always goes first.
    assert lines == ([f"S3 -> Azure small {t} (round 1)" for t in tools]
                     + [f"S3 -> Azure small {t} (round 2)" for t in reversed(tools)])
    assert "routes ours/baseline=" in out.stdout and "baseline: rclone --transfers 16; rounds: " in out.stdout
    # Each run's stores' CPU, split into the source's and the destination's.
    assert all(re.search(r"\(stores [\d.]+ s = S3 [\d.]+, Azure [\d.]+\)$", line)
               for line in out.stdout.splitlines() if line.startswith("  S3 -> Azure small"))
    assert "baseline: ours-2gw" in out.stdout
    assert "baseline: before" in out.stdout
