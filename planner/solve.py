"""``solve()``: the planner's one entry point, from a job description to a validated :class:`Plan`."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from planner.errors import BadOptionError, InfeasiblePlanError
from planner.milp import BACKENDS
from planner.plan import Plan

if TYPE_CHECKING:  # imported by solve(): a gateway imports this package, never the grid (~30 ms of its start)
    from planner.grid import Grid

log = logging.getLogger(__name__)

SOLVERS = ("direct", "widest", "ilp", "mst", "steiner")
#: Only the VM start-up overhead depends on the size (see ``providers.VM_STARTUP_SECONDS``); 1 TB
#: makes it a small share of the cost, as for the bulk transfers overlays are for.
DEFAULT_SIZE_GB = 1000.0


def solve(src: str, dsts: Sequence[str], *, solver: str = "direct", throughput_gbps: float | None = None,
          max_cost_per_gb: float | None = None, max_gateways_per_region: int = 1,
          size_gb: float = DEFAULT_SIZE_GB, grid: Grid | None = None, backend: str = "cbc") -> Plan:
    """Plan a transfer of ``size_gb`` from region ``src`` to every region in ``dsts``.

    Solvers: ``direct`` (source straight to each destination), ``widest`` (unicast only: the fastest
    route with at most one relay), ``mst`` and ``steiner`` (the cheapest tree without / with relay
    regions; for one destination the direct link / the cheapest path), and ``ilp`` (a MILP over
    flows, connections and gateways; a partitioned multicast for several destinations).

    ``throughput_gbps`` is a target (for multicast: the rate every destination receives at);
    ``max_cost_per_gb`` a ceiling on the egress USD per GB of source data. The ILP minimises egress +
    VM cost under the target, or maximises throughput under the ceiling, or without either returns
    the fastest plan (then the cheapest at that speed). Heuristics use ``max_gateways_per_region``
    gateways per region, or the fewest that reach the target; they raise
    :class:`InfeasiblePlanError` when their route misses a target or ceiling.

    Region tags may carry a GCP zone or differ in case; the plan keeps the caller's tags for the
    source and destinations (a destination given twice, in any spelling, is planned once).
    """
    _check_options(solver, throughput_gbps, max_cost_per_gb, max_gateways_per_region, size_gb, backend, dsts)
    if grid is None:
        from planner.grid import Grid

        grid = Grid.load_default()
    started = time.perf_counter()
    names = {grid.check_region(src): src}
    source = next(iter(names))
    targets = []
    for d in dsts:
        canon = grid.check_region(d)
        if canon not in targets:
            targets.append(canon)
            names.setdefault(canon, d)
    plan = _dispatch(grid, source, targets, solver=solver, throughput_gbps=throughput_gbps,
                     max_cost_per_gb=max_cost_per_gb, max_gateways=max_gateways_per_region,
                     size_gb=size_gb, backend=backend, started=started)
    if max_cost_per_gb is not None and plan.cost_per_gb > max_cost_per_gb + 1e-9:
        raise InfeasiblePlanError(
            f"the {solver} route costs ${plan.cost_per_gb:.4f}/GB of egress, above the ceiling of "
            f"${max_cost_per_gb:g}/GB", hint="raise --max-cost-per-gb or use --solver ilp")
    log.info("planned %s -> %s with %s in %.3f s: %.3f Gbps, $%.4f/GB", src, ", ".join(dsts), solver,
             plan.solve_seconds, plan.throughput_gbps, plan.cost_per_gb)
    return _renamed(plan, names)


def _dispatch(grid: Grid, src: str, dsts: list[str], *, solver: str, throughput_gbps: float | None,
              max_cost_per_gb: float | None, max_gateways: int, size_gb: float, backend: str,
              started: float) -> Plan:
    from planner import multicast, unicast

    common = dict(max_gateways=max_gateways, throughput_gbps=throughput_gbps, started=started)
    routed = [d for d in dsts if d != src]
    if solver == "direct" or not routed:
        return unicast.direct(grid, src, dsts, **common)
    if solver == "widest":
        if len(routed) > 1:
            raise BadOptionError("the widest solver routes one destination",
                                 hint="use direct, mst, steiner or ilp for several destinations")
        return _with_dsts(unicast.widest(grid, src, routed[0], **common), dsts)
    if solver == "mst":
        return multicast.mst(grid, src, dsts, **common)
    if solver == "steiner":
        return multicast.steiner(grid, src, dsts, **common)
    targets = dict(throughput_gbps=throughput_gbps, max_cost_per_gb=max_cost_per_gb, started=started)
    if len(routed) == 1:
        from planner.unicast_ilp import UnicastMILP

        plan = UnicastMILP(grid, src, routed[0], max_gateways=max_gateways, size_gb=size_gb,
                           backend=backend).solve(**targets)
        return _with_dsts(plan, dsts)
    from planner.multicast_ilp import MulticastMILP

    return MulticastMILP(grid, src, dsts, max_gateways=max_gateways, size_gb=size_gb,
                         backend=backend).solve(**targets)


def _with_dsts(plan: Plan, dsts: list[str]) -> Plan:
    """The unicast solvers plan the one routed destination; the source region may be one too."""
    return dataclasses.replace(plan, dsts=tuple(dsts))


def _renamed(plan: Plan, names: dict[str, str]) -> Plan:
    """The plan with the caller's spelling of the source and destination tags."""
    if all(k == v for k, v in names.items()):
        return plan

    def r(tag: str) -> str:
        return names.get(tag, tag)

    return dataclasses.replace(
        plan, src=r(plan.src), dsts=tuple(r(d) for d in plan.dsts),
        gateways={r(k): v for k, v in plan.gateways.items()},
        edges=[dataclasses.replace(e, src=r(e.src), dst=r(e.dst)) for e in plan.edges])


def _check_options(solver: str, throughput_gbps: float | None, max_cost_per_gb: float | None,
                   max_gateways: int, size_gb: float, backend: str, dsts: Sequence[str]) -> None:
    if solver not in SOLVERS:
        raise BadOptionError(f"unknown solver {solver!r}", hint=f"choose one of {', '.join(SOLVERS)}")
    if backend not in BACKENDS:
        raise BadOptionError(f"unknown MILP backend {backend!r}", hint=f"choose one of {', '.join(BACKENDS)}")
    if isinstance(dsts, str) or not dsts:
        raise BadOptionError("give a list of one or more destination regions", hint="e.g. ['aws:eu-west-1']")
    if throughput_gbps is not None and max_cost_per_gb is not None:
        raise BadOptionError("give a throughput target or a cost ceiling, not both",
                             hint="the ILP minimises cost for a throughput, or maximises throughput for a cost")
    if throughput_gbps is not None and not (math.isfinite(throughput_gbps) and throughput_gbps > 0):
        raise BadOptionError(f"throughput target must be a positive number of Gbps, got {throughput_gbps!r}")
    if max_cost_per_gb is not None and not (math.isfinite(max_cost_per_gb) and max_cost_per_gb >= 0):
        raise BadOptionError(f"cost ceiling must be a number of USD/GB >= 0, got {max_cost_per_gb!r}")
    if not isinstance(max_gateways, int) or max_gateways < 1:
        raise BadOptionError(f"max gateways per region must be an integer >= 1, got {max_gateways!r}")
    if not (math.isfinite(size_gb) and size_gb > 0):
        raise BadOptionError(f"size must be a positive number of GB, got {size_gb!r}")

