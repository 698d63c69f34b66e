"""``skyplane-gateway --config FILE``: one gateway process (docs/gateway.md).

Loads the config, binds the data port and the control API, writes the ready file, then runs until
``POST /shutdown``, SIGTERM or SIGINT, until the process that started it (``parent_pid`` in the
config) is gone, or until no authenticated control request arrived for ``coordinator_timeout``
seconds, and exits 0 after a graceful stop. A bad config exits 2 with
the reason on stderr. Nothing secret is ever logged.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from planner.errors import SkyplaneError

if TYPE_CHECKING:
    from .config import GatewayConfig
    from .node import GatewayNode
    from .supervisor import Supervisor

log = logging.getLogger("gateway")

#: Seconds a gateway whose orchestrator died keeps working at most, to finish what it took on
#: (:func:`drain`), and how long it must have had nothing to do (no chunk, no peer connected: a
#: source closes its connections when it stops) before it stops sooner.
DRAIN_SECONDS = 10.0
DRAIN_QUIET = 1.0


def run(config: GatewayConfig, config_path: str) -> None:
    """Run a gateway until it is told to stop: one process, or (``workers`` > 1) a supervisor of
    worker processes (gateway/supervisor.py), each of which runs this with ``workers`` 1."""
    from .allocator import keep_chunk_memory
    from .config import write_ready_file
    from .control import ControlServer
    from .node import GatewayNode
    from .supervisor import Supervisor

    stop = threading.Event()
    keep_chunk_memory(config.max_chunk_bytes)
    node: GatewayNode | Supervisor
    if config.workers > 1 and not config.supervised:
        node = Supervisor(config, config_path)
        data_port = node.data_port
    else:
        node = GatewayNode(config)
        data_port = node.listener.port
    cert, tls = _control_tls(config, config_path) if config.control_tls else (None, None)
    control = ControlServer(config.control_host, config.control_port, node=node, token=config.control_token,
                            on_shutdown=stop.set, tls=tls)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    control.start()
    log.info("gateway %s (%s) up: data %s:%d, control %s:%d, %d worker(s), program %s", config.gateway_id,
             config.region, config.bind_host, data_port, config.control_host, control.port, config.workers,
             config.program.to_dict())
    if config.ready_file:
        ready = {"control_port": control.port, "data_port": data_port, "pid": os.getpid()}
        write_ready_file(config.ready_file, {**ready, "control_cert": cert} if cert else ready)
    while not stop.wait(1.0):
        if config.parent_pid and os.getppid() != config.parent_pid:
            # The orchestrator died without tearing us down (SIGKILL, OOM): nobody will ever read
            # our events, so keeping the job's secrets and ports alive only leaks them, once what we
            # took on is done (drain).
            log.warning("gateway %s: its orchestrator (pid %d) is gone; finishing what it holds, then stopping",
                        config.gateway_id, config.parent_pid)
            drain(node, stop)
            break
        if time.monotonic() - node.last_control > config.coordinator_timeout:
            # Nobody has asked anything for that long: the coordinator is gone (a remote fleet's
            # dead-man timer); a gateway nobody drives only holds the job's secrets and ports.
            log.warning("gateway %s: no control request for %.0f s; stopping", config.gateway_id,
                        config.coordinator_timeout)
            break
    log.info("gateway %s stopping", config.gateway_id)
    node.stop()
    control.shutdown()
    control.server_close()
    log.info("gateway %s stopped", config.gateway_id)


def drain(node: GatewayNode | Supervisor, stop: threading.Event, *, limit: float | None = None,
          quiet: float | None = None) -> None:
    """Wait, up to ``limit`` seconds (:data:`DRAIN_SECONDS`), until the gateway has had nothing to do
    for ``quiet`` seconds (:data:`DRAIN_QUIET`): chunks it read are sent or written, frames it
    received are written, the frames its senders hold are sent whole. A part written so is kept by the job's resume, which finds it at the store
    (skyplane_provider/coordinator/stored_parts.py); dropped, it is sent again. A remote fleet's
    gateways, whose dead-man timer waits far longer, finish their work the same way."""
    limit = DRAIN_SECONDS if limit is None else limit
    quiet = DRAIN_QUIET if quiet is None else quiet
    deadline = time.monotonic() + limit
    idle_since: float | None = None
    while not stop.is_set() and (now := time.monotonic()) < deadline:
        if node.busy():
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= quiet:
            return
        stop.wait(0.1)
    if not stop.is_set():
        log.warning("gateway %s: still busy after %.0f s of draining; stopping", node.config.gateway_id, limit)


def _control_tls(config: GatewayConfig, config_path: str):
    """``(certificate PEM, server context)`` for the control API (config ``control_tls``). Clients pin
    the certificate itself, not a name: the one in it is only informative."""
    from .tls import self_signed, server_context

    cert, key = self_signed(config.control_host)
    return cert, server_context(cert, key, os.path.dirname(os.path.abspath(config_path)))


#: New containers between two collections of the cyclic garbage collector's youngest generation
#: (Python's default: 700). A gateway holds the parsed specs of the chunks queued and in flight (a
#: few containers per object, up to tens of thousands of small objects) for seconds, and the default
#: collected over and over the same young survivors: half the CPU of parsing a POST /chunks
#: (11.6 -> 5.8 us per object, batches of 4,096 1 KiB objects, 100,000 held, microbenchmark).
GC_YOUNG_THRESHOLD = 100_000

#: Optional packages that store SDKs import when they are installed, for paths a gateway never
#: takes: azure-storage-blob imports aiohttp (through azure-core's async transport) only to recognise
#: that transport in its signing policy, ~90 ms; google-api-core imports grpc to map gRPC status
#: codes, ~35 ms (``python -X importtime``). A gateway speaks to every store through the SDK's
#: synchronous HTTP transport, and both SDKs take an ``ImportError`` here as "not installed", which a
#: gateway's own install (no Airflow, no Prefect) usually is anyway. In a gateway started ahead, these
#: imports stood between the process's start and its first store request.
UNUSED_OPTIONAL_PACKAGES = ("aiohttp", "grpc")


def _skip_unused_optional_packages() -> None:
    """Make :data:`UNUSED_OPTIONAL_PACKAGES` unimportable in this process (a ``None`` in
    ``sys.modules`` makes ``import`` raise ``ImportError``), unless something imported one already.
    Only the daemon's own processes do this (:func:`main`), never a process that imports the gateway
    as a library."""
    for name in UNUSED_OPTIONAL_PACKAGES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  (None: the import system's "absent")


def _log_to(path: str) -> None:
    """Send this process's stdout and stderr to ``path`` (appended, 0600), as the provisioner would have."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _prepare(store_fd: int | None, schemes: list[str]) -> None:
    """A gateway's work before its config: the job's client waits on the answers of the store channel
    (``store_fd``), whose first one needs a store's adapter and SDK (google-auth, azure-storage-blob;
    S3's own client), not on the daemon's own modules (0.1-0.2 s), which it needs only at the go. So the SDKs of ``schemes`` load
    at once (not at the first request), the channel is served as soon as they have, and the daemon's
    modules load after that, beside the client's requests."""
    from .stores import preload

    preload(schemes)
    if store_fd is not None:
        from . import store_channel

        store_channel.start_serving(store_fd)
    from . import control, node, supervisor  # noqa: F401 - run()'s, while the client works


def main(argv: list[str] | None = None) -> int:
    _skip_unused_optional_packages()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    parser = argparse.ArgumentParser(prog="skyplane-gateway", description="Run one skyplane gateway.")
    parser.add_argument("--config", required=True, help="the gateway's JSON config (see docs/gateway.md)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at DEBUG level (so does SKYPLANE_GATEWAY_DEBUG=1 in the environment)")
    parser.add_argument("--wait-for-config", action="store_true",
                        help="read a line from stdin before the config, and exit 0 at the end of input: the local "
                             "provisioner starts a gateway's process ahead of its config, so that its imports overlap "
                             "the coordinator's")
    parser.add_argument("--log-beside-config", action="store_true",
                        help="with --wait-for-config: at the go, append stdout and stderr to gateway.log in the "
                             "config's directory (a process started before its job's directory existed)")
    parser.add_argument("--store-fd", type=int, metavar="FD",
                        help="with --wait-for-config: serve the store operations of the job's client on this "
                             "inherited socket meanwhile (gateway/store_channel.py)")
    parser.add_argument("--preload", default="", metavar="SCHEMES",
                        help="with --wait-for-config: import the adapters (and SDKs) of these comma-separated store "
                             "schemes first (the job's URIs'; unknown ones are ignored)")
    args = parser.parse_args(argv)
    if args.wait_for_config:
        _prepare(args.store_fd, [s for s in args.preload.split(",") if s])
        if not sys.stdin.readline():
            return 0  # never needed: the job ended or provisioned fewer gateways
    from .config import GatewayConfig

    if args.log_beside_config:
        _log_to(os.path.join(os.path.dirname(os.path.abspath(args.config)), "gateway.log"))
    try:
        config = GatewayConfig.load(args.config)
    except SkyplaneError as exc:
        print(f"skyplane-gateway: {exc}", file=sys.stderr)
        return 2
    handler = logging.FileHandler(config.log_file) if config.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(process)d %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    debug = args.verbose or os.environ.get("SKYPLANE_GATEWAY_DEBUG") == "1"
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "azure", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(config, args.config)
    except (OSError, SkyplaneError) as exc:
        log.error("gateway %s could not start: %s", config.gateway_id, exc)
        return 1
    # The interpreter's last act is a full collection over every object still held (the chunk specs and
    # written-targets window of a small-object job): ~0.1 s between a job's last byte and the gateway's
    # exit, which the coordinator waits for. Frozen objects are left to the process's end.
    gc.freeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
