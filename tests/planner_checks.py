"""Checks every planner test applies to the plans it gets: the capacity model holds, flow is conserved."""

from __future__ import annotations

from pathlib import Path

from planner.grid import Grid
from planner.model import edge_gbps
from planner.plan import Plan
from planner.providers import CONNECTIONS_PER_VM, provider_of

TOL = 1e-6


def write_grid(path: Path, rows: list[tuple[str, str, float, float]], capacity: str | None = None) -> Path:
    """A user grid CSV (``src,dst,gbps,cost_per_gb``); with ``capacity`` (``vm`` or ``link``) that column too."""
    if capacity is None:
        path.write_text("src,dst,gbps,cost_per_gb\n" + "".join(f"{a},{b},{g},{c}\n" for a, b, g, c in rows))
    else:
        path.write_text("src,dst,gbps,cost_per_gb,capacity\n"
                        + "".join(f"{a},{b},{g},{c},{capacity}\n" for a, b, g, c in rows))
    return path


def assert_consistent(plan: Plan, grid: Grid) -> None:
    """The plan is a valid set of trees, and no link, VM or connection budget is exceeded.

    Tags are compared through ``grid.check_region`` because plans keep the caller's spelling.
    """
    plan.validate()
    tag = grid.check_region
    weights = plan.partition_weights
    assert abs(sum(weights) - 1) < TOL
    out_gbps: dict[str, float] = {}
    in_gbps: dict[str, float] = {}
    out_conn: dict[str, int] = {}
    in_conn: dict[str, int] = {}
    for e in plan.edges:
        g = grid.gbps(tag(e.src), tag(e.dst))
        assert g > 0, f"{e.src} -> {e.dst} is not a link of the grid"
        assert e.cost_per_gb == grid.cost(tag(e.src), tag(e.dst))
        # Every partition routed over an edge crosses it at its share of the throughput.
        assert abs(e.gbps - plan.throughput_gbps * sum(weights[p] for p in e.partitions)) < 1e-6 * (1 + e.gbps)
        assert e.gbps <= edge_gbps(grid, tag(e.src), tag(e.dst), e.connections) * (1 + TOL) + TOL, e
        out_gbps[e.src] = out_gbps.get(e.src, 0) + e.gbps
        in_gbps[e.dst] = in_gbps.get(e.dst, 0) + e.gbps
        out_conn[e.src] = out_conn.get(e.src, 0) + e.connections
        in_conn[e.dst] = in_conn.get(e.dst, 0) + e.connections
    for region, n in plan.gateways.items():
        vm = provider_of(tag(region))
        assert out_gbps.get(region, 0) <= vm.egress_gbps * n * (1 + TOL) + TOL, (region, out_gbps[region])
        assert in_gbps.get(region, 0) <= vm.ingress_gbps * n * (1 + TOL) + TOL, (region, in_gbps[region])
        assert out_conn.get(region, 0) <= CONNECTIONS_PER_VM * n
        assert in_conn.get(region, 0) <= CONNECTIONS_PER_VM * n
    expected = sum(e.cost_per_gb * sum(weights[p] for p in e.partitions) for e in plan.edges)
    assert abs(plan.cost_per_gb - expected) < 1e-9


def assert_unicast_flow_conserved(plan: Plan) -> None:
    """Throughput leaves the source, reaches the destination, and relays forward what they receive."""
    (dst,) = plan.dsts
    net: dict[str, float] = {}
    for e in plan.edges:
        net[e.src] = net.get(e.src, 0) + e.gbps
        net[e.dst] = net.get(e.dst, 0) - e.gbps
    for region, balance in net.items():
        expected = plan.throughput_gbps if region == plan.src else (-plan.throughput_gbps if region == dst else 0.0)
        assert abs(balance - expected) < 1e-6 * (1 + plan.throughput_gbps), (region, balance, expected)
