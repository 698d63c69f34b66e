"""Heuristic routes without a MILP: ``direct`` (a star from the source) and ``widest`` (one relay)."""

from __future__ import annotations

from collections.abc import Sequence

from planner.errors import InfeasiblePlanError
from planner.grid import Grid
from planner.model import tree_plan, tree_rate
from planner.plan import Plan


def direct(grid: Grid, src: str, dsts: Sequence[str], *, max_gateways: int, throughput_gbps: float | None,
           started: float) -> Plan:
    """Source gateways straight to every destination's gateways (a star for several destinations)."""
    tree = [(src, d) for d in dsts if d != src]
    for a, b in tree:
        if grid.link(a, b) is None:
            raise InfeasiblePlanError(f"the grid has no direct link {a} -> {b}",
                                      hint="use --solver widest, steiner or ilp to route through a relay")
    return tree_plan(grid, src, dsts, tree, solver="direct", max_gateways=max_gateways,
                     throughput_gbps=throughput_gbps, started=started)


def widest(grid: Grid, src: str, dst: str, *, max_gateways: int, throughput_gbps: float | None,
           started: float) -> Plan:
    """The fastest route with at most one relay (ties: the cheaper), over the regions of the grid."""
    gateways = {r: max_gateways for r in grid.regions}
    best: tuple[float, float, list[tuple[str, str]]] | None = None
    routes = [[(src, dst)]] if grid.link(src, dst) else []
    routes += [[(src, r), (r, dst)] for r in grid.regions
               if r not in (src, dst) and grid.link(src, r) and grid.link(r, dst)]
    for route in routes:
        rate, _ = tree_rate(grid, route, gateways)
        cost = sum(grid.cost(a, b) for a, b in route)
        if best is None or (rate, -cost) > (best[0], -best[1]):
            best = (rate, cost, route)
    if best is None:
        raise InfeasiblePlanError(f"the grid has no route {src} -> {dst} with at most one relay",
                                  hint="use --solver ilp")
    return tree_plan(grid, src, [dst], best[2], solver="widest", max_gateways=max_gateways,
                     throughput_gbps=throughput_gbps, started=started)
