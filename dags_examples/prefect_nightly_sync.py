"""Nightly (Prefect): sync yesterday's partition of raw events from S3 to the lakes on GCS and Azure.

One task, one gateway fleet: the source is read once and multicast to both destinations, and only
objects missing or changed there move (``skyplane_sync_flow`` syncs), so a re-run after a partial
failure is cheap. The flow returns the transfer's stats; the run page shows three artifacts: progress,
a stats table and the route with predicted vs. actual throughput and cost.

Credentials are saved blocks named by the parameters (``aws-credentials/raw``, ``gcp-credentials/lake``,
``skyplane-credentials/lake-eu`` ...: prefect-aws / prefect-gcp / prefect-azure blocks work as they are);
left empty, the SDKs' standard environment applies. Schedule it with::

    nightly_events.serve(name="nightly-events", cron="0 2 * * *")

Run it once against the emulators (``make emulators-up && source .emulators/env.sh``)::

    python dags_examples/prefect_nightly_sync.py
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

# Before Prefect reads its settings, for its temporary local server: no usage telemetry (offline, the
# heartbeat fails and logs an ERROR), and time to create its database on a first run on a busy
# machine (the default 20 s is not always enough). A flow run against a Prefect server needs neither.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, runtime  # noqa: E402

from skyplane_provider.prefect import skyplane_sync_flow, teardown_fleets  # noqa: E402

# Bucket roots. The SKYPLANE_EXAMPLE_* variables only exist so that the demo and the tests can point
# this very file at emulator buckets; in your flow, write the URIs.
RAW = os.environ.get("SKYPLANE_EXAMPLE_S3", "s3://raw-events-us-east-1")
LAKE_GCS = os.environ.get("SKYPLANE_EXAMPLE_GCS", "gs://lake-us-central1")
LAKE_AZURE = os.environ.get("SKYPLANE_EXAMPLE_AZURE", "az://lakewesteurope/lake")


@flow(name="nightly-events", on_cancellation=[teardown_fleets], on_crashed=[teardown_fleets])
def nightly_events(partition: str | None = None, max_cost_per_gb: float | None = None,
                   src_credentials: str | None = None, dst_credentials: list[str | None] | None = None) -> dict:
    """Sync ``events/dt=<partition>/`` (default: the day before the run was scheduled) to both lakes."""
    day = partition or (runtime.flow_run.scheduled_start_time - timedelta(days=1)).date().isoformat()
    prefix = f"events/dt={day}/"
    return skyplane_sync_flow(
        src=f"{RAW}/{prefix}",
        dsts=[f"{LAKE_GCS}/{prefix}", f"{LAKE_AZURE}/{prefix}"],
        dst_regions=[None, "azure:westeurope"],  # GCS reports its bucket's region; Azure's API does not
        max_cost_per_gb=max_cost_per_gb,  # with a ceiling the planner picks the fastest route under it
        src_credentials=src_credentials, dst_credentials=dst_credentials,
        chunk_size="16MiB", artifact_key="nightly-events")


if __name__ == "__main__":
    from skyplane_provider.testing.example_data import EMULATOR_ROOTS, on_emulators, seed_emulators, yesterday

    if on_emulators(dict(os.environ)):  # the example buckets, created and seeded (engine-neutral helpers)
        for var, root in EMULATOR_ROOTS.items():
            os.environ.setdefault(var, root)
        RAW, LAKE_GCS, LAKE_AZURE = (os.environ[v] for v in ("SKYPLANE_EXAMPLE_S3", "SKYPLANE_EXAMPLE_GCS",
                                                            "SKYPLANE_EXAMPLE_AZURE"))
        seed_emulators([f"{RAW}/events/dt={yesterday()}/"])
    print("STATS " + json.dumps(nightly_events()), flush=True)
