"""The real thing: ``airflow standalone`` (api-server, scheduler with LocalExecutor, dag-processor,
triggerer), a DAG run triggered through the REST API, the task deferred to the real triggerer.

The triggerer runs with another ``HOME`` and ``SKYPLANE_HOME`` than the scheduler and its task
processes (a shim ``airflow`` first on PATH gives them to ``airflow triggerer`` only): it shares no
file with the worker and watches the job through its coordinator's HTTP API alone. The task's
process is SIGKILLed as soon as the REST API shows the task deferred.

Every process is stopped by PID at the end: SIGTERM to the process group of ``standalone``, then
SIGKILL to anything of its process tree still alive.
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
from .helpers import wait_gone  # noqa: E402

TEST_DAGS = REPO / "tests/airflow_dags/skyplane_test_dags.py"
AIRFLOW = Path(sys.executable).parent / "airflow"


@pytest.mark.slow
def test_standalone_deferred_run_with_a_triggerer_of_its_own_home(tmp_path, emulators, s3_bucket, gcs_bucket):
    worker_home, trigger_home = tmp_path / "worker", tmp_path / "triggerer"
    for home in (worker_home, trigger_home):
        (home / "skyplane").mkdir(parents=True)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "airflow").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = triggerer ]; then export HOME="{trigger_home}" SKYPLANE_HOME="{trigger_home}/skyplane"; fi\n'
        f'exec "{AIRFLOW}" "$@"\n')
    (shim / "airflow").chmod(0o755)
    port = free_port()
    env = {**os.environ, "HOME": str(worker_home), "SKYPLANE_HOME": str(worker_home / "skyplane"),
           "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "airflow/dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__PARALLELISM": "4", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
           "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
           "PATH": f"{shim}{os.pathsep}{AIRFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    objs = sample_objects(n_small=3, small_bytes=64 * 1024, big_bytes=3 * MiB)
    put_objects(f"{s3_bucket}/in/", objs)
    # standalone migrates the database itself, and its dag-processor parses the files present at start
    # (`airflow dags reserialize` is only needed for a file added to a running installation)
    (tmp_path / "airflow/dags").mkdir(parents=True)
    (tmp_path / "airflow/dags" / TEST_DAGS.name).symlink_to(TEST_DAGS)

    api = f"http://127.0.0.1:{port}/api/v2"
    log_path = tmp_path / "standalone.log"
    log = open(log_path, "wb")
    started = time.monotonic()
    proc = subprocess.Popen([str(AIRFLOW), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    tree: set[int] = set()
    try:
        wait_for(lambda: healthy(api), 180, tree, proc, "airflow standalone to be healthy and parse the DAG",
                 log_path)
        run = call(f"{api}/dags/skyplane_test_deferred/dagRuns", {
            "logical_date": None, "conf": {"src": f"{s3_bucket}/in/", "dst": f"{gcs_bucket}/out/", "dst_region": None}})
        run_url = f"{api}/dags/skyplane_test_deferred/dagRuns/{run['dag_run_id']}"
        ti_url = f"{run_url}/taskInstances/copy"
        wait_for(lambda: call(ti_url)["state"] in ("deferred", "success", "failed"), 120, tree, proc,
                 "the task to defer", log_path)
        assert call(ti_url)["state"] == "deferred", tail(log_path)
        killed = kill_task_processes(call(ti_url)["id"])
        wait_for(lambda: call(run_url)["state"] in ("success", "failed"), 120, tree, proc, "the DAG run to finish",
                 log_path)
        assert call(run_url)["state"] == "success", tail(log_path)
        stats = call(f"{ti_url}/xcomEntries/return_value?deserialize=true")["value"]
        assert stats["objects"] == len(objs) and stats["verified"]
        assert digests(f"{gcs_bucket}/out/") == sha256s(objs)
        tries = call(f"{ti_url}/tries")["task_instances"]
        assert len(tries) == 1  # one try, resumed after the trigger fired
        print(f"standalone run: {time.monotonic() - started:.1f} s to success; task processes killed "
              f"after the deferral: {killed}")
    finally:
        stop(proc, tree)
        log.close()
    assert not [p for p in tree if alive(p)]
    assert wait_gone(str(worker_home)) == []  # the job's coordinator and its fleet are gone
    assert not (trigger_home / "skyplane" / "jobs").exists()  # the triggerer wrote nothing of the job


def kill_task_processes(ti_id: str) -> int:
    """SIGKILL every process of the task instance (its title is ``airflow worker -- <ti id>``); how many."""
    killed = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ti_id in cmd and alive(int(entry)):
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


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
        time.sleep(0.25)


def stop(proc: subprocess.Popen, tree: set[int]) -> None:
    """SIGTERM to its process group, then SIGKILL to the group and to every straggler.

    Not SIGINT first (standalone's own shutdown): it waits for every component to end, and its
    api-server does not end on the SIGTERM standalone gives it. In the runs measured standalone had
    not ended 20 s after a SIGINT, and ended within 0.1 s of the group's SIGTERM, so a SIGINT only
    added its grace (3 s) to every run."""
    tree.update(descendants(proc.pid))
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
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
