"""The example flows of dags_examples/ run as a user runs them, ``python dags_examples/NAME.py``, against
the emulators (fresh example buckets) and the session's Prefect server; destinations checked byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("prefect")

from skyplane_provider.testing.samples import digests  # noqa: E402

from .helpers import gateway_pids  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_example(name: str, api_url: str, home: Path, roots: dict[str, str]) -> dict:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "SKYPLANE_HOME": str(home), "PYTHONPATH": str(REPO), **roots}
    proc = subprocess.run([sys.executable, str(REPO / "dags_examples" / name)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert gateway_pids(str(home)) == []
    line = next(x for x in proc.stdout.splitlines() if x.startswith("STATS "))
    return json.loads(line[len("STATS "):])


def test_nightly_sync_example(prefect_harness, tmp_path, s3_bucket, gcs_bucket, azure_container):
    roots = {"SKYPLANE_EXAMPLE_S3": s3_bucket, "SKYPLANE_EXAMPLE_GCS": gcs_bucket,
             "SKYPLANE_EXAMPLE_AZURE": azure_container}
    stats = run_example("prefect_nightly_sync.py", prefect_harness, tmp_path / "home", roots)
    day = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()
    source = digests(f"{s3_bucket}/events/dt={day}/")
    assert source and stats["objects"] == len(source) and stats["verified"]
    assert digests(f"{gcs_bucket}/events/dt={day}/") == source
    assert digests(f"{azure_container}/events/dt={day}/") == source


def test_multicast_publish_example(prefect_harness, tmp_path, s3_bucket, gcs_bucket, azure_container):
    roots = {"SKYPLANE_EXAMPLE_S3": s3_bucket, "SKYPLANE_EXAMPLE_GCS": gcs_bucket,
             "SKYPLANE_EXAMPLE_AZURE": azure_container}
    stats = run_example("prefect_multicast_publish.py", prefect_harness, tmp_path / "home", roots)
    source = digests(f"{gcs_bucket}/releases/v42/")
    assert source and stats["objects"] == len(source) and stats["plan"]["solver"] == "ilp"
    assert stats["plan"]["cost_per_gb"] <= 0.25
    assert digests(f"{s3_bucket}/models/v42/") == source
    assert digests(f"{azure_container}/v42/") == source
