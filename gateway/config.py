"""The daemon's configuration document (docs/gateway.md, "Daemon config"), loaded and checked.

``repr`` of a :class:`GatewayConfig` never shows a secret, so a config can be logged safely.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from planner.errors import BadOptionError, PlanError
from planner.plan import RegionProgram

from .bandwidth import check_rate
from .wire import DEFAULT_MAX_CHUNK, JOB_ID_SIZE

log = logging.getLogger(__name__)

_KNOWN = {"gateway_id", "job_id", "region", "program", "bind_host", "data_port", "control_port", "advertise_host",
          "control_host", "job_secret", "control_token", "encryption_key", "compress", "encrypt", "credentials",
          "ready_file", "queue_chunks", "log_file", "readers", "writers", "max_chunk_bytes", "read_ahead_bytes",
          "parent_pid", "coordinator_timeout", "loopback_clear", "workers", "supervised", "bwlimit",
          "control_tls", "handoff_fd", "events_fd"}


@dataclass(frozen=True)
class GatewayConfig:
    """A checked daemon config. Secrets are bytes and hidden from ``repr``."""

    gateway_id: str
    job_id: bytes
    region: str
    program: RegionProgram
    job_secret: bytes = field(repr=False)
    control_token: str = field(repr=False)
    encryption_key: bytes | None = field(default=None, repr=False)
    credentials: dict = field(default_factory=dict, repr=False)
    bind_host: str = "127.0.0.1"
    control_host: str = "127.0.0.1"
    data_port: int = 0
    control_port: int = 0
    compress: bool = True
    encrypt: bool = True
    ready_file: str | None = None
    queue_chunks: int = 8
    log_file: str | None = None
    readers: int = 8
    writers: int = 8
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK
    read_ahead_bytes: int = 256 * 1024 * 1024
    #: The process that started the gateway; when it is gone the gateway stops (see daemon.run).
    parent_pid: int | None = None
    #: Seconds without an authenticated control request after which the gateway stops (its
    #: coordinator is gone: the dead-man timer of remote fleets).
    coordinator_timeout: float = 120.0
    #: Frames to and from peers on a loopback address (a hop that never leaves the host) go without
    #: lz4 and encryption, checked by their CRC32C.
    loopback_clear: bool = True
    #: Worker processes behind the one data port and control endpoint (gateway/supervisor.py).
    workers: int = 1
    #: Set by a supervisor in its workers' configs: take data connections from ``handoff_fd`` instead of
    #: binding the data port, write events to ``events_fd``, and report the chunks held in /status.
    supervised: bool = False
    #: A supervised worker's end of its supervisor's hand-over socket (gateway/listener.py, HandOver).
    handoff_fd: int | None = None
    #: A supervised worker's pipe for its events (gateway/events.py).
    events_fd: int | None = None
    #: This gateway's share of the job's bandwidth cap, bytes per second (None: no cap); see
    #: gateway/bandwidth.py. ``POST /bwlimit`` changes it while the job runs.
    bwlimit: float | None = None
    #: Serve the control API over TLS with a fresh self-signed certificate (in the ready file as
    #: ``control_cert``, which clients pin): for a control API that other hosts reach (a coordinator
    #: on another gateway host), where the bearer token must not travel in clear.
    control_tls: bool = False

    @property
    def reads(self) -> bool:
        return any(p.source == "read" for p in self.program.partitions.values())

    @property
    def writes(self) -> bool:
        return any(p.write for p in self.program.partitions.values())

    @classmethod
    def load(cls, path: str) -> "GatewayConfig":
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except OSError as exc:
            raise BadOptionError(f"cannot read gateway config {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise BadOptionError(f"gateway config {path} is not JSON: {exc}") from exc
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: object) -> "GatewayConfig":
        """Check every field; raise :class:`BadOptionError` naming the first bad one."""
        if not isinstance(doc, dict):
            raise BadOptionError("the gateway config must be a JSON object")
        unknown = sorted(set(doc) - _KNOWN)
        if unknown:
            log.warning("ignoring unknown gateway config keys %s", unknown)
        try:
            program = RegionProgram.from_dict(_get(doc, "program", dict))
        except PlanError as exc:
            raise BadOptionError(f"gateway config: {exc}") from exc
        bind_host = doc.get("bind_host", "127.0.0.1")
        config = cls(
            gateway_id=_get(doc, "gateway_id", str),
            job_id=_hex(doc, "job_id", JOB_ID_SIZE),
            region=_get(doc, "region", str),
            program=program,
            job_secret=_hex(doc, "job_secret"),
            control_token=_get(doc, "control_token", str),
            encryption_key=_hex(doc, "encryption_key", 32) if doc.get("encryption_key") else None,
            credentials=doc.get("credentials") or {},
            bind_host=bind_host,
            control_host=doc.get("control_host") or bind_host,
            data_port=_port(doc, "data_port"),
            control_port=_port(doc, "control_port"),
            compress=_bool(doc, "compress", True),
            encrypt=_bool(doc, "encrypt", True),
            ready_file=doc.get("ready_file"),
            queue_chunks=_positive(doc, "queue_chunks", 8),
            log_file=doc.get("log_file"),
            readers=_positive(doc, "readers", 8),
            writers=_positive(doc, "writers", 8),
            max_chunk_bytes=_positive(doc, "max_chunk_bytes", DEFAULT_MAX_CHUNK),
            read_ahead_bytes=_positive(doc, "read_ahead_bytes", 256 * 1024 * 1024),
            parent_pid=_positive(doc, "parent_pid", 0) if "parent_pid" in doc else None,
            coordinator_timeout=_seconds(doc, "coordinator_timeout", 120.0),
            loopback_clear=_bool(doc, "loopback_clear", True),
            workers=_positive(doc, "workers", default_workers()),
            supervised=_bool(doc, "supervised", False),
            handoff_fd=_positive(doc, "handoff_fd", 0) if "handoff_fd" in doc else None,
            events_fd=_positive(doc, "events_fd", 0) if "events_fd" in doc else None,
            bwlimit=check_rate(doc.get("bwlimit"), "gateway config: 'bwlimit'"),
            control_tls=_bool(doc, "control_tls", False),
        )
        if program.region != config.region:
            raise BadOptionError(f"gateway config: program is for {program.region}, the gateway is in {config.region}")
        if not isinstance(config.credentials, dict):
            raise BadOptionError("gateway config: credentials must be an object")
        if len(config.job_secret) < 16:
            raise BadOptionError("gateway config: job_secret is too short", hint="use at least 128 random bits")
        if len(config.control_token) < 16:
            raise BadOptionError("gateway config: control_token is too short", hint="use at least 128 random bits")
        if config.encrypt and (config.reads or config.writes) and config.encryption_key is None:
            raise BadOptionError(f"gateway {config.gateway_id} reads or writes data in an encrypted job "
                                 "but has no encryption_key", hint="give it the job's key (64 hex digits)")
        return config


def _get(doc: dict, key: str, kind: type):
    v = doc.get(key)
    if not isinstance(v, kind) or (kind is str and not v):
        raise BadOptionError(f"gateway config: {key!r} must be a non-empty {kind.__name__}")
    return v


def _hex(doc: dict, key: str, size: int | None = None) -> bytes:
    v = _get(doc, key, str)
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raise BadOptionError(f"gateway config: {key!r} must be hex digits") from None
    if size is not None and len(raw) != size:
        raise BadOptionError(f"gateway config: {key!r} must be {2 * size} hex digits")
    return raw


def _port(doc: dict, key: str) -> int:
    v = doc.get(key, 0)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535:
        raise BadOptionError(f"gateway config: {key!r} must be a port number (0 = any free port)")
    return v


def _bool(doc: dict, key: str, default: bool) -> bool:
    v = doc.get(key, default)
    if not isinstance(v, bool):
        raise BadOptionError(f"gateway config: {key!r} must be true or false")
    return v


def _positive(doc: dict, key: str, default: int) -> int:
    v = doc.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise BadOptionError(f"gateway config: {key!r} must be a positive integer")
    return v


def default_workers() -> int:
    """One worker per CPU this process may use."""
    return len(os.sched_getaffinity(0))


def _seconds(doc: dict, key: str, default: float) -> float:
    v = doc.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1e9:
        raise BadOptionError(f"gateway config: {key!r} must be a positive number of seconds")
    return float(v)


def write_ready_file(path: str, doc: dict) -> None:
    """Write the ready file atomically (a reader sees nothing or the whole document)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
