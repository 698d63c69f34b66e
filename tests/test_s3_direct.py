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
    """The URLs of the requests the store's botocore client sends from now on."""
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


@pytest.mark.parametrize("base, key, token", [
    ("http://127.0.0.1:5000/bucket/", "a/two words+plus&amp.bin", None),
    ("https://bucket.s3.eu-west-1.amazonaws.com/", "b/ümlaut~x?#%", "FQoG//token+with=chars"),
    ("https://s3.amazonaws.com:443/bucket/", "k", None),
    ("http://[::1]:9000/bucket/", "deep/dir/key", "t"),
])
def test_the_direct_signature_is_botocores(base, key, token):
    """Every header the direct path sends equals what botocore's S3SigV4Auth adds to the same GET at
    the same second (gateway/stores/s3_sign.py), with and without a session token."""
    import urllib.parse

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from botocore.utils import percent_encode

    from gateway.stores.s3_sign import GetSigner, canonical_host

    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    url = base + percent_encode(key, safe="/~")
    request = AWSRequest(method="GET", url=url, headers={"Range": "bytes=0-1024"})
    S3SigV4Auth(credentials.get_frozen_credentials(), "s3", "eu-west-1").add_auth(request)
    theirs = dict(request.headers.items())
    signer = GetSigner(canonical_host(base), "eu-west-1")
    ours = signer.headers(urllib.parse.urlsplit(url).path, "bytes=0-1024", credentials.access_key,
                          credentials.secret_key, token, timestamp=theirs["X-Amz-Date"])
    assert ours == theirs
    # the day's key is derived once and reused
    assert signer.headers(urllib.parse.urlsplit(url).path, "bytes=0-1024", credentials.access_key,
                          credentials.secret_key, token, timestamp=theirs["X-Amz-Date"]) == theirs
