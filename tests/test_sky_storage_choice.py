"""Replica choice on a hand-made price grid: cheapest egress towards the caller first, ties by throughput."""

from __future__ import annotations

from pathlib import Path

import pytest

from skyplane_provider.broker import Replica
from skyplane_provider.broker.choice import load_grid, rank_replicas

GRID = str(Path(__file__).parent / "data" / "sky_storage_grid.csv")

S3 = Replica("s3://raw/ds/", "aws:us-east-1", state="verified", origin=True)
GCS = Replica("gs://lake/ds/", "gcp:us-central1", state="verified")
AZ = Replica("az://account/lake/ds/", "azure:eastus", state="verified")


def chosen(caller: str | None, replicas=(S3, GCS, AZ)) -> list[str]:
    return [r.replica.uri for r in rank_replicas(list(replicas), caller, load_grid(GRID))]


@pytest.mark.parametrize("caller, first", [
    ("aws:us-east-1", S3),        # same region: free
    ("gcp:us-central1", GCS),
    ("azure:eastus", AZ),
    ("aws:us-west-2", S3),        # intra-AWS 0.02 beats 0.12 (GCP) and 0.0875 (Azure)
    ("gcp:europe-west1", GCS),    # intra-GCP 0.08
    ("GCP:US-CENTRAL1-A", GCS),   # another spelling of the same region
])
def test_cheapest_egress_first(caller, first):
    assert chosen(caller)[0] == first.uri


def test_full_order_and_ties_by_throughput():
    assert chosen("aws:us-east-1") == [S3.uri, AZ.uri, GCS.uri]  # 0, 0.0875, 0.12
    # All three cost 0.09 to aws:ap-northeast-1; GCP's link is the fastest (7 Gbps), then Azure (4).
    assert chosen("aws:ap-northeast-1") == [GCS.uri, AZ.uri, S3.uri]


def test_regions_outside_the_grid():
    local = Replica("/data/ds", "local", state="verified")
    # A price beats no price; among unpriced replicas the caller's own cloud comes first.
    assert chosen("aws:eu-north-1", [local, GCS, S3]) == [S3.uri, local.uri, GCS.uri]
    assert chosen("gcp:us-central1", [local, S3, GCS]) == [GCS.uri, S3.uri, local.uri]
    assert chosen(None) == [S3.uri, GCS.uri, AZ.uri]  # no caller region: catalogue order
