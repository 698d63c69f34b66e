"""The talk's free-egress relay: a store class whose egress costs nothing (e.g. Cloudflare R2,
S3-compatible) is one more grid region whose outgoing rows cost 0, e.g. ``r2:auto``. Multicast plans
should stage data through it when that is cheaper, even when it is neither source nor destination."""

from __future__ import annotations

import pytest

import planner

RELAY = "r2:auto"


def relay_grid(tmp_path, cost_into_relay: float) -> planner.Grid:
    rows = ["src,dst,gbps,cost_per_gb",
            "gcp:us-central1,aws:us-east-1,5,0.12", "gcp:us-central1,azure:eastus,5,0.12",
            "gcp:us-central1,aws:us-west-2,5,0.12", "aws:us-east-1,aws:us-west-2,5,0.02",
            "aws:us-east-1,azure:eastus,5,0.09", "azure:eastus,aws:us-east-1,5,0.0875",
            "azure:eastus,aws:us-west-2,5,0.0875", "aws:us-west-2,azure:eastus,5,0.09",
            f"gcp:us-central1,{RELAY},6,{cost_into_relay}"]
    rows += [f"{RELAY},{d},6,0" for d in ("aws:us-east-1", "azure:eastus", "aws:us-west-2")]
    path = tmp_path / "grid.csv"
    path.write_text("\n".join(rows) + "\n")
    return planner.Grid.from_csv(path)


DSTS = ["aws:us-east-1", "azure:eastus", "aws:us-west-2"]


def test_steiner_stages_through_a_free_egress_relay(tmp_path):
    grid = relay_grid(tmp_path, cost_into_relay=0.11)
    mst = planner.solve("gcp:us-central1", DSTS, solver="mst", grid=grid)
    steiner = planner.solve("gcp:us-central1", DSTS, solver="steiner", grid=grid)
    steiner.validate()
    assert RELAY not in mst.gateways  # mst spans source and destinations only
    assert mst.cost_per_gb == pytest.approx(0.12 + 0.0875 + 0.02)  # gcp -> azure:eastus -> aws:us-east-1 -> us-west-2
    assert RELAY in steiner.gateways and RELAY not in steiner.dsts
    assert ("gcp:us-central1", RELAY) in {(e.src, e.dst) for e in steiner.edges}
    assert steiner.cost_per_gb < mst.cost_per_gb


def test_one_paid_copy_into_the_relay_then_free_fan_out(tmp_path):
    # The talk's case: entering R2 costs what any internet egress from GCP costs (a tie with the direct
    # links), and the saving appears only when the relay is shared by every destination.
    grid = relay_grid(tmp_path, cost_into_relay=0.12)
    plan = planner.solve("gcp:us-central1", DSTS, solver="steiner", grid=grid)
    plan.validate()
    assert {(e.src, e.dst) for e in plan.edges} == {("gcp:us-central1", RELAY)} | {(RELAY, d) for d in DSTS}
    assert plan.cost_per_gb == pytest.approx(0.12)  # vs 0.36 direct and 0.2275 mst
    assert plan.notes == [f"relays: {RELAY}"]


def test_steiner_skips_the_relay_when_reaching_it_costs_more(tmp_path):
    grid = relay_grid(tmp_path, cost_into_relay=0.5)
    plan = planner.solve("gcp:us-central1", DSTS, solver="steiner", grid=grid)
    assert RELAY not in plan.gateways
