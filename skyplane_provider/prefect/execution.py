"""Running a transfer job under Prefect so that every way Prefect stops a run stops the job.

The job runs in its coordinator process (docs/coordinator.md); the task holds its handle. The task's
thread waits on the handle in short slices and relays progress, because Prefect stops a task in
that thread: a timeout raises there, SIGTERM from a worker that cancels the flow run becomes
``TerminationSignal`` there. Whatever exception reaches it cancels the job and waits for its
coordinator to tear the fleet down before it propagates.

:func:`teardown_fleets` (an ``on_cancellation`` / ``on_crashed`` flow hook) covers the rest: jobs of
tasks Prefect does not interrupt (submitted to a task runner) and of flow processes killed outright
(the coordinator outlives them). Each running job leaves a record (its handle, 0600: it holds the
API token) under ``$SKYPLANE_HOME/prefect/flow-runs/<flow run id>/``; the hook, which Prefect's runner
runs in its own process after killing the flow's, cancels every recorded job through its coordinator.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from skyplane_provider.coordinator.jobdir import write_private
from skyplane_provider.paths import skyplane_home
from skyplane_provider.transfer import Progress, Transfer, TransferStats
from skyplane_provider.transfer.handle import TransferHandle

log = logging.getLogger(__name__)

#: Seconds to wait for a cancelled job to tear its fleet down.
TEARDOWN_GRACE = 60.0


def records_dir(flow_run_id: str) -> Path:
    return skyplane_home() / "prefect" / "flow-runs" / flow_run_id


def run_job(transfer: Transfer, *, flow_run_id: str | None, on_progress: Callable[[Progress], None],
            interval: float = 2.0) -> TransferStats:
    """Start the prepared ``transfer``'s job and wait for its stats, calling ``on_progress`` (in this
    thread, where Prefect's run context is) at most every ``interval`` seconds."""
    handle = transfer.start()
    record = _record(flow_run_id, handle)
    latest: list[Progress] = []
    handle.subscribe(latest.append)  # called from the handle's thread; reported from this one
    try:
        while not handle.wait(interval):
            if latest:
                on_progress(latest[-1])
                latest.clear()
        return handle.result()
    except BaseException as exc:
        if not handle.done():
            log.warning("transfer %s interrupted (%s): cancelling it and tearing the fleet down",
                        handle.job_id, type(exc).__name__)
            handle.stop(TEARDOWN_GRACE)
        raise
    finally:
        _forget(record)
        transfer.reap()


def teardown_fleets(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook for ``on_cancellation`` and ``on_crashed``: cancel every job of the flow run and wait
    for its fleet to be torn down.

    ``@flow(on_cancellation=[teardown_fleets], on_crashed=[teardown_fleets])``
    """
    for record in sorted(records_dir(str(flow_run.id)).glob("*.json")):
        try:
            handle = TransferHandle.from_dict(json.loads(record.read_text()))
        except (OSError, ValueError, KeyError):
            continue  # its task finished and removed it meanwhile
        log.warning("flow run %s is %s: cancelling transfer %s", flow_run.id, state.name, handle.job_id)
        if not handle.stop(TEARDOWN_GRACE):
            log.error("transfer %s did not tear down within %.0f s; remove what is left with "
                      "`skyplane-provider deprovision --job %s`", handle.job_id, TEARDOWN_GRACE, handle.job_id)
        _forget(record)


def _record(flow_run_id: str | None, handle: TransferHandle) -> Path | None:
    if flow_run_id is None:
        return None
    path = records_dir(flow_run_id) / f"{handle.job_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, {**handle.to_dict(), "created_at": time.time()})
    return path


def _forget(record: Path | None) -> None:
    if record is None:
        return
    record.unlink(missing_ok=True)
    try:
        record.parent.rmdir()
    except OSError:
        pass  # other jobs of the flow run are still recorded
