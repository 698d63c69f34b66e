#!/usr/bin/env bash
# The baselines' own virtualenv for benchmarks/pairwise_operators.py and routes.py: Airflow's
# S3ToGCSOperator (apache-airflow-providers-google 22.8.0), GCSToS3Operator (apache-airflow-providers-amazon
# 9.39.0, also S3Hook) and S3ToAzureBlobStorageOperator (apache-airflow-providers-microsoft-azure 15.2.1)
# on the same Airflow 3.3.2 as the project venv, kept apart so the project's dependencies stay untouched.
#
# Installed from benchmarks/bench-venv.lock with --no-deps: every version pinned, no resolver run.
# A full resolve of the google provider's ~120 dependencies (ray, aiplatform, google-ads, ...) backtracked
# for over 8 minutes here, and most of them are never imported by this operator; the lock holds Airflow
# with its own dependencies (pinned as in the project venv) plus what the operator's import and run
# need (boto3, google-cloud-storage, -storage-transfer, -secret-manager, google-api-python-client,
# gcloud-aio-storage, pytz; azure-storage-blob, azure-identity, msrest for WasbHook). `pip check`
# therefore lists the providers' unused extras as missing.
# Idempotent: does nothing when the operator already imports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=${SKYPLANE_BENCH_VENV:-$ROOT/.bench-venv}
PY=${PYTHON:-python3}

probe="from airflow.providers.google.cloud.transfers.s3_to_gcs import S3ToGCSOperator
from airflow.providers.amazon.aws.transfers.gcs_to_s3 import GCSToS3Operator
from airflow.providers.microsoft.azure.transfers.s3_to_wasb import S3ToAzureBlobStorageOperator"
if [ -x "$BENCH/bin/python" ] && "$BENCH/bin/python" -c "$probe" 2>/dev/null; then
  exit 0
fi
echo "setup_bench_venv: installing the baseline operator into $BENCH (about a minute)"
[ -x "$BENCH/bin/python" ] || "$PY" -m venv "$BENCH"
"$BENCH/bin/pip" install -q --upgrade pip
"$BENCH/bin/pip" install -q --no-deps -r benchmarks/bench-venv.lock
"$BENCH/bin/python" -c "$probe"
echo "setup_bench_venv: ready"
