"""The chaos soak's smoke run: benchmarks/soak.py for a few transfers on the session's emulators."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_soak_smoke(emulators, tmp_path):
    """Three transfers with faults drawn by a fixed seed (connection resets at a GCS source, a
    control transfer, a killed gateway worker): nothing lost, nothing leaked, the tally says so."""
    out = subprocess.run([sys.executable, str(BENCHMARKS / "soak.py"), "--transfers", "3", "--seed", "5", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tally = json.loads(out.stdout.strip().splitlines()[-1])
    assert tally["transfers"] == 3 and tally["lost"] == 0 and sum(tally["leaks"].values()) == 0
    assert sum(tally["injected"].values()) >= 1, tally
    assert "| transfers | objects copied |" in out.stdout
