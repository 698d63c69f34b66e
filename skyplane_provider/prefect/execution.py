"""Running a :class:`Transfer` under Prefect so that every way Prefect stops a run tears the fleet down.

Prefect stops a task in the task's own thread: a timeout raises there (SIGALRM in the main thread, an
asynchronous exception in any other), and SIGTERM from a worker that cancels the flow run becomes
``TerminationSignal`` in the main thread. Neither interrupts a blocking call inside the engine. So the
transfer runs in a worker thread while the task's thread waits in short slices and relays progress;
whatever exception reaches the waiting thread becomes ``Transfer.cancel()`` and a wait for the teardown
before it propagates.

:func:`teardown_fleets` (an ``on_cancellation`` / ``on_crashed`` flow hook) covers the rest: transfers in
threads Prefect does not interrupt (tasks submitted to a task runner), and processes killed outright.
For those, each running job leaves a record under ``$SKYPLANE_HOME/prefect/flow-runs/<flow run id>/``
so that the hook, which Prefect's runner runs in its own process after killing the flow's, can reap
the job's gateways.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from skyplane_provider.transfer import Progress, Transfer, TransferRequest, TransferStats
from skyplane_provider.paths import skyplane_home
from skyplane_provider.transfer.jobs import write_json_atomic

log = logging.getLogger(__name__)

#: Seconds to wait for a cancelled transfer to tear its fleet down.
TEARDOWN_GRACE = 60.0
_POLL = 0.2  # seconds between checks of the worker; bounds how late a timeout/cancel is noticed

_lock = threading.Lock()
_active: dict[str, "GuardedTransfer"] = {}  # job id -> running transfer of this process


def records_dir(flow_run_id: str) -> Path:
    return skyplane_home() / "prefect" / "flow-runs" / flow_run_id


class GuardedTransfer:
    """One transfer, run in a worker thread on behalf of a Prefect task (see the module doc)."""

    def __init__(self, request: TransferRequest, *, flow_run_id: str | None) -> None:
        self.flow_run_id = flow_run_id
        self._latest: Progress | None = None
        self.transfer = Transfer(request, progress=self._note)
        self._worker: threading.Thread | None = None
        # Waiting on an Event, not Thread.join: in CPython 3.11 a join interrupted by a signal handler
        # that raises (Prefect's timeout alarm, its SIGTERM bridge) marks the live thread as stopped.
        self._done = threading.Event()
        self._outcome: dict[str, Any] = {}

    def _note(self, progress: Progress) -> None:
        self._latest = progress  # called from the engine's threads; the waiting thread reports it

    def prepare(self) -> Transfer:
        """Validate, check the stores, list, diff and plan (in the caller's thread: no gateway yet)."""
        return self.transfer.prepare()

    def run(self, on_progress: Callable[[Progress], None], interval: float = 2.0) -> TransferStats:
        """Move the data; call ``on_progress`` (in this thread) at most every ``interval`` seconds."""
        self._worker = threading.Thread(target=self._work, name=f"skyplane-{self.transfer.job_id}", daemon=True)
        self._register()
        self._worker.start()
        try:
            reported, last = None, time.monotonic()
            while not self._done.wait(_POLL):
                latest = self._latest
                if latest is not reported and time.monotonic() - last >= interval:
                    reported, last = latest, time.monotonic()
                    on_progress(latest)
        except BaseException as exc:
            log.warning("transfer %s interrupted (%s): cancelling and tearing the fleet down",
                        self.transfer.job_id, type(exc).__name__)
            self.cancel_and_wait()
            raise
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["stats"]

    def _work(self) -> None:
        try:
            self._outcome["stats"] = self.transfer.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._outcome["error"] = exc
        finally:
            self._unregister()
            self._done.set()

    def cancel_and_wait(self, grace: float = TEARDOWN_GRACE) -> bool:
        """Cancel the transfer and wait until it has torn down; ``False`` if it did not in ``grace`` s."""
        self.transfer.cancel()
        return self._worker is None or self._done.wait(grace)

    # -- who is running: in memory for this process, on disk for the hooks of other processes ----
    def _record(self) -> Path | None:
        return records_dir(self.flow_run_id) / f"{self.transfer.job_id}.json" if self.flow_run_id else None

    def _register(self) -> None:
        with _lock:
            _active[self.transfer.job_id] = self
        path = self._record()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_json_atomic(path, {"job_id": self.transfer.job_id, "provisioner": self.transfer.request.provisioner,
                                     "created_at": time.time()})

    def _unregister(self) -> None:
        with _lock:
            _active.pop(self.transfer.job_id, None)
        path = self._record()
        if path is not None:
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()
            except OSError:
                pass  # other transfers of the flow run are still recorded


def active_transfers(flow_run_id: str | None = None) -> list[GuardedTransfer]:
    """The transfers running in this process (of one flow run, or all)."""
    with _lock:
        return [g for g in _active.values() if flow_run_id is None or g.flow_run_id == flow_run_id]


def teardown_fleets(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook for ``on_cancellation`` and ``on_crashed``: stop every transfer of the flow run and
    reap the gateways of those whose process is gone.

    ``@flow(on_cancellation=[teardown_fleets], on_crashed=[teardown_fleets])``
    """
    flow_run_id = str(flow_run.id)
    for guarded in active_transfers(flow_run_id):
        log.warning("flow run %s is %s: cancelling transfer %s", flow_run_id, state.name, guarded.transfer.job_id)
        if not guarded.cancel_and_wait():
            log.error("transfer %s did not tear down within %.0f s", guarded.transfer.job_id, TEARDOWN_GRACE)
    reap_recorded(flow_run_id)


def reap_recorded(flow_run_id: str) -> list[str]:
    """Reap the jobs a flow run's records name (their process died before teardown); returns their ids."""
    from skyplane_provider.deprovision import Selection, deprovision_local

    directory = records_dir(flow_run_id)
    reaped = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        job_id = record["job_id"]
        if any(g.transfer.job_id == job_id for g in active_transfers()):
            continue  # still running here and did not stop in time: leave it to its own teardown
        if record.get("provisioner") == "local":
            for r in deprovision_local(Selection(job_id=job_id)):
                log.warning("reaped %s", r)
        else:
            log.error("job %s (%s gateways) lost its orchestrator; remove what is left with "
                      "`skyplane-provider deprovision --job %s --provisioner %s ...`",
                      job_id, record.get("provisioner"), job_id, record.get("provisioner"))
        path.unlink(missing_ok=True)
        reaped.append(job_id)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    return reaped
