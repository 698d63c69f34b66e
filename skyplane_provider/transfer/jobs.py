"""Detached transfer jobs: a transfer running in its own process, observed through files.

Airflow's deferrable mode (the worker slot is released while the triggerer polls) and long CLI runs
need the transfer to outlive the process that started it. ``start_job`` writes the request (0600: it
holds credentials) into the job's directory and starts ``python -m skyplane_provider.transfer.jobs``
in a new session; that runner owns the fleet, writes ``status.json`` as it goes and ``result.json``
at the end (after a success also ``manifest.json``: how each copy was verified), and tears the
fleet down on success, failure and SIGTERM (``cancel_job``). Finished jobs' directories are
pruned after a week (``prune_finished_jobs``, run whenever a job starts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import planner.errors as errors
from planner.errors import BadOptionError, SkyplaneError, TransferError
from skyplane_provider.paths import skyplane_home

from .request import TransferRequest
from .stats import Progress

log = logging.getLogger(__name__)

#: Finished jobs' directories (status, result, log) are kept this long for inspection, then pruned.
KEEP_FINISHED_SECONDS = 7 * 24 * 3600


def job_dir(job_id: str) -> Path:
    return skyplane_home() / "jobs" / job_id


def write_json_atomic(path: Path, doc: dict, mode: int = 0o600) -> None:
    """Write-new-then-rename, so a reader never sees half a document."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


@dataclass(frozen=True)
class JobHandle:
    """A started job: its id, directory and runner pid. Plain data, so it can go through XCom."""

    job_id: str
    directory: str
    pid: int

    def to_dict(self) -> dict:
        return {"job_id": self.job_id, "directory": self.directory, "pid": self.pid}

    @classmethod
    def from_dict(cls, d: dict) -> "JobHandle":
        return cls(d["job_id"], d["directory"], int(d["pid"]))


def start_job(request: TransferRequest) -> JobHandle:
    """Validate and plan here (bad input fails in the caller, before any gateway starts), then run
    the transfer in a detached process."""
    from .runner import Transfer

    if request.dry_run:
        raise BadOptionError("a dry run moves nothing and is not started as a job",
                             hint="call Transfer(request).dry_run() where you are")
    transfer = Transfer(request).prepare()  # fails fast on bad input
    prune_finished_jobs()
    request.job_id = transfer.job_id
    directory = job_dir(transfer.job_id)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_json_atomic(directory / "request.json", request.to_dict())
    write_json_atomic(directory / "status.json", {"state": "starting"})
    with open(directory / "job.log", "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "skyplane_provider.transfer.jobs", str(directory)],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
    return JobHandle(transfer.job_id, str(directory), proc.pid)


def job_status(handle: JobHandle) -> dict:
    """``{"state": starting|running|success|failed, "progress": {...}, ...}``."""
    directory = Path(handle.directory)
    for name in ("result.json", "status.json"):
        try:
            doc = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        if doc.get("state") in ("success", "failed") or _alive(handle.pid):
            return doc
    return {"state": "failed", "error": f"the job runner (pid {handle.pid}) exited without a result",
            "error_type": "TransferError"}


def job_result(handle: JobHandle) -> dict:
    """The stats dict of a finished job; re-raises its error as the same ``SkyplaneError`` class."""
    doc = job_status(handle)
    if doc["state"] == "success":
        return doc["stats"]
    if doc["state"] != "failed":
        raise TransferError(f"job {handle.job_id} has not finished (state {doc['state']})")
    cls = getattr(errors, doc.get("error_type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, SkyplaneError)):
        cls = TransferError
    raise cls(doc.get("error", "transfer failed"))


def cancel_job(handle: JobHandle, grace: float = 30.0) -> None:
    """Stop a job: SIGTERM lets the runner abort uploads and tear the fleet down; SIGKILL after
    ``grace`` seconds, then the leftovers of the job are reaped."""
    if not _alive(handle.pid):
        return
    os.kill(handle.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(handle.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(handle.pid):
        os.kill(handle.pid, signal.SIGKILL)


def prune_finished_jobs(keep_seconds: float = KEEP_FINISHED_SECONDS) -> list[str]:
    """Remove the directories of detached jobs that finished more than ``keep_seconds`` ago.

    Only directories with a ``result.json`` are touched: a running job, or one whose runner died
    without a result (which ``skyplane-provider deprovision`` reaps), is left alone. Returns the ids removed.
    """
    root = skyplane_home() / "jobs"
    removed = []
    cutoff = time.time() - keep_seconds
    for directory in root.glob("*/"):
        result = directory / "result.json"
        try:
            finished = result.stat().st_mtime
        except OSError:
            continue
        if finished < cutoff:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory.name)
    if removed:
        log.info("pruned %d finished job directories older than %.0f days", len(removed), keep_seconds / 86400)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _run(directory: Path) -> int:
    from .runner import Transfer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    request = TransferRequest.from_dict(json.loads((directory / "request.json").read_text()))
    (directory / "request.json").unlink()  # credentials live only as long as needed
    transfer = Transfer(request)
    signal.signal(signal.SIGTERM, lambda *_: transfer.cancel())

    def on_progress(p: Progress) -> None:
        write_json_atomic(directory / "status.json", {"state": "running", "progress": p.to_dict()})

    try:
        stats = transfer.run()
    except SkyplaneError as exc:
        write_json_atomic(directory / "result.json",
                          {"state": "failed", "error": str(exc), "error_type": type(exc).__name__})
        return 1
    except Exception as exc:  # noqa: BLE001 - the result file must say what happened
        log.exception("transfer crashed")
        write_json_atomic(directory / "result.json",
                          {"state": "failed", "error": repr(exc), "error_type": "TransferError"})
        return 1
    if transfer.manifest is not None:  # how each copy was verified, pruned with the job directory
        write_json_atomic(directory / "manifest.json", transfer.manifest)
    write_json_atomic(directory / "result.json", {"state": "success", "stats": stats.to_dict()})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one detached transfer job (internal).")
    parser.add_argument("directory")
    return _run(Path(parser.parse_args(argv).directory))


if __name__ == "__main__":
    sys.exit(main())
