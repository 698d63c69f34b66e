"""The real thing: ``airflow standalone`` (api-server, scheduler with LocalExecutor, dag-processor,
triggerer), a DAG run triggered through the REST API, the task deferred to the real triggerer.

Every process is stopped by PID at the end: SIGINT to ``standalone`` (its own shutdown), then its
process group, then SIGKILL to anything of its process tree still alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("airflow")

from skyplane_provider.testing.emulators import free_port  # noqa: E402
from skyplane_provider.testing.samples import MiB, digests, put_objects, sample_objects, sha256s  # noqa: E402

from .fixtures.airflow import REPO  # noqa: E402
from .helpers import gateway_pids  # noqa: E402

TEST_DAGS = REPO / "tests/airflow_dags/skyplane_test_dags.py"
AIRFLOW = Path(sys.executable).parent / "airflow"


RUN_ENV = "SKYPLANE_TEST_AIRFLOW_STANDALONE"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(RUN_ENV) != "1",
                    reason=f"starts a whole Airflow: 60-120 s measured on the 2 shared cores; set {RUN_ENV}=1")
def test_standalone_deferred_run_through_the_rest_api(tmp_path, emulators, s3_bucket, gcs_bucket):
    sky_home = tmp_path / "skyplane"
    port = free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "SKYPLANE_HOME": str(sky_home),
           "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "airflow/dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__PARALLELISM": "4", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
           "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
           "PATH": f"{AIRFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    objs = sample_objects(n_small=3, small_bytes=64 * 1024, big_bytes=3 * MiB)
    put_objects(f"{s3_bucket}/in/", objs)
    # standalone migrates the database itself, and its dag-processor parses the files present at start
    # (`airflow dags reserialize` is only needed for a file added to a running installation)
    (tmp_path / "airflow/dags").mkdir(parents=True)
    (tmp_path / "airflow/dags" / TEST_DAGS.name).symlink_to(TEST_DAGS)

    api = f"http://127.0.0.1:{port}/api/v2"
    log_path = tmp_path / "standalone.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(AIRFLOW), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    tree: set[int] = set()
    try:
        wait_for(lambda: healthy(api), 180, tree, proc, "airflow standalone to be healthy and parse the DAG",
                 log_path)
        run = call(f"{api}/dags/skyplane_test_deferred/dagRuns", {
            "logical_date": None, "conf": {"src": f"{s3_bucket}/in/", "dst": f"{gcs_bucket}/out/", "dst_region": None}})
        run_url = f"{api}/dags/skyplane_test_deferred/dagRuns/{run['dag_run_id']}"
        wait_for(lambda: call(run_url)["state"] in ("success", "failed"), 120, tree, proc, "the DAG run to finish",
                 log_path)
        assert call(run_url)["state"] == "success", tail(log_path)
        xcom = f"{run_url}/taskInstances/copy/xcomEntries"
        stats = call(f"{xcom}/return_value?deserialize=true")["value"]
        assert stats["objects"] == len(objs) and stats["verified"]
        assert digests(f"{gcs_bucket}/out/") == sha256s(objs)
        tries = call(f"{run_url}/taskInstances/copy/tries")["task_instances"]
        assert len(tries) == 1  # one try, resumed after the trigger fired
    finally:
        stop(proc, tree)
        log.close()
    assert not [p for p in tree if alive(p)]
    assert gateway_pids(str(sky_home)) == []


def call(url: str, body: dict | None = None) -> dict:
    """One REST call; a GET that times out (SQLite is busy on a loaded machine) is asked again."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    attempts = 1 if body is not None else 4  # never POST twice
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except TimeoutError:
            if attempt == attempts:
                raise


def healthy(api: str) -> bool:
    try:
        health = call(f"{api}/monitor/health")
    except (OSError, ValueError):
        return False
    if not all(health.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler", "triggerer")):
        return False
    try:
        return not call(f"{api}/dags/skyplane_test_deferred")["is_paused"]
    except urllib.error.HTTPError:  # 404 until the dag-processor has parsed the file
        return False


def wait_for(condition, timeout: float, tree: set[int], proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        tree.update(descendants(proc.pid))
        if condition():
            return
        assert proc.poll() is None, f"airflow standalone exited ({proc.returncode}) waiting for {what}:\n{tail(log)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{tail(log)}"
        time.sleep(1)


def stop(proc: subprocess.Popen, tree: set[int]) -> None:
    """SIGINT (standalone's own shutdown), then its process group, then SIGKILL to every straggler."""
    tree.update(descendants(proc.pid))
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if sig == signal.SIGINT:
            proc.send_signal(sig)
        else:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        break
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in tree:  # task processes run in process groups of their own
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)


def descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def tail(path: Path, lines: int = 80) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
