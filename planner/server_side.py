"""Server-side copy in a plan: destinations whose store copies each object from the source's store
itself (S3 CopyObject, GCS rewrite, Azure copy from URL), so that no byte passes through a gateway.

Which stores can do it is not the planner's business: the control plane probes them and names the
*candidate* destination regions (every destination store of the region can copy from the source).
The planner prices each way and picks one (:func:`choose`):

- **cost**: no VM; egress as the grid prices the pair (the providers bill a copy between regions as
  data transfer out of the source's region, and nothing within a region), plus the store requests
  (``requests_usd``, the caller's count of what each way asks of the stores);
- **rate**: no provider publishes what its copy service sustains, so we assume what the grid
  measured between one VM pair of the two regions (the provider's copy crosses the same network),
  and within a region the fastest link out of it (as :func:`planner.model.tree_plan` does for a
  same-region copy). Regions the grid does not know have no rate: server-side copies to them are
  picked only when no throughput target is asked for.

A candidate is copied server-side when that way meets the throughput target (if any) and costs less
than routing it through gateways; ``"always"`` insists (and fails naming what it cannot meet),
``"never"`` routes everything through gateways.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

from planner.errors import BadOptionError, InfeasiblePlanError, SkyplaneError
from planner.grid import Grid
from planner.model import transfer_usd
from planner.plan import Plan

#: The solver name of a plan in which every destination is copied server-side.
SERVER_SIDE = "server_side"
MODES = ("auto", "always", "never")


def server_side_gbps(grid: Grid | None, src: str, dst: str) -> float:
    """The rate assumed for server-side copies src -> dst (module docstring); NaN when unknown."""
    if grid is None:
        return math.nan
    try:
        a, b = grid.check_region(src), grid.check_region(dst)
    except SkyplaneError:
        return math.nan
    if a == b:
        return max((link.gbps for link in grid.successors(a).values()), default=math.nan)
    return grid.gbps(a, b) or math.nan


def server_side_cost_per_gb(grid: Grid | None, src: str, dst: str) -> float:
    """Egress USD per GB of a server-side copy src -> dst: the grid's price between two regions, 0 within
    one (and where the grid does not know the pair, as for a plan without a grid)."""
    if grid is None:
        return 0.0
    try:
        a, b = grid.check_region(src), grid.check_region(dst)
    except SkyplaneError:
        return 0.0
    link = grid.link(a, b)
    return link.cost_per_gb if a != b and link is not None else 0.0


def with_server_side(plan: Plan | None, src: str, dsts: Sequence[str], server_side: Sequence[str],
                     grid: Grid | None, started: float) -> Plan:
    """``plan`` (the gateways' route to the other destinations; None when there are none) with the
    ``server_side`` destinations added, copied by their stores: the plan's rate is the slower of the
    two ways, its egress their sum."""
    server_side = tuple(dict.fromkeys(server_side))
    rates = [server_side_gbps(grid, src, d) for d in server_side]
    known = [r for r in rates if not math.isnan(r)]
    ss_rate = min(known) if len(known) == len(rates) else math.nan
    ss_cost = sum(server_side_cost_per_gb(grid, src, d) for d in server_side)
    note = (f"server-side copy to {', '.join(server_side)}: no gateway; rate assumed "
            + (f"{ss_rate:.2f} Gbps (the grid's VM-pair rate, docs/server-side-copy.md)" if not math.isnan(ss_rate)
               else "unknown (a region the grid does not know)"))
    if plan is None:
        return Plan(src=src, dsts=tuple(dict.fromkeys(dsts)), solver=SERVER_SIDE, gateways={}, edges=[],
                    throughput_gbps=ss_rate if not math.isnan(ss_rate) else 0.0, cost_per_gb=ss_cost,
                    solve_seconds=time.perf_counter() - started, server_side=server_side, notes=[note])
    rate = plan.throughput_gbps if math.isnan(ss_rate) else min(plan.throughput_gbps, ss_rate)
    return dataclasses.replace(plan, dsts=tuple(dict.fromkeys(dsts)), throughput_gbps=rate,
                               cost_per_gb=plan.cost_per_gb + ss_cost, server_side=server_side,
                               notes=[*plan.notes, note])


def choose(src: str, dsts: Sequence[str], candidates: Sequence[str], *, routed: Callable[[list[str]], Plan],
           grid: Grid | None, size_gb: float, throughput_gbps: float | None = None, mode: str = "auto",
           requests_usd: Callable[[Sequence[str]], float] = lambda server_side: 0.0) -> Plan:
    """The plan for ``dsts``: the ``candidates`` copied server-side, or everything through gateways.

    ``routed(regions)`` plans the gateways' route to ``regions`` (the requested solver);
    ``requests_usd(server_side)`` is what the stores' requests cost when ``server_side`` regions are
    copied by their stores (the rest through gateways). Raises ``BadOptionError`` for ``"always"``
    when a destination is not a candidate, ``InfeasiblePlanError`` when no way meets the target.
    """
    if mode not in MODES:
        raise BadOptionError(f"unknown server-side mode {mode!r}", hint=f"choose one of {', '.join(MODES)}")
    started = time.perf_counter()
    dsts = list(dict.fromkeys(dsts))
    candidates = [d for d in dict.fromkeys(candidates) if d in dsts]
    if mode == "always" and len(candidates) < len(dsts):
        missing = [d for d in dsts if d not in candidates]
        raise BadOptionError(f"no server-side copy to {', '.join(missing)}: its store cannot copy from the source",
                             hint="use server_side='auto' to route those through gateways")
    options: list[tuple[float, Plan]] = []
    failures: list[str] = []
    # Server-side first: it wins a tie (no VM to start, nothing to go wrong in a gateway).
    ways = ([tuple(candidates)] if candidates and mode != "never" else []) + ([] if mode == "always" else [()])
    for server_side in ways:
        rest = [d for d in dsts if d not in server_side]
        try:
            plan = with_server_side(routed(rest) if rest else None, src, dsts, server_side, grid, started) \
                if server_side else routed(dsts)
        except InfeasiblePlanError as exc:
            failures.append(str(exc))
            continue
        if throughput_gbps is not None and not plan.throughput_gbps >= throughput_gbps * (1 - 1e-9):
            failures.append(f"copying {', '.join(server_side)} server-side reaches {plan.throughput_gbps:.3f} Gbps, "
                            f"not {throughput_gbps:g}")
            continue
        usd = transfer_usd(plan, size_gb) if plan.gateways else plan.cost_per_gb * size_gb
        options.append((usd + requests_usd(server_side), plan))
    if not options:
        raise InfeasiblePlanError("no plan meets the throughput target: " + "; ".join(failures),
                                  hint="lower the target, or let more ways compete (server_side='auto')")
    usd, plan = min(options, key=lambda o: o[0])
    if len(options) > 1:
        other = max(options, key=lambda o: o[0])[0]
        plan.notes.append(f"chose {'server-side copy' if plan.server_side else 'gateways'}: ${usd:.4f} predicted "
                          f"for {size_gb:g} GB against ${other:.4f} the other way")
    return plan
