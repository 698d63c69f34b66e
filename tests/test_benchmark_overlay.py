"""The testbed benchmarks' entry points start and check their options (the runs themselves need root and
minutes: see docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=60)


def test_overlay_help_and_bad_options():
    helped = run("overlay.py", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--quick" in helped.stdout and "overlay/maxflow" in helped.stdout and "predicted/measured" in helped.stdout
    bad = run("overlay.py", "--scenario", "aws-us-east-1--gcp-us-west4-a", "--scenario", "no-such-scenario")
    assert bad.returncode == 1
    assert "unknown scenario(s) no-such-scenario" in bad.stderr
    assert "azure-centralindia--aws-ca-central-1" in bad.stderr  # the shipped ones are listed
    assert "drop --capacity link" in run("overlay.py", "--random", "2", "--capacity", "link").stderr
    assert "leaves nothing to run" in run("overlay.py", "--no-shipped").stderr


def test_multicast_help_and_bad_options():
    helped = run("multicast_testbed.py", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Steiner" in helped.stdout
    assert "--dsts must be 3..6" in run("multicast_testbed.py", "--dsts", "9").stderr
