"""What a prepared transfer will cost before it runs: egress + gateway VMs + store requests.

The dry run prints this estimate and ``max_cost_usd`` compares its total with the budget, both
before any gateway starts. Egress is the plan's price of the bytes to move (as the stats' predicted
egress); VM time is every gateway's hourly price (from the provisioner: local processes are free)
for the plan's predicted transfer time plus the start-up the clouds bill
(:data:`planner.providers.VM_STARTUP_SECONDS`); requests are counted per store and priced with
:mod:`planner.store_requests`. Regions outside the price grid (an Azure store whose region was not
named) have no price: they are listed in ``unpriced``, and a budget cannot be checked against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import planner
from planner.errors import CostLimitError, UnknownRegionError
from planner.plan import Plan
from planner.providers import VM_STARTUP_SECONDS, is_cloud
from planner.store_requests import RequestCounts, requests_usd
from skyplane_provider.coordinator.chunker import part_size_for

if TYPE_CHECKING:  # the transfer's types, for hints only (they import this module)
    from .chunks import ObjectJob
    from .endpoints import Destination, Source
    from .mirror import Deletion

#: Keys one LIST request returns at most on S3 and GCS (Azure: 5,000): listings are counted in these.
KEYS_PER_LIST_REQUEST = 1000


def list_requests(keys_listed: int) -> int:
    """LIST requests a listing of ``keys_listed`` keys takes (one even when it finds nothing)."""
    return max(1, math.ceil(keys_listed / KEYS_PER_LIST_REQUEST))


def copy_requests(size: int, part: int | None) -> tuple[int, int]:
    """``(reads at the source, writes at each destination)`` for one object of ``size`` bytes cut
    into parts of ``part`` bytes (None: written whole): a GET per part; a PUT for an object written
    whole, and for one in parts a request to begin, one per part and one to complete."""
    if part is None:
        return 1, 1
    parts = math.ceil(size / part)
    return parts, parts + 2


def count_requests(source: "Source", dests: list["Destination"], listing: RequestCounts,
                   present: list[int] | None, objects: list["ObjectJob"], deletions: list["Deletion"],
                   chunk_size: int, server_side: tuple[str, ...] = ()) -> dict[str, tuple[str, RequestCounts]]:
    """Requests per store (root URI -> (region, counts)) of a prepared job: the source's listing
    (``listing``) and reads, each destination's listing (sync: ``present``, the objects each holds), writes, one metadata
    read per copy (verification) and deletions. A copy to a destination whose region the plan
    copies server-side (``server_side``) reads nothing through us: its writes are the store's COPY
    requests, priced as PUTs (as S3 and GCS price them)."""
    tally: dict[str, tuple[str, RequestCounts]] = {}

    def add(uri: str, region: str, counts: RequestCounts) -> None:
        tally.setdefault(uri, (region, RequestCounts()))[1].add(counts)

    add(source.store.root_uri, source.region, listing)
    for i, d in enumerate(dests):
        add(d.store.root_uri, d.region, RequestCounts(list=list_requests(present[i]) if present else 0))
    caps = [d.store.capabilities for d in dests]
    for obj in objects:
        reads, writes = copy_requests(obj.info.size, part_size_for(obj.info.size, chunk_size, caps))
        if any(dests[t.dest_index].region not in server_side for t in obj.targets):
            add(source.store.root_uri, source.region, RequestCounts(read=reads))
        for t in obj.targets:
            d = dests[t.dest_index]
            add(d.store.root_uri, d.region, RequestCounts(write=writes, head=1))
    for x in deletions:
        d = dests[x.dest_index]
        add(d.store.root_uri, d.region, RequestCounts(delete=1))
    return tally


@dataclass
class Estimate:
    """The predicted cost of one run. ``seconds`` is None when the plan has no throughput figure
    (regions outside the grid): VM time is then the start-up alone. ``requests`` is per store
    (root URI): its region and its :class:`RequestCounts`."""

    objects: int
    bytes: int
    seconds: float | None
    egress_usd: float
    vm_usd: float
    requests_usd: float
    requests: dict[str, dict] = field(default_factory=dict)
    unpriced: list[str] = field(default_factory=list)

    @property
    def total_usd(self) -> float:
        return self.egress_usd + self.vm_usd + self.requests_usd

    def breakdown(self) -> str:
        """``$0.0123 (egress $0.0100 + VMs $0.0020 + store requests $0.0003)``."""
        text = (f"${self.total_usd:.4f} (egress ${self.egress_usd:.4f} + VMs ${self.vm_usd:.4f} + "
                f"store requests ${self.requests_usd:.4f})")
        return text + (f", unpriced: {', '.join(self.unpriced)} not in the price grid" if self.unpriced else "")

    def to_dict(self) -> dict:
        return {"objects": self.objects, "bytes": self.bytes, "seconds": self.seconds,
                "egress_usd": round(self.egress_usd, 6), "vm_usd": round(self.vm_usd, 6),
                "requests_usd": round(self.requests_usd, 6), "total_usd": round(self.total_usd, 6),
                "requests": self.requests, "unpriced": list(self.unpriced)}


def estimate(plan: Plan, size_bytes: int, objects: int, store_requests: dict[str, tuple[str, RequestCounts]], *,
             hourly_price: Callable[[str], float], grid_csv: str | None = None) -> Estimate:
    """The cost of moving ``objects`` objects (``size_bytes``) on ``plan`` with ``store_requests``
    (root URI -> (region, counts)); ``hourly_price(region)`` is one gateway's USD per hour there."""
    seconds = plan.predicted_seconds(size_bytes) if size_bytes else 0.0
    seconds = None if math.isinf(seconds) else seconds
    vm_hours = ((seconds or 0.0) + VM_STARTUP_SECONDS) / 3600.0 if plan.gateways and size_bytes else 0.0
    vm = sum(n * hourly_price(region) * vm_hours for region, n in plan.gateways.items())
    priced = {uri: {"region": region, **counts.to_dict(), "usd": round(requests_usd(region, counts), 6)}
              for uri, (region, counts) in store_requests.items()}
    return Estimate(objects=objects, bytes=size_bytes, seconds=None if seconds is None else round(seconds, 3),
                    egress_usd=plan.egress_usd(size_bytes), vm_usd=vm,
                    requests_usd=sum(requests_usd(region, c) for region, c in store_requests.values()),
                    requests=priced, unpriced=unpriced_regions(plan.summary(), grid_csv))


def check_budget(est: Estimate, max_cost_usd: float | None) -> None:
    """Refuse (``CostLimitError``) a job whose predicted total is over ``max_cost_usd``, or whose
    cost cannot be predicted because a region has no price."""
    if max_cost_usd is None:
        return
    if est.unpriced:
        raise CostLimitError(f"max_cost_usd ${max_cost_usd:g} cannot be checked: {', '.join(est.unpriced)} "
                             "is not in the price grid",
                             hint="name the region (--src-region / --dst-region URI=TAG, src_region= / "
                                  "dst_regions=) or plan on a grid that prices it (--grid)")
    if est.total_usd > max_cost_usd:
        raise CostLimitError(
            f"the job's predicted cost {est.breakdown()} for {est.objects} objects ({est.bytes} bytes) is over "
            f"max_cost_usd ${max_cost_usd:g}",
            hint="raise --max-cost-usd (max_cost_usd=), move less (--include / --exclude / --max-size, or sync), "
                 "or ask for a cheaper route (--solver ilp --max-cost-per-gb USD)")


def unpriced_regions(plan: dict, grid_csv: str | None) -> list[str]:
    """Cloud regions of ``plan`` (a ``Plan.summary()``) that the price grid does not hold, such as
    ``azure:unknown`` for an Azure store whose region was not named: a cost of $0 there means
    "unknown", not "free". Local and testbed regions cost nothing and are not listed."""
    clouds = [r for r in dict.fromkeys([plan["src"], *plan["dsts"], *plan["gateways"]]) if is_cloud(r)]
    if not clouds:
        return []  # no grid to parse (~30 ms) for a local or testbed job
    grid = planner.Grid.from_csv(grid_csv) if grid_csv else planner.Grid.load_default()
    missing = []
    for region in clouds:
        try:
            grid.check_region(region)
        except UnknownRegionError:
            missing.append(region)
    return missing
