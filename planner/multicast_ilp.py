"""The multicast MILP: the data split into K equal partitions, each routed on its own tree.

Like Cloudcast, partitions let a multicast use several trees at once (more capacity out of the
source and through relays) while every destination still receives every byte exactly once.

Variables over the source, the destinations and a few candidate relays: ``x[k, e]`` (binary) edge e
belongs to partition k's tree; ``y[k, d, e]`` the flow of a unit from the source to destination d
along that tree (one commodity per destination: a much tighter relaxation than one shared flow);
``c[e]`` connections; ``n[v]`` gateways. At replication throughput ``T`` (the rate at which every
destination receives the data) an edge carries ``T / K`` for each partition routed over it, within
the capacity model of :mod:`planner.model`. Each destination has exactly one parent per partition
and any other region at most one, which with the flows makes every partition a tree.

``T`` is a constant in every MILP (products of ``T`` and ``x`` would need weak big-M constraints):
- throughput target: minimise egress + VM cost of moving ``size_gb`` at ``T`` = target;
- otherwise (optionally under an egress ceiling in USD/GB): the fastest ``T`` by bisection over
  feasibility MILPs (within ``RATE_TOLERANCE``, inside ``SEARCH_SECONDS``), then the cheapest plan at it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from planner import milp
from planner.errors import InfeasiblePlanError
from planner.grid import Grid
from planner.model import add_capacity_constraints, assemble, vm_usd_term
from planner.paths import prune_leaves
from planner.plan import Plan
from planner.providers import CONNECTIONS_PER_VM, provider_of
from planner.relays import candidate_relays

PARTITIONS = 4
FAST_RELAYS = 3
CHEAP_RELAYS = 3
#: Per MILP; a 1 -> 6 cost MILP takes ~1 s on CBC, up to ~20 s right below the highest throughput.
TIME_LIMIT_S = 25.0
#: The bisection for the fastest plan stops within 2% of it, or after this long with the best found.
RATE_TOLERANCE = 0.02
SEARCH_SECONDS = 20.0
PROBE_LIMIT_S = 6.0


@dataclass
class _Model:
    problem: object
    uses: dict
    conns: dict
    gateways: dict


class MulticastMILP:
    """One multicast problem; ``solve()`` returns the Plan."""

    def __init__(self, grid: Grid, src: str, dsts: Sequence[str], *, max_gateways: int, size_gb: float,
                 backend: str, partitions: int = PARTITIONS, relays: list[str] | None = None) -> None:
        self.grid, self.src = grid, src
        self.plan_dsts = list(dsts)
        self.dsts = list(dict.fromkeys(d for d in dsts if d != src))  # the regions to route to
        self.max_gateways, self.size_gb, self.backend, self.k = max_gateways, size_gb, backend, partitions
        if relays is None:
            relays = candidate_relays(grid, src, self.dsts, fast=FAST_RELAYS, cheap=CHEAP_RELAYS)
        self.nodes = [src, *self.dsts, *relays]
        self.edges = [(a, b) for a in self.nodes for b in self.nodes if a != b and b != src and grid.link(a, b)]

    def solve(self, *, throughput_gbps: float | None, max_cost_per_gb: float | None, started: float) -> Plan:
        notes = [f"{self.k} partitions; candidate relays: {', '.join(self.nodes[1 + len(self.dsts):]) or 'none'}"]
        solver = milp.make_solver(self.backend, TIME_LIMIT_S)
        if throughput_gbps is not None:
            rate = throughput_gbps
            model = self._build(rate, ceiling=None, objective="cost")
            if not milp.run(model.problem, solver):
                best = self._fastest(None)
                if best >= rate:
                    # The solver ran out of time before any plan at this rate, though faster ones exist
                    # (CBC near the highest feasible rate on a loaded machine): not infeasible.
                    raise InfeasiblePlanError(
                        f"the cheapest multicast at {rate:g} Gbps was not found within {TIME_LIMIT_S:g} s, "
                        f"though plans reach {best:.3f} Gbps",
                        hint="try --backend highs, or a lower --throughput-gbps")
                raise InfeasiblePlanError(
                    f"no multicast {self.src} -> {len(self.dsts)} destinations reaches {throughput_gbps:g} Gbps "
                    f"with at most {self.max_gateways} gateway(s) per region; the best achievable is {best:.3f} Gbps",
                    hint="lower --throughput-gbps or raise --max-gateways-per-region")
        else:
            rate = self._fastest(max_cost_per_gb)
            if rate <= 0 and max_cost_per_gb is None:
                raise InfeasiblePlanError(
                    f"no tree over the candidate regions reaches every destination from {self.src}",
                    hint="check the grid's links, or try --solver steiner")
            if rate <= 0:
                raise InfeasiblePlanError(
                    f"no multicast {self.src} -> {len(self.dsts)} destinations costs at most "
                    f"${max_cost_per_gb:g}/GB of egress; the cheapest tree costs ${self._cheapest():.4f}/GB",
                    hint="raise --max-cost-per-gb")
            notes.append(f"fastest throughput found by bisection within {RATE_TOLERANCE:.0%}")
            model = self._build(rate, ceiling=max_cost_per_gb, objective="cost")
            if not milp.run(model.problem, solver):
                raise InfeasiblePlanError(f"the cheapest multicast at {rate:.3f} Gbps was not found in time",
                                          hint="give a --throughput-gbps target")
        return self._plan(model, rate, notes, started)

    def upper_bound(self) -> float:
        """No plan is faster: the source's and each destination's best link and VM cap, times gateways."""
        bounds = []
        for v, links, cap in [(self.src, [self.grid.gbps(*e) for e in self.edges if e[0] == self.src],
                               provider_of(self.src).egress_gbps)] + [
                (d, [self.grid.gbps(*e) for e in self.edges if e[1] == d], provider_of(d).ingress_gbps)
                for d in self.dsts]:
            bounds.append(self.max_gateways * min(max(links, default=0.0), cap))
        return min(bounds)

    def _fastest(self, ceiling: float | None) -> float:
        """The highest feasible throughput (0 when none is), by bisection on a log scale."""
        probe = milp.make_solver(self.backend, PROBE_LIMIT_S)
        hi = self.upper_bound()
        if hi <= 0:
            return 0.0
        deadline = time.monotonic() + SEARCH_SECONDS
        floor = hi * 1e-3
        if ceiling is not None and not milp.run(self._build(floor, ceiling=ceiling, objective=None).problem, probe):
            return 0.0
        lo = self._heuristic_rate(ceiling)
        mid = math.sqrt(lo * hi) if lo > 0 else hi
        while time.monotonic() < deadline and mid >= floor:
            if milp.run(self._build(mid, ceiling=ceiling, objective=None).problem, probe):
                lo = mid
            else:
                hi = mid
            if lo > 0 and hi / lo <= 1 + RATE_TOLERANCE:
                break
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        return lo if lo > 0 else (floor if ceiling is not None else 0.0)

    def _heuristic_rate(self, ceiling: float | None) -> float:
        """The best rate of the direct star and the MST: trees over the MILP's own regions, so feasible."""
        from planner.multicast import mst
        from planner.unicast import direct

        best = 0.0
        for heuristic in (direct, mst):
            try:
                plan = heuristic(self.grid, self.src, self.dsts, max_gateways=self.max_gateways,
                                 throughput_gbps=None, started=time.perf_counter())
            except InfeasiblePlanError:
                continue
            if ceiling is None or plan.cost_per_gb <= ceiling:
                best = max(best, plan.throughput_gbps)
        return best

    def _cheapest(self) -> float:
        """Egress USD/GB of the cheapest tree over the candidate regions (any throughput)."""
        model = self._build(self.upper_bound() * 1e-3, ceiling=None, objective="egress")
        if not milp.run(model.problem, milp.make_solver(self.backend, TIME_LIMIT_S)):
            return math.inf
        return sum(self.grid.cost(*e) * milp.value(x) for (_, e), x in model.uses.items()) / self.k

    def _build(self, rate: float, *, ceiling: float | None, objective: str | None) -> _Model:
        """The MILP at throughput ``rate``; ``objective``: ``cost`` (egress + VM USD), ``egress`` or None."""
        import pulp

        grid, nmax, k = self.grid, self.max_gateways, self.k
        prob = pulp.LpProblem("multicast", pulp.LpMinimize)
        idx = {e: i for i, e in enumerate(self.edges)}
        di = {d: i for i, d in enumerate(self.dsts)}
        parts = range(k)
        x = {(p, e): milp.variable(prob, f"x{p}_{idx[e]}", cat="Binary") for p in parts for e in self.edges}
        y = {(p, d, e): milp.variable(prob, f"y{p}_{di[d]}_{idx[e]}", low=0, up=1)
             for p in parts for d in self.dsts for e in self.edges}
        c = {e: milp.variable(prob, f"c{idx[e]}", low=0, up=CONNECTIONS_PER_VM * nmax, cat="Integer")
             for e in self.edges}
        n = {v: milp.variable(prob, f"n{i}", low=1 if i <= len(self.dsts) else 0, up=nmax, cat="Integer")
             for i, v in enumerate(self.nodes)}
        egress = pulp.lpSum(grid.cost(*e) * x[p, e] for p in parts for e in self.edges) * (1.0 / k)
        load = {e: pulp.lpSum(x[p, e] for p in parts) * (rate / k) for e in self.edges}
        if objective == "egress":
            prob += self.size_gb * egress
        elif objective == "cost":
            prob += self.size_gb * egress + vm_usd_term(self.nodes, n, self.size_gb, rate)
        for p in parts:
            for v in self.nodes[1:]:
                into = [e for e in self.edges if e[1] == v]
                out = [e for e in self.edges if e[0] == v]
                parents = pulp.lpSum(x[p, e] for e in into)
                prob += (parents == 1) if v in di else (parents <= 1)
                for d in self.dsts:
                    prob += (pulp.lpSum(y[p, d, e] for e in into) - pulp.lpSum(y[p, d, e] for e in out)
                             == (1 if v == d else 0))
            for d in self.dsts:
                for e in self.edges:
                    prob += y[p, d, e] <= x[p, e]
        for p in parts[1:]:  # partitions are interchangeable: order them by egress to cut symmetric search
            prob += (pulp.lpSum(grid.cost(*e) * x[p - 1, e] for e in self.edges)
                     <= pulp.lpSum(grid.cost(*e) * x[p, e] for e in self.edges))
        add_capacity_constraints(prob, grid, self.nodes, self.edges, load=load, connections=c, gateways=n)
        if ceiling is not None:
            prob += egress <= ceiling
        return _Model(prob, x, c, n)

    def _plan(self, model: _Model, rate: float, notes: list[str], started: float) -> Plan:
        trees: dict[tuple[tuple[str, str], ...], float] = {}
        for p in range(self.k):
            used = [e for e in self.edges if milp.value(model.uses[p, e]) > 0.5]
            tree = tuple(sorted(_tree_to(self.src, used, set(self.dsts))))
            trees[tree] = trees.get(tree, 0.0) + 1.0 / self.k  # identical trees are one partition
        gateways = {v: round(milp.value(x)) for v, x in model.gateways.items()}
        conns = {e: round(milp.value(x)) for e, x in model.conns.items()}
        return assemble(self.grid, self.src, self.plan_dsts, solver="ilp", gateways=gateways,
                        partitions=[(w, list(tree)) for tree, w in trees.items()], connections=conns,
                        throughput_gbps=rate, started=started, notes=notes)


def _tree_to(src: str, edges: list[tuple[str, str]], dsts: set[str]) -> list[tuple[str, str]]:
    """The edges reachable from ``src`` that lead to a destination (drops stray edges of the solution).

    Every region has at most one parent, so what ``src`` reaches is a tree."""
    out: dict[str, list[str]] = {}
    for a, b in edges:
        out.setdefault(a, []).append(b)
    reach, stack = [], [src]
    while stack:
        a = stack.pop()
        for b in out.get(a, ()):
            reach.append((a, b))
            stack.append(b)
    return prune_leaves(reach, dsts)
