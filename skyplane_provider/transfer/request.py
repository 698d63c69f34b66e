"""What the user asked for: a :class:`TransferRequest`, validated before anything starts.

The request is plain data (JSON round trip) so that a detached job runner, an Airflow trigger or a
Prefect retry can carry it across processes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.stores.uri import StoreURI, parse_uri
from planner.errors import BadOptionError
from skyplane_provider.redaction import REDACTED, redact

MiB = 1024**2
DEFAULT_CHUNK_SIZE = 32 * MiB
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


@dataclass(repr=False)
class TransferRequest:
    """One copy (or sync) from ``src`` to one or more ``dsts``.

    ``credentials`` is a credentials document (see ``gateway.stores``): keys are store root URIs or
    schemes; one under ``provisioner_settings["credentials"]`` fills in the entries it lacks. ``plan``
    is an optional hand-written :class:`planner.plan.Plan` as a dict; otherwise the planner computes
    one with ``solver`` and the targets. ``repr``/``str`` show :meth:`redacted`:
    which stores have credentials, and the provisioner settings without their secrets.
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

    def __post_init__(self) -> None:
        if isinstance(self.dsts, str):
            self.dsts = [self.dsts]
        self.dsts = list(self.dsts)
        self.chunk_size = parse_size(self.chunk_size)
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
        if not isinstance(self.credentials, dict):
            raise BadOptionError("credentials must be a mapping of store root URI or scheme to settings")
        return src, dsts

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
