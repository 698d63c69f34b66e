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

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from skyplane_provider.testing.example_data import EMULATOR_ROOTS, on_emulators, seed_emulators

CHILD_MARKER = "SKYPLANE_EXAMPLE_CHILD"
#: The connection ids the example DAGs use, by connection type.
EXAMPLE_CONNECTIONS = {"aws": ("aws_default", "aws_raw"),
                       "google_cloud_platform": ("google_cloud_default", "gcp_lake"),
                       "wasb": ("wasb_default", "wasb_lake")}
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
