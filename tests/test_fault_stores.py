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
#: Faults the proxy makes in one transfer: with seed 7, a reset at its 2nd request and throttles at its
#: 4th, 7th and 9th. Each costs the SDK's real backoff (Azure's at least 2 s; botocore's adaptive mode
#: also slows every later request): the unlimited 15% + 5% made 11-13 faults in ~33 requests, 17-27 s
#: per run for S3 and Azure, and proved no more than both kinds of fault met and survived.
FAULTS = 4


def sample() -> dict[str, bytes]:
    """Eight small objects and one that goes in parts at every store (S3's minimum part is 5 MiB).
    Every throttled or dropped request costs the SDK's real backoff; with the seeded proxy the first
    reset and throttle come at its 2nd and 4th request, so fewer small objects still meet both."""
    objs = {f"small/{i:02d}.txt": b"row %d\n" % i * (200 + 37 * i) for i in range(8)}
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
    proxy = FaultProxy(emulators.endpoints[kind], kind=kind, throttle=0.15, reset=0.05, seed=7, faults=FAULTS)
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
    assert stats.verified and stats.objects == len(objs) and stats.report["counts"]["copied"] == len(objs)
    assert dangling_uploads(kind, store) == []
    assert (counts.throttled, counts.reset) == (FAULTS - 1, 1), counts
    record("fault", f"{kind} {role} behind a fault proxy (15% throttled, 5% connection resets, the first "
                    f"{FAULTS} faults), "
                    f"{len(objs)} objects incl. one of 6 MiB in parts",
           f"{counts.throttled} throttled, {counts.reset} reset, {counts.forwarded} forwarded; completed, "
           f"{len(got)}/{len(objs)} objects identical (sha256), no dangling uploads, {stats.retries} chunk retries")


def _gets_of(key: str):
    """A fault proxy ``match``: the GETs of one object (its reads), not listings or HEADs."""
    return lambda method, path: method == "GET" and path.split("?")[0].endswith("/" + key)


def test_fault_throttled_s3_call_spends_the_sdk_retries_once(s3_bucket, emulators):
    """The store's own retry is the call's only one: the S3 client makes SDK_ATTEMPTS attempts, then the
    error says they are spent and carries S3's Retry-After, for the layers above to honour."""
    from gateway.stores import open_store
    from gateway.stores.s3 import SDK_ATTEMPTS
    from planner.errors import ThrottledError

    put_objects(s3_bucket, {"hot.bin": b"x" * 1000})
    proxy = FaultProxy(emulators.endpoints["s3"], kind="s3", throttle=1.0, match=_gets_of("hot.bin"),
                       retry_after="2")
    url = proxy.start()
    try:
        store = open_store(s3_bucket, proxied_credentials("s3", s3_bucket, url))
        with pytest.raises(ThrottledError) as caught:
            store.read("hot.bin")
    finally:
        proxy.stop()
    assert proxy.counts.throttled == SDK_ATTEMPTS, proxy.counts
    assert caught.value.retried and caught.value.retry_after == 2.0
    record("fault", "one S3 GET throttled every time (503 SlowDown, Retry-After: 2) through the store",
           f"{proxy.counts.throttled} attempts (the light client's, max {SDK_ATTEMPTS}), then ThrottledError "
           f"marked retried, retry_after={caught.value.retry_after}")


def test_fault_throttled_call_that_nothing_resends_gets_sdk_rounds(s3_bucket, emulators):
    """A call the coordinator makes itself (a HEAD while verifying, completing an upload) has no
    re-send above it: with_retries gives it SDK_ROUNDS rounds of the S3 client's attempts, no more."""
    from gateway.retry import SDK_ROUNDS, with_retries
    from gateway.stores import open_store
    from gateway.stores.s3 import SDK_ATTEMPTS
    from planner.errors import ThrottledError

    put_objects(s3_bucket, {"hot.bin": b"x"})
    proxy = FaultProxy(emulators.endpoints["s3"], kind="s3", throttle=1.0,
                       match=lambda method, path: method == "HEAD" and path.split("?")[0].endswith("/hot.bin"))
    url = proxy.start()
    try:
        store = open_store(s3_bucket, proxied_credentials("s3", s3_bucket, url))
        with pytest.raises(ThrottledError):
            with_retries(lambda: store.head("hot.bin"), what="verifying hot.bin")
    finally:
        proxy.stop()
    assert proxy.counts.throttled == SDK_ATTEMPTS * SDK_ROUNDS == 12, proxy.counts
    record("fault", "one S3 HEAD throttled every time, as the coordinator verifies a copy (nothing re-sends it)",
           f"{proxy.counts.throttled} attempts ({SDK_ATTEMPTS} by the S3 client x {SDK_ROUNDS} rounds), then ThrottledError")


def test_fault_throttled_s3_read_attempts_in_a_transfer(s3_bucket, emulators, tmp_path, monkeypatch):
    """A read that S3 throttles every time, end to end: its attempts are the S3 client's times the chunk's
    dispatches (no gateway retry stacked on the SDK's), then the transfer fails loudly and leaves
    nothing at the destination. Before the one retry budget: 4 x 5 x 6 = 120 attempts. The S3 client's
    attempts are the user's AWS_MAX_ATTEMPTS, which the job's gateways inherit: 2 here, whose backoff
    (~1 s per call against the default 4 attempts' ~3.5 s) is most of the test's time."""
    from planner.errors import TransferError
    from skyplane_provider.transfer.dispatch import MAX_ATTEMPTS

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    put_objects(s3_bucket, {"in/hot.bin": os.urandom(1000), "in/cold.bin": os.urandom(1000)})
    out = tmp_path / "out"
    out.mkdir()
    proxy = FaultProxy(emulators.endpoints["s3"], kind="s3", throttle=1.0, match=_gets_of("in/hot.bin"))
    url = proxy.start()
    try:
        with pytest.raises(TransferError, match="hot.bin -> .* failed 4 times"):
            copy(f"{s3_bucket}/in/", str(out), credentials=proxied_credentials("s3", s3_bucket, url))
    finally:
        proxy.stop()
    assert proxy.counts.throttled == 2 * MAX_ATTEMPTS == 8, proxy.counts
    assert not (out / "hot.bin").exists()
    record("fault", "one S3 object's GET throttled every time (503 SlowDown) in a transfer to a local directory, "
                    "AWS_MAX_ATTEMPTS=2",
           f"{proxy.counts.throttled} GET attempts in all (2 by the S3 client x {MAX_ATTEMPTS} dispatches of "
           f"its chunk; 16 with the default 4, 120 before the one retry budget), then the transfer failed with "
           f"TransferError; the object was not written")
