"""Faults: real transfers through real gateways while a store throttles and drops connections.

A :class:`FaultProxy` sits in front of one emulator, once as the source and once as the destination;
the other side is a local directory. Only the store under test goes through the proxy: the transfer's
credentials document points that one bucket (and nothing else) at the proxy's URL.
"""

from __future__ import annotations

import os

import boto3
import pytest

from skyplane_provider.testing.emulators import connection_string
from skyplane_provider.testing.faultproxy import FaultProxy
from skyplane_provider.transfer import copy

from .helpers import digests, gateway_pids, put_objects, read_all
from .reliability_report import record

MiB = 1024**2
AZ = "azure:eastus"
_BUCKET_FIXTURE = {"s3": "s3_bucket", "gcs": "gcs_bucket", "azure": "azure_container"}


def sample() -> dict[str, bytes]:
    """Twenty small objects and one that goes in parts at every store (S3's minimum part is 5 MiB)."""
    objs = {f"small/{i:02d}.txt": b"row %d\n" % i * (200 + 37 * i) for i in range(20)}
    objs["big.bin"] = os.urandom(6 * MiB + 123)
    return objs


def proxied_credentials(kind: str, root_uri: str, proxy_url: str) -> dict:
    """A credentials document sending this one bucket's requests through ``proxy_url``."""
    if kind == "s3":
        return {root_uri: {"endpoint_url": proxy_url}}
    if kind == "gcs":
        return {root_uri: {"endpoint": proxy_url}}
    return {root_uri: {"connection_string": connection_string(proxy_url)}}


def dangling_uploads(kind: str, root_uri: str) -> list[str]:
    """Multipart uploads (S3) or temporary part objects (GCS) left behind; Azure's uncommitted blocks
    are invisible by design, so there the blob listing itself is what must be clean."""
    if kind == "s3":
        bucket = root_uri.removeprefix("s3://")
        return [u["Key"] for u in boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    if kind == "gcs":
        from google.cloud import storage

        return [b.name for b in storage.Client().list_blobs(root_uri.removeprefix("gs://"))
                if b.name.startswith(".skyplane-parts/")]
    return []


@pytest.fixture(autouse=True)
def no_gateway_left(tmp_path, monkeypatch):
    """This test's gateways (their configs live under its own SKYPLANE_HOME) are all gone afterwards."""
    home = tmp_path / "home"
    monkeypatch.setenv("SKYPLANE_HOME", str(home))
    yield
    assert gateway_pids(marker=str(home)) == [], "a gateway process was left running"


@pytest.mark.parametrize("role", ["source", "destination"])
@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_fault_throttling_store(kind, role, request, tmp_path, emulators):
    objs = sample()
    store = request.getfixturevalue(_BUCKET_FIXTURE[kind])
    local = tmp_path / "local"
    local.mkdir()
    if role == "source":
        put_objects(store, {"in/" + k: v for k, v in objs.items()})
    else:
        put_objects("file://" + str(local), objs)
    proxy = FaultProxy(emulators.endpoints[kind], kind=kind, throttle=0.15, reset=0.05, seed=7)
    url = proxy.start()
    try:
        regions = {"src_region": AZ} if kind == "azure" and role == "source" else {}
        if kind == "azure" and role == "destination":
            regions = {"dst_regions": [AZ]}
        src, dst = (f"{store}/in/", str(local)) if role == "source" else (str(local), f"{store}/out/")
        stats = copy(src, dst, chunk_size="1MiB", credentials=proxied_credentials(kind, store, url), **regions)
    finally:
        proxy.stop()
    counts = proxy.counts
    got = read_all(store, "out/") if role == "destination" else read_all("file://" + str(local))
    assert got == digests(objs), "the destination differs from the source"
    assert stats.verified and stats.objects == len(objs) and stats.chunks > len(objs)
    assert dangling_uploads(kind, store) == []
    assert counts.throttled > 0 and counts.reset > 0, counts
    record("fault", f"{kind} {role} behind a fault proxy (15% throttled, 5% connection resets), "
                    f"{len(objs)} objects incl. one of 6 MiB in parts",
           f"{counts.throttled} throttled, {counts.reset} reset, {counts.forwarded} forwarded; completed, "
           f"{len(got)}/{len(objs)} objects identical (sha256), no dangling uploads, {stats.retries} chunk retries")
