"""Nightly: sync yesterday's partition of raw events from S3 to the lakes on GCS and Azure.

One task, one gateway fleet: the source is read once and multicast to both destinations; ``sync=True``
moves only objects missing or changed there, so a re-run after a partial failure is cheap. The
task's XCom is the transfer's stats (objects, bytes, seconds, cost, route), and each destination is
an outlet Asset that downstream DAGs can be scheduled on.

Which partition? ``{{ ds }}`` would break: in Airflow 3 runs triggered from the UI, the REST API or
``airflow dags trigger`` have no logical date, and rendering ``ds`` fails. Every run, scheduled,
triggered or ``dag.test()``, has ``run_after`` (when it was due), so the partition is the day before
``run_after``; a run's conf ``{"partition": "2026-01-31"}`` overrides it (backfills, re-runs).

Run it standalone (``dag.test()``), against the emulators after ``make emulators-up && source
.emulators/env.sh``::

    python dags_examples/nightly_sync_dag.py
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from skyplane_provider.airflow.operators import SkyplaneTransferOperator

# Bucket roots. The SKYPLANE_EXAMPLE_* variables only exist so that the demo and the tests can point
# this very file at emulator buckets; in your DAG, write the URIs.
RAW = os.environ.get("SKYPLANE_EXAMPLE_S3", "s3://raw-events-us-east-1")
LAKE_GCS = os.environ.get("SKYPLANE_EXAMPLE_GCS", "gs://lake-us-central1")
LAKE_AZURE = os.environ.get("SKYPLANE_EXAMPLE_AZURE", "az://lakewesteurope/lake")

PARTITION = "dt={{ params.partition or macros.ds_add(dag_run.run_after | ds, -1) }}"

with DAG(
    dag_id="skyplane_nightly_sync",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"partition": Param("", type="string", description="YYYY-MM-DD; empty: the day before run_after")},
    tags=["skyplane", "example"],
) as dag:
    SkyplaneTransferOperator(
        task_id="sync_partition",
        src=f"{RAW}/events/{PARTITION}/",
        dst=[f"{LAKE_GCS}/events/{PARTITION}/", f"{LAKE_AZURE}/events/{PARTITION}/"],
        src_conn_id="aws_raw",
        dst_conn_id=["gcp_lake", "wasb_lake"],
        dst_regions=[None, "azure:westeurope"],  # GCS reports its bucket's region; Azure's API does not
        sync=True,
        chunk_size="16MiB",
    )


if __name__ == "__main__":
    from skyplane_provider.airflow.examples import run_example
    from skyplane_provider.testing.example_data import yesterday

    run_example(dag, seed=[f"{RAW}/events/dt={yesterday()}/"])
