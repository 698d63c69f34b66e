"""The region grid: packaged data, user grids, region names and their errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from planner import Grid
from planner.errors import BadOptionError, UnknownRegionError
from tests.planner_checks import write_grid

ROOT = Path(__file__).resolve().parent.parent


def test_default_grid_has_every_pair_of_71_regions():
    grid = Grid.load_default()
    assert len(grid.regions) == 71
    assert sum(len(grid.successors(r)) for r in grid.regions) == 71 * 70
    assert {r.split(":")[0] for r in grid.regions} == {"aws", "azure", "gcp"}
    # Figures straight from the source files (throughput_sent / 1e9, cost unchanged).
    assert grid.gbps("aws:us-east-1", "gcp:us-west4") == pytest.approx(0.547)
    assert grid.cost("gcp:us-central1", "aws:us-east-1") == pytest.approx(0.12)
    assert grid.cost("aws:us-east-1", "aws:us-west-2") == pytest.approx(0.02)


def test_shipped_grid_matches_its_derivation():
    """From the source copies in the repository (scripts/grid_source/), so it runs on any checkout."""
    out = subprocess.run([sys.executable, "scripts/derive_grid.py"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout


def test_gcp_zone_and_case_are_accepted():
    grid = Grid.load_default()
    assert grid.check_region("gcp:us-central1") == "gcp:us-central1"
    assert grid.check_region("gcp:us-central1-a") == "gcp:us-central1"
    assert grid.check_region("gcp:europe-west1-b") == "gcp:europe-west1"
    assert grid.check_region("AWS:us-east-1") == "aws:us-east-1"


def test_unknown_region_lists_three_close_tags():
    grid = Grid.load_default()
    with pytest.raises(UnknownRegionError) as err:
        grid.check_region("aws:us-eest-1")
    message = str(err.value)
    assert "aws:us-eest-1" in message and "aws:us-east-1" in message
    suggestion = message.split("did you mean ")[1].split("?")[0]
    assert len(suggestion.split(", ")) == 3


def test_user_grid_with_made_up_tags_and_zoned_gcp_tags(tmp_path):
    grid = Grid.from_csv(write_grid(tmp_path / "g.csv", [
        ("tb:r1", "tb:r2", 0.5, 0.0), ("tb:r2", "tb:r1", 0.4, 0.0), ("gcp:us-west4-a", "tb:r1", 0.2, 0.01),
    ]))
    assert grid.regions == ["gcp:us-west4-a", "tb:r1", "tb:r2"]
    assert grid.gbps("tb:r1", "tb:r2") == 0.5
    assert grid.gbps("tb:r1", "gcp:us-west4-a") == 0.0  # not measured: no link
    assert grid.check_region("gcp:us-west4") == "gcp:us-west4-a"
    with pytest.raises(UnknownRegionError, match="tb:r1"):
        grid.check_region("tb:r3")


@pytest.mark.parametrize("text, match", [
    ("a,b,c\n", "lacks the column"),
    ("src,dst,gbps,cost_per_gb\nx:a,x:b,fast,0.1\n", "line 2: gbps and cost_per_gb must be numbers"),
    ("src,dst,gbps,cost_per_gb\nx:a,x:a,1,0.1\n", "two different regions"),
    ("src,dst,gbps,cost_per_gb\nx:a,x:b,-1,0.1\n", "finite and >= 0"),
    ("src,dst,gbps,cost_per_gb\n", "no link"),
    ("src,dst,gbps,cost_per_gb,capacity\nx:a,x:b,1,0.1,vms\n", "line 2: capacity must be one of vm, link"),
])
def test_bad_user_grids_are_refused_with_the_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(BadOptionError, match=match):
        Grid.from_csv(path)


def test_missing_grid_file_is_a_clear_error(tmp_path):
    with pytest.raises(BadOptionError, match="cannot read grid"):
        Grid.from_csv(tmp_path / "nope.csv")


def test_importing_plan_does_not_load_the_milp_stack():
    code = "import sys, planner.plan, planner.errors; print('pulp' in sys.modules, 'networkx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
