"""URI parsing (unit tests: pure functions) and the local store's refusal of keys that escape its root."""

from __future__ import annotations

import os

import pytest

from gateway.stores import open_store
from gateway.stores.uri import StoreURI, parse_uri
from planner.errors import BadURIError, NotFoundError


@pytest.mark.parametrize("text, scheme, bucket, path, root", [
    ("s3://my-bucket/a/b.txt", "s3", "my-bucket", "a/b.txt", "s3://my-bucket"),
    ("s3://my-bucket", "s3", "my-bucket", "", "s3://my-bucket"),
    ("s3://my-bucket/", "s3", "my-bucket", "", "s3://my-bucket"),
    ("S3://my.bucket/dir/", "s3", "my.bucket", "dir/", "s3://my.bucket"),
    ("gs://lake_1/x y/ü.csv", "gs", "lake_1", "x y/ü.csv", "gs://lake_1"),
    ("gcs://lake/x", "gs", "lake", "x", "gs://lake"),
    ("az://acct1/container-a/p/", "az", "acct1/container-a", "p/", "az://acct1/container-a"),
    ("azure://acct1/container-a", "az", "acct1/container-a", "", "az://acct1/container-a"),
    ("file:///data/in/", "file", "", "/data/in/", "file:///"),
    ("/data//in/./x", "file", "", "/data/in/x", "file:///"),
    ("  /tmp/x  ", "file", "", "/tmp/x", "file:///"),
])
def test_good_uris(text, scheme, bucket, path, root):
    uri = parse_uri(text)
    assert (uri.scheme, uri.bucket, uri.path, uri.root_uri) == (scheme, bucket, path, root)


def test_str_and_join():
    assert str(parse_uri("s3://bkt/dir")) == "s3://bkt/dir"
    assert str(parse_uri("/tmp/x")) == "file:///tmp/x"
    assert parse_uri("s3://bkt/dir").join("/k") == StoreURI("s3", "bkt", "dir/k")
    assert parse_uri("s3://bkt/dir/").join("k") == StoreURI("s3", "bkt", "dir/k")
    assert parse_uri("s3://bkt").join("k") == StoreURI("s3", "bkt", "k")


@pytest.mark.parametrize("text, names", [
    ("", "empty"),
    ("   ", "empty"),
    ("s3:/bucket/x", "s3:/bucket/x"),
    ("relative/path", "relative/path"),
    ("ftp://host/x", "'ftp'"),
    ("s4://bucket/x", "'s4'"),
    ("s3:///key", "empty bucket"),
    ("gs://", "empty bucket"),
    ("s3://Bad_Bucket/x", "'Bad_Bucket'"),
    ("s3://ab/x", "'ab'"),
    ("az://devstoreaccount1", "container"),
    ("az://devstoreaccount1/", "container"),
    ("az://Bad-Account/c1/x", "'Bad-Account'"),
    ("az://acct1/Bad_Container", "'Bad_Container'"),
    ("az://acct1/a--b", "'a--b'"),
    ("s3://bucket/a/../b", "'..'"),
    ("gs://bucket/./b", "'.'"),
    ("/tmp/../etc/passwd", "'..'"),
    ("file://relative", "absolute"),
    ("file:///a/../b", "'..'"),
])
def test_bad_uris_name_the_bad_part(text, names):
    with pytest.raises(BadURIError) as info:
        parse_uri(text)
    assert names in str(info.value)
    assert info.value.hint  # and says what to write instead


def test_non_string_is_rejected():
    with pytest.raises(BadURIError):
        parse_uri(None)  # type: ignore[arg-type]


def test_open_store_wants_a_root(tmp_path):
    with pytest.raises(BadURIError, match="not a store root"):
        open_store("s3://bucket/some/key")
    with pytest.raises(BadURIError, match="ftp"):
        open_store("ftp://host/x")
    assert open_store("file://" + str(tmp_path)).root_uri == "file://" + str(tmp_path)
    assert open_store(f"file://{tmp_path}/").root_uri == "file://" + str(tmp_path)


# ---- the local store never writes outside its root ----------------------------------------------

ESCAPING_KEYS = ["../outside", "a/../../outside", "/etc/passwd-copy", "a//b", "./x", "a/./b", "", "x/..",
                 ".skyplane-tmp/x", "nul\0byte"]


def tree(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_local_store_rejects_escaping_keys_and_writes_nothing(tmp_path, key):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "sibling.txt").write_bytes(b"keep")
    store = open_store("file://" + str(root))
    before = tree(tmp_path)
    for call in (lambda: store.write(key, b"evil"), lambda: store.begin_multipart(key), lambda: store.read(key),
                 lambda: store.head(key), lambda: store.delete(key)):
        with pytest.raises(BadURIError) as info:
            call()
        assert info.value.hint
    assert tree(tmp_path) == before
    assert (tmp_path / "sibling.txt").read_bytes() == b"keep"
    assert not os.path.exists("/etc/passwd-copy")


def test_local_store_rejects_escaping_prefixes(tmp_path):
    store = open_store("file://" + str(tmp_path))
    for prefix in ("../", "a/../../", "/etc/", "a/./b"):
        with pytest.raises(BadURIError):
            list(store.list(prefix))


def test_local_store_missing_root_writes_nothing(tmp_path):
    store = open_store(f"file://{tmp_path}/not-there")
    with pytest.raises(NotFoundError, match="not-there"):
        store.write("k", b"x")
    with pytest.raises(NotFoundError, match="not-there"):
        store.begin_multipart("k")
    assert not (tmp_path / "not-there").exists()


def test_local_writes_are_renames_and_delete_prunes_empty_dirs(tmp_path):
    store = open_store("file://" + str(tmp_path))
    store.write("a/b/c.txt", b"1")
    assert tree(tmp_path) == ["a/b/c.txt"]  # the temp file was renamed, not left behind
    assert not (tmp_path / ".skyplane-tmp").exists()  # nor the temp dir, once idle
    upload = store.begin_multipart("m")
    store.upload_part("m", upload, 1, b"part")
    assert [(o.key, o.size) for o in store.list()] == [("a/b/c.txt", 1)]  # parts are not objects
    store.abort_multipart("m", upload)
    store.delete("a/b/c.txt")
    assert os.listdir(tmp_path) == []
