"""What the user asked for: a :class:`TransferRequest`, validated before anything starts.

The request is plain data (JSON round trip) so that a detached job runner, an Airflow trigger or a
Prefect retry can carry it across processes.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.stores.uri import StoreURI, parse_uri
from planner.errors import BadOptionError
from planner.server_side import MODES as SERVER_SIDE_MODES
from skyplane_provider.coordinator.statecopy import parse_state_uri
from skyplane_provider.filters import Filter
from skyplane_provider.redaction import REDACTED, redact

MiB = 1024**2
DEFAULT_CHUNK_SIZE = 32 * MiB
#: The least bandwidth cap: below one pacer burst per second (gateway/bandwidth.py) a gateway would
#: send in rare bursts, and a typo such as ``200`` for ``200MiB/s`` is caught.
MIN_BWLIMIT = 64 * 1024
SOLVERS = ("direct", "widest", "ilp", "mst", "steiner")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB]?)\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """``"32MiB"``, ``"64M"``, ``"1G"`` or an int -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise BadOptionError(f"cannot read size {text!r}", hint="write e.g. 32MiB, 64M or 1G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_rate(text: str | int | float | None) -> int | None:
    """A bandwidth cap: ``"200MiB/s"``, ``"200M"``, ``"1.5GiB/s"`` or a number of bytes per second ->
    bytes per second (binary units, as rclone's ``--bwlimit``); None stays None (no cap)."""
    if text is None:
        return None
    hint = "write a rate in bytes per second such as 200MiB/s, 50M or 1.5GiB/s, or leave it unset for no cap"
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise BadOptionError(f"cannot read bandwidth cap {text!r}", hint=hint)
    if isinstance(text, str):
        body = text.strip()
        body = body[:-2] if body.lower().endswith("/s") else body
        try:
            rate = parse_size(body)
        except BadOptionError:
            raise BadOptionError(f"cannot read bandwidth cap {text!r}", hint=hint) from None
    else:
        rate = int(text) if math.isfinite(text) else 0
    if rate < MIN_BWLIMIT:
        raise BadOptionError(f"bandwidth cap {text!r} is below {MIN_BWLIMIT // 1024}KiB/s", hint=hint)
    return rate


@dataclass(repr=False)
class TransferRequest:
    """One copy (or sync) from ``src`` to one or more ``dsts``.

    ``credentials`` is a credentials document (see ``gateway.stores``): keys are store root URIs or
    schemes; one under ``provisioner_settings["credentials"]`` fills in the entries it lacks. ``plan``
    is an optional hand-written :class:`planner.plan.Plan` as a dict; otherwise the planner computes
    one with ``solver`` and the targets. ``bwlimit`` caps the bytes per second that leave each region's
    gateways together (text such as ``"200MiB/s"`` or a number; see :func:`parse_rate`).
    ``server_side``: ``"auto"`` lets the destination stores that can (probed) copy from the source
    themselves where the planner finds that cheaper at the requested speed, ``"always"`` insists (and
    fails naming a store that cannot), ``"never"`` routes every copy through gateways.
    ``repr``/``str`` show :meth:`redacted`: which stores have credentials, and the provisioner settings without their secrets.

    What is taken (rclone's filters, :mod:`skyplane_provider.filters`): ``include`` / ``exclude``
    globs and ``filter`` rules (``"+ glob"`` / ``"- glob"``), ``min_size`` / ``max_size`` and
    ``min_age`` / ``max_age``. Before paying: ``dry_run`` (list, diff and plan, move nothing:
    :meth:`Transfer.dry_run`) and ``max_cost_usd`` (a job whose predicted egress + VM + store request
    cost is over it is refused before any gateway starts). Mirror: ``delete`` (sync only) removes the
    destination objects the source no longer has, once every copy is verified; ``max_delete`` refuses
    a run that would delete more.
    """

    src: str
    dsts: list[str]
    recursive: bool = True
    sync: bool = False
    provisioner: str = "local"
    provisioner_settings: dict[str, Any] = field(default_factory=dict)
    solver: str = "direct"
    throughput_gbps: float | None = None
    max_cost_per_gb: float | None = None
    max_gateways_per_region: int = 1
    gateways_per_region: int | None = None
    connections: int | None = None
    compress: bool = True
    encrypt: bool = True
    chunk_size: int = DEFAULT_CHUNK_SIZE
    src_region: str | None = None
    dst_regions: list[str | None] | None = None
    credentials: dict[str, dict] = field(default_factory=dict)
    grid: str | None = None
    plan: dict | None = None
    job_id: str | None = None
    #: Continue the job ``job_id`` from its manifest (docs/coordinator.md): copies it records done are
    #: skipped, multipart uploads it records are continued from their recorded parts.
    resume: bool = False
    #: Where the per-object JSON Lines report goes (a local path); default ``report.jsonl`` in the job's
    #: directory, ``$SKYPLANE_HOME/jobs/<job_id>/``.
    report_uri: str | None = None
    #: Where a snapshot of the job's manifest is kept off the coordinator's host, so that a resume
    #: survives the host (``<state_uri>/<job_id>/manifest.sqlite3``; any store URI, e.g.
    #: ``s3://bucket/skyplane-state``); default: none (docs/coordinator.md, "Durable manifest").
    state_uri: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    filter: list[str] = field(default_factory=list)
    min_size: int | str | None = None
    max_size: int | str | None = None
    min_age: float | str | None = None
    max_age: float | str | None = None
    dry_run: bool = False
    max_cost_usd: float | None = None
    delete: bool = False
    max_delete: int | None = None
    bwlimit: int | None = None
    server_side: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.dsts, str):
            self.dsts = [self.dsts]
        self.dsts = list(self.dsts)
        self.chunk_size = parse_size(self.chunk_size)
        self.bwlimit = parse_rate(self.bwlimit)
        self._take_fleet_credentials()

    def _take_fleet_credentials(self) -> None:
        """A ``credentials`` document among the provisioner settings (a fleet that comes with the
        store credentials of its hosts) fills in the entries the request's own document lacks."""
        if not isinstance(self.provisioner_settings, dict) or "credentials" not in self.provisioner_settings:
            return
        self.provisioner_settings = dict(self.provisioner_settings)
        fleet = self.provisioner_settings.pop("credentials")
        if not isinstance(fleet, dict) or not isinstance(self.credentials, dict):
            raise BadOptionError("the credentials in the provisioner settings must be a credentials document",
                                 hint='a JSON object such as {"s3": {...}, "az://account": {...}}; see gateway.stores')
        self.credentials = {**fleet, **self.credentials}

    def validate(self) -> tuple[StoreURI, list[StoreURI]]:
        """Check every option; return the parsed source and destination URIs.

        Raises a :class:`planner.errors.BadInputError` subclass naming the bad part.
        """
        src = parse_uri(self.src)
        if not self.dsts:
            raise BadOptionError("no destination given", hint="pass at least one destination URI")
        dsts = [parse_uri(d) for d in self.dsts]
        if len({str(d) for d in dsts}) != len(dsts):
            raise BadOptionError("the same destination is given twice", hint="list each destination once")
        for d in dsts:
            if d.scheme == src.scheme and d.bucket == src.bucket and _overlaps(src.path, d.path):
                raise BadOptionError(f"destination {d} overlaps the source {src}",
                                     hint="copy to another bucket or a prefix outside the source")
        if self.solver not in SOLVERS:
            raise BadOptionError(f"unknown solver {self.solver!r}", hint=f"choose one of {', '.join(SOLVERS)}")
        if self.throughput_gbps is not None and self.max_cost_per_gb is not None:
            raise BadOptionError("give either a throughput target or a cost ceiling, not both")
        if self.throughput_gbps is not None and not self.throughput_gbps > 0:
            raise BadOptionError(f"throughput target must be positive, got {self.throughput_gbps}")
        if self.max_cost_per_gb is not None and self.max_cost_per_gb < 0:
            raise BadOptionError(f"cost ceiling must not be negative, got {self.max_cost_per_gb}")
        for name in ("max_gateways_per_region", "gateways_per_region", "connections"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 64):
                raise BadOptionError(f"{name} must be a whole number from 1 to 64, got {v!r}")
        if not MiB <= self.chunk_size <= 5 * 1024**3:
            raise BadOptionError(f"chunk size {self.chunk_size} bytes is out of range",
                                 hint="use 1MiB to 5GiB; 16-64MiB suits most transfers")
        if self.dst_regions is not None and len(self.dst_regions) != len(self.dsts):
            raise BadOptionError("give one destination region per destination (or none)")
        if self.resume and not self.job_id:
            raise BadOptionError("resume needs the job id of the job to continue",
                                 hint="pass the job_id the job was started with")
        if self.report_uri is not None:
            report_path(self.report_uri)
        if self.state_uri is not None:
            parse_state_uri(self.state_uri)
        if not isinstance(self.credentials, dict):
            raise BadOptionError("credentials must be a mapping of store root URI or scheme to settings")
        self.filters()
        self._check_guards()
        return src, dsts

    def filters(self, now: float | None = None) -> Filter:
        """The request's :class:`Filter` (ages counted back from ``now``, default: this moment);
        ``BadOptionError`` saying what to write for a bad glob, size or age."""
        return Filter.from_options(self.to_dict(), now=now)

    def _check_guards(self) -> None:
        """The cost guard and the mirror's options."""
        cap = self.max_cost_usd
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or math.isnan(cap)
                                or cap < 0):
            raise BadOptionError(f"max_cost_usd must be a number of US dollars, 0 or more, got {cap!r}",
                                 hint="write e.g. --max-cost-usd 5 (max_cost_usd=5.0)")
        for name in ("dry_run", "delete"):
            if not isinstance(getattr(self, name), bool):
                raise BadOptionError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.delete and not self.sync:
            raise BadOptionError("delete removes what the source no longer has, which only a sync compares",
                                 hint="use `skyplane-provider sync --delete` (sync=True, delete=True), or drop delete")
        if self.delete and not self.recursive:
            raise BadOptionError("delete mirrors a prefix, but the source is one object",
                                 hint="name a source prefix with recursive=True, or drop delete")
        if self.delete:
            dsts = [parse_uri(d) for d in self.dsts]
            for i, a in enumerate(dsts):
                for b in dsts[i + 1:]:
                    if (a.scheme, a.bucket) == (b.scheme, b.bucket) and _overlaps(a.path, b.path):
                        raise BadOptionError(f"destinations {a} and {b} overlap: the mirror of one would delete the "
                                             "copies in the other", hint="mirror to separate prefixes, or drop delete")
        n = self.max_delete
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise BadOptionError(f"max_delete must be a whole number, 0 or more, got {n!r}",
                                     hint="write e.g. --max-delete 100 (0: delete nothing)")
            if not self.delete:
                raise BadOptionError("max_delete limits the deletions of delete, which is not set",
                                     hint="add --delete (delete=True) to a sync, or drop max_delete")
        if self.server_side not in SERVER_SIDE_MODES:
            raise BadOptionError(f"unknown server-side copy mode {self.server_side!r}",
                                 hint=f"choose one of {', '.join(SERVER_SIDE_MODES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransferRequest":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise BadOptionError(f"unknown transfer options: {', '.join(sorted(unknown))}")
        return cls(**d)

    def redacted(self) -> dict:
        """The request without secrets, for logs and XCom: each credentials entry is hidden whole,
        provisioner settings lose the values of secret-named keys (:mod:`skyplane_provider.redaction`)."""
        d = self.to_dict()
        creds, settings = self.credentials, self.provisioner_settings
        d["credentials"] = {k: REDACTED for k in creds} if isinstance(creds, dict) else REDACTED
        d["provisioner_settings"] = redact(settings) if isinstance(settings, dict) else REDACTED
        return d

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"{type(self).__name__}({fields})"


def _overlaps(a: str, b: str) -> bool:
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or not a or not b or a.startswith(b + "/") or b.startswith(a + "/")


def report_path(uri: str) -> Path:
    """The local file a ``report_uri`` names (a path or a ``file://`` URI) whose directory exists."""
    if "://" in uri and not uri.startswith("file://"):
        raise BadOptionError(f"the report goes to a local file, not {uri}",
                             hint="pass a path; copy the report to a store afterwards if you need it there")
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.parent.is_dir():
        raise BadOptionError(f"the report's directory {path.parent} does not exist", hint="create it first")
    return path
