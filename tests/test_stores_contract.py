"""One contract every store adapter keeps, run against a local directory and the real emulators
(moto_server, fake-gcs-server, Azurite): the same assertions for all four."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import crc32c
import pytest

from gateway.stores import open_store
from gateway.stores.base import ObjectStore, PartInfo
from planner.errors import BadOptionError, CredentialsError, NotFoundError, StoreUnavailableError, ThrottledError
from skyplane_provider.testing.emulators import AZURITE_ACCOUNT, AZURITE_KEY, connection_string, free_port
from skyplane_provider.testing.leftovers import leftovers

MiB = 1024**2
EMPTY_MD5 = hashlib.md5(b"").hexdigest()


@pytest.fixture
def store(store_uri) -> ObjectStore:
    return open_store(store_uri)


def kind_of(store: ObjectStore) -> str:
    return {"file": "local", "s3": "s3", "gs": "gcs", "az": "azure"}[store.scheme]


# ---- required verbs -------------------------------------------------------------------------------

def test_write_head_read_exists_delete(store):
    data = b"some bytes\n" * 100
    receipt = store.write("dir/obj.txt", data)
    info = store.head("dir/obj.txt")
    assert (info.key, info.size) == (receipt.key, receipt.size) == ("dir/obj.txt", len(data))
    assert info.etag == info.md5 == hashlib.md5(data).hexdigest()  # single-part ETag = MD5 on every store
    # The receipt is what the store answered: the clouds report the MD5 they computed, a directory none.
    assert receipt.md5 == (None if kind_of(store) == "local" else info.md5)
    if kind_of(store) == "gcs":
        assert receipt.crc32c == info.crc32c and receipt.crc32c
    assert info.mtime and abs(info.mtime - time.time()) < 3600
    assert store.exists("dir/obj.txt") and not store.exists("dir/obj")
    assert store.read("dir/obj.txt") == data
    store.write("dir/obj.txt", b"replaced")
    assert store.read("dir/obj.txt") == b"replaced"
    store.delete("dir/obj.txt")
    assert not store.exists("dir/obj.txt")
    store.delete("dir/obj.txt")  # deleting a missing object is not an error
    with pytest.raises(NotFoundError, match="dir/obj.txt"):
        store.head("dir/obj.txt")
    with pytest.raises(NotFoundError, match="dir/obj.txt"):
        store.read("dir/obj.txt")
    assert list(store.list()) == []


def test_ranged_reads(store):
    data = os.urandom(1000)
    store.write("r", data)
    assert store.read("r", 10, 20) == data[10:30]
    assert store.read("r", 0, 10) == data[:10]
    assert store.read("r", 990, 100) == data[990:]  # clipped at the end, like a slice
    assert store.read("r", 500) == data[500:]
    assert store.read("r", 999, 1) == data[999:]
    assert store.read("r", 1000) == b""
    assert store.read("r", 5000, 10) == b""
    assert store.read("r", 0, 0) == b""
    with pytest.raises(BadOptionError):
        store.read("r", -1, 10)
    # read_into fills the caller's buffer, up to where the object ends.
    for offset, size in ((0, 1000), (10, 20), (990, 100), (1000, 5), (5000, 1), (0, 0)):
        buf = bytearray(size)
        n = store.read_into("r", offset, memoryview(buf))
        assert bytes(buf[:n]) == data[offset:offset + size], (offset, size)
    with pytest.raises(NotFoundError):
        store.read_into("missing", 0, memoryview(bytearray(4)))


def test_whole_reads_fill_the_view_and_show_an_object_that_grew(store):
    """A whole object read (``whole=True``: no range asked of an HTTP store) one byte past its size
    returns its size; one whose object outgrew the view fills the view and returns its length (the
    gateway's sign of an object changed during the transfer), and the store reads on afterwards (the
    half-read answer's connection was not reused)."""
    data = os.urandom(70_000)
    store.write("w", data)
    store.write("empty", b"")
    buf = bytearray(len(data) + 1)
    assert store.read_into("w", 0, memoryview(buf), whole=True) == len(data) and buf[:len(data)] == data
    assert store.read_into("empty", 0, memoryview(bytearray(1)), whole=True) == 0
    short = bytearray(1001)
    assert store.read_into("w", 0, memoryview(short), whole=True) == 1001 and short == data[:1001]
    for _ in range(3):
        assert store.read_into("w", 0, memoryview(buf), whole=True) == len(data) and buf[:len(data)] == data
    with pytest.raises(NotFoundError):
        store.read_into("missing", 0, memoryview(bytearray(4)), whole=True)


def test_zero_byte_objects(store):
    assert store.write("empty", b"").size == 0
    info = store.head("empty")
    assert info.size == 0 and info.etag == EMPTY_MD5
    assert store.read("empty") == b""
    assert store.read("empty", 0, 10) == b""
    assert [(o.key, o.size) for o in store.list()] == [("empty", 0)]


def test_names_with_spaces_and_unicode(store):
    keys = ["dir with space/ünïcödé 文件.txt", "a+b=c&d;e,f.txt", "percent%20not-decoded", "emoji 🚀/x", "tab\tx"]
    for i, key in enumerate(keys):
        store.write(key, b"%d" % i)
    assert [o.key for o in store.list()] == sorted(keys)
    for i, key in enumerate(keys):
        assert store.read(key) == b"%d" % i
        assert store.head(key).size == len(b"%d" % i)
    assert [o.key for o in store.list("dir with space/")] == ["dir with space/ünïcödé 文件.txt"]


#: Keys per kind for the listing test: more than the server's largest page (1,000) on S3 and GCS. Azure's
#: page (5,000) and a directory's (none) are not crossed by 1,500 either; there the explicit pages of
#: 700, 333 and 1 below are what is tested, and 750 keys need more than one of each.
_LISTED_KEYS = {"s3": 1500, "gcs": 1500, "azure": 750, "local": 750}


def test_list_prefix_and_pagination(store):
    """More than one page (1,000) on S3 and GCS; sorted by key; prefixes exact."""
    many = [f"many/k{i:05d}" for i in range(_LISTED_KEYS[kind_of(store)])]
    others = ["many-sibling", "manx/x", "other/deep/er/key", "m"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.write(k, k.encode()), many + others))
    listed = list(store.list("many/"))
    assert [o.key for o in listed] == many
    assert all(o.size == len(o.key) for o in listed)
    everything = [o.key for o in store.list()]
    assert everything == sorted(many + others)
    assert [o.key for o in store.list("many/k0001")] == [f"many/k{i:05d}" for i in range(10, 20)]
    assert [o.key for o in store.list("many")] == sorted(many + ["many-sibling"])
    assert [o.key for o in store.list("other/deep/")] == ["other/deep/er/key"]
    assert list(store.list("nothing-here/")) == []
    # Pages of any size, each started from the previous one's token alone, add up to the listing.
    for prefix, limit in (("", 700), ("many/", 1000), ("m", 333), ("o", 1)):
        keys, token, pages = [], None, 0
        while True:
            page, token = store.list_page(prefix, token, limit)
            assert len(page) <= limit
            keys += [o.key for o in page]
            pages += 1
            if token is None or pages > 2000:
                break
        assert keys == [o.key for o in store.list(prefix)], (prefix, limit)
    assert store.list_page("many/k0001", None, 5)[0][-1].key == "many/k00014"
    assert store.list_page("nothing-here/", None, 5) == ([], None)


# ---- multipart ------------------------------------------------------------------------------------

def test_multipart_three_parts_in_any_order(store):
    assert store.capabilities.multipart
    minimum = max(store.capabilities.min_part_size, 1024)
    parts_data = {1: os.urandom(minimum), 2: os.urandom(minimum), 3: os.urandom(1234)}  # last part may be small
    upload = store.begin_multipart("big/object.bin")
    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(lambda n: store.upload_part("big/object.bin", upload, n, parts_data[n]), [3, 1, 2]))
    assert sorted(p.part_number for p in parts) == [1, 2, 3]
    assert not store.exists("big/object.bin"), "visible before complete_multipart"
    assert list(store.list()) == [], "parts must not show up in listings"
    receipt = store.complete_multipart("big/object.bin", upload, parts)
    whole = parts_data[1] + parts_data[2] + parts_data[3]
    assert receipt.key == "big/object.bin" and receipt.size == len(whole)
    assert receipt.etag or kind_of(store) == "local"  # a directory joins the parts in the kernel, hashing none
    assert store.head("big/object.bin").size == len(whole)
    assert store.read("big/object.bin") == whole
    assert store.read("big/object.bin", minimum - 10, 20) == whole[minimum - 10:minimum + 10]  # across a part boundary
    assert [o.key for o in store.list()] == ["big/object.bin"]
    assert leftovers(store.root_uri) == []


def test_abort_leaves_no_object(store):
    upload = store.begin_multipart("aborted")
    parts = [store.upload_part("aborted", upload, 1, b"a" * 1000), store.upload_part("aborted", upload, 2, b"b" * 1000)]
    store.abort_multipart("aborted", upload)
    store.abort_multipart("aborted", upload)  # twice is harmless
    assert not store.exists("aborted")
    assert list(store.list()) == []
    assert leftovers(store.root_uri) == []
    # Completing an aborted upload fails, except where the emulator or the API cannot tell: moto
    # answers 500 (real S3: NoSuchUpload, mapped to NotFoundError); Azure has no call that discards
    # staged blocks, so they stay committable until they expire (abort only guarantees "nothing visible").
    if kind_of(store) in ("local", "gcs"):
        with pytest.raises(NotFoundError):
            store.complete_multipart("aborted", upload, parts)
    with pytest.raises(BadOptionError):
        store.complete_multipart("aborted", upload, [])
    assert not store.exists("aborted")


def test_multipart_compose_tree_past_32_parts(gcs_bucket):
    """GCS composes at most 32 sources at once: 70 parts need a tree of composes."""
    store = open_store(gcs_bucket)
    upload = store.begin_multipart("tree")
    chunks = [bytes([i]) * 100 for i in range(70)]
    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(lambda i: store.upload_part("tree", upload, i + 1, chunks[i]), range(70)))
    store.complete_multipart("tree", upload, parts)
    assert store.read("tree") == b"".join(chunks)
    assert leftovers(store.root_uri) == []


def test_gcs_objects_above_the_librarys_multipart_limit_go_in_one_request(gcs_bucket):
    """Above 8 MiB (where the library would upload resumably) a whole object and a part go in our own
    one-request multipart upload with their CRC32C: the receipt is the server's (its MD5 and CRC32C of
    what it stored), the bytes read back whole, a part keeps its metadata (the upload finds it), and a
    missing bucket is still NotFoundError. 9 MiB each, about 1 s."""
    store = open_store(gcs_bucket)
    data = bytearray(os.urandom(9 * 1024**2 + 7))
    receipt = store.write("big/one", data)
    assert receipt.size == len(data) and receipt.md5 == hashlib.md5(data).hexdigest()
    assert receipt.crc32c == crc32c.crc32c(data).to_bytes(4, "big").hex()
    assert store.read("big/one") == data
    upload = store.begin_multipart("big/parts")
    part = store.upload_part("big/parts", upload, 1, data)
    assert store.pending_uploads("big/") == [("big/parts", upload)]
    assert store.complete_multipart("big/parts", upload, [part]).size == len(data)
    assert store.read("big/parts") == data and leftovers(store.root_uri) == []
    with pytest.raises(NotFoundError):
        open_store(missing_root(gcs_bucket)).write("x", data)


# ---- missing buckets, capabilities, regions ---------------------------------------------------------

def missing_root(store_uri: str) -> str:
    """A root of the same kind that does not exist (a directory, bucket or container)."""
    name = f"missing-{uuid.uuid4().hex[:12]}"
    if store_uri.startswith(("file://", "az://")):
        parent = store_uri if store_uri.startswith("file://") else store_uri.rsplit("/", 1)[0]
        return f"{parent}/{name}"
    return f"{store_uri.split('://')[0]}://{name}"


def test_missing_bucket_is_not_found(store_uri):
    uri = missing_root(store_uri)
    name = uri.rsplit("/", 1)[1]
    store = open_store(uri)
    for call in (store.check, lambda: list(store.list()), lambda: store.write("k", b"x"), lambda: store.head("k"),
                 lambda: store.read("k")):
        with pytest.raises(NotFoundError, match=name) as info:
            call()
        assert info.value.hint  # says what to do
    assert not store.exists("k")


def test_capabilities_and_region(store):
    caps = store.capabilities
    expected = {
        "local": ("local", 10_000, 0, {"md5"}),
        "s3": ("aws:us-east-1", 10_000, 5 * MiB, {"md5"}),
        "gcs": ("gcp:us-central1", 10_000, 0, {"md5", "crc32c"}),
        "azure": (None, 50_000, 0, {"md5"}),
    }[kind_of(store)]
    assert (store.region(), caps.max_parts, caps.min_part_size, set(caps.checksums)) == expected
    store.check()


def test_open_store_is_cached_per_root_and_credentials(store_uri):
    assert open_store(store_uri) is open_store(store_uri)
    assert open_store(store_uri, {"unrelated://x": {}}) is open_store(store_uri)
    assert open_store(store_uri).root_uri == store_uri


# ---- credentials documents instead of the environment -----------------------------------------------

@pytest.fixture
def no_store_env(monkeypatch, tmp_path, emulators):
    """The SDKs' environment emptied, so only the credentials document can point at the emulators."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "STORAGE_EMULATOR_HOST", "AZURE_STORAGE_CONNECTION_STRING"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    return emulators.endpoints


def test_credentials_documents_reach_each_emulator(s3_bucket, gcs_bucket, azure_container, no_store_env):
    ep = no_store_env
    account_url = f"{ep['azure']}/{AZURITE_ACCOUNT}"
    docs = {
        s3_bucket: {s3_bucket: {"endpoint_url": ep["s3"], "aws_access_key_id": "testing",
                                "aws_secret_access_key": "testing", "region_name": "us-east-1"}},
        gcs_bucket: {"gcs": {"endpoint": ep["gcs"], "anonymous": True, "project": "test"}},
        azure_container: {"azure": {"connection_string": connection_string(ep["azure"])}},
    }
    for uri, doc in docs.items():
        store = open_store(uri, doc)
        store.write("via-doc", b"hello")
        assert store.read("via-doc") == b"hello"
    by_key = open_store(azure_container, {"az://" + AZURITE_ACCOUNT: {"account_url": account_url, "account_key": AZURITE_KEY}})
    assert by_key.read("via-doc") == b"hello"
    # the most specific key wins over the scheme-wide one
    doc = {"s3": {"endpoint_url": "http://127.0.0.1:1", "aws_access_key_id": "x", "aws_secret_access_key": "y"},
           s3_bucket: docs[s3_bucket][s3_bucket]}
    assert open_store(s3_bucket, doc).read("via-doc") == b"hello"


def test_credentials_errors(s3_bucket, azure_container, no_store_env):
    with pytest.raises(CredentialsError, match="AWS"):
        open_store(s3_bucket, {"s3": {"endpoint_url": no_store_env["s3"]}}).check()
    with pytest.raises(CredentialsError, match="Azure"):
        open_store(azure_container).check()
    with pytest.raises(CredentialsError, match="otheraccount"):
        open_store("az://otheraccount/container", {"az": {"connection_string": connection_string(no_store_env["azure"])}})
    bad_key = {"az": {"account_url": f"{no_store_env['azure']}/{AZURITE_ACCOUNT}", "account_key": "AAAA" + AZURITE_KEY[4:]}}
    with pytest.raises(CredentialsError):
        open_store(azure_container, bad_key).check()
    with pytest.raises(BadOptionError, match="aws_secret"):
        open_store(s3_bucket, {"s3": {"aws_secret": "typo"}})


# ---- transient failures become retryable errors ------------------------------------------------------

_THROTTLE_ANSWERS = {  # what each cloud sends when it wants us to slow down
    "s3": (503, {"Content-Type": "application/xml"},
           b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
    "gs": (429, {"Content-Type": "application/json"},
           b'{"error": {"code": 429, "message": "rateLimitExceeded", "errors": [{"reason": "rateLimitExceeded"}]}}'),
    "az": (503, {"Content-Type": "application/xml", "x-ms-error-code": "ServerBusy"},
           b"<?xml version='1.0' encoding='utf-8'?><Error><Code>ServerBusy</Code><Message>busy</Message></Error>"),
}


@contextmanager
def throttling_server(kind: str) -> Iterator[str]:
    """A real HTTP server on loopback that answers every request like a throttling ``kind`` store."""
    status, headers, body = _THROTTLE_ANSWERS[kind]

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = answer

        def log_message(self, *args) -> None:
            pass

    with serving(Handler) as url:
        yield url


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on loopback answering with ``handler``; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _docs(url: str) -> dict[str, dict]:
    return {"s3": {"s3": {"endpoint_url": url, "aws_access_key_id": "a", "aws_secret_access_key": "b"}},
            "gs": {"gs": {"endpoint": url, "anonymous": True}},
            "az": {"az": {"connection_string": connection_string(url)}}}


def test_transient_failures_are_retryable_errors(emulators):
    """A closed loopback port -> StoreUnavailableError; a store that throttles -> ThrottledError;
    both retryable, and raised after a short SDK retry (all cases run at once to save time)."""
    closed = f"http://127.0.0.1:{free_port()}"
    roots = {"s3": "s3://transient", "gs": "gs://transient", "az": "az://devstoreaccount1/transient"}

    def attempt(case: tuple[str, str, str]) -> tuple[Exception | None, float]:
        kind, url, _ = case
        started = time.monotonic()
        try:
            open_store(roots[kind], _docs(url)[kind]).check()
        except Exception as exc:  # noqa: BLE001  (asserted below)
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    with throttling_server("s3") as s3, throttling_server("gs") as gs, throttling_server("az") as az:
        throttlers = {"s3": s3, "gs": gs, "az": az}
        cases = [(k, closed, "unavailable") for k in roots] + [(k, throttlers[k], "throttled") for k in roots]
        with ThreadPoolExecutor(len(cases)) as pool:
            outcomes = list(pool.map(attempt, cases))
    for (kind, _, expected), (exc, seconds) in zip(cases, outcomes):
        wanted = StoreUnavailableError if expected == "unavailable" else ThrottledError
        assert isinstance(exc, wanted), (kind, expected, exc)
        assert exc.retryable and "transient" in str(exc) and exc.hint
        assert seconds < 20, (kind, expected, seconds)


def test_s3_body_cut_off_before_its_length_is_a_retryable_error():
    """S3 bodies are read straight into the caller's buffer (http.client's readinto, not urllib3's):
    a body the connection ends before its Content-Length is a retryable StoreUnavailableError, not a
    short read (which the gateway would take for an object that shrank, and not retry); a whole body
    is read as the store sent it, and asked for with no range when it is read whole. A real HTTP server
    on loopback sends 1,000 of 4,096 bytes. Under 1 s."""
    sent = os.urandom(4096)
    ranges = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ranges.append(self.headers.get("Range"))
            cut = self.path.endswith("/cut")
            self.send_response(206)
            self.send_header("Content-Length", str(len(sent)))
            self.send_header("Content-Range", f"bytes 0-{len(sent) - 1}/{len(sent)}")
            self.end_headers()
            self.wfile.write(sent[:1000] if cut else sent)
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    with serving(Handler) as url:
        store = open_store("s3://cut", _docs(url)["s3"])
        buf = bytearray(len(sent) + 1)
        assert store.read_into("whole", 0, memoryview(buf)) == len(sent) and buf[:len(sent)] == sent
        assert store.read_into("whole", 0, memoryview(buf), whole=True) == len(sent)
        assert ranges == [f"bytes=0-{len(sent)}", None]
        with pytest.raises(StoreUnavailableError) as caught:
            store.read_into("cut", 0, memoryview(buf))
        assert caught.value.retryable


def test_local_objects_get_the_mode_of_a_plain_file(tmp_path):
    """Temp files are private while being written; the published object is what open() would make."""
    store = open_store("file://" + str(tmp_path))
    store.write("whole", b"x")
    upload = store.begin_multipart("parts")
    part = store.upload_part("parts", upload, 1, b"y")
    store.complete_multipart("parts", upload, [part])
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("whole", "parts"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_local_temporaries_of_a_writer_that_died_are_removed(tmp_path):
    """Two writer processes each hold a temp file of a write not yet published; one is SIGKILLed. The
    next pending_uploads() (what a transfer asks of a destination) removes the dead writer's file and
    keeps the living one's; once that one is gone too, nothing of ours is left in the directory."""
    import signal
    import subprocess
    import sys

    writer = ("import sys, time; from gateway.stores.local import LocalStore; "
              "fd, _ = LocalStore(sys.argv[1])._new_temp(); print('ready', flush=True); time.sleep(600)")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        tmp = tmp_path / ".skyplane-tmp"
        assert len(list(tmp.iterdir())) == 2
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        store = open_store("file://" + str(tmp_path))
        assert store.pending_uploads() == []
        assert [f.name.split("~")[1] for f in tmp.iterdir()] == [str(procs[1].pid)]
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        assert store.pending_uploads() == [] and not tmp.exists()
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_local_write_replaces_an_object_and_leaves_nothing_behind(tmp_path):
    """A new object is an unnamed file named by a link once written; a write over an existing object
    (or over a link inside the root) replaces it through a temp file. Either way the directory holds
    the objects only, and a read through a link inside the root follows it."""
    store = open_store("file://" + str(tmp_path))
    store.write("a/k", b"one")
    store.write("a/k", b"two!")
    (tmp_path / "alias").symlink_to(tmp_path / "a" / "k")
    assert store.read("alias") == b"two!" and store.read("a/k", 1, 2) == b"wo"
    store.write("alias", b"three")  # the link is replaced, its target untouched
    assert not (tmp_path / "alias").is_symlink() and store.read("alias") == b"three"
    assert store.read("a/k") == b"two!"
    assert sorted(os.listdir(tmp_path)) == ["a", "alias"] and os.listdir(tmp_path / "a") == ["k"]


def test_s3_signs_request_bodies_only_where_they_could_be_altered(s3_bucket):
    """SigV4 payload signing (a SHA-256 of every byte uploaded) only over plain http to another host:
    TLS authenticates the body on https, and on loopback it never leaves the host. moto (loopback)
    takes an unsigned body, single-part and in parts, and stores the bytes sent."""
    from gateway.stores.s3 import payload_signing

    assert not payload_signing(None) and not payload_signing("https://s3.eu-west-1.amazonaws.com")
    assert not payload_signing("http://127.0.0.1:5000") and not payload_signing("http://localhost:9000")
    assert not payload_signing("http://[::1]:9000")
    assert payload_signing("http://10.0.0.5:9000") and payload_signing("http://minio.internal:9000")
    store = open_store(s3_bucket)
    sent = []  # x-amz-content-sha256 of every request: the body's hash, or that it is unsigned
    http = store._api._http  # noqa: SLF001 - the light client's pool manager: what it sends
    request = http.request
    http.request = lambda method, url, headers, **kwargs: (
        sent.append((method, headers.get("X-Amz-Content-SHA256").encode())), request(method, url, headers=headers,
                                                                                      **kwargs))[1]
    data = os.urandom(5 * MiB + 1)
    store.write("one", data)
    upload = store.begin_multipart("two")
    part = store.upload_part("two", upload, 1, data)
    store.complete_multipart("two", upload, [part])
    assert [h for m, h in sent if m == "PUT"] == [b"UNSIGNED-PAYLOAD"] * 2, sent
    assert store.read("one") == data == store.read("two")


@pytest.mark.parametrize("uploads, completed", [
    ([(1, 300), (2, 300), (3, 300)], [1, 2, 3]),  # all of one size: the data file is the object
    ([(3, 120), (1, 300), (2, 300)], [1, 2, 3]),  # a shorter last part, uploaded first, is appended
    ([(1, 300), (2, 300), (5, 300)], [1, 2, 5]),  # a gap: part 5 lies past where it belongs
    ([(1, 300), (2, 100), (3, 300)], [1, 2, 3]),  # a short part in the middle
    ([(1, 300), (2, 300), (2, 50), (3, 300)], [1, 2, 3]),  # part 2 sent again, shorter: the last copy wins
    ([(1, 300), (2, 300), (3, 300)], [1, 3]),  # an uploaded part left out of the completion
])
def test_local_multipart_layouts(tmp_path, uploads, completed):
    """Parts live in one data file per part size, at (number - 1) x size; completion renames the file
    of the first parts into place and copies what does not follow them, whatever the layout."""
    store = open_store("file://" + str(tmp_path))
    upload = store.begin_multipart("o")
    data = {}
    for number, size in uploads:
        data[number] = os.urandom(size)
        store.upload_part("o", upload, number, data[number])
    parts = [PartInfo(n, "", len(data[n])) for n in completed]
    receipt = store.complete_multipart("o", upload, parts)
    whole = b"".join(data[n] for n in completed)
    assert receipt.size == len(whole) and store.read("o") == whole
    assert leftovers(store.root_uri) == [] and sorted(os.listdir(tmp_path)) == ["o"]


def test_local_multipart_part_missing_after_a_writer_died_overwriting_it(tmp_path):
    """A part being written again is missing until its bytes are all there (its marker goes first)."""
    store = open_store("file://" + str(tmp_path))
    upload = store.begin_multipart("o")
    parts = [store.upload_part("o", upload, n, b"x" * 100) for n in (1, 2)]
    (tmp_path / ".skyplane-tmp" / upload / "part-00002").unlink()  # where a writer dying mid-write leaves it
    with pytest.raises(NotFoundError, match="part 2"):
        store.complete_multipart("o", upload, parts)


def test_endpoint_names_where_each_stores_sdk_sends_its_requests(s3_bucket, gcs_bucket, azure_container, emulators):
    """``endpoint`` reads the entry or the SDK's environment as open_store does, without importing an SDK:
    each emulator is found on loopback at its own port, and the store answers there."""
    from gateway.stores import endpoint

    for root, name in ((s3_bucket, "s3"), (gcs_bucket, "gcs"), (azure_container, "azure")):
        found = endpoint(root)
        assert (found.hostname, found.port) == (urlsplit(emulators.endpoints[name]).hostname,
                                                urlsplit(emulators.endpoints[name]).port), name
        open_store(root).check()
    assert endpoint("file:///tmp") is None
    entry = {"s3://" + s3_bucket[5:]: {"endpoint_url": "https://minio.example:9000"}}
    assert endpoint(s3_bucket, entry).hostname == "minio.example"
    assert endpoint("az://acct/ccc", {"az://acct": {"account_url": "https://acct.blob.core.windows.net"}}).hostname \
        == "acct.blob.core.windows.net"


# ---- local listings: one walk continued page after page (gateway/stores/local_walk.py) --------------

def _local_tree(root) -> list[str]:
    """Files across directory boundaries where code point order differs from a per-directory walk:
    ``a-b`` and ``a.txt`` sort before ``a/`` ('-' and '.' are below '/'), ``a0`` after it."""
    keys = (["a-b", "a.txt", "a0", "z"] + [f"a/{i:02d}" for i in range(12)] + ["a/deep/er/x", "a/deep/y"]
            + [f"d{i}/f{j}" for i in range(1, 13) for j in range(3)] + ["d1-x", "empty-sibling/k"])
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(key.encode())
    (root / "empty-dir").mkdir()
    return sorted(keys)


def _pages(store, prefix: str, limit: int, token: str | None = None) -> tuple[list[str], list[str]]:
    keys, tokens = [], []
    while True:
        page, token = store.list_page(prefix, token, limit)
        keys += [o.key for o in page]
        if token is None:
            return keys, tokens
        tokens.append(token)


@pytest.mark.parametrize("limit", [1, 3, 7, 1000])
def test_local_pages_are_ordered_and_complete_across_directories(tmp_path, limit):
    """Pages of any size add up to every file in code point order; every token, handed to a fresh
    store (no walk kept: another process), lists the same rest; prefixes that cut through names."""
    from gateway.stores.local import LocalStore

    keys = _local_tree(tmp_path)
    store = LocalStore(str(tmp_path))
    listed, tokens = _pages(store, "", limit)
    assert listed == keys
    for token in tokens:
        assert _pages(LocalStore(str(tmp_path)), "", limit, token)[0] == [k for k in keys if k > token]
    for prefix in ("a", "a/", "a/0", "a/deep/", "d1", "d1/", "d1-", "e", "nothing"):
        assert _pages(store, prefix, limit)[0] == [k for k in keys if k.startswith(prefix)], prefix


def test_local_listing_reads_each_directory_once(tmp_path, monkeypatch):
    """A page continues the walk the previous one left off: one directory of 50 files listed 5 at a
    time is read once (a walk from the root per page read it 10 times: quadratic in its size)."""
    from gateway.stores import local_walk
    from gateway.stores.local import LocalStore

    for i in range(50):
        (tmp_path / f"f{i:02d}").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g").write_bytes(b"y")
    read, scandir = [], os.scandir
    monkeypatch.setattr(local_walk.os, "scandir", lambda path: read.append(path) or scandir(path))
    store = LocalStore(str(tmp_path))
    listed, tokens = _pages(store, "", 5)
    assert listed == [f"f{i:02d}" for i in range(50)] + ["sub/g"] and len(tokens) == 10
    assert sorted(read) == [str(tmp_path), str(tmp_path / "sub") + "/"]


def test_local_listing_sees_files_deleted_and_added_while_it_lists(tmp_path):
    """Between two pages: a file deleted in the directory being listed is passed over; a file added
    to a directory not yet entered is listed; so is everything else, once, in order."""
    from gateway.stores.local import LocalStore

    keys = _local_tree(tmp_path)
    store = LocalStore(str(tmp_path))
    page, token = store.list_page("", None, 6)
    assert [o.key for o in page] == keys[:6] and token == "a/03"
    os.remove(tmp_path / "a" / "05")
    (tmp_path / "d9" / "late").write_bytes(b"late")
    rest = _pages(store, "", 6, token)[0]
    assert rest == sorted({k for k in keys[6:] if k != "a/05"} | {"d9/late"})


def test_local_listing_follows_links_to_files_inside_only(tmp_path):
    """As before the walk was kept: a link to a file inside the root is listed with its target's size,
    a link to a directory is not followed, a dangling link is not listed."""
    from gateway.stores.local import LocalStore

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "k").write_bytes(b"12345")
    (tmp_path / "b-link").symlink_to(tmp_path / "real" / "k")
    (tmp_path / "dir-link").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    store = LocalStore(str(tmp_path))
    for limit in (1, 1000):
        assert _pages(store, "", limit)[0] == ["b-link", "real/k"]
    assert [(o.key, o.size) for o in store.list_page("", None, 1000)[0]] == [("b-link", 5), ("real/k", 5)]
