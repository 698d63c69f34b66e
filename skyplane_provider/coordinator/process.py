"""The coordinator process: ``python -m skyplane_provider.coordinator JOB_DIR`` (docs/coordinator.md).

Started detached, in a session of its own, by :mod:`.launcher` (locally, or on the source region's
gateway host through the provisioner). It reads the job document from the job's directory and
deletes it (credentials never travel in argv or the environment), serves the job's HTTP API on a
random port with the document's token, writes its address, then runs the in-process pipeline
(``Transfer.execute()``) with its progress fed into the :class:`~.state.JobState`. Gateways of a
``local`` fleet are its children and stop when it is gone.

It needs no client: the job runs to its end, the fleet is torn down, the outcome is written to
``result.json`` and served until a client fetched it or ``result_linger`` seconds passed.
``POST /job/cancel`` and SIGTERM cancel the job (uploads aborted, fleet torn down, state ``cancelled``).

The process forks once at start: the first process waits until the API listens (or the job process
died) and exits, so the launcher learns the outcome of the start from its exit status and the
coordinator is nobody's child (no zombie in a long-lived client).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import select
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from .jobdir import ADDRESS, LOG, REQUEST, RESULT, RESUME, resumable_request, write_private

log = logging.getLogger(__name__)

#: Seconds a finished job's outcome stays served after a client fetched it (a second reader, e.g. a
#: task resumed after its trigger fired, may ask again).
FETCHED_GRACE = 2.0
#: Seconds a cancelled job's outcome stays served unfetched: whoever cancelled may ask for it, but
#: often gave up on the job (a trigger past its deadline, a killed task).
CANCELLED_LINGER = 30.0
#: Seconds the launching process waits for the API to listen.
START_TIMEOUT = 120.0
#: New containers between two collections of the cyclic garbage collector's youngest generation
#: (Python's default: 700). Every object in flight is a few containers (ObjectInfo, ObjectTask, Copy,
#: Piece, a chunk spec's dicts) that live for seconds, so the default collected thousands of times
#: over the same young survivors: two thirds of the CPU of chunking and of building chunk specs
#: (3.3 -> 1.3 and 2.4 -> 1.1 us per object, 100,000 small objects in flight, microbenchmark).
GC_YOUNG_THRESHOLD = 100_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skyplane_provider.coordinator",
                                     description="Run one transfer job's coordinator (started by Transfer.start()).")
    parser.add_argument("directory", type=Path, help="the job's directory, holding request.json")
    parser.add_argument("--foreground", action="store_true", help="do not fork (the caller detaches it)")
    parser.add_argument("--ahead", action="store_true",
                        help="started before the job document exists (launcher.start_ahead): import the job's "
                             "modules, then wait for a line on stdin (the go) and log to the job's directory; "
                             "exit 0 at the end of input")
    parser.add_argument("--gateways-ahead", type=int, default=0, metavar="N",
                        help="with --ahead: also start N local gateway processes before importing anything, to "
                             "wait for their configs (provisioners/spares.py: a job on this host's loopback)")
    parser.add_argument("--store-fd", type=int, metavar="FD",
                        help="with --gateways-ahead: an inherited socket the first gateway serves the client's store "
                             "operations on until its go (gateway/store_channel.py)")
    parser.add_argument("--store-schemes", default="", metavar="SCHEMES",
                        help="with --gateways-ahead: the job's stores' URI schemes (comma-separated), whose SDKs "
                             "the gateways import first")
    args = parser.parse_args(argv)
    if args.store_fd is not None and not (args.ahead and args.gateways_ahead > 0):
        os.close(args.store_fd)
        args.store_fd = None
    if args.foreground:
        return run(args.directory)
    started_r, started_w = os.pipe()  # the job process writes a byte once its API listens
    if args.ahead:
        go_r, go_w = os.pipe()
    child = os.fork()
    if child:
        os.close(started_w)
        if args.store_fd is not None:
            os.close(args.store_fd)  # the gateway's copy alone: the client sees the end when that gateway dies
        if args.ahead:
            os.close(go_r)
            if not _relay_go(go_w):
                os.waitpid(child, 0)  # it drops its gateways started ahead first
                os._exit(0)  # not needed: the request was refused, or the job launched otherwise
        # The launcher waits for this exit: no teardown of the modules imported (~20 ms at load 8),
        # nothing to flush (this process wrote nothing).
        os._exit(_wait_started(started_r, child))
    os.setsid()
    os.close(started_r)
    if args.ahead:
        # The job's process, nobody's child once the first exits: local gateways started now are its
        # children (they stop when it is gone), and import beside this process and the client.
        os.close(go_w)
        os.dup2(go_r, 0)
        os.close(go_r)
        if args.gateways_ahead > 0:
            from skyplane_provider.provisioners import spares

            spares.start_unnamed(args.directory, args.gateways_ahead, args.store_fd,
                                 tuple(s for s in args.store_schemes.split(",") if s))
            if args.store_fd is not None:
                os.close(args.store_fd)
        _import_job_modules()
        if not sys.stdin.readline():
            from skyplane_provider.provisioners import spares

            spares.drop()  # none left behind once the first process exits
            return 0
        _detach_io(args.directory / LOG)
    return run(args.directory, started_w)


def _relay_go(go_w: int) -> bool:
    """In the first process of one started ahead: pass the launcher's go (a line on stdin) to the job's
    process; False at the end of input (no go: that process is told so by the pipe closing)."""
    line = sys.stdin.buffer.readline()
    if line:
        os.write(go_w, line)
    os.close(go_w)
    return bool(line)


def _import_job_modules() -> None:
    """What :func:`run` imports, ahead of the go (the launcher's client meanwhile plans the job)."""
    import planner.plan  # noqa: F401
    import skyplane_provider.provisioners.local  # noqa: F401
    import skyplane_provider.transfer.runner  # noqa: F401

    from . import server, state  # noqa: F401


def _detach_io(log_path: Path) -> None:
    """stdin from /dev/null (the launcher's pipe closes), stdout and stderr to the job's log, as the
    launcher gives them to a coordinator it starts once the document is written."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for fd in (1, 2):
        os.dup2(out, fd)
    os.close(out)


def _wait_started(started_r: int, child: int) -> int:
    """In the launching process: 0 once the child's API listens (a byte on ``started_r``), 1 if it died
    first (the pipe's end of file) or took too long."""
    ready, _, _ = select.select([started_r], [], [], START_TIMEOUT)
    if ready and os.read(started_r, 1):
        return 0
    if not ready:
        os.kill(child, signal.SIGTERM)
    return 1


def run(directory: Path, started: int | None = None) -> int:
    """Serve and run the job whose document is in ``directory``; 0 when it succeeded. ``started``: a
    pipe's end to write a byte to (then close) once the API listens and its address is written."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    doc = json.loads((directory / REQUEST).read_text())
    (directory / REQUEST).unlink()  # the credentials live no longer on disk than needed
    _start_gateways_ahead(doc)
    from skyplane_provider.transfer.request import TransferRequest
    from skyplane_provider.transfer.runner import Transfer

    from .server import CoordinatorServer
    from .state import JobState

    debug = os.environ.get("SKYPLANE_COORDINATOR_DEBUG") == "1"  # as SKYPLANE_GATEWAY_DEBUG for gateways
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # At INFO azure-core logs every HTTP request and response in full: a job's log would be mostly that.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    request = TransferRequest.from_dict(doc["request"])
    write_private(directory / RESUME, resumable_request(request.redacted()))
    job = JobState(request.job_id)
    host = doc.get("host", "127.0.0.1")
    # A cloud VM's public address is a NAT's: it binds its private one and is reached at the public one.
    bind, port = doc.get("bind_host") or host, int(doc.get("port") or 0)
    cert = None
    if doc.get("tls"):
        server, cert = _tls_server(directory, job, doc["token"], host, bind, port)
    else:
        server = CoordinatorServer(job, doc["token"], host=host)
    server.start()
    url = server.url_at(host)
    handed = _handed_provisioner(request, doc)
    transfer = Transfer(request, provisioner=handed, progress=lambda p: job.progress(p.to_dict()),
                        checked=bool(doc.get("checked")), prepared=doc.get("prepared"))
    job.take_credentials(transfer.push_credentials)  # POST /job/credentials: renewed entries, to the gateways

    def on_signal(signum: int, frame) -> None:
        log.warning("job %s: signal %d, cancelling", job.job_id, signum)
        job.cancel_requested.set()
        if job.finished.is_set():
            job.fetched.set()  # told to go: stop keeping the outcome for a client (deprovision)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    threading.Thread(target=_relay_cancel, args=(job, transfer), name="cancel", daemon=True).start()
    write_private(directory / ADDRESS, {"job_id": job.job_id, "url": url, "pid": os.getpid(), "cert": cert,
                                        "created_at": datetime.now(timezone.utc).isoformat()})
    if started is not None:
        os.write(started, b"1")
        os.close(started)
    log.info("job %s: coordinator %d serving on %s", job.job_id, os.getpid(), url)
    job.running()
    try:
        try:
            stats = transfer.execute()
        finally:  # before the outcome is out: whoever reads it finds no process of the job left
            _drop_gateways_ahead(doc)
        job.succeed(stats.to_dict())
    except BaseException as exc:  # noqa: BLE001 - every ending is an outcome the clients must see
        cancelled = job.cancel_requested.is_set()
        log.log(logging.WARNING if cancelled else logging.ERROR, "job %s %s: %s", job.job_id,
                "cancelled" if cancelled else "failed", exc, exc_info=not cancelled and not _expected(exc))
        job.fail(exc, failed_objects=getattr(exc, "failed_objects", None), cancelled=cancelled)
    finally:
        if handed is not None:  # also when no chunk needed a gateway, or prepare() failed
            handed.fleet.teardown()
    write_private(directory / RESULT, job.final_document())
    linger = float(doc.get("result_linger", 3600))
    fetched = job.fetched.wait(min(linger, CANCELLED_LINGER) if job.state == "cancelled" else linger)
    if fetched:  # keep it for a second reader, unless the one that read it was the only one
        job.last_read.wait(FETCHED_GRACE)
    server.stop()
    if _mine(directory / ADDRESS):  # not a resumed job's newer coordinator's
        (directory / ADDRESS).unlink()
    log.info("job %s: coordinator exits (%s)", job.job_id, job.state)
    if fetched and job.state == "succeeded":
        _forget(directory)  # the client has the stats; a failed job's files stay for inspection and resume
    gc.freeze()  # no final collection over what the job left behind (gateway/daemon.py: main)
    return 0 if job.state == "succeeded" else 1


def _start_gateways_ahead(doc: dict) -> None:
    """A local job whose plan came with its document: start its gateways' processes now, so that their
    imports run beside this process's (docs/coordinator.md, "Start-up"). Best effort: the fleet starts
    any it lacks, as it always did."""
    request, prepared = doc["request"], doc.get("prepared") or {}
    plan, listing = prepared.get("plan"), prepared.get("listing")
    if request.get("provisioner") != "local" or plan is None or doc.get("fleet"):
        return
    if listing is not None and not any(copy for _, _, copy, _ in listing["decisions"]):
        return  # a full listing with nothing to copy (a sync up to date, a mirror that only deletes)
    from planner.plan import Plan
    from skyplane_provider.provisioners import spares
    from skyplane_provider.provisioners.local import LocalProvisioner

    try:
        plan = Plan.from_dict(plan)
        ids = [(f"{region}/{i}", region) for region in plan.programs() for i in range(plan.gateways[region])]
        provisioner = LocalProvisioner(**request.get("provisioner_settings", {}))
        if provisioner.loopback_fleet:  # its first gateways take those started before the plan existed
            ids = ids[spares.unnamed_held():]
        provisioner.start_ahead(request["job_id"], [g for g, _ in ids], [r for _, r in ids])
    except Exception as exc:  # noqa: BLE001 - only a head start is lost; provisioning reports real problems
        log.debug("job %s: gateways not started ahead: %s", request.get("job_id"), exc)


def _drop_gateways_ahead(doc: dict) -> None:
    if doc["request"].get("provisioner") == "local":
        from skyplane_provider.provisioners import spares

        spares.drop()


def _handed_provisioner(request, doc: dict):
    """For a coordinator on a gateway host: the fleet the client started and handed over in the job
    document (``fleet``), as the provisioner the pipeline provisions from; None otherwise."""
    if not doc.get("fleet"):
        return None
    from skyplane_provider.provisioners.handed import HandedFleet, HandedProvisioner

    return HandedProvisioner(request.provisioner, HandedFleet(request.job_id, doc["fleet"]), doc.get("hourly_prices"))


def _mine(address: Path) -> bool:
    try:
        return json.loads(address.read_text()).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False


def _forget(directory: Path) -> None:
    for name in (RESULT, LOG, RESUME):
        (directory / name).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass  # something else of the job is still there (a fleet's files, a manifest)


def _tls_server(directory: Path, job, token: str, host: str, bind: str, port: int):
    """The API over TLS on ``(bind, port)`` with a fresh self-signed certificate for ``host`` (clients
    pin it); the key file lives only while ``ssl`` loads it."""
    from gateway.tls import self_signed, server_context

    from .server import CoordinatorServer

    cert, key = self_signed(host)
    return CoordinatorServer(job, token, host=bind, port=port, tls=server_context(cert, key, directory)), cert


def _relay_cancel(job, transfer) -> None:
    job.cancel_requested.wait()
    transfer.cancel()


def _expected(exc: BaseException) -> bool:
    from planner.errors import SkyplaneError

    return isinstance(exc, SkyplaneError)

