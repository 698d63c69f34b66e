"""Stopping a Prefect run stops its transfer job and tears the gateway fleet down: task timeout, SIGTERM
to the flow's process (what a worker does to cancel), the flow hook stopping a job of another thread,
and a process killed outright (its job's coordinator goes on; the hook, run from another process as
Prefect's runner runs hooks after killing a flow run, cancels it).

The transfers read their source through a bandwidth-capped TCP relay in front of moto, so they are
still moving bytes when the run is stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("prefect")

from prefect import flow, get_client  # noqa: E402
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, TaskRunFilter  # noqa: E402
from prefect.client.schemas.filters import TaskRunFilterFlowRunId  # noqa: E402

from planner.errors import TransferError  # noqa: E402
from skyplane_provider.prefect import skyplane_transfer, teardown_fleets  # noqa: E402
from skyplane_provider.prefect.execution import records_dir, run_job  # noqa: E402
from skyplane_provider.testing.sockets import cut  # noqa: E402
from skyplane_provider.transfer import Transfer, TransferRequest  # noqa: E402

from .helpers import gateway_pids, put_objects, read_all, wait_gone  # noqa: E402

MiB = 1024**2
REPO = Path(__file__).resolve().parents[1]


class CappedRelay:
    """A TCP relay on 127.0.0.1 whose downstream direction (upstream -> client) is capped at ``rate``
    bytes per second over all connections together: a slow link in front of a real server."""

    def __init__(self, upstream: str, rate: int) -> None:
        host, port = upstream.split("//")[-1].rstrip("/").split(":")
        assert host in ("127.0.0.1", "localhost")
        self.upstream = (host, int(port))
        self.rate = rate
        self.sent = 0  # bytes passed downstream, over all connections
        self._lock = threading.Lock()
        self._next_send = time.monotonic()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, capped: bool) -> None:
        try:
            while data := src.recv(16384):
                if capped:
                    with self._lock:  # reserve a slot on the shared link
                        start = max(self._next_send, time.monotonic())
                        self._next_send = start + len(data) / self.rate
                        self.sent += len(data)
                    time.sleep(max(0.0, start - time.monotonic()))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            cut(src, dst, close=False)

    def wait_for_bytes(self, count: int, timeout: float) -> None:
        """Wait until ``count`` bytes went downstream (data moving, not only a listing)."""
        deadline = time.monotonic() + timeout
        while self.sent < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.sent >= count, f"{self.sent} bytes through the relay in {timeout} s, expected {count}"

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            s.close()


class GatewayWatch:
    """Counts the gateway processes of one SKYPLANE_HOME seen while a run is going on."""

    def __init__(self, home: Path) -> None:
        self.home, self.seen = str(home), set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.seen.update(gateway_pids(self.home))

    def wait_for_gateways(self, timeout: float) -> None:
        """Until a fleet is provisioned: a local job's gateway processes start with its coordinator, ahead
        of their configs (before its client has the job's handle); pids.json records them once provisioned."""
        deadline = time.monotonic() + timeout
        while not (self.seen and list(Path(self.home).glob("jobs/*/pids.json"))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.seen, f"no gateway started within {timeout} s"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def home(prefect_skyplane_home):
    yield prefect_skyplane_home
    assert wait_gone(str(prefect_skyplane_home)) == [], "a coordinator or gateway process was left running"


@pytest.fixture
def slow_relay(emulators):
    """moto behind a :class:`CappedRelay` of 0.5 MiB/s."""
    relay = CappedRelay(emulators.env["AWS_ENDPOINT_URL"], rate=MiB // 2)
    yield relay
    relay.close()


@pytest.fixture
def slow_source(s3_bucket, slow_relay):
    """An S3 prefix of 12 MiB that gateways read at 0.5 MiB/s (about 24 s): its credentials entry and URI."""
    put_objects(s3_bucket, {f"big/part-{i}.bin": os.urandom(2 * MiB) for i in range(6)})
    return f"{s3_bucket}/big/", {"endpoint_url": slow_relay.url}


def test_task_timeout_cancels_the_transfer_and_tears_down(prefect_harness, home, slow_source, gcs_bucket, caplog):
    src, entry = slow_source

    @flow
    def bounded():
        return skyplane_transfer.with_options(timeout_seconds=8, retries=0)(
            src, gcs_bucket + "/out/", src_credentials=entry, chunk_size="1MiB")

    watch = GatewayWatch(home)
    started = time.monotonic()
    state = bounded(return_state=True)
    watch.stop()
    assert state.is_failed() and time.monotonic() - started < 40
    with pytest.raises(TimeoutError):
        state.result()
    assert watch.seen, "the timeout fired before any gateway started: nothing was tested"
    # The engine reports about every second; the task relays at most every 2 s.
    progress = [r for r in caplog.records if r.name == "prefect.task_runs" and "/ 12.0 MiB (" in r.getMessage()]
    assert 1 <= len(progress) <= 5
    assert gateway_pids(str(home)) == []
    assert len(read_all(gcs_bucket, "out/")) < 6  # stopped before the end; nothing half-written is visible
    assert not records_dir(str(state.state_details.flow_run_id)).exists()
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))}
    assert artifacts["skyplane-transfer-progress"].description == "Stopped by CancelledError"
    assert "**Did not finish:** CancelledError" in artifacts["skyplane-transfer-plan"].data


def _flow_process(api_url: str, src: str, dst: str, entry: dict, tmp_path: Path) -> subprocess.Popen:
    """``skyplane_sync_flow`` in its own Python process, against the session's Prefect server."""
    script = tmp_path / "run_flow.py"
    script.write_text(
        "import sys, json\n"
        "from skyplane_provider.prefect import skyplane_sync_flow\n"
        "src, dst, entry = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n"
        "skyplane_sync_flow(src, [dst], src_credentials=entry, chunk_size='1MiB')\n")
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), src, dst, json.dumps(entry)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _flow_run_of(src: str):
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.parameters.get("src") == src]
    assert len(runs) == 1
    return runs[0]


def test_sigterm_to_the_flow_process_tears_down(prefect_harness, home, slow_source, gcs_bucket, tmp_path):
    """A plain SIGTERM (a worker cancelling, ``kill``): the task's thread gets Prefect's TerminationSignal
    and tears the fleet down before Prefect ends the process with the default SIGTERM action."""
    src, entry = slow_source
    proc = _flow_process(prefect_harness, src, gcs_bucket + "/out/", entry, tmp_path)
    watch = GatewayWatch(home)
    try:
        watch.wait_for_gateways(timeout=60)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        watch.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = output.decode(errors="replace")
    assert proc.returncode == -signal.SIGTERM, output[-3000:]
    assert gateway_pids(str(home)) == [], output[-3000:]
    run = _flow_run_of(src)
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[run.id])))
    assert [t.state.type.value for t in task_runs] == ["CRASHED"], output[-3000:]
    # On the console: Prefect kills the process before its log worker ships the last lines to the API.
    assert "transfer stopped by TerminationSignal" in output
    assert not records_dir(str(run.id)).exists()


def test_hook_cancels_the_transfers_of_its_flow_run(home, slow_source, gcs_bucket):
    """``teardown_fleets`` stops a job whose task runs in another thread of this process (a task
    submitted to a task runner) and waits for its teardown."""
    src, entry = slow_source
    request = TransferRequest(src=src, dsts=[gcs_bucket + "/out/"], credentials={src.split("/big")[0]: entry},
                              chunk_size="1MiB")
    transfer = Transfer(request).prepare()
    outcome = {}

    def run():
        try:
            run_job(transfer, flow_run_id="flow-run-1", on_progress=lambda p: None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    watch = GatewayWatch(home)
    thread.start()
    try:
        watch.wait_for_gateways(timeout=60)
        assert [p.stem for p in records_dir("flow-run-1").glob("*.json")] == [transfer.job_id]
        teardown_fleets(None, SimpleNamespace(id="flow-run-1"), SimpleNamespace(name="Crashed"))
        assert gateway_pids(str(home)) == []  # at once: the hook waited for the teardown
    finally:
        transfer.cancel()
        thread.join(60)
        watch.stop()
    assert isinstance(outcome["error"], TransferError) and "cancel" in str(outcome["error"])
    assert not records_dir("flow-run-1").exists()


def test_hook_stops_the_job_of_a_killed_process(prefect_harness, home, slow_source, slow_relay, gcs_bucket,
                                                tmp_path):
    """A flow process killed outright: its job's coordinator goes on; the flow hook, run from another
    process as Prefect's runner does after killing a flow run, finds the job's record and cancels it
    through the coordinator, which tears the fleet down. The gateways are frozen (SIGSTOP) first, as
    hung or remote gateways would be, while they move data: the teardown ends them all the same."""
    src, entry = slow_source
    proc = _flow_process(prefect_harness, src, gcs_bucket + "/out/", entry, tmp_path)
    watch = GatewayWatch(home)
    frozen: list[int] = []
    try:
        watch.wait_for_gateways(timeout=60)
        # Freezing them before they bound their ports would make the coordinator sit out the fleet's
        # health timeout (30 s) before it could tear it down: not the case this test is about.
        slow_relay.wait_for_bytes(MiB // 4, timeout=60)  # a listing is a few KiB: this is a chunk's read
        deadline = time.monotonic() + 30
        # One gateway: on one host the source's writes GCS itself (Plan.on_one_host).
        while len(frozen := gateway_pids(str(home))) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        proc.kill()
        proc.communicate(timeout=30)
        time.sleep(2)  # longer than a gateway would take to notice that its orchestrator is gone
        assert sorted(gateway_pids(str(home))) == sorted(frozen) and len(frozen) == 1  # the coordinator lives
        run = _flow_run_of(src)
        assert list(records_dir(str(run.id)).glob("*.json"))
        teardown_fleets(None, run, run.state)
        assert gateway_pids(str(home)) == []  # at once: the hook waited for them
        assert not list(home.glob("jobs/*/gw-*")) and not list(home.glob("jobs/*/pids.json"))  # nor their configs
        assert not records_dir(str(run.id)).exists()
    finally:
        watch.stop()
        for pid in frozen:  # what the hook did not stop, when it failed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
