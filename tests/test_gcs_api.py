"""The GCS store on the JSON API (gateway/stores/gcs_api.py), against fake-gcs-server: reads into a
caller's buffer, the one retry budget on throttled and failing answers, credentials errors, and a
gateway's plain work without google-cloud-storage imported."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.stores import open_store
from gateway.stores.gcs_api import RETRY
from planner.errors import CredentialsError, NotFoundError, StoreUnavailableError
from skyplane_provider.testing.faultproxy import FaultProxy
from tests.helpers import throttled_read
from tests.plain_work import modules_after_plain_work


def test_read_into_a_memoryview_whole_ranged_and_past_the_end(gcs_bucket):
    store = open_store(gcs_bucket)
    data = os.urandom(3 * 1024**2 + 5)
    store.write("obj", data)
    whole = bytearray(len(data))
    assert store.read_into("obj", 0, memoryview(whole)) == len(data) and whole == data
    part = bytearray(1000)
    assert store.read_into("obj", 12345, memoryview(part)) == 1000 and part == data[12345:13345]
    tail = bytearray(100)  # the object ends inside the range: what there is
    assert store.read_into("obj", len(data) - 40, memoryview(tail)) == 40 and tail[:40] == data[-40:]
    assert store.read_into("obj", len(data), memoryview(bytearray(10))) == 0  # past the end: nothing
    assert store.read_into("obj", len(data) + 99, memoryview(bytearray(10))) == 0
    assert store.read_into("obj", 0, memoryview(bytearray(0))) == 0
    inner = bytearray(b"#" * 30)  # a slice of a bigger buffer: only the slice is written
    assert store.read_into("obj", 1, memoryview(inner)[10:20]) == 10
    assert inner == b"#" * 10 + data[1:11] + b"#" * 10
    assert store.read("obj", len(data), 5) == b"" and store.read("obj", 7, 3) == data[7:10]
    with pytest.raises(NotFoundError, match="does not exist"):
        store.read_into("missing", 0, memoryview(bytearray(10)))


def test_a_throttled_read_spends_the_retry_budget_then_raises_throttled(gcs_bucket, emulators):
    """Every GET of one object throttled (429): the store retries within its 10 s budget (waits 0.5 s
    doubling to 4 s), then raises ThrottledError marked retried, with GCS's Retry-After."""
    error, spent, counts = throttled_read(gcs_bucket, emulators.endpoints["gcs"], "gcs", lambda url: {"endpoint": url},
                                          retry_after="3",
                                          match=lambda method, path: method == "GET" and "alt=media" in path)
    assert error.retried and error.retry_after == 3.0
    assert counts.throttled >= 3, counts  # waits of at most 0.5, 1, 2, 4, 4 s fit in 10 s
    assert spent < RETRY.deadline + 1, spent


class _Failing(BaseHTTPRequestHandler):
    """A server answering every request 503 (a GCS backend error), counting them."""

    count = 0
    lock = threading.Lock()

    def _answer(self) -> None:
        with self.lock:
            type(self).count += 1
        payload = json.dumps({"error": {"code": 503, "message": "Backend Error"}}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


def test_a_failing_store_spends_the_budget_then_raises_unavailable(monkeypatch):
    monkeypatch.setattr(RETRY, "deadline", 2.0)  # the same loop as the 10 s budget, sooner
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = open_store("gs://bkt", {"gs": {"endpoint": f"http://127.0.0.1:{server.server_address[1]}"}})
        with pytest.raises(StoreUnavailableError, match="GCS failed a request on gs://bkt/k: Backend Error") as caught:
            store.write("k", b"data")
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.retried and _Failing.count >= 2


def test_an_unreachable_endpoint_is_unavailable(monkeypatch):
    monkeypatch.setattr(RETRY, "deadline", 1.0)
    store = open_store("gs://bkt", {"gs": {"endpoint": "http://127.0.0.1:9"}})  # discard port: refused
    with pytest.raises(StoreUnavailableError, match="cannot reach GCS for gs://bkt"):
        store.check()


def test_credentials_errors(gcs_bucket, emulators, tmp_path):
    """A refused token is a CredentialsError after one request (it cannot be renewed), and so is an
    anonymous request to a store that wants credentials; a missing key file is refused at open."""
    proxy = FaultProxy(emulators.endpoints["gcs"], kind="gcs", authorization="Bearer right")
    url = proxy.start()
    try:
        wrong = open_store(gcs_bucket, {gcs_bucket: {"endpoint": url, "access_token": "wrong"}})
        with pytest.raises(CredentialsError, match="GCS rejected the credentials .*cannot renew"):
            wrong.read_into("k", 0, memoryview(bytearray(4)))
        assert proxy.counts.unauthorized == 1, proxy.counts
        anonymous = open_store(gcs_bucket, {gcs_bucket: {"endpoint": url}})
        with pytest.raises(CredentialsError, match="GCS rejected the credentials for .*Invalid Credentials"):
            anonymous.write("k", b"x")
        right = open_store(gcs_bucket, {gcs_bucket: {"endpoint": url, "access_token": "right"}})
        right.write("k", b"abc")
        assert right.read("k") == b"abc"
    finally:
        proxy.stop()
    with pytest.raises(CredentialsError, match="cannot set up Google Cloud credentials"):
        open_store(gcs_bucket, {gcs_bucket: {"service_account_file": str(tmp_path / "missing.json")}})


def test_plain_work_does_not_import_google_cloud_storage(gcs_bucket, emulators):
    """What a gateway does in a plain copy (check, list, head, read, write, parts + compose, abort,
    delete), with every module of the gateway package loaded, imports neither google-cloud-storage nor
    what it brought in (google.api_core, google.oauth2, requests, grpc)."""
    loaded = [m for m in modules_after_plain_work(gcs_bucket) if m.split(".")[0] in ("requests", "grpc")
              or m.startswith(("google.cloud", "google.api_core", "google.oauth2"))]
    assert not loaded, loaded


def test_a_gzip_stored_object_reads_as_google_cloud_storage_read_it(gcs_bucket):
    """An object stored gzip-encoded (Content-Encoding: gzip) is read as the library's downloads read
    it (they accept gzip and decode what comes encoded)."""
    import gzip

    from google.cloud import storage

    text = b"hello, compressed world\n" * 1000
    blob = storage.Client().bucket(gcs_bucket.removeprefix("gs://")).blob("z.txt")
    blob.content_encoding = "gzip"
    blob.upload_from_string(gzip.compress(text), content_type="text/plain")
    expected = blob.download_as_bytes()
    assert expected == text  # fake-gcs-server, like GCS without transcoding asked for, serves it gzip: decoded
    store = open_store(gcs_bucket)
    assert store.read("z.txt") == expected
    view = bytearray(len(expected))
    assert store.read_into("z.txt", 0, memoryview(view)) == len(expected) and view == expected
