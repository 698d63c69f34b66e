"""A job's directory on the coordinator's host: ``$SKYPLANE_HOME/jobs/<job_id>/`` (0700).

What the coordinator keeps there, beside the local fleet's files (``pids.json``, ``gw-*/``)::

    request.json       the job document (0600): request with its credentials, API token, options;
                       removed by the coordinator as soon as it has read it
    resume.json        the request without credentials and secret settings, for
                       ``skyplane-provider resume`` (0600; removed with a fetched success)
    coordinator.json   {"job_id", "url", "pid"} while its API listens (0600)
    coordinator.log    its log
    result.json        the outcome of the finished job (0600), kept for inspection

Directories of finished jobs are pruned after a week (:func:`prune_finished_jobs`, run whenever a
coordinator is launched).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from skyplane_provider.paths import skyplane_home

log = logging.getLogger(__name__)

REQUEST = "request.json"
RESUME = "resume.json"
ADDRESS = "coordinator.json"
LOG = "coordinator.log"
RESULT = "result.json"
#: Finished jobs' directories (result, log) are kept this long for inspection, then pruned.
KEEP_FINISHED_SECONDS = 7 * 24 * 3600


def job_dir(job_id: str) -> Path:
    """The job's directory on this host (not created)."""
    return skyplane_home() / "jobs" / job_id


def coordinator_running(directory: Path) -> bool:
    """Whether the coordinator that ``coordinator.json`` in the job's ``directory`` names still runs:
    its pid is alive (not a zombie) and its command line names this directory (a recycled pid does
    not). A coordinator killed outright (SIGKILL, a lost host) leaves the file behind."""
    try:
        pid = int(json.loads((directory / ADDRESS).read_text()).get("pid", 0))
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError, AttributeError):
        return False
    return pid > 0 and state != "Z" and str(directory) in cmdline


def write_private(path: Path, doc: dict) -> None:
    """Write JSON readable by the owner only, new file then rename: a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def resumable_request(request_doc: dict) -> dict:
    """``TransferRequest.redacted()`` without what it hides: no credentials, no secret setting."""
    from skyplane_provider.redaction import REDACTED

    def keep(value):
        if isinstance(value, dict):
            return {k: keep(v) for k, v in value.items() if v != REDACTED}
        if isinstance(value, list):
            return [keep(v) for v in value if v != REDACTED]
        return value

    return {**keep(request_doc), "credentials": {}}


def prune_finished_jobs(keep_seconds: float = KEEP_FINISHED_SECONDS) -> list[str]:
    """Remove the directories of jobs that finished more than ``keep_seconds`` ago; their ids.

    Only directories with a ``result.json`` are touched: a running job, or one whose coordinator died
    without a result (``skyplane-provider resume`` continues it, ``deprovision`` reaps it), stays.
    """
    removed = []
    cutoff = time.time() - keep_seconds
    for directory in (skyplane_home() / "jobs").glob("*/"):
        try:
            finished = (directory / RESULT).stat().st_mtime
        except OSError:
            continue
        if finished < cutoff:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory.name)
    if removed:
        log.info("pruned %d finished job directories older than %.0f days", len(removed), keep_seconds / 86400)
    return removed
