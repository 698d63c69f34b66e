"""Which replica a reader in a given region should read from: the cheapest egress first.

Order, best first:
1. replicas whose egress price towards the caller is known (same region: 0; else the price grid's
   ``replica region -> caller region`` price), cheapest first;
2. ties broken by throughput (same region counts as infinite), then by catalogue order;
3. replicas the grid cannot price (a region outside the grid, ``local``, ``azure:unknown``), those
   of the caller's own cloud first.

Without a caller region the catalogue order stands (the origin first).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

from planner.errors import UnknownRegionError
from planner.grid import Grid

from .catalogue import Replica

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranked:
    """A replica with what it costs to read it from the caller's region."""

    replica: Replica
    cost_per_gb: float | None  # None: the grid cannot price this pair
    gbps: float

    def describe(self) -> str:
        price = "unknown price" if self.cost_per_gb is None else f"${self.cost_per_gb:.4f}/GB"
        return f"{self.replica.uri} ({self.replica.region}, {price})"


@functools.cache
def load_grid(path: str | None = None) -> Grid:
    """The price grid to rank with: a CSV (``src,dst,gbps,cost_per_gb``) or the packaged one; cached."""
    return Grid.from_csv(path) if path else Grid.load_default()


def _provider(region: str) -> str:
    return region.split(":", 1)[0]


def price(grid: Grid, src: str, dst: str) -> tuple[float | None, float]:
    """Egress USD/GB and Gbps for data leaving ``src`` towards ``dst``; (None, 0) if the grid has no link."""
    if src == dst:
        return 0.0, math.inf
    try:
        a, b = grid.check_region(src), grid.check_region(dst)
    except UnknownRegionError:
        return None, 0.0
    if a == b:
        return 0.0, math.inf
    link = grid.link(a, b)
    return (link.cost_per_gb, link.gbps) if link else (None, 0.0)


def rank_replicas(replicas: list[Replica], caller_region: str | None, grid: Grid | None) -> list[Ranked]:
    """``replicas`` best first for a reader in ``caller_region`` (see the module doc)."""
    if not caller_region:
        return [Ranked(r, None, 0.0) for r in replicas]
    ranked = [Ranked(r, *price(grid, r.region, caller_region)) for r in replicas]
    order = {id(r): i for i, r in enumerate(replicas)}

    def key(x: Ranked) -> tuple:
        if x.cost_per_gb is not None:
            return (0, x.cost_per_gb, -x.gbps, order[id(x.replica)])
        return (1, _provider(x.replica.region) != _provider(caller_region), 0.0, order[id(x.replica)])

    ranked.sort(key=key)
    log.debug("replicas for a reader in %s: %s", caller_region, "; ".join(x.describe() for x in ranked))
    return ranked
