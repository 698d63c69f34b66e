"""Hourly: keep three cross-cloud copies in sync with one operator instead of three different ones.

The DAG this replaces used one operator class per pair of clouds, each with its own options, each
copying one object at a time through a temp file on the worker and returning a list of every key::

    S3ToGCSOperator(task_id="features_to_gcs", bucket="features-us-east-1", prefix="features/",
                    dest_gcs="gs://lake-us-central1/features/", replace=False,
                    aws_conn_id="aws_default", gcp_conn_id="google_cloud_default")
    GCSToS3Operator(task_id="models_to_s3", gcs_bucket="lake-us-central1", prefix="models/",
                    dest_s3_key="s3://features-us-east-1/models/", replace=False,
                    gcp_conn_id="google_cloud_default", dest_aws_conn_id="aws_default")
    AzureBlobStorageToGCSOperator(task_id="partner_to_gcs", container_name="partner",
                                  blob_name="daily.parquet",  # one blob per task: no prefixes
                                  bucket_name="lake-us-central1", object_name="partner/daily.parquet",
                                  filename="/tmp/daily.parquet", gzip=False,
                                  wasb_conn_id="wasb_default", gcp_conn_id="google_cloud_default")

Here every pair is the same operator with the same options (``sync=True`` for "replace=False", whole
prefixes everywhere), the bytes stream through gateways in parallel and are verified, and each task's
XCom is a small stats dict, which the last task sums up.

Run it standalone (``dag.test()``), against the emulators after ``make emulators-up && source
.emulators/env.sh``::

    python dags_examples/replace_pairwise_dag.py
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

from skyplane_provider.airflow.operators import SkyplaneTransferOperator

# Bucket roots (the SKYPLANE_EXAMPLE_* variables let the demo and the tests use emulator buckets).
FEATURES = os.environ.get("SKYPLANE_EXAMPLE_S3", "s3://features-us-east-1")
LAKE = os.environ.get("SKYPLANE_EXAMPLE_GCS", "gs://lake-us-central1")
PARTNER = os.environ.get("SKYPLANE_EXAMPLE_AZURE", "az://partnerdrop/partner")

with DAG(
    dag_id="skyplane_replace_pairwise",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["skyplane", "example"],
) as dag:
    common = dict(sync=True, chunk_size="16MiB")
    copies = [
        SkyplaneTransferOperator(task_id="features_to_gcs", src=f"{FEATURES}/features/", dst=f"{LAKE}/features/",
                                 src_conn_id="aws_default", dst_conn_id="google_cloud_default", **common),
        SkyplaneTransferOperator(task_id="models_to_s3", src=f"{LAKE}/models/", dst=f"{FEATURES}/models/",
                                 src_conn_id="google_cloud_default", dst_conn_id="aws_default", **common),
        SkyplaneTransferOperator(task_id="partner_to_gcs", src=f"{PARTNER}/daily/", dst=f"{LAKE}/partner/",
                                 src_conn_id="wasb_default", dst_conn_id="google_cloud_default",
                                 src_region="azure:eastus", **common),
    ]

    @task
    def summary(stats: list[dict]) -> dict:
        """One line for the whole hour: what moved, what was already there, what it cost."""
        return {"objects": sum(s["objects"] for s in stats), "bytes": sum(s["bytes"] for s in stats),
                "up_to_date": sum(s["skipped_objects"] for s in stats),
                "cost_usd": round(sum(s["cost_usd"] for s in stats), 6)}

    summary([c.output for c in copies])


if __name__ == "__main__":
    from skyplane_provider.airflow.examples import run_example

    run_example(dag, seed=[f"{FEATURES}/features/", f"{LAKE}/models/", f"{PARTNER}/daily/"])
