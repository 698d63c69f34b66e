"""One real execution of Airflow's own ``S3ToGCSOperator`` (apache-airflow-providers-google), the
pairwise-operator baseline of ``benchmarks/pairwise_operators.py``.

Runs in the benchmark virtualenv (``benchmarks/setup_bench_venv.sh``), not in the project's:

    .bench-venv/bin/python benchmarks/airflow_s3_to_gcs.py --bucket B --prefix P --dest-gcs gs://D/x/

The connections come from the environment as in any Airflow deployment: ``AIRFLOW_CONN_AWS_DEFAULT``
(an ``aws`` connection whose extra carries ``endpoint_url``) and ``AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT``
(``is_anonymous``; ``STORAGE_EMULATOR_HOST`` points google-cloud-storage at the emulator). Prints one
JSON line: ``{"seconds": ..., "objects": ...}`` timed around ``execute()`` alone.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bucket", required=True, help="source S3 bucket")
    ap.add_argument("--prefix", default="", help="source key prefix")
    ap.add_argument("--dest-gcs", required=True, help="gs://bucket/prefix/ (ends with a slash)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # the provider's return_gcs_uris notice

    from airflow.providers.google.cloud.transfers.s3_to_gcs import S3ToGCSOperator

    op = S3ToGCSOperator(task_id="s3_to_gcs", bucket=args.bucket, prefix=args.prefix, dest_gcs=args.dest_gcs,
                         replace=True, apply_gcs_prefix=True, return_gcs_uris=True)
    started = time.perf_counter()
    copied = op.execute(context={})
    print(json.dumps({"seconds": time.perf_counter() - started, "objects": len(copied)}), flush=True)


if __name__ == "__main__":
    main()
