"""Unicast solvers: direct, widest and the overlay MILP, on hand-made grids and on the real one."""

from __future__ import annotations

import random

import pytest

import planner
from planner import Grid
from planner.errors import BadOptionError, InfeasiblePlanError, PlanError
from planner.model import transfer_usd
from tests.planner_checks import assert_consistent, assert_unicast_flow_conserved, write_grid

# Provider "x" is unknown to the planner: no VM caps, free VMs, so only links and connections count.
SLOW_DIRECT = [
    ("x:a", "x:b", 1.0, 0.05),
    ("x:a", "x:r", 10.0, 0.02), ("x:r", "x:b", 10.0, 0.02),
    ("x:b", "x:a", 1.0, 0.05), ("x:r", "x:a", 10.0, 0.02), ("x:b", "x:r", 10.0, 0.02),
]


@pytest.fixture
def slow_direct(tmp_path) -> Grid:
    return Grid.from_csv(write_grid(tmp_path / "g.csv", SLOW_DIRECT))


@pytest.mark.parametrize("backend", ["cbc", "highs"])
def test_ilp_takes_the_relay_when_direct_is_slow_and_the_relay_path_cheaper(slow_direct, backend):
    plan = planner.solve("x:a", ["x:b"], solver="ilp", throughput_gbps=5, grid=slow_direct, backend=backend)
    assert_consistent(plan, slow_direct)
    assert_unicast_flow_conserved(plan)
    assert plan.throughput_gbps == pytest.approx(5, rel=1e-6)
    assert [(e.src, e.dst) for e in plan.edges] == [("x:a", "x:r"), ("x:r", "x:b")]
    assert plan.cost_per_gb == pytest.approx(0.04)
    assert plan.gateways == {"x:a": 1, "x:b": 1, "x:r": 1}


def test_ilp_splits_over_direct_and_relay_when_the_relay_costs_more(tmp_path):
    rows = [(a, b, g, 0.03 if "x:r" in (a, b) else c) for a, b, g, c in SLOW_DIRECT]
    grid = Grid.from_csv(write_grid(tmp_path / "g.csv", rows))
    low = planner.solve("x:a", ["x:b"], solver="ilp", throughput_gbps=0.5, grid=grid)
    assert [(e.src, e.dst) for e in low.edges] == [("x:a", "x:b")]
    assert low.cost_per_gb == pytest.approx(0.05)
    high = planner.solve("x:a", ["x:b"], solver="ilp", throughput_gbps=5, grid=grid)
    assert_consistent(high, grid)
    assert_unicast_flow_conserved(high)
    assert high.partitions == 2  # one partition per path, weighted by its flow
    direct_share = sum(high.partition_weights[p] for e in high.edges if e.src == "x:a" and e.dst == "x:b"
                       for p in e.partitions)
    # The direct link is used as far as the 64 source connections allow (just over 0.5 Gbps of 5).
    assert 0.09 < direct_share < 0.12
    assert 0.05 < high.cost_per_gb < 0.06


def test_direct_and_widest_on_a_hand_made_grid(slow_direct):
    direct = planner.solve("x:a", ["x:b"], solver="direct", grid=slow_direct)
    assert direct.throughput_gbps == pytest.approx(1.0)
    assert direct.edges[0].connections == 64
    widest = planner.solve("x:a", ["x:b"], solver="widest", grid=slow_direct)
    assert [(e.src, e.dst) for e in widest.edges] == [("x:a", "x:r"), ("x:r", "x:b")]
    assert widest.throughput_gbps == pytest.approx(10.0)
    two = planner.solve("x:a", ["x:b"], solver="direct", max_gateways_per_region=2, grid=slow_direct)
    assert two.throughput_gbps == pytest.approx(2.0) and two.gateways == {"x:a": 2, "x:b": 2}


def test_shared_links_do_not_scale_with_gateways_and_the_ilp_uses_every_path(tmp_path):
    """On a grid of shared links (the testbed's) the MILP reaches the max-flow with one gateway per
    region; with per-VM links one source gateway's 64 connections go to the fastest path only."""
    rows = [*SLOW_DIRECT, ("x:a", "x:s", 8.0, 0.02), ("x:s", "x:b", 8.0, 0.02), ("x:s", "x:a", 8.0, 0.02),
            ("x:b", "x:s", 8.0, 0.02)]
    shared = Grid.from_csv(write_grid(tmp_path / "link.csv", rows, capacity="link"))
    per_vm = Grid.from_csv(write_grid(tmp_path / "vm.csv", rows, capacity="vm"))
    plan = planner.solve("x:a", ["x:b"], solver="ilp", max_gateways_per_region=2, grid=shared)
    assert_consistent(plan, shared)
    assert_unicast_flow_conserved(plan)
    assert plan.throughput_gbps == pytest.approx(19.0, rel=1e-3)  # 1 direct + 10 via r + 8 via s
    assert all(e.connections <= 8 for e in plan.edges)
    assert planner.solve("x:a", ["x:b"], solver="ilp", grid=per_vm).throughput_gbps == pytest.approx(10.0, rel=1e-3)
    two = planner.solve("x:a", ["x:b"], solver="direct", max_gateways_per_region=2, grid=shared)
    assert two.throughput_gbps == pytest.approx(1.0)
    assert two.gateways == {"x:a": 1, "x:b": 1}  # a second gateway would add cost, not speed
    assert planner.solve("x:a", ["x:b"], solver="direct", max_gateways_per_region=2,
                         grid=per_vm).gateways == {"x:a": 2, "x:b": 2}


def test_heuristics_use_the_fewest_gateways_that_reach_a_target(slow_direct):
    plan = planner.solve("x:a", ["x:b"], solver="direct", throughput_gbps=2.5, max_gateways_per_region=4,
                         grid=slow_direct)
    assert plan.gateways == {"x:a": 3, "x:b": 3}
    with pytest.raises(InfeasiblePlanError, match=r"at most 4\.000 Gbps with 4 gateway"):
        planner.solve("x:a", ["x:b"], solver="direct", throughput_gbps=9, max_gateways_per_region=4,
                      grid=slow_direct)


def test_infeasible_target_states_the_best_achievable(slow_direct):
    with pytest.raises(InfeasiblePlanError) as err:
        planner.solve("x:a", ["x:b"], solver="ilp", throughput_gbps=50, grid=slow_direct)
    # 64 connections from one source gateway: at best all of them on a 10 Gbps link.
    assert "best achievable is 10.000 Gbps" in str(err.value)


def test_cost_ceiling_maximises_throughput_and_reports_the_cheapest(tmp_path):
    rows = [(a, b, g, 0.03 if "x:r" in (a, b) else c) for a, b, g, c in SLOW_DIRECT]
    grid = Grid.from_csv(write_grid(tmp_path / "g.csv", rows))
    cheap = planner.solve("x:a", ["x:b"], solver="ilp", max_cost_per_gb=0.05, grid=grid)
    assert cheap.throughput_gbps == pytest.approx(1.0, rel=1e-3) and cheap.cost_per_gb <= 0.05 + 1e-9
    fast = planner.solve("x:a", ["x:b"], solver="ilp", max_cost_per_gb=0.06, grid=grid)
    assert fast.throughput_gbps == pytest.approx(10.0, rel=1e-3)
    assert_consistent(fast, grid)
    with pytest.raises(InfeasiblePlanError, match=r"the cheapest costs \$0\.0500/GB"):
        planner.solve("x:a", ["x:b"], solver="ilp", max_cost_per_gb=0.01, grid=grid)


def test_free_egress_relay_is_used(tmp_path):
    rows = [*SLOW_DIRECT, ("x:a", "x:free", 10.0, 0.0), ("x:free", "x:b", 10.0, 0.0)]
    grid = Grid.from_csv(write_grid(tmp_path / "g.csv", rows))
    plan = planner.solve("x:a", ["x:b"], solver="ilp", throughput_gbps=2, grid=grid)
    assert plan.cost_per_gb == 0.0
    assert "x:free" in plan.gateways


def pairs(n: int, seed: int) -> list[tuple[str, str]]:
    regions = Grid.load_default().regions
    rng = random.Random(seed)
    return [tuple(rng.sample(regions, 2)) for _ in range(n)]


@pytest.mark.parametrize("src, dst", pairs(4, seed=7))
def test_ilp_never_costs_more_than_direct_at_its_throughput(src, dst):
    grid = Grid.load_default()
    direct = planner.solve(src, [dst], solver="direct")
    ilp = planner.solve(src, [dst], solver="ilp", throughput_gbps=direct.throughput_gbps)
    assert_consistent(ilp, grid)
    assert_unicast_flow_conserved(ilp)
    assert ilp.throughput_gbps == pytest.approx(direct.throughput_gbps, rel=1e-6)
    assert transfer_usd(ilp, 1000) <= transfer_usd(direct, 1000) * (1 + 1e-6)
    assert ilp.solve_seconds < 10


def test_ilp_and_widest_beat_a_slow_direct_link_on_the_real_grid():
    grid = Grid.load_default()
    direct = planner.solve("aws:us-east-1", ["gcp:us-west4"], solver="direct")
    widest = planner.solve("aws:us-east-1", ["gcp:us-west4-a"], solver="widest")
    ilp = planner.solve("aws:us-east-1", ["gcp:us-west4"], solver="ilp", max_gateways_per_region=2)
    assert direct.throughput_gbps == pytest.approx(0.547)
    assert widest.throughput_gbps > 5 * direct.throughput_gbps
    assert widest.dsts == ("gcp:us-west4-a",) and "gcp:us-west4-a" in widest.gateways  # the caller's spelling
    # Two AWS gateways at 5 Gbps egress each: the fastest plan is capped by the source's VMs.
    assert ilp.throughput_gbps == pytest.approx(10.0, rel=0.01)
    assert_consistent(ilp, grid)
    assert_unicast_flow_conserved(ilp)


def test_options_are_checked():
    with pytest.raises(BadOptionError, match="unknown solver"):
        planner.solve("aws:us-east-1", ["aws:us-west-2"], solver="fastest")
    with pytest.raises(BadOptionError, match="not both"):
        planner.solve("aws:us-east-1", ["aws:us-west-2"], solver="ilp", throughput_gbps=1, max_cost_per_gb=1)
    with pytest.raises(BadOptionError, match="backend"):
        planner.solve("aws:us-east-1", ["aws:us-west-2"], solver="ilp", backend="gurobi")
    with pytest.raises(BadOptionError, match="list of one or more"):
        planner.solve("aws:us-east-1", "aws:us-west-2")
    with pytest.raises(BadOptionError, match="widest solver routes one destination"):
        planner.solve("aws:us-east-1", ["aws:us-west-2", "aws:eu-west-1"], solver="widest")


def test_same_region_copy_needs_no_edges():
    plan = planner.solve("aws:us-east-1", ["aws:us-east-1"], solver="ilp")
    assert plan.edges == [] and plan.cost_per_gb == 0 and plan.throughput_gbps == 5.0
    plan.validate()


def test_one_host_plan_writes_direct_destinations_at_the_source():
    """A fleet on one host: the source's gateways write the destinations they reach straight, no
    destination gateway and no edge, and the plan says so (printed, JSON, programs)."""
    from planner.plan import Edge, Plan, RegionProgram, direct_plan

    plan = direct_plan("aws:us-east-1", ["gcp:us-central1", "azure:westeurope"]).on_one_host()
    assert plan.gateways == {"aws:us-east-1": 1} and plan.edges == []
    assert plan.written_at_source == ("gcp:us-central1", "azure:westeurope")
    assert plan.summary()["written_at_source"] == ["gcp:us-central1", "azure:westeurope"]
    assert "one host" in plan.notes[-1]
    assert Plan.from_json(plan.to_json()) == plan
    (program,) = plan.programs().values()
    assert program.writes_for == plan.written_at_source
    assert program.partitions[0].source == "read" and program.partitions[0].write and not program.partitions[0].send
    assert RegionProgram.from_dict(program.to_dict()) == program
    # A destination behind a relay keeps its route; the one reached straight is written at the source.
    relayed = Plan(src="a", dsts=("b", "c"), solver="steiner", gateways={"a": 1, "r": 1, "b": 1, "c": 1},
                   edges=[Edge("a", "r", 1, 8), Edge("r", "b", 1, 8), Edge("a", "c", 1, 8)],
                   throughput_gbps=1, cost_per_gb=0)
    one = relayed.on_one_host()
    assert one.written_at_source == ("c",) and set(one.gateways) == {"a", "r", "b"}
    assert one.programs()["a"].partitions[0].send[0].region == "r" and one.programs()["a"].writes_for == ("c",)
    assert one.on_one_host() is one  # nothing more to merge
    with pytest.raises(PlanError):
        Plan(**{**vars(one), "edges": [*one.edges, Edge("a", "c", 1, 8)]}).validate()
