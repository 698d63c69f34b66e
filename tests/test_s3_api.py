"""The S3 store's light client (gateway/stores/s3_api.py) against moto_server and small real servers:
each request kind signed as botocore signs it, the bytes and errors of the botocore store, the one retry
budget on throttled answers, credentials resolved in botocore's order, and a gateway's plain work
without botocore imported."""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.stores import open_store
from gateway.stores import s3_api
from gateway.stores.s3 import SDK_ATTEMPTS, S3Clients, S3Store
from planner.errors import (AccessDeniedError, CredentialsError, CredentialsExpiredError, NotFoundError,
                            StoreUnavailableError, ThrottledError)
from skyplane_provider.testing.faultproxy import FaultProxy
from tests.plain_work import modules_after_plain_work

from .helpers import put_objects


def _read(store, key: str, size: int, offset: int = 0) -> bytes:
    buf = bytearray(size)
    with memoryview(buf) as view:
        got = store.read_into(key, offset, view)
    return bytes(buf[:got])


def _botocore_store(root: str, entry: dict | None = None) -> S3Store:
    """The same bucket through botocore alone, as every store was before the light client."""
    clients = S3Clients(entry or {})
    clients.api = None
    return S3Store(root.split("://", 1)[1], clients)


def _recorded(store) -> list[tuple[str, str, dict]]:
    """The (method, url, headers) of every request the store's light client sends from now on."""
    sent: list[tuple[str, str, dict]] = []
    http = store._api._http  # noqa: SLF001 - the light client's pool manager
    request = http.request

    def recording(method, url, headers, **kwargs):
        sent.append((method, url, dict(headers)))
        return request(method, url, headers=headers, **kwargs)

    http.request = recording
    return sent


def test_reads_are_the_botocore_stores_bytes(s3_bucket):
    objs = {"a/one.bin": os.urandom(1024), "a/two words+plus&amp.bin": os.urandom(3000), "b/ümlaut~x": b"z" * 10,
            "c/q?#%=&x": b"q" * 5, "empty": b""}
    put_objects(s3_bucket, objs)
    store, botocore_store = open_store(s3_bucket), _botocore_store(s3_bucket)
    assert store._api is not None
    for key, data in objs.items():
        assert _read(store, key, len(data) + 1) == data == _read(botocore_store, key, len(data) + 1), key
        assert store.read(key) == data and store.head(key) == botocore_store.head(key)
    assert _read(store, "a/two words+plus&amp.bin", 100, offset=2950) == objs["a/two words+plus&amp.bin"][2950:]
    assert _read(store, "a/one.bin", 10, offset=5000) == b"" == store.read("a/one.bin", 5000, 10)
    assert store.list_page("") == botocore_store.list_page("")
    assert store.list_page("a/", limit=1) == botocore_store.list_page("a/", limit=1)
    upload = store.begin_multipart("c/q?#%=&x")
    assert store.pending_uploads("c/") == botocore_store.pending_uploads("c/") == [("c/q?#%=&x", upload)]
    store.abort_multipart("c/q?#%=&x", upload)
    store.abort_multipart("c/q?#%=&x", upload)  # gone already: nothing to do
    assert store.region() == botocore_store.region() == "aws:us-east-1"


def test_missing_bucket_and_key_map_as_botocores(s3_bucket):
    gone = s3_bucket + "-gone"
    for store in (open_store(s3_bucket), _botocore_store(s3_bucket)):
        with pytest.raises(NotFoundError, match="missing does not exist"):
            _read(store, "missing", 10)
        with pytest.raises(NotFoundError, match="missing does not exist"):
            store.head("missing")
    for store in (open_store(gone), _botocore_store(gone)):
        with pytest.raises(NotFoundError, match="bucket .* does not exist"):
            store.check()
        with pytest.raises(NotFoundError, match="bucket .* does not exist"):
            store.write("k", b"x")


class _Answering(BaseHTTPRequestHandler):
    """A server answering every request with one S3 error document (``status``, ``code``), counting them."""

    status, code, count, lock = 403, "AccessDenied", 0, threading.Lock()

    def _answer(self) -> None:
        with self.lock:
            type(self).count += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        payload = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{self.code}</Code>"
                   f"<Message>said {self.code}</Message></Error>").encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def answering():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status, code, error", [
    (403, "InvalidAccessKeyId", CredentialsError), (403, "SignatureDoesNotMatch", CredentialsError),
    (400, "ExpiredToken", CredentialsExpiredError), (403, "AccessDenied", AccessDeniedError),
    (404, "NoSuchBucket", NotFoundError), (404, "NoSuchKey", NotFoundError),
])
def test_error_answers_map_as_botocores(answering, monkeypatch, status, code, error):
    monkeypatch.setattr(_Answering, "status", status)
    monkeypatch.setattr(_Answering, "code", code)
    entry = {"endpoint_url": answering, "aws_access_key_id": "AK", "aws_secret_access_key": "SK"}
    light = open_store("s3://bkt", {"s3": entry})
    assert light._api is not None
    for store in (light, _botocore_store("s3://bkt", entry)):
        for call in (lambda: store.read("k"), lambda: store.write("k", b"data"),
                     lambda: store.complete_multipart("k", "u", [__import__("gateway.stores").stores.PartInfo(1, "e")])):
            with pytest.raises(error) as caught:
                call()
            assert type(caught.value) is error, (store, caught.value)


def test_a_failing_store_spends_the_attempts_then_raises_unavailable(answering, monkeypatch):
    monkeypatch.setattr(_Answering, "status", 500)
    monkeypatch.setattr(_Answering, "code", "InternalError")
    monkeypatch.setattr(_Answering, "count", 0)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    store = open_store("s3://bkt", {"s3": {"endpoint_url": answering, "aws_access_key_id": "AK",
                                          "aws_secret_access_key": "SK"}})
    with pytest.raises(StoreUnavailableError, match="S3 failed a request on s3://bkt/k: InternalError") as caught:
        store.write("k", b"data")
    assert caught.value.retried and _Answering.count == 2


def test_an_unreachable_endpoint_is_unavailable(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = open_store("s3://bkt", {"s3": {"endpoint_url": "http://127.0.0.1:9",  # discard port: refused
                                          "aws_access_key_id": "AK", "aws_secret_access_key": "SK"}})
    with pytest.raises(StoreUnavailableError, match="cannot reach S3 for s3://bkt"):
        store.check()


def test_throttled_read_spends_the_attempts_then_slows_the_client(s3_bucket, emulators):
    """Every GET of one object answered 503 SlowDown: SDK_ATTEMPTS attempts, the error marked retried
    with S3's Retry-After; the client's rate is limited from then on (botocore's adaptive mode), other
    calls still go through."""
    put_objects(s3_bucket, {"cold": b"c" * 100, "hot": b"h" * 100})
    proxy = FaultProxy(emulators.endpoints["s3"], kind="s3", throttle=1.0, retry_after="1",
                       match=lambda method, path: method == "GET" and path.split("?")[0].endswith("/hot"))
    url = proxy.start()
    try:
        store = open_store(s3_bucket, {s3_bucket: {"endpoint_url": url}})
        assert store._api.limiter.rate is None
        with pytest.raises(ThrottledError) as caught:
            _read(store, "hot", 101)
        assert proxy.counts.throttled == SDK_ATTEMPTS, proxy.counts
        assert caught.value.retried and caught.value.retry_after == 1.0
        assert store._api.limiter.rate is not None
        assert _read(store, "cold", 101) == b"c" * 100
    finally:
        proxy.stop()


REQUESTS = [  # method, key (None: the bucket), query params, headers, body
    ("GET", "a/two words+plus&amp.bin", None, {"Range": "bytes=0-1024"}, None),
    ("HEAD", "b/ümlaut~x?#%", None, {}, None),
    ("HEAD", None, None, {}, None),
    ("GET", None, {"list-type": "2", "prefix": "a b/ü+&=", "max-keys": 1000, "start-after": "a b/c~d",
                   "encoding-type": "url"}, {}, None),
    ("GET", None, {"location": ""}, {}, None),
    ("GET", None, {"uploads": "", "prefix": "p/", "key-marker": "k m", "upload-id-marker": "u/+="}, {}, None),
    ("PUT", "k", None, {}, b"hello world"),
    ("PUT", "k", None, {"If-None-Match": "*"}, b"x" * 1000),
    ("PUT", "k", None, {"If-Match": '"0123456789abcdef0123456789abcdef"'}, b""),
    ("DELETE", "deep/dir/key", None, {}, None),
    ("POST", "k", {"uploads": ""}, {}, None),
    ("PUT", "k", {"partNumber": 7, "uploadId": "VXBsb2FkIElE+/="}, {}, b"part" * 100),
    ("POST", "k", {"uploadId": "VXBsb2FkIElE+/="}, {},
     b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"e"</ETag>'
     b"<PartNumber>1</PartNumber></Part></CompleteMultipartUpload>"),
    ("DELETE", "k", {"uploadId": "VXBsb2FkIElE+/="}, {}, None),
]


@pytest.mark.parametrize("base", ["http://127.0.0.1:5000/bucket", "https://bucket.s3.eu-west-1.amazonaws.com",
                                  "https://s3.amazonaws.com:443/bucket", "http://[::1]:9000/bucket"])
@pytest.mark.parametrize("token", [None, "FQoG//token+with=chars"])
@pytest.mark.parametrize("sign_payload", [True, False])
@pytest.mark.parametrize("method, key, params, headers, body", REQUESTS)
def test_every_request_kind_is_signed_as_botocore_signs_it(base, token, sign_payload, method, key, params, headers,
                                                           body):
    """Every header the light client sends for each kind of request it makes equals what botocore's
    S3SigV4Auth adds to the same request at the same second: with and without a session token, with
    the body's SHA-256 or UNSIGNED-PAYLOAD (botocore's with payload signing off)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    from gateway.stores.s3_sign import EMPTY_SHA256, UNSIGNED_PAYLOAD, Signer, canonical_host, encode_query

    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    query = encode_query(params) if params else ""
    path = urllib.parse.urlsplit(base).path + ("/" + urllib.parse.quote(key, safe="/~") if key is not None else "")
    url = urllib.parse.urlsplit(base)._replace(path=path or "/", query=query).geturl()
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    request.context["client_config"] = Config(s3={"payload_signing_enabled": sign_payload})
    S3SigV4Auth(credentials.get_frozen_credentials(), "s3", "eu-west-1").add_auth(request)
    theirs = dict(request.headers.items())
    payload = (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256) if sign_payload else UNSIGNED_PAYLOAD
    signer = Signer(canonical_host(base), "eu-west-1")
    ours = signer.sign(method, path or "/", query, headers, payload, credentials.access_key, credentials.secret_key,
                       token, timestamp=theirs["X-Amz-Date"])
    assert ours == theirs
    # the day's key is derived once and reused
    assert signer.sign(method, path or "/", query, headers, payload, credentials.access_key, credentials.secret_key,
                       token, timestamp=theirs["X-Amz-Date"]) == theirs


def _access_key_sent(store) -> str:
    sent = _recorded(store)
    store.check()
    return sent[-1][2]["Authorization"].split("Credential=", 1)[1].split("/", 1)[0]


def test_credentials_precedence_is_botocores(s3_bucket, monkeypatch, tmp_path):
    """The entry's keys, then the environment's, then the rest of botocore's chain (here a shared
    credentials file's profile): the light client signs with what botocore's would."""
    from gateway.stores import discard
    from gateway.stores.s3_botocore import session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FROMENV")
    entry = {s3_bucket: {"aws_access_key_id": "FROMENTRY", "aws_secret_access_key": "s"}}
    for document, expected in ((entry, "FROMENTRY"), (None, "FROMENV")):
        store = open_store(s3_bucket, document)
        assert store._api is not None and _access_key_sent(store) == expected
        botocore_entry = (document or {}).get(s3_bucket, {})
        assert session(botocore_entry).get_credentials().access_key == expected
        discard(s3_bucket, document)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    shared = tmp_path / "credentials"
    shared.write_text("[other]\naws_access_key_id = FROMPROFILE\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_PROFILE", "other")
    store = open_store(s3_bucket)
    assert store._api is not None and _access_key_sent(store) == "FROMPROFILE"
    assert session({}).get_credentials().access_key == "FROMPROFILE"


def test_settings_only_botocore_honours_keep_the_store_on_botocore(s3_bucket, monkeypatch, tmp_path):
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1\nmax_attempts = 3\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)  # it would win over the file, as in botocore
    store = open_store(s3_bucket)
    assert store._api is not None and store._api.region == "eu-west-1" and store._api.retry.attempts == 3
    store.check()
    config.write_text("[default]\ns3 =\n    addressing_style = virtual\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config) + "")  # a new environment: a new store
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")
    assert open_store(s3_bucket)._api is None
    monkeypatch.delenv("AWS_CONFIG_FILE")
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    assert open_store(s3_bucket)._api is None
    monkeypatch.delenv("AWS_USE_FIPS_ENDPOINT")
    assert S3Clients({}).api.serves("Upper.dotted")  # path-style at an endpoint: any name
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    aws = S3Clients({}).api
    assert aws.serves("plain-name-1")
    assert not any(aws.serves(b) for b in ("dotted.name", "Upper", "x", "b--x-s3", "arn:aws:s3:::b", "a-s3alias"))


def test_aws_buckets_are_addressed_at_their_region(s3_bucket, emulators, monkeypatch):
    """Without an endpoint the bucket's region is learned from a first HeadBucket's
    x-amz-bucket-region, then its requests are signed for it (AWS_BASE points at moto here)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setattr(s3_api, "AWS_BASE", emulators.endpoints["s3"].rstrip("/") + "/{bucket}")
    put_objects(s3_bucket, {"k": b"abc"})
    store = open_store(s3_bucket, {"s3": {"aws_access_key_id": "a", "aws_secret_access_key": "b",
                                          "region_name": "eu-west-3"}})
    sent = _recorded(store)
    assert store.read("k") == b"abc"
    assert [m for m, _, _ in sent] == ["HEAD", "GET"]
    assert "/eu-west-3/" in sent[0][2]["Authorization"] and "/us-east-1/" in sent[1][2]["Authorization"]
    assert store._api.route(store.bucket).signer.region == "us-east-1"


def test_plain_work_does_not_import_botocore(s3_bucket, emulators):
    """What a gateway does in a plain copy (check, region, list, head, read, write, parts, abort,
    pending uploads, conditional write, delete), with every module of the gateway package loaded,
    imports no botocore."""
    extra = """
assert store.region() == "aws:us-east-1"
upload = store.begin_multipart("a/w")
assert store.pending_uploads("a/w") == [("a/w", upload)]
assert store.write_if("a/v", b"v1", None)
"""
    loaded = [m for m in modules_after_plain_work(s3_bucket, first_part=5 * 1024 * 1024, extra=extra)
              if m.split(".")[0] in ("botocore", "boto3", "s3transfer")]
    assert not loaded, loaded


def test_no_credentials_anywhere_is_a_credentials_error(monkeypatch, tmp_path):
    """Neither the entry, the environment nor the rest of botocore's chain has keys (instance metadata
    switched off: nothing leaves the host): the first request is refused before it is sent."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none-either"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store("s3://bkt", {"s3": {"endpoint_url": "http://127.0.0.1:9"}})
    assert store._api is not None
    with pytest.raises(CredentialsError, match="no AWS credentials for s3://bkt/k"):
        store.read("k")


def test_an_error_document_in_a_200_is_an_error_but_in_an_objects_bytes(answering, monkeypatch):
    """S3 may answer 200 and then an error document (a CompleteMultipartUpload failing after its answer
    started): botocore takes it for a 500 and retries, except in a GET of an object's bytes. So do we."""
    monkeypatch.setattr(_Answering, "status", 200)
    monkeypatch.setattr(_Answering, "code", "InternalError")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    from gateway.stores.base import PartInfo

    entry = {"endpoint_url": answering, "aws_access_key_id": "AK", "aws_secret_access_key": "SK"}
    light = open_store("s3://bkt", {"s3": entry})
    assert light._api is not None
    for store in (light, _botocore_store("s3://bkt", entry)):
        assert b"<Code>InternalError</Code>" in store.read("k")
        monkeypatch.setattr(_Answering, "count", 0)
        with pytest.raises(StoreUnavailableError, match="InternalError"):
            store.complete_multipart("k", "u", [PartInfo(1, "e")])
        assert _Answering.count == 2, store
