"""Starting a job's coordinator on this host (the ``local`` provisioner's, and any client's default).

The job document (request with its credentials, API token, options) goes into the job's directory
as a 0600 file, never into argv or the environment; the coordinator deletes it once read. The
coordinator inherits this process's environment, so local gateways see the same SDK settings.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

from .jobdir import ADDRESS, LOG, REQUEST, RESULT, coordinator_running, job_dir, prune_finished_jobs, write_private

log = logging.getLogger(__name__)

#: Coordinator processes started ahead of their job document, by job id (:func:`start_ahead`).
_ahead: dict[str, subprocess.Popen] = {}
#: This process's ends of the store channels of the processes started ahead, by job id (:func:`store_channel`).
_channels: dict[str, socket.socket] = {}
#: Seconds :func:`drop_ahead` waits for an unused process started ahead to exit (it ends its imports first).
DROP_WAIT = 5.0


def start_ahead(job_id: str, gateways: int = 0, schemes: tuple[str, ...] = ()) -> None:
    """Start the process of ``job_id``'s coordinator now, before its job document exists
    (``--ahead``): it imports its modules (~0.1 CPU-s and as many seconds) while this process still
    checks the stores and plans, then waits on stdin. :func:`launch_local` writes the document and
    says go; :func:`drop_ahead` (a request refused, no job) closes its stdin and it exits having
    done nothing: no file, no gateway. ``gateways``: local gateway processes it starts at once to
    wait for their configs too (a job whose gateways will run on this host's loopback: its first
    gateway's imports are otherwise what the job waits for after the go); ``schemes``: the URI
    schemes of the job's stores, whose SDKs those gateways import at once (the client's first store
    operation through the first one waits for them). Best effort: a launch without one starts the
    process then."""
    if job_id in _ahead:
        return
    extra = ["--gateways-ahead", str(gateways)] if gateways > 0 else []
    mine = theirs = None
    if gateways > 0:  # the first gateway serves this process's store operations (gateway/store_channel.py)
        mine, theirs = socket.socketpair()
        extra += ["--store-fd", str(theirs.fileno())]
        if schemes:
            extra += ["--store-schemes", ",".join(schemes)]
    try:
        _ahead[job_id] = subprocess.Popen(
            [sys.executable, "-m", "skyplane_provider.coordinator", str(job_dir(job_id)), "--ahead", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            pass_fds=(theirs.fileno(),) if theirs is not None else ())
    except OSError as exc:
        log.debug("job %s: coordinator not started ahead: %s", job_id, exc)
        if mine is not None:
            mine.close()
        mine = None
    finally:
        if theirs is not None:
            theirs.close()
    if mine is not None:
        _channels[job_id] = mine


def store_channel(job_id: str) -> socket.socket | None:
    """This process's end of the socket on which ``job_id``'s first gateway, started ahead, runs store
    operations until the job launches (gateway/store_channel.py), or None when none was started."""
    return _channels.get(job_id)


def _close_channel(job_id: str) -> None:
    sock = _channels.pop(job_id, None)
    if sock is not None:
        sock.close()


def drop_ahead(job_id: str) -> None:
    """End the process :func:`start_ahead` started for ``job_id``, if it was not used, and reap it."""
    _close_channel(job_id)
    proc = _ahead.pop(job_id, None)
    if proc is None:
        return
    try:
        proc.stdin.close()
        proc.wait(DROP_WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def launch_local(job_id: str, document: dict, host: str | None = None) -> dict:
    """Start ``python -m skyplane_provider.coordinator`` detached (or tell the one started ahead to
    go); ``{"url", "pid", "cert"}`` once it listens. Its API listens on 127.0.0.1, or on ``host`` (an
    address of this host that clients on other hosts can reach) over TLS with a certificate of its
    own, which ``cert`` carries for pinning."""
    from planner.errors import CoordinatorError  # not before start_ahead: see cli/main.py

    if host:
        document = {**document, "host": host, "tls": True}
    _close_channel(job_id)  # the client's store work is done: the gateway stops serving it before its go
    prune_finished_jobs()
    directory = job_dir(job_id)
    # Two coordinators of one job would write one manifest: a retried task whose previous try's job
    # still runs (its process was killed, its coordinator was not) waits for it instead. One that only
    # keeps a finished job's outcome does not stand in the way.
    if coordinator_running(directory) and not (directory / RESULT).exists():
        drop_ahead(job_id)
        raise CoordinatorError(f"job {job_id} is still running under its coordinator from an earlier try",
                               hint="wait for it to finish (the next retry then resumes it), or stop it with "
                                    f"`skyplane-provider deprovision --job {job_id}`")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in (ADDRESS, RESULT):  # a resumed job's: neither the new coordinator's, nor a reason to prune
        (directory / stale).unlink(missing_ok=True)
    write_private(directory / REQUEST, document)
    # The first process exits once the API listens (see .process); the coordinator itself is in a
    # session of its own and nobody's child.
    status = _go(_ahead.pop(job_id, None))
    if status is None:
        with open(os.open(directory / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log_file:
            status = subprocess.call([sys.executable, "-m", "skyplane_provider.coordinator", str(directory)],
                                     stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                     start_new_session=True)
    if status != 0:
        (directory / REQUEST).unlink(missing_ok=True)
        tail = "\n".join((directory / LOG).read_text(errors="replace").splitlines()[-15:])
        raise CoordinatorError(f"the coordinator of job {job_id} did not start (its log {directory / LOG}):\n{tail}")
    return json.loads((directory / ADDRESS).read_text())


def _go(proc: subprocess.Popen | None) -> int | None:
    """Tell a process started ahead that its document is written; its exit status once its API listens
    (see :func:`launch_local`), or None when there is none or it died before the go."""
    if proc is None:
        return None
    try:
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    except OSError:  # BrokenPipeError: it is gone
        proc.wait()
        return None
    return proc.wait()
