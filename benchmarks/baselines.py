"""The baselines the benchmarks run beside our gateways: rclone and Airflow's own transfer operators,
against the emulators (moto, fake-gcs-server, Azurite), each as a real process.

``rclone_env`` configures remotes ``src:`` and ``dst:`` from ``RCLONE_CONFIG_*`` variables; ``run_rclone``
runs ``rclone copy``; ``run_airflow`` runs one operator's ``execute()`` in the benchmark virtualenv
(``benchmarks/airflow_operator.py``, installed by ``benchmarks/setup_bench_venv.sh`` when missing).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from benchutil import Timer
from skyplane_provider.testing.emulators import AZURITE_ACCOUNT, AZURITE_KEY

REPO = Path(__file__).resolve().parents[1]
BENCH_PY = REPO / ".bench-venv" / "bin" / "python"

#: (source kind, destination kind) -> the Airflow operator that copies between them
AIRFLOW_OPERATORS = {("s3", "gcs"): "s3_to_gcs", ("s3", "azure"): "s3_to_wasb", ("gcs", "s3"): "gcs_to_s3"}
AIRFLOW_NAMES = {"s3_to_gcs": "S3ToGCSOperator", "s3_to_wasb": "S3ToAzureBlobStorageOperator",
                 "gcs_to_s3": "GCSToS3Operator"}


@dataclass
class BaselineRun:
    seconds: float
    cpu_seconds: float  # the tool's own CPU (user + system), not the stores'


def baseline_env(env: dict[str, str]) -> dict[str, str]:
    """The environment a baseline runs in: ours minus what Debian's rclone cannot load."""
    env = {**os.environ, **env}
    env.pop("AWS_CA_BUNDLE", None)  # Debian's rclone 1.60: "unsupported transport"
    return env


def rclone_remote(name: str, kind: str, endpoint: str) -> dict[str, str]:
    """``RCLONE_CONFIG_<NAME>_*`` variables for a remote on one emulator (``kind``: s3, gcs or azure)."""
    p = f"RCLONE_CONFIG_{name.upper()}_"
    if kind == "s3":
        return {p + "TYPE": "s3", p + "PROVIDER": "Other", p + "ENDPOINT": endpoint, p + "ACCESS_KEY_ID": "testing",
                p + "SECRET_ACCESS_KEY": "testing", p + "REGION": "us-east-1", p + "FORCE_PATH_STYLE": "true"}
    if kind == "gcs":
        return {p + "TYPE": "gcs", p + "ANONYMOUS": "true", p + "ENDPOINT": endpoint + "/storage/v1/",
                p + "PROJECT_NUMBER": "bench", p + "BUCKET_POLICY_ONLY": "true"}
    if kind == "azure":
        return {p + "TYPE": "azureblob", p + "SAS_URL": azurite_sas_url(endpoint)}
    raise ValueError(f"no rclone remote for {kind!r}")


def azurite_sas_url(endpoint: str) -> str:
    """An account SAS URL (two hours) for Azurite's development account at ``endpoint``: Debian's rclone
    1.60 builds ``https://ACCOUNT.ENDPOINT`` from an account and key, and its ``use_emulator`` does not
    work, so a SAS URL is its only way to an emulator on another address."""
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    sas = generate_account_sas(AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, list=True, create=True, add=True,
                                                     delete=True),
                               expiry=datetime.now(timezone.utc) + timedelta(hours=2))
    return f"{endpoint}/{AZURITE_ACCOUNT}?{sas}"


def run_rclone(src: str, dst: str, env: dict[str, str], transfers: int,
               prefix: Sequence[str] = (), extra: Sequence[str] = ()) -> BaselineRun:
    """``rclone copy SRC DST --transfers N [EXTRA]`` (remotes from ``env``), timed around the whole process."""
    env = {**baseline_env(env), "RCLONE_CONFIG": "/dev/null"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with Timer() as t:
        out = subprocess.run([*prefix, "rclone", "copy", src, dst, "--transfers", str(transfers), *extra],
                             env=env, capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        raise SystemExit(f"rclone failed:\n{out.stderr[-3000:]}")
    return BaselineRun(t.seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def airflow_env(env: dict[str, str], endpoints: dict[str, str], home: Path) -> dict[str, str]:
    """An Airflow worker's environment: the connections ``aws_default``, ``google_cloud_default`` and
    ``wasb_default`` point at the emulators; the SDKs' own S3 variables are removed, so the operators
    get S3 from their connection, as in a deployment."""
    env = baseline_env(env)
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(var, None)
    env["AIRFLOW_HOME"] = str(home)
    if "s3" in endpoints:
        env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": endpoints["s3"], "region_name": "us-east-1"}})
    if "gcs" in endpoints:
        env["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"] = json.dumps({
            "conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "bench"}})
    if "azure" in endpoints:
        env["AIRFLOW_CONN_WASB_DEFAULT"] = json.dumps({
            "conn_type": "wasb", "extra": {"connection_string": env["AZURE_STORAGE_CONNECTION_STRING"]}})
    return env


def ensure_bench_venv() -> None:
    if not BENCH_PY.exists() or subprocess.run([str(BENCH_PY), "-c", "import airflow"],
                                               capture_output=True).returncode:
        subprocess.run(["bash", str(REPO / "benchmarks/setup_bench_venv.sh")], check=True)


def run_airflow(operator: str, src_bucket: str, prefix: str, dst: str, env: dict[str, str],
                argv_prefix: Sequence[str] = ()) -> BaselineRun:
    """One operator's ``execute()`` in the bench venv; its own seconds and CPU around ``execute()``."""
    ensure_bench_venv()
    out = subprocess.run([*argv_prefix, str(BENCH_PY), str(REPO / "benchmarks/airflow_operator.py"), operator,
                          "--src-bucket", src_bucket, "--prefix", prefix, "--dst", dst],
                         env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise SystemExit(f"the Airflow operator {operator} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return BaselineRun(result["seconds"], result["cpu_seconds"])
