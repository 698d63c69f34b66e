"""DAGs for the Airflow tests: one copy task whose URIs come from the run's conf, blocking or deferred;
and one whose source and destinations are ``ObjectStoragePath`` objects.

The deferred one polls every 5 s: its first event must not beat the scheduler to the worker's exit
(see SkyplaneTransferTrigger.run).
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, ObjectStoragePath

from skyplane_provider.airflow.operators import SkyplaneTransferOperator

for dag_id, deferrable, poll in (("skyplane_test_copy", False, 0.5), ("skyplane_test_deferred", True, 5.0)):
    with DAG(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
             params={"src": "", "dst": "", "dst_region": None}, render_template_as_native_obj=True) as dag:
        SkyplaneTransferOperator(task_id="copy", src="{{ params.src }}", dst=["{{ params.dst }}"],
                                 dst_regions=["{{ params.dst_region }}"], chunk_size="2MiB",
                                 deferrable=deferrable, poll_interval=poll)
    globals()[dag_id] = dag


def _bucket(variable: str, default: str) -> str:
    """The bucket (or Azure container) of an example root the test environment names."""
    return os.environ.get(variable, default).rstrip("/").rsplit("/", 1)[-1]


# Sources and destinations as Airflow's ObjectStoragePath, each bringing its connection (parsed here,
# never touched before the task runs: no connection is looked up while the file is parsed).
with DAG(dag_id="skyplane_test_paths", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    SkyplaneTransferOperator(
        task_id="copy", src=ObjectStoragePath(f"s3://aws_raw@{_bucket('SKYPLANE_EXAMPLE_S3', 'raw')}/paths/"),
        dst=[ObjectStoragePath(f"gs://{_bucket('SKYPLANE_EXAMPLE_GCS', 'lake')}/paths/", conn_id="gcp_lake"),
             ObjectStoragePath(f"abfs://wasb_lake@{_bucket('SKYPLANE_EXAMPLE_AZURE', 'lake')}/paths/")],
        dst_regions=[None, "azure:westeurope"], chunk_size="2MiB")
skyplane_test_paths = dag


# A mirror with filters: a dry run (its XCom is what would happen), then the sync that deletes.
with DAG(dag_id="skyplane_test_mirror", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         params={"src": "", "dst": ""}) as dag:
    mirror = dict(src="{{ params.src }}", dst="{{ params.dst }}", sync=True, delete=True, max_delete=5,
                  include=["*.json"], max_cost_usd=1.0)
    (SkyplaneTransferOperator(task_id="preview", dry_run=True, **mirror)
     >> SkyplaneTransferOperator(task_id="mirror", **mirror))
skyplane_test_mirror = dag


# The source's credentials from an aws connection (aws_profile, set by the test) that names a profile:
# read by the amazon provider's hook, which the connection's fields alone cannot do.
with DAG(dag_id="skyplane_test_aws_profile", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         params={"src": "", "dst": ""}) as dag:
    SkyplaneTransferOperator(task_id="copy", src="{{ params.src }}", dst="{{ params.dst }}", src_conn_id="aws_profile",
                             chunk_size="2MiB")
skyplane_test_aws_profile = dag


# One retry at once: the source's connection (aws_flaky, set by the test) points at a proxy the test
# heals before the second try, which resumes the first try's job.
with DAG(dag_id="skyplane_test_retry", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         params={"src": "", "dst": ""}) as dag:
    SkyplaneTransferOperator(task_id="copy", src="{{ params.src }}", dst="{{ params.dst }}", src_conn_id="aws_flaky",
                             chunk_size="1MiB", retries=1, retry_delay=pendulum.duration(seconds=0))
skyplane_test_retry = dag


# Azure through a wasb connection (wasb_key, set by the test) resolved by the microsoft-azure
# provider's WasbHook, both ways; the second task's filters are templated.
with DAG(dag_id="skyplane_test_wasb", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         params={"src": "", "az": "", "dst": "", "include": "", "min_size": ""}) as dag:
    (SkyplaneTransferOperator(task_id="to_azure", src="{{ params.src }}", dst="{{ params.az }}",
                              dst_conn_id="wasb_key", dst_regions=["azure:westeurope"], chunk_size="2MiB")
     >> SkyplaneTransferOperator(task_id="from_azure", src="{{ params.az }}", dst="{{ params.dst }}",
                                 src_conn_id="wasb_key", src_region="azure:westeurope", chunk_size="2MiB",
                                 include=["{{ params.include }}"], min_size="{{ params.min_size }}"))
skyplane_test_wasb = dag
