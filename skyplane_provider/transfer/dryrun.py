"""What a transfer would do, before paying: :meth:`Transfer.dry_run` returns a :class:`DryRun`.

A dry run lists (filters applied), diffs (sync), plans and prices the job exactly as a run would,
then stops: no gateway starts, nothing is written or deleted. ``to_dict()`` is compact (counts, bytes,
route, predicted time and cost: an XCom value or a Prefect result); :meth:`DryRun.lines` names
every copy and deletion (the CLI prints them, the operator and the task log them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from .stats import human_bytes

if TYPE_CHECKING:
    from .runner import Transfer


@dataclass
class DryRun:
    """A prepared job's plan of action. ``copies``: ``(source URI, size, [destination URIs])`` per
    object to move; ``deletions``: ``(destination URI, size)`` per object a mirror would remove;
    ``cost``: the :class:`~.estimate.Estimate` as a dict (egress, VMs, store requests, total)."""

    job_id: str
    src: str
    dsts: list[str]
    objects: int
    bytes: int
    skipped_objects: int
    predicted_seconds: float | None
    cost_usd: float
    cost: dict
    plan: dict
    route: list[dict]
    filters: list[str] = field(default_factory=list)
    mirror: bool = False
    copies: list[tuple[str, int, list[str]]] = field(default_factory=list)
    deletions: list[tuple[str, int]] = field(default_factory=list)

    @classmethod
    def of(cls, transfer: "Transfer") -> "DryRun":
        """The dry run of a prepared transfer."""
        req, plan, est, dests = transfer.request, transfer.plan, transfer.estimate, transfer.dests
        src_root = transfer.source.store.root_uri
        return cls(
            job_id=transfer.job_id, src=req.src, dsts=list(req.dsts), objects=est.objects, bytes=est.bytes,
            skipped_objects=transfer.skipped, predicted_seconds=est.seconds, cost_usd=round(est.total_usd, 6),
            cost=est.to_dict(), plan=plan.summary(),
            route=[{"src": e.src, "dst": e.dst, "gbps": round(e.gbps, 3)} for e in plan.edges],
            filters=req.filters().describe(), mirror=req.delete,
            copies=[(f"{src_root}/{o.info.key}", o.info.size,
                     [f"{dests[t.dest_index].store.root_uri}/{t.key}" for t in o.targets]) for o in transfer.objects],
            deletions=[(f"{dests[d.dest_index].store.root_uri}/{d.key}", d.size) for d in transfer.deletions])

    def lines(self) -> Iterator[str]:
        """One line per copy and deletion, then the summary lines."""
        for src, size, dsts in self.copies:
            yield f"would copy {src} ({human_bytes(size)}) -> {', '.join(dsts)}"
        for dst, size in self.deletions:
            yield f"would delete {dst} ({human_bytes(size)})"
        yield from self.summary()

    def summary(self) -> list[str]:
        """What the run would move, by which route, in how long, for how much."""
        c = self.cost
        seconds = "unknown (no throughput figure for these regions)" if self.predicted_seconds is None \
            else f"{self.predicted_seconds:.1f} s"
        route = ", ".join(f"{e['src']} -> {e['dst']} ({e['gbps']} Gbps)" for e in self.route) \
            or f"within {self.plan['src']}"
        deletions = f", delete {len(self.deletions)}" if self.mirror else ""
        lines = [f"dry run: would move {self.objects} objects ({human_bytes(self.bytes)}), "
                 f"{self.skipped_objects} already up to date{deletions}; nothing was moved",
                 f"route ({self.plan['solver']}): {route}; predicted time {seconds}",
                 f"predicted cost ${c['total_usd']:.4f}: egress ${c['egress_usd']:.4f} + VMs ${c['vm_usd']:.4f} + "
                 f"store requests ${c['requests_usd']:.4f}"
                 + (f" (unpriced: {', '.join(c['unpriced'])} not in the price grid)" if c["unpriced"] else "")]
        if self.filters:
            lines.append("filters: " + "; ".join(self.filters))
        return lines

    def to_dict(self) -> dict:
        """Counts, bytes, route, predicted time and cost; no list of keys (an XCom value)."""
        return {"dry_run": True, "job_id": self.job_id, "src": self.src, "dsts": self.dsts, "objects": self.objects,
                "bytes": self.bytes, "skipped_objects": self.skipped_objects, "deleted_objects": len(self.deletions),
                "predicted_seconds": self.predicted_seconds, "cost_usd": self.cost_usd, "cost": self.cost,
                "plan": self.plan, "route": self.route, "filters": self.filters}
