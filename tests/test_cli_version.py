"""``skyplane-provider --version`` through the installed console script."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path


def test_version_names_this_build_python_and_the_integrations():
    script = Path(sys.executable).parent / "skyplane-provider"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert re.fullmatch(r"skyplane-provider \S+ \(Python [\d.]+(; .+)?\)", line), line
    assert line.startswith(f"skyplane-provider {version('skyplane-provider')} (Python {platform.python_version()}")
    assert f"apache-airflow {version('apache-airflow')}" in line and f"prefect {version('prefect')}" in line
