"""``skyplane-provider plan`` as a subprocess, the plan's JSON round trip, and its picture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import planner
from planner.draw import draw_plan, layout
from planner.plan import Plan
from tests.planner_checks import write_grid

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", "plan", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_plan_json_is_the_plan_and_nothing_else(tmp_path):
    png = tmp_path / "plan.png"
    out = run_cli("--src", "aws:us-east-1", "--dst", "gcp:us-west4-a", "--solver", "ilp",
                  "--throughput-gbps", "2", "--json", "--png", str(png))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    for key in ("solver", "cost_per_gb", "throughput_gbps", "gateways", "edges", "solve_seconds"):
        assert key in doc
    assert doc["solver"] == "ilp" and doc["dsts"] == ["gcp:us-west4-a"]
    assert all({"src", "dst", "gbps", "connections"} <= set(e) for e in doc["edges"])
    assert doc["throughput_gbps"] >= 2 * (1 - 1e-6)
    Plan.from_json(out.stdout).validate()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_summary_on_a_user_grid(tmp_path):
    grid = write_grid(tmp_path / "g.csv", [("tb:a", "tb:b", 0.1, 0.0), ("tb:a", "tb:c", 0.4, 0.0),
                                           ("tb:c", "tb:b", 0.4, 0.0)])
    out = run_cli("--src", "tb:a", "--dst", "tb:b", "--solver", "widest", "--grid", str(grid), "--size", "10")
    assert out.returncode == 0, out.stderr
    assert "plan tb:a -> tb:b  (solver widest" in out.stdout
    assert "tb:a -> tb:c" in out.stdout and "0.400 Gbps" in out.stdout


def test_unknown_region_exits_1_naming_close_tags():
    out = run_cli("--src", "aws:us-eest-1", "--dst", "aws:us-west-2")
    assert out.returncode == 1 and out.stdout == ""
    assert "aws:us-east-1" in out.stderr and "did you mean" in out.stderr


def test_json_round_trip_of_a_multicast_plan():
    plan = planner.solve("gcp:us-central1", ["aws:us-west-2", "azure:westeurope", "gcp:asia-east1"],
                         solver="steiner")
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.programs().keys() == plan.programs().keys()


def test_picture_of_a_partitioned_plan(tmp_path):
    plan = planner.solve("aws:us-east-1", ["gcp:us-west4"], solver="ilp", throughput_gbps=2)
    assert plan.partitions == 2
    pos = layout(plan)
    assert pos["aws:us-east-1"][0] < pos["gcp:us-central1"][0] < pos["gcp:us-west4"][0]
    path = draw_plan(plan, tmp_path / "p.png")
    assert path.stat().st_size > 10_000
