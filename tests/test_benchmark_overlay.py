"""The overlay benchmark's entry point starts and picks its scenarios (the run itself needs root and
minutes: see docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "overlay.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_help_and_unknown_scenario():
    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert "--quick" in helped.stdout and "overlay/maxflow" in helped.stdout
    bad = run("--scenario", "aws-us-east-1--gcp-us-west4-a", "--scenario", "no-such-scenario")
    assert bad.returncode == 1
    assert "unknown scenario(s) no-such-scenario" in bad.stderr
    assert "azure-centralindia--aws-ca-central-1" in bad.stderr  # the shipped ones are listed
