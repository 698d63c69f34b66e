"""One-off: publish a model release from GCS to S3 and Azure, under a cost ceiling.

A multicast: the release is read once and every destination gets it through one gateway fleet. With
``solver="ilp"`` and ``max_cost_per_gb`` the planner picks the fastest route (relays and partitions
allowed) whose predicted egress per GB stays under the ceiling, and fails the task before any gateway
starts when none does. No schedule: trigger it
(UI, ``airflow dags trigger skyplane_multicast_publish --conf '{"release": "v43"}'``) when a release is cut.

Run it standalone (``dag.test()``), against the emulators after ``make emulators-up && source
.emulators/env.sh``::

    python dags_examples/multicast_publish_dag.py
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from skyplane_provider.airflow.operators import SkyplaneTransferOperator

# Bucket roots (the SKYPLANE_EXAMPLE_* variables let the demo and the tests use emulator buckets).
MODELS = os.environ.get("SKYPLANE_EXAMPLE_GCS", "gs://models-us-central1")
SERVING_S3 = os.environ.get("SKYPLANE_EXAMPLE_S3", "s3://serving-us-west-2")
SERVING_AZURE = os.environ.get("SKYPLANE_EXAMPLE_AZURE", "az://servingeastus/models")

RELEASE = "{{ params.release }}"

with DAG(
    dag_id="skyplane_multicast_publish",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"release": Param("v42", type="string", pattern=r"^v\d+$")},
    tags=["skyplane", "example"],
) as dag:
    SkyplaneTransferOperator(
        task_id="publish_release",
        src=f"{MODELS}/releases/{RELEASE}/",
        dst=[f"{SERVING_S3}/models/{RELEASE}/", f"{SERVING_AZURE}/{RELEASE}/"],
        src_conn_id="google_cloud_default",
        dst_conn_id=["aws_default", "wasb_default"],
        dst_regions=[None, "azure:eastus"],
        solver="ilp",  # the fastest multicast route (relays, partitions) under the ceiling
        max_cost_per_gb=0.25,  # $/GB of egress
        deferrable=True,  # the worker slot is free while the bytes move
    )


if __name__ == "__main__":
    from skyplane_provider.airflow.examples import run_example

    run_example(dag, seed=[f"{MODELS}/releases/v42/"])
