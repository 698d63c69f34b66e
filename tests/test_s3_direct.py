"""The S3 store's direct GETs (gateway/stores/s3_direct.py) against moto_server: the reads after a
store's first go around botocore's client, answer the same bytes and the same errors, and hand a
throttled call to botocore for the rest of its attempts."""

from __future__ import annotations

import os

import pytest

from gateway.stores import open_store
from gateway.stores.s3 import SDK_ATTEMPTS
from gateway.stores.s3_direct import BucketRoute
from planner.errors import NotFoundError, ThrottledError
from skyplane_provider.testing.faultproxy import FaultProxy

from .helpers import put_objects


def _read(store, key: str, size: int, offset: int = 0) -> bytes:
    buf = bytearray(size)
    with memoryview(buf) as view:
        got = store.read_into(key, offset, view)
    return bytes(buf[:got])


def _botocore_sends(store) -> list[str]:
    """The URLs of the requests the store's boto3 client sends from now on."""
    sent: list[str] = []
    store._client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    return sent


def test_reads_after_the_first_are_direct_and_read_the_same_bytes(s3_bucket):
    objs = {"a/one.bin": os.urandom(1024), "a/two words+plus&amp.bin": os.urandom(3000), "b/ümlaut~x": b"z" * 10,
            "empty": b""}
    put_objects(s3_bucket, objs)
    store = open_store(s3_bucket)
    sent = _botocore_sends(store)
    assert _read(store, "a/one.bin", 1025) == objs["a/one.bin"]  # one byte past the end, as the gateway reads
    assert isinstance(store._route, BucketRoute) and len(sent) == 1
    for key, data in objs.items():
        assert _read(store, key, len(data) + 1) == data, key
    assert _read(store, "a/two words+plus&amp.bin", 100, offset=2950) == objs["a/two words+plus&amp.bin"][2950:]
    assert _read(store, "a/one.bin", 10, offset=5000) == b""  # past the end: like a slice, nothing
    assert len(sent) == 1, sent  # none of these went through botocore
    assert isinstance(store._route, BucketRoute)


def test_direct_errors_map_as_botocore_ones(s3_bucket):
    put_objects(s3_bucket, {"here": b"x" * 10})
    store = open_store(s3_bucket)
    assert _read(store, "here", 11) == b"x" * 10
    with pytest.raises(NotFoundError, match="missing"):
        _read(store, "missing", 10)
    assert isinstance(store._route, BucketRoute)  # a 404 is answered directly, the store stays direct
    gone = open_store(s3_bucket.rstrip("/") + "-gone")
    gone._route = BucketRoute(store._route.base.replace(s3_bucket.split("://")[1], s3_bucket.split("://")[1] + "-gone"),
                              store._route.region)
    with pytest.raises(NotFoundError, match="bucket .* does not exist"):
        _read(gone, "here", 10)


def test_throttled_direct_read_spends_the_sdk_attempts_once_then_stays_on_botocore(s3_bucket, emulators):
    """A direct GET answered 503 SlowDown is the call's first attempt: botocore makes the others
    (SDK_ATTEMPTS in all, the error marked retried), and the store's later reads go through botocore,
    whose adaptive mode slows a throttled client."""
    put_objects(s3_bucket, {"cold": b"c" * 100, "hot": b"h" * 100})
    proxy = FaultProxy(emulators.endpoints["s3"], kind="s3", throttle=1.0,
                       match=lambda method, path: method == "GET" and path.split("?")[0].endswith("/hot"))
    url = proxy.start()
    try:
        store = open_store(s3_bucket, {s3_bucket: {"endpoint_url": url}})
        assert _read(store, "cold", 101) == b"c" * 100  # the first read shows the route
        assert isinstance(store._route, BucketRoute)
        with pytest.raises(ThrottledError) as caught:
            _read(store, "hot", 101)
        assert proxy.counts.throttled == SDK_ATTEMPTS, proxy.counts
        assert caught.value.retried
        assert store._route is None
        sent = _botocore_sends(store)
        assert _read(store, "cold", 101) == b"c" * 100
        assert len(sent) == 1  # through botocore now
        with pytest.raises(ThrottledError):
            _read(store, "hot", 101)
        assert proxy.counts.throttled == 2 * SDK_ATTEMPTS, proxy.counts
    finally:
        proxy.stop()
