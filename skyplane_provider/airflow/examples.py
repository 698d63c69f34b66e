"""Run an example DAG (``dags_examples/``) with ``dag.test()``, from a plain ``python FILE`` call.

``dag.test()`` needs a migrated metadata database and the DAG file inside ``DAGS_FOLDER``, and Airflow
reads ``AIRFLOW_HOME`` when it is imported, so :func:`run_example` (called from a DAG file's
``__main__``) re-runs the file in a child process with a throwaway Airflow home (:func:`example_env`,
:func:`prepare_airflow_home`). When the emulators' standard variables are set (``make emulators-up``
writes them to ``.emulators/env.sh``), the child also gets ``AIRFLOW_CONN_*`` variables that point the
example connection ids at the emulators and ``SKYPLANE_EXAMPLE_*`` bucket roots there; it creates the
buckets and seeds empty source prefixes with sample objects. Without them the DAG runs against whatever
the connections in the environment say.

The child prints one ``XCOM <task_id> <json>`` line per task that returned a value, and exits 0 only
when the DAG run succeeded. The demo and the tests use the same pieces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from gateway.stores import open_store
from gateway.stores.uri import parse_uri
from planner.errors import NotFoundError
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.samples import put_objects, sample_objects

CHILD_MARKER = "SKYPLANE_EXAMPLE_CHILD"
#: The connection ids the example DAGs use, by connection type.
EXAMPLE_CONNECTIONS = {"aws": ("aws_default", "aws_raw"),
                       "google_cloud_platform": ("google_cloud_default", "gcp_lake"),
                       "wasb": ("wasb_default", "wasb_lake")}
#: Bucket roots in the emulators (the Azure account is Azurite's fixed one).
EMULATOR_ROOTS = {"SKYPLANE_EXAMPLE_S3": "s3://skyplane-example-raw",
                  "SKYPLANE_EXAMPLE_GCS": "gs://skyplane-example-lake",
                  "SKYPLANE_EXAMPLE_AZURE": "az://devstoreaccount1/skyplane-example"}
_BUCKET_KIND = {"s3": "s3", "gs": "gcs", "az": "azure"}


def yesterday() -> str:
    """The day before now (UTC) as ``YYYY-MM-DD``: the nightly DAG's partition for a run due now."""
    return (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()


def on_emulators(env: dict[str, str]) -> bool:
    """Whether ``env`` points all three SDKs at emulators on loopback addresses."""
    azure = env.get("AZURE_STORAGE_CONNECTION_STRING", "")
    blob = next((p.split("=", 1)[1] for p in azure.split(";") if p.startswith("BlobEndpoint=")), "")
    return all(_loopback(u) for u in (env.get("AWS_ENDPOINT_URL", ""), env.get("STORAGE_EMULATOR_HOST", ""), blob))


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def emulator_connections(env: dict[str, str]) -> dict[str, str]:
    """``AIRFLOW_CONN_<ID>`` -> connection JSON pointing every example connection id at the emulators
    (none unless :func:`on_emulators`)."""
    if not on_emulators(env):
        return {}
    conns = {
        "aws": {"conn_type": "aws", "login": env.get("AWS_ACCESS_KEY_ID", "testing"),
                "password": env.get("AWS_SECRET_ACCESS_KEY", "testing"),
                "extra": {"endpoint_url": env["AWS_ENDPOINT_URL"],
                          "region_name": env.get("AWS_DEFAULT_REGION", "us-east-1")}},
        "google_cloud_platform": {"conn_type": "google_cloud_platform",
                                  "extra": {"endpoint": env["STORAGE_EMULATOR_HOST"], "project": "example"}},
        "wasb": {"conn_type": "wasb", "extra": {"connection_string": env["AZURE_STORAGE_CONNECTION_STRING"]}},
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)
            for conn_type, conn in conns.items() for conn_id in EXAMPLE_CONNECTIONS[conn_type]}


def example_env(airflow_home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that runs example DAGs with ``dag.test()`` in ``airflow_home``."""
    env = dict(os.environ if base is None else base)
    env.update({"AIRFLOW_HOME": str(airflow_home), "AIRFLOW__CORE__DAGS_FOLDER": str(airflow_home / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False", CHILD_MARKER: "1",
                # the airflow CLI and task subprocesses must be this venv's
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    for var, value in emulator_connections(env).items():
        env.setdefault(var, value)
    if on_emulators(env):  # example buckets there unless told otherwise
        for var, root in EMULATOR_ROOTS.items():
            env.setdefault(var, root)
    return env


def prepare_airflow_home(env: dict[str, str], dag_files: list[Path]) -> None:
    """Link ``dag_files`` into the home's DAGS_FOLDER and migrate its database (a few seconds)."""
    dags = Path(env["AIRFLOW__CORE__DAGS_FOLDER"])
    dags.mkdir(parents=True, exist_ok=True)
    for f in dag_files:
        link = dags / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def seed_emulators(prefixes: list[str]) -> None:
    """Create the example buckets in the emulators and put sample objects under each empty prefix."""
    for var in EMULATOR_ROOTS:
        root = parse_uri(os.environ[var])
        try:
            open_store(root.root_uri).check()
        except NotFoundError:
            create_bucket(_BUCKET_KIND[root.scheme], root.bucket.split("/")[-1])
    for prefix in prefixes:
        uri = parse_uri(prefix)
        if next(iter(open_store(uri.root_uri).list(uri.join("").path)), None) is None:
            put_objects(prefix, sample_objects())


def run_example(dag: Any, seed: Sequence[str] = ()) -> None:
    """The ``__main__`` of an example DAG: run it once with ``dag.test()`` and exit with its outcome."""
    if os.environ.get(CHILD_MARKER) != "1":
        with tempfile.TemporaryDirectory(prefix="skyplane-airflow-") as home:
            env = example_env(Path(home))
            prepare_airflow_home(env, [Path(dag.fileloc)])
            sys.exit(subprocess.run([sys.executable, dag.fileloc], env=env).returncode)
    if on_emulators(dict(os.environ)):
        seed_emulators(list(seed))
    # logical_date=None: like a run triggered from the UI, the REST API or the CLI
    dag_run = dag.test(logical_date=None)
    for ti in dag_run.get_task_instances():
        value = ti.xcom_pull(task_ids=ti.task_id, key="return_value")
        if value is not None:
            print(f"XCOM {ti.task_id} {json.dumps(value)}", flush=True)
    print(f"DAG RUN {dag_run.dag_id} {dag_run.state}", flush=True)
    sys.exit(0 if dag_run.state == "success" else 1)
