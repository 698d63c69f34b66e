"""The planner's server-side copy: priced with no VM, picked when it is cheaper at the requested speed
(planner/server_side.py), and a Plan that carries it (planner/plan.py)."""

from __future__ import annotations

import math

import pytest

from planner import Grid, solve
from planner.errors import BadOptionError, InfeasiblePlanError, PlanError
from planner.plan import Plan, direct_plan
from planner.server_side import SERVER_SIDE, choose, server_side_cost_per_gb, server_side_gbps

SRC, EU, GCP = "aws:us-east-1", "aws:eu-west-1", "gcp:us-central1"


@pytest.fixture(scope="module")
def grid() -> Grid:
    return Grid.load_default()


def _routed(grid: Grid, solver: str = "direct"):
    return lambda regions: solve(SRC, regions, solver=solver, grid=grid)


def test_a_server_side_copy_is_priced_as_egress_with_no_vm(grid):
    assert server_side_cost_per_gb(grid, SRC, EU) == grid.cost(SRC, EU) > 0
    assert server_side_cost_per_gb(grid, SRC, SRC) == 0.0  # within a region: no transfer charge
    assert server_side_gbps(grid, SRC, EU) == grid.gbps(SRC, EU)
    assert server_side_gbps(grid, SRC, SRC) == max(link.gbps for link in grid.successors(SRC).values())
    assert math.isnan(server_side_gbps(None, SRC, EU)) and server_side_cost_per_gb(None, SRC, EU) == 0.0
    plan = choose(SRC, [EU], [EU], routed=_routed(grid), grid=grid, size_gb=100)
    assert plan.solver == SERVER_SIDE and plan.gateways == {} and plan.edges == [] and plan.vm_cost_per_hour == 0
    assert plan.server_side == (EU,) and plan.routed == () and plan.programs() == {}
    assert plan.cost_per_gb == pytest.approx(grid.cost(SRC, EU))
    assert "chose server-side copy" in plan.notes[-1]
    assert Plan.from_json(plan.to_json()) == plan and plan.summary()["server_side"] == [EU]


def test_gateways_win_when_only_they_reach_the_target(grid):
    ss_rate = server_side_gbps(grid, SRC, EU)
    plan = choose(SRC, [EU], [EU], routed=lambda r: solve(SRC, r, solver="ilp", throughput_gbps=2 * ss_rate,
                                                          max_gateways_per_region=4, grid=grid),
                  grid=grid, size_gb=100, throughput_gbps=2 * ss_rate)
    assert plan.solver == "ilp" and not plan.server_side and plan.throughput_gbps >= 2 * ss_rate
    with pytest.raises(InfeasiblePlanError, match="server-side reaches"):
        choose(SRC, [EU], [EU], routed=_routed(grid), grid=grid, size_gb=100, throughput_gbps=2 * ss_rate,
               mode="always")


def test_a_mixed_plan_routes_what_its_stores_cannot_copy(grid):
    plan = choose(SRC, [EU, GCP], [EU], routed=_routed(grid), grid=grid, size_gb=100)
    assert plan.server_side == (EU,) and plan.routed == (GCP,) and set(plan.dsts) == {EU, GCP}
    assert set(plan.gateways) == {SRC, GCP} and [(e.src, e.dst) for e in plan.edges] == [(SRC, GCP)]
    assert plan.cost_per_gb == pytest.approx(grid.cost(SRC, EU) + grid.cost(SRC, GCP))
    assert plan.throughput_gbps <= server_side_gbps(grid, SRC, EU)
    programs = plan.programs()
    assert set(programs) == {SRC, GCP} and programs[GCP].partitions[0].write


def test_never_and_always_and_request_prices(grid):
    assert choose(SRC, [EU], [EU], routed=_routed(grid), grid=grid, size_gb=100, mode="never").solver == "direct"
    with pytest.raises(BadOptionError, match="no server-side copy to gcp:us-central1"):
        choose(SRC, [EU, GCP], [EU], routed=_routed(grid), grid=grid, size_gb=100, mode="always")
    with pytest.raises(BadOptionError, match="unknown server-side mode"):
        choose(SRC, [EU], [EU], routed=_routed(grid), grid=grid, size_gb=100, mode="sometimes")
    # requests dear enough to outweigh the gateways' VM time make the gateways cheaper
    plan = choose(SRC, [EU], [EU], routed=_routed(grid), grid=grid, size_gb=1,
                  requests_usd=lambda server_side: 1000.0 if server_side else 0.0)
    assert plan.solver == "direct"


def test_regions_the_grid_does_not_know_go_server_side_without_a_target():
    # both ways cost nothing there: server-side wins the tie (no gateway to start)
    plan = choose("local", ["local"], ["local"], routed=lambda r: direct_plan("local", r), grid=None, size_gb=1)
    assert plan.server_side == ("local",) and plan.throughput_gbps == 0.0 and "unknown" in plan.notes[0]


def test_a_plan_copying_everything_server_side_has_no_gateways(grid):
    plan = choose(SRC, [EU], [EU], routed=_routed(grid), grid=grid, size_gb=100)
    plan.gateways = {SRC: 1}
    with pytest.raises(PlanError, match="no gateways"):
        plan.validate()
    with pytest.raises(PlanError, match="not one of its destinations"):
        Plan(src=SRC, dsts=(EU,), solver="x", gateways={}, edges=[], throughput_gbps=1, cost_per_gb=0,
             server_side=(GCP,)).validate()
