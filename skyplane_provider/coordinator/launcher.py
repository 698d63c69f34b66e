"""Starting a job's coordinator on this host (the ``local`` provisioner's, and any client's default).

The job document (request with its credentials, API token, options) goes into the job's directory
as a 0600 file, never into argv or the environment; the coordinator deletes it once read. The
coordinator inherits this process's environment, so local gateways see the same SDK settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from planner.errors import CoordinatorError

from .jobdir import ADDRESS, LOG, REQUEST, RESULT, coordinator_running, job_dir, prune_finished_jobs, write_private


def launch_local(job_id: str, document: dict, host: str | None = None) -> dict:
    """Start ``python -m skyplane_provider.coordinator`` detached; ``{"url", "pid", "cert"}`` once it
    listens. Its API listens on 127.0.0.1, or on ``host`` (an address of this host that clients on
    other hosts can reach) over TLS with a certificate of its own, which ``cert`` carries for pinning."""
    if host:
        document = {**document, "host": host, "tls": True}
    prune_finished_jobs()
    directory = job_dir(job_id)
    # Two coordinators of one job would write one manifest: a retried task whose previous try's job
    # still runs (its process was killed, its coordinator was not) waits for it instead. One that only
    # keeps a finished job's outcome does not stand in the way.
    if coordinator_running(directory) and not (directory / RESULT).exists():
        raise CoordinatorError(f"job {job_id} is still running under its coordinator from an earlier try",
                               hint="wait for it to finish (the next retry then resumes it), or stop it with "
                                    f"`skyplane-provider deprovision --job {job_id}`")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in (ADDRESS, RESULT):  # a resumed job's: neither the new coordinator's, nor a reason to prune
        (directory / stale).unlink(missing_ok=True)
    write_private(directory / REQUEST, document)
    with open(os.open(directory / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        # The first process exits once the API listens (see .process); the coordinator itself is in
        # a session of its own and nobody's child.
        status = subprocess.call([sys.executable, "-m", "skyplane_provider.coordinator", str(directory)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    if status != 0:
        (directory / REQUEST).unlink(missing_ok=True)
        tail = "\n".join((directory / LOG).read_text(errors="replace").splitlines()[-15:])
        raise CoordinatorError(f"the coordinator of job {job_id} did not start (its log {directory / LOG}):\n{tail}")
    return json.loads((directory / ADDRESS).read_text())
