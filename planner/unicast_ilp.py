"""The unicast overlay MILP: flows per edge, connections per edge, gateways per region.

Variables over the source, the destination and a few candidate relays (:mod:`planner.relays`):
``f[e]`` Gbps on edge e, ``c[e]`` TCP connections on e (integer), ``n[v]`` gateways in region v
(integer, at most ``max_gateways``; at least one at both ends), and the throughput ``T``.

Constraints (the model of :mod:`planner.model`): flow conservation (``T`` leaves the source and
reaches the destination), ``f[e] <= c[e] * gbps(e) / 64``, at most ``64 n[v]`` connections out of and
into v, and at most ``n[v]`` times the per-VM egress (ingress) cap out of (into) v.

Modes:
- throughput target: ``T`` fixed, minimise egress + VM cost of moving ``size_gb``;
- cost ceiling (egress USD/GB, as ``Plan.cost_per_gb``): maximise ``T`` subject to
  ``sum cost(e) f[e] <= ceiling * T``, then the cheapest plan at that throughput;
- neither: the fastest plan (within ``max_gateways``), then the cheapest at that throughput.

The edge flows are decomposed into paths: one partition per path, weighted by its flow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner import milp
from planner.errors import InfeasiblePlanError
from planner.grid import Grid
from planner.model import add_capacity_constraints, assemble, vm_usd_term
from planner.paths import cheapest_paths, decompose
from planner.plan import Plan
from planner.providers import CONNECTIONS_PER_VM
from planner.relays import candidate_relays

#: Candidate relays: the widest and the cheapest two-hop detours (14 regions, ~180 edges: < 1 s).
FAST_RELAYS = 8
CHEAP_RELAYS = 4
#: The second stage keeps this share of the best throughput, so that rounding cannot make it infeasible.
KEEP_RATE = 1 - 1e-4
MIN_PATH_SHARE = 0.01
TIME_LIMIT_S = 20.0
POLISH_LIMIT_S = 1.0


@dataclass
class _Model:
    problem: object
    rate: object  # the throughput: a pulp variable, or a constant
    flow: dict
    conns: dict
    gateways: dict


class UnicastMILP:
    """One unicast problem; ``solve()`` returns the Plan."""

    def __init__(self, grid: Grid, src: str, dst: str, *, max_gateways: int, size_gb: float, backend: str,
                 relays: list[str] | None = None) -> None:
        self.grid, self.src, self.dst = grid, src, dst
        self.max_gateways, self.size_gb, self.backend = max_gateways, size_gb, backend
        if relays is None:
            relays = candidate_relays(grid, src, [dst], fast=FAST_RELAYS, cheap=CHEAP_RELAYS)
        self.nodes = [src, dst, *relays]
        self.edges = [(a, b) for a in self.nodes for b in self.nodes
                      if a != b and a != dst and b != src and grid.link(a, b)]

    def solve(self, *, throughput_gbps: float | None, max_cost_per_gb: float | None, started: float) -> Plan:
        solver = milp.make_solver(self.backend, TIME_LIMIT_S)
        notes = [f"candidate relays: {', '.join(self.nodes[2:]) or 'none'}"]
        if throughput_gbps is not None:
            model = self._build(rate=throughput_gbps, ceiling=None)
            if not milp.run(model.problem, solver):
                best = self._fastest(None, solver)
                raise InfeasiblePlanError(
                    f"no route {self.src} -> {self.dst} reaches {throughput_gbps:g} Gbps with at most "
                    f"{self.max_gateways} gateway(s) per region; the best achievable is {best:.3f} Gbps",
                    hint="lower --throughput-gbps or raise --max-gateways-per-region")
        else:
            best = self._fastest(max_cost_per_gb, solver)
            if best <= 1e-6:
                cheapest = self._cheapest_cost_per_gb()
                raise InfeasiblePlanError(
                    f"no route {self.src} -> {self.dst} costs at most ${max_cost_per_gb:g}/GB of egress; "
                    f"the cheapest costs ${cheapest:.4f}/GB",
                    hint="raise --max-cost-per-gb")
            model = self._build(rate=best * KEEP_RATE, ceiling=max_cost_per_gb)
            # Right at the fastest rate every connection counts and proving the cheapest plan can take
            # seconds; the best plan after a short search is within a fraction of a percent of it.
            if not (milp.run(model.problem, milp.make_solver(self.backend, POLISH_LIMIT_S))
                    or milp.run(model.problem, solver)):
                raise InfeasiblePlanError(f"the cheapest plan at {best:.3f} Gbps was not found in time",
                                          hint="give a --throughput-gbps target")
        return self._plan(model, notes, started, exact=throughput_gbps is not None)

    def _fastest(self, ceiling: float | None, solver) -> float:
        model = self._build(rate=None, ceiling=ceiling)
        return milp.value(model.rate) if milp.run(model.problem, solver) else 0.0

    def _build(self, *, rate: float | None, ceiling: float | None) -> _Model:
        import pulp

        grid, nmax = self.grid, self.max_gateways
        prob = pulp.LpProblem("unicast", pulp.LpMaximize if rate is None else pulp.LpMinimize)
        idx = {e: i for i, e in enumerate(self.edges)}
        f = {e: milp.variable(prob, f"f{idx[e]}", low=0) for e in self.edges}
        c = {e: milp.variable(prob, f"c{idx[e]}", low=0, up=CONNECTIONS_PER_VM * nmax, cat="Integer")
             for e in self.edges}
        n = {v: milp.variable(prob, f"n{i}", low=1 if v in (self.src, self.dst) else 0, up=nmax,
                                cat="Integer") for i, v in enumerate(self.nodes)}
        t = milp.variable(prob, "T", low=0) if rate is None else rate
        # Egress USD/GB of the plan times T: each edge's price weighted by its share of the flow.
        egress = pulp.lpSum(grid.cost(*e) * f[e] for e in self.edges)
        if rate is None:
            prob += t
        else:
            prob += (self.size_gb / rate) * egress + vm_usd_term(self.nodes, n, self.size_gb, rate)
        for v in self.nodes:
            out = [e for e in self.edges if e[0] == v]
            into = [e for e in self.edges if e[1] == v]
            net = t if v == self.src else (-t if v == self.dst else 0)
            prob += pulp.lpSum(f[e] for e in out) - pulp.lpSum(f[e] for e in into) == net
        add_capacity_constraints(prob, grid, self.nodes, self.edges, load=f, connections=c, gateways=n)
        if ceiling is not None:
            prob += egress <= ceiling * t
        return _Model(prob, t, f, c, n)

    def _cheapest_cost_per_gb(self) -> float:
        edges = set(self.edges)
        best = cheapest_paths(self.src, self.nodes, lambda a, b: self.grid.cost(a, b) if (a, b) in edges else None)
        return best[self.dst][0] if self.dst in best else math.inf

    def _plan(self, model: _Model, notes: list[str], started: float, *, exact: bool) -> Plan:
        flows = {e: milp.value(v) for e, v in model.flow.items()}
        paths = decompose(flows, self.src, self.dst)
        if not exact and paths:
            # A path with a sliver of a throughput we chose costs a partition and connections for nothing.
            paths = [(fl, path) for fl, path in paths if fl >= MIN_PATH_SHARE * paths[0][0]]
        if not paths:
            raise InfeasiblePlanError(f"the solver found no flow {self.src} -> {self.dst}")
        gateways = {v: round(milp.value(x)) for v, x in model.gateways.items()}
        conns = {e: round(milp.value(x)) for e, x in model.conns.items()}
        return assemble(self.grid, self.src, [self.dst], solver="ilp", gateways=gateways,
                        partitions=[(fl, path) for fl, path in paths], connections=conns,
                        throughput_gbps=sum(fl for fl, _ in paths), started=started, notes=notes)
