"""The capacity and cost model every solver shares, and the assembly of its result into a Plan.

Capacity (as Skyplane's planner models it): the grid's ``gbps(a, b)`` was measured between one VM
pair with ``CONNECTIONS_PER_VM`` TCP connections, so one connection a -> b carries ``gbps / 64``; a
region with ``n`` gateways opens at most ``64 n`` connections out and accepts ``64 n`` in, and sends
(receives) at most ``n`` times its provider's per-VM egress (ingress) cap. A *shared* link (grid
column ``capacity`` = ``link``, e.g. the testbed's) carries at most its ``gbps`` whatever the gateways,
and one connection can fill it.

Cost of a transfer of ``size_gb``: egress ``cost_per_gb`` of every edge times the GB crossing it,
plus every gateway's hourly price for the transfer time and ``VM_STARTUP_SECONDS``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from planner.errors import InfeasiblePlanError
from planner.grid import Grid
from planner.plan import Edge, Plan
from planner.providers import CONNECTIONS_PER_VM, VM_STARTUP_SECONDS, provider_of

#: Gbps -> GB per hour: 1 Gbps = 1/8 GB/s = 450 GB/h.
GB_PER_HOUR_PER_GBPS = 3600 / 8

TreeEdges = Sequence[tuple[str, str]]

#: A shared link needs no more connections than this (one fills it; a few ride out a loss).
SHARED_LINK_CONNECTIONS = 8


def edge_gbps(grid: Grid, a: str, b: str, connections: int) -> float:
    """What ``connections`` TCP connections carry over a -> b."""
    link = grid.link(a, b)
    if link is None or connections < 1:
        return 0.0
    return link.gbps if link.shared else connections * link.gbps / CONNECTIONS_PER_VM


def vm_usd_per_hour(gateways: dict[str, int]) -> float:
    return sum(n * provider_of(r).usd_per_hour for r, n in gateways.items())


def transfer_usd(plan: Plan, size_gb: float) -> float:
    """Predicted egress + VM cost of moving ``size_gb`` of source data with ``plan``."""
    hours = size_gb / (plan.throughput_gbps * GB_PER_HOUR_PER_GBPS) + VM_STARTUP_SECONDS / 3600
    return plan.cost_per_gb * size_gb + plan.vm_cost_per_hour * hours


def vm_usd_term(nodes: Sequence[str], gateways: dict, size_gb: float, rate: float):
    """The MILP expression for the gateways' USD over a transfer of ``size_gb`` at ``rate`` Gbps.

    ``gateways`` maps each node to its gateway-count variable.
    """
    import pulp

    hours = size_gb / (rate * GB_PER_HOUR_PER_GBPS) + VM_STARTUP_SECONDS / 3600
    return hours * pulp.lpSum(provider_of(v).usd_per_hour * gateways[v] for v in nodes)


def add_capacity_constraints(problem, grid: Grid, nodes: Sequence[str], edges: Sequence[tuple[str, str]], *,
                             load: dict, connections: dict, gateways: dict) -> None:
    """Add the shared capacity model to a MILP (see the module docstring).

    ``load`` maps each edge to its Gbps expression, ``connections`` to its connection-count variable and
    ``gateways`` each node to its gateway-count variable.
    """
    import pulp

    for v in nodes:
        out = [e for e in edges if e[0] == v]
        into = [e for e in edges if e[1] == v]
        problem += pulp.lpSum(connections[e] for e in out) <= CONNECTIONS_PER_VM * gateways[v]
        problem += pulp.lpSum(connections[e] for e in into) <= CONNECTIONS_PER_VM * gateways[v]
        cap = provider_of(v)
        if math.isfinite(cap.egress_gbps):
            problem += pulp.lpSum(load[e] for e in out) <= cap.egress_gbps * gateways[v]
        if math.isfinite(cap.ingress_gbps):
            problem += pulp.lpSum(load[e] for e in into) <= cap.ingress_gbps * gateways[v]
    for e in edges:
        if grid.link(*e).shared:
            problem += load[e] <= grid.gbps(*e)
            problem += load[e] <= connections[e] * grid.gbps(*e)  # at least one connection when used
            problem += connections[e] <= SHARED_LINK_CONNECTIONS
        else:
            problem += load[e] <= connections[e] * (grid.gbps(*e) / CONNECTIONS_PER_VM)


def tree_rate(grid: Grid, tree: TreeEdges, gateways: dict[str, int]) -> tuple[float, dict[tuple[str, str], int]]:
    """The rate at which one tree delivers the full data to each of its nodes, and its connections.

    Each region splits its ``64 n`` outgoing connections between its children in inverse
    proportion to the link rate (so every child gets the data at the same speed), capped by the
    child's incoming budget; the tree then runs at its slowest edge or VM cap.
    """
    children: dict[str, list[str]] = {}
    for a, b in tree:
        children.setdefault(a, []).append(b)
    conns: dict[tuple[str, str], int] = {}
    rate = math.inf
    for a, kids in children.items():
        budget = CONNECTIONS_PER_VM * gateways[a]
        inv = {b: 1.0 / grid.gbps(a, b) for b in kids}
        total = sum(inv.values())
        for b in kids:
            c = max(1, min(int(budget * inv[b] / total), CONNECTIONS_PER_VM * gateways[b]))
            if grid.link(a, b).shared:
                c = min(c, SHARED_LINK_CONNECTIONS)
            conns[(a, b)] = c
            rate = min(rate, edge_gbps(grid, a, b, c), provider_of(b).ingress_gbps * gateways[b])
        rate = min(rate, provider_of(a).egress_gbps * gateways[a] / len(kids))
    return rate, conns


def assemble(grid: Grid, src: str, dsts: Sequence[str], *, solver: str, gateways: dict[str, int],
             partitions: Sequence[tuple[float, TreeEdges]], connections: dict[tuple[str, str], int],
             throughput_gbps: float, started: float, notes: Sequence[str] = ()) -> Plan:
    """Build and validate the Plan of ``partitions``: (share of the data, tree edges) pairs.

    Edge rates follow from the partition shares: an edge carries ``share * throughput`` of every
    partition routed over it. Regions without edges lose their gateways (except src and dsts).
    """
    total = sum(w for w, _ in partitions)
    weights = [w / total for w, _ in partitions]
    on_edge: dict[tuple[str, str], list[int]] = {}
    for p, (_, tree) in enumerate(partitions):
        for e in tree:
            on_edge.setdefault(e, []).append(p)
    order = _breadth_first(src, on_edge)
    edges = [
        Edge(src=a, dst=b, gbps=throughput_gbps * sum(weights[p] for p in ps),
             connections=max(1, connections.get((a, b), 1)), partitions=tuple(ps),
             cost_per_gb=grid.cost(a, b))
        for (a, b), ps in sorted(on_edge.items(), key=lambda item: (order[item[0][0]], order[item[0][1]]))
    ]
    used = {src, *dsts} | {e.src for e in edges} | {e.dst for e in edges}
    gws = {r: max(1, gateways.get(r, 1)) for r in [src, *dsts, *sorted(used)] if r in used}
    plan = Plan(
        src=src, dsts=tuple(dsts), solver=solver, gateways=gws, edges=edges,
        throughput_gbps=throughput_gbps,
        cost_per_gb=sum(e.cost_per_gb * sum(weights[p] for p in e.partitions) for e in edges),
        vm_cost_per_hour=vm_usd_per_hour(gws),
        solve_seconds=time.perf_counter() - started,
        partition_weights=tuple(weights), notes=list(notes),
    )
    plan.validate()
    return plan


def _breadth_first(src: str, edges: dict[tuple[str, str], object]) -> dict[str, int]:
    """Region -> position in a breadth-first walk from ``src`` (lists edges in the order data flows)."""
    order, frontier = {src: 0}, [src]
    while frontier:
        frontier = sorted({b for a, b in edges if a in frontier and b not in order})
        for region in frontier:
            order[region] = len(order)
    for a, b in edges:
        order.setdefault(a, len(order))
        order.setdefault(b, len(order))
    return order


def tree_plan(grid: Grid, src: str, dsts: Sequence[str], tree: TreeEdges, *, solver: str, max_gateways: int,
              throughput_gbps: float | None, started: float, notes: Sequence[str] = ()) -> Plan:
    """A one-partition plan on ``tree`` with the same gateway count in every region of it.

    With a target, the fewest gateways that reach it; without one, the fewest that reach the rate of
    ``max_gateways`` (on shared links, extra gateways add cost and no speed).
    """
    nodes = {src, *dsts, *(r for e in tree for r in e)}
    target = throughput_gbps
    if target is None:
        target, _ = tree_rate(grid, tree, {r: max_gateways for r in nodes})
    counts = range(1, max_gateways + 1) if math.isfinite(target) else (max_gateways,)
    for n in counts:
        gateways = {r: n for r in nodes}
        rate, conns = tree_rate(grid, tree, gateways)
        if rate >= target * (1 - 1e-9):
            break
    else:
        raise InfeasiblePlanError(
            f"the {solver} route reaches at most {rate:.3f} Gbps with {max_gateways} gateway(s) per region, "
            f"below the target of {throughput_gbps:g} Gbps",
            hint="raise --max-gateways-per-region, lower the target, or use --solver ilp")
    if math.isinf(rate):  # every destination is the source region: nothing crosses the network
        vm = provider_of(src)
        per_vm = min(vm.egress_gbps, vm.ingress_gbps, max((link.gbps for link in grid.successors(src).values()),
                                                             default=1.0))
        rate = per_vm * gateways[src]
        notes = [*notes, "same-region copy: the rate is the VM cap or the fastest link out of the region"]
    return assemble(grid, src, dsts, solver=solver, gateways=gateways, partitions=[(1.0, tree)],
                    connections=conns, throughput_gbps=rate, started=started, notes=notes)
