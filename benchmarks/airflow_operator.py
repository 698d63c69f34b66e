"""One real execution of one of Airflow's own transfer operators, the baseline of
``benchmarks/pairwise_operators.py`` and ``benchmarks/routes.py``.

Runs in the benchmark virtualenv (``benchmarks/setup_bench_venv.sh``), not in the project's:

    .bench-venv/bin/python benchmarks/airflow_operator.py s3_to_gcs --src-bucket B --prefix P/ --dst gs://D/x/
    .bench-venv/bin/python benchmarks/airflow_operator.py s3_to_wasb --src-bucket B --prefix P/ --dst CONTAINER/x/
    .bench-venv/bin/python benchmarks/airflow_operator.py gcs_to_s3 --src-bucket B --prefix P/ --dst s3://D/x/

- ``s3_to_gcs``: ``S3ToGCSOperator`` (apache-airflow-providers-google); an object lands at ``DST`` +
  its key after the prefix.
- ``s3_to_wasb``: ``S3ToAzureBlobStorageOperator`` (apache-airflow-providers-microsoft-azure); at
  ``CONTAINER/x/`` + its key after the prefix.
- ``gcs_to_s3``: ``GCSToS3Operator`` (apache-airflow-providers-amazon); at ``DST`` + its whole key
  (the operator keeps the source's directories).

The connections come from the environment as in any Airflow deployment: ``AIRFLOW_CONN_AWS_DEFAULT``
(an ``aws`` connection whose extra carries ``endpoint_url``), ``AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT``
(``is_anonymous``; ``STORAGE_EMULATOR_HOST`` points google-cloud-storage at the emulator) and
``AIRFLOW_CONN_WASB_DEFAULT`` (``connection_string`` in the extra). Prints one JSON line,
``{"seconds": ..., "cpu_seconds": ..., "objects": ...}``, timed around ``execute()`` alone (the
worker's start-up and Airflow's imports are not counted: a worker already runs them).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def build(operator: str, src_bucket: str, prefix: str, dst: str):
    """The operator, configured as a DAG author would for "every object under the prefix"."""
    if operator == "s3_to_gcs":
        from airflow.providers.google.cloud.transfers.s3_to_gcs import S3ToGCSOperator

        return S3ToGCSOperator(task_id=operator, bucket=src_bucket, prefix=prefix, dest_gcs=dst,
                               replace=True, apply_gcs_prefix=True, return_gcs_uris=True)
    if operator == "s3_to_wasb":
        from airflow.providers.microsoft.azure.transfers.s3_to_wasb import S3ToAzureBlobStorageOperator

        container, _, blob_prefix = dst.partition("/")
        # the operator joins prefix + "/" + name itself: both without their trailing slash
        return S3ToAzureBlobStorageOperator(task_id=operator, s3_bucket=src_bucket, s3_prefix=prefix.rstrip("/"),
                                            container_name=container, blob_prefix=blob_prefix.rstrip("/"),
                                            replace=True)
    if operator == "gcs_to_s3":
        from airflow.providers.amazon.aws.transfers.gcs_to_s3 import GCSToS3Operator

        return GCSToS3Operator(task_id=operator, gcs_bucket=src_bucket, prefix=prefix, dest_s3_key=dst,
                               replace=True)
    raise SystemExit(f"unknown operator {operator!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("operator", choices=("s3_to_gcs", "s3_to_wasb", "gcs_to_s3"))
    ap.add_argument("--src-bucket", required=True)
    ap.add_argument("--prefix", default="", help="source key prefix (ends with a slash)")
    ap.add_argument("--dst", required=True, help="gs://bucket/prefix/, CONTAINER/prefix/ or s3://bucket/prefix/")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # the google provider's return_gcs_uris notice
    op = build(args.operator, args.src_bucket, args.prefix, args.dst)
    started, cpu = time.perf_counter(), time.process_time()
    copied = op.execute(context={})
    print(json.dumps({"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
                      "objects": len(copied)}), flush=True)


if __name__ == "__main__":
    main()
