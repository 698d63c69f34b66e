"""What a transfer reports: :class:`Progress` while it runs, :class:`TransferStats` at the end.

Both are compact on purpose (counts, bytes, seconds, a plan summary): they become XCom values and
Prefect results, where a list of every key would blow up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from planner.plan import Plan


@dataclass
class Progress:
    """A snapshot of a running transfer. While the source is still being listed (``listing_done``
    False) the totals are what was listed so far, and there is no ETA."""

    job_id: str
    bytes_done: int
    bytes_total: int
    objects_done: int
    objects_total: int
    seconds: float
    retries: int = 0
    phase: str = "transfer"
    listing_done: bool = True
    objects_failed: int = 0

    @property
    def rate_bytes_per_s(self) -> float:
        return self.bytes_done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        rate = self.rate_bytes_per_s
        if rate <= 0 or not self.listing_done:
            return None
        return (self.bytes_total - self.bytes_done) / rate

    @property
    def fraction(self) -> float:
        return 1.0 if self.bytes_total == 0 else self.bytes_done / self.bytes_total

    def line(self) -> str:
        """One human line: ``412.0 MiB / 1.0 GiB (40%), 3/10 objects, 95.1 MiB/s, ETA 6s``; while the
        source is still listed, ``412.0 MiB / 1.0+ GiB, 3/10+ objects, 95.1 MiB/s, listing``."""
        eta = self.eta_seconds
        more = "" if self.listing_done else "+"
        share = f" ({self.fraction:.0%})" if self.listing_done else ""
        failed = f", {self.objects_failed} failed" if self.objects_failed else ""
        return (f"{human_bytes(self.bytes_done)} / {human_bytes(self.bytes_total)}{more}{share}, "
                f"{self.objects_done}/{self.objects_total}{more} objects{failed}, "
                f"{human_bytes(self.rate_bytes_per_s)}/s, "
                + ("listing" if not self.listing_done else f"ETA {'?' if eta is None else f'{eta:.0f}s'}"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(rate_bytes_per_s=self.rate_bytes_per_s, eta_seconds=self.eta_seconds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Progress":
        """From :meth:`to_dict` (derived values and unknown keys are left out)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class TransferStats:
    """The result of one transfer.

    ``bytes`` counts source bytes moved (each object once, whatever the number of destinations);
    ``bytes_on_wire`` the frame bytes the source gateways sent (after compression and encryption);
    ``seconds`` / ``gbps`` the whole run, ``phases`` its seconds per phase (``prepare``: the
    coordinator's checks, first listing page and plan, before ``seconds`` start; ``provision``: fleet up
    and wired; ``move``; ``listing``, which overlaps both) and ``move_gbps`` the rate while data moved;
    ``gateways_replaced`` how many dead gateways were replaced by new ones;
    ``cost_usd`` the predicted egress of the plan for these bytes plus gateway VM time;
    ``egress_usd_actual`` the egress of the frame bytes that really crossed each region edge
    (:func:`egress_usd_actual`), each route entry's ``bytes_sent`` those bytes;
    ``verification`` how every copy was checked as it landed (``verified`` is True only when all
    were): ``{"objects": copies checked, "by": {"md5" | "crc32c" | "aead" | "chunk-crc32c" | "local": n}}``
    (see :mod:`skyplane_provider.coordinator.finish`); ``report`` the per-object report's
    ``{"path", "counts": {"copied", "skipped", "failed"}}``; ``first_byte_seconds`` how long after the
    start the coordinator learnt of the first chunk written (its objects written whole);
    ``resumed_copies`` the copies an earlier run of the job had done (a resumed job skips them);
    ``deleted_objects`` the destination objects a mirror (sync with
    delete) removed after every copy was verified; ``paths`` how many copies took each path:
    ``{"server-side": copied by the destination store itself, "gateways": moved through the fleet}``
    (the manifest names each copy's); ``work_skipped`` the frames that went without lz4 or encryption
    because it would have bought nothing, by reason (:func:`work_skipped`).
    """

    job_id: str
    src: str
    dsts: list[str]
    objects: int
    bytes: int
    bytes_on_wire: int
    seconds: float
    gbps: float
    verified: bool
    verification: dict
    retries: int
    plan: dict
    cost_usd: float
    egress_usd_predicted: float
    egress_usd_actual: float
    vm_usd: float
    skipped_objects: int = 0
    deleted_objects: int = 0
    chunks: int = 0
    provisioner: str = "local"
    route: list[dict] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    gateways_replaced: int = 0
    move_gbps: float = 0.0
    report: dict = field(default_factory=dict)
    first_byte_seconds: float | None = None
    resumed_copies: int = 0
    paths: dict[str, int] = field(default_factory=dict)
    work_skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def region_of(gateway_id: str) -> str:
    """The region of a gateway id ``REGION/N`` (``aws:us-east-1/0``, a replacement ``aws:us-east-1/r1``)."""
    return gateway_id.rsplit("/", 1)[0]


def wire_bytes_by_edge(counters: dict[str, dict]) -> dict[tuple[str, str], int]:
    """Frame bytes sent per region edge ``(src, dst)``, summed over every gateway (and, through each
    host's supervisor, every worker) from their ``/status`` counters keyed by gateway id: each
    gateway's ``bytes_sent_wire_to`` says how much it sent to each next-hop region."""
    edges: dict[tuple[str, str], int] = {}
    for gid, c in counters.items():
        for dst, n in (c.get("bytes_sent_wire_to") or {}).items():
            pair = (region_of(gid), dst)
            edges[pair] = edges.get(pair, 0) + int(n)
    return edges


#: Why the gateways left lz4 or encryption out of a frame, or a hop out of a chunk's way (their
#: ``skipped`` counters, named as in gateway/codec.py and gateway/node.py), in words.
SKIP_REASONS = {
    "hop_one_host": "hop left out (no frame, lz4, encryption or second CRC32C): source and destination on "
                    "one host, the source's gateway wrote the chunk itself",
    "lz4_loopback": "lz4 left out: the hop never leaves the host",
    "encryption_loopback": "encryption left out: the hop never leaves the host (CRC32C-checked instead)",
    "lz4_incompressible": "lz4 left out: the data did not shrink",
}


def work_skipped(counters: dict[str, dict]) -> dict[str, int]:
    """Frames sent without lz4 or encryption, and chunks written without a hop, by reason
    (``lz4_loopback``, ``encryption_loopback``, ``lz4_incompressible``, ``hop_one_host``: :data:`SKIP_REASONS`), summed over the gateways' ``/status`` counters
    keyed by gateway id (a multi-worker host's already sums its workers')."""
    total: dict[str, int] = {}
    for c in counters.values():
        for reason, n in (c.get("skipped") or {}).items():
            total[reason] = total.get(reason, 0) + int(n)
    return dict(sorted(total.items()))


def egress_usd_actual(plan: Plan, counters: dict[str, dict]) -> float:
    """The egress, in USD, of what the gateways really sent: the bytes on every edge of the route
    (relay hops too, and chunks sent again after a failure) times that edge's price in the plan
    (the planner's grid). ``counters`` are the gateways' last ``/status`` counters by gateway id."""
    return plan.egress_usd_sent(wire_bytes_by_edge(counters))
