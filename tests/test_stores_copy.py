"""Server-side copy in the store adapters, on the real emulators (moto, fake-gcs-server, Azurite):
what each store declares, what the probe finds, and copies that never pass through us. Then the same
through a real gateway's ``POST /store`` (presign on one gateway, copy on another)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest

from gateway.stores import open_store
from gateway.stores.azure import AzureStore
from gateway.stores.base import Capabilities, CopySource
from gateway.stores.gcs import GCSStore
from gateway.stores.local import LocalStore
from gateway.stores.s3 import S3Store
from gateway.stores.common import PROBE_PREFIX
from planner.errors import BadOptionError, CredentialsError, StoreError
from planner.plan import RegionProgram
from skyplane_provider.buckets import make_bucket
from skyplane_provider.testing.buckets import create_bucket, unique_name
from skyplane_provider.testing.leftovers import leftovers

MiB = 1024**2


def _source(root: str, key: str, data: bytes, *, presigned: bool = False) -> CopySource:
    store = open_store(root)
    store.write(key, data)
    return CopySource(root, key, len(data), store.presign(key, 600) if presigned else None)


def _nothing_left(root: str) -> None:
    """No probe object, and nothing that is not an object (uploads, parts, staged blocks)."""
    assert not [o.key for o in open_store(root).list(PROBE_PREFIX)]
    assert leftovers(root) == []


def test_what_each_store_declares():
    caps = {store.scheme: store.capabilities for store in (LocalStore, S3Store, GCSStore, AzureStore)}
    assert caps["file"].copy_from == () and not caps["file"].presign
    assert caps["s3"].copy_from == ("s3",) and caps["s3"].copy_parts and caps["s3"].presign
    assert caps["gs"].copy_from == ("gs",) and not caps["gs"].copy_parts
    assert caps["az"].copy_from == ("url",) and caps["az"].copy_parts and caps["az"].copy_max == 256 * MiB
    # a job document carries them as JSON (the checksum sets as lists)
    loaded = json.loads(json.dumps({**dataclasses.asdict(caps["s3"]), "checksums": ["md5"], "part_checksums": ["md5"]}))
    assert Capabilities(**{**loaded, "checksums": frozenset(loaded["checksums"]),
                           "part_checksums": frozenset(loaded["part_checksums"])}) == caps["s3"]
    with pytest.raises(BadOptionError, match="cannot copy server-side"):
        open_store("file:///tmp").copy_from(CopySource("s3://x-y-z", "k", 1), "k")


def test_s3_copies_across_buckets_and_regions_whole_and_in_parts(emulators):
    src = create_bucket("s3")
    dst = make_bucket(f"s3://{unique_name()}", region="aws:eu-west-1")
    data = os.urandom(11 * MiB)
    source = _source(src, "in/big.bin", data)
    store = open_store(dst)
    assert store.region() == "aws:eu-west-1" and open_store(src).region() == "aws:us-east-1"
    store.probe_copy_from(source)
    store.probe_copy_from(source, parts=True)
    receipt, token = store.copy_from(source, "out/whole.bin")
    assert token is None and receipt.size == len(data) and receipt.md5 == hashlib.md5(data).hexdigest()
    upload = store.begin_multipart("out/parts.bin")
    parts = [store.copy_part_from(source, "out/parts.bin", upload, 1, 0, 6 * MiB),
             store.copy_part_from(source, "out/parts.bin", upload, 2, 6 * MiB, 5 * MiB)]
    assert store.complete_multipart("out/parts.bin", upload, parts).size == len(data)
    assert store.read("out/whole.bin") == store.read("out/parts.bin") == data
    assert store.pending_uploads() == []
    _nothing_left(dst)
    with pytest.raises(BadOptionError, match="S3 cannot copy server-side from gs://"):
        store.copy_from(CopySource("gs://other", "k", 1), "k")


def test_gcs_rewrites_across_buckets(emulators):
    src, dst = create_bucket("gcs"), create_bucket("gcs")
    data = os.urandom(3 * MiB)
    source = _source(src, "a/x", data)
    store = open_store(dst)
    store.probe_copy_from(source)
    receipt, token = store.copy_from(source, "b/x")
    assert token is None and receipt.size == len(data)
    assert receipt.md5 == hashlib.md5(data).hexdigest() and receipt.crc32c
    assert store.read("b/x") == data
    assert [o.key for o in store.list()] == ["b/x"]  # the probe's scratch object is gone
    _nothing_left(dst)
    # fake-gcs takes anonymous credentials, which hold no key to sign a URL with
    with pytest.raises(CredentialsError, match="cannot sign"):
        open_store(src).presign("a/x", 600)


def test_azure_copies_from_a_presigned_url_and_azurite_has_no_block_from_url(emulators):
    src, dst = create_bucket("azure"), create_bucket("azure")
    data = os.urandom(2 * MiB)
    source = _source(src, "a/x", data, presigned=True)
    assert "sig=" in source.url and "sp=r" in source.url  # read-only SAS
    store = open_store(dst)
    store.probe_copy_from(source)
    receipt, token = store.copy_from(source, "b/x")
    assert token is None and receipt.size == len(data) and receipt.md5 == hashlib.md5(data).hexdigest()
    assert store.read("b/x") == data
    with pytest.raises(StoreError, match="APINotImplemented"):  # Put Block From URL (EMULATORS.md)
        store.probe_copy_from(source, parts=True)
    assert [o.key for o in store.list()] == ["b/x"]
    _nothing_left(dst)
    with pytest.raises(BadOptionError, match="from a URL"):
        store.copy_from(CopySource(src, "a/x", len(data)), "c/x")


def test_azurite_cannot_read_a_presigned_s3_url_and_the_probe_says_so(emulators):
    source = _source(create_bucket("s3"), "x", b"cross-cloud", presigned=True)
    dst = create_bucket("azure")
    with pytest.raises(StoreError, match="could not read the source"):
        open_store(dst).probe_copy_from(source)
    _nothing_left(dst)


def test_copies_through_gateways_presign_on_one_copy_on_another(emulators, jobs):
    """A source-region gateway presigns, a destination-region gateway copies from the URL: each holds
    only its own store's credentials, and the caller none."""
    src, dst = create_bucket("azure"), create_bucket("azure")
    data = os.urandom(MiB)
    open_store(src).write("a/x", data)
    conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    job = jobs({"t:src": RegionProgram("t:src", {}), "t:dst": RegionProgram("t:dst", {})},
               overrides={"t:src": {"credentials": {src: {"connection_string": conn}}},
                          "t:dst": {"credentials": {dst: {"connection_string": conn}}}})
    url = job.clients["t:src"].presign(src, "a/x", 600)
    receipt, token = job.clients["t:dst"].copy(dst, "b/x", CopySource(src, "a/x", len(data), url))
    assert token is None and receipt.size == len(data) and open_store(dst).read("b/x") == data
    s3_src, s3_dst = create_bucket("s3"), create_bucket("s3")
    open_store(s3_src).write("big", data * 6)
    upload = job.clients["t:dst"].begin_multipart(s3_dst, "big")
    part = job.clients["t:dst"].copy_part(s3_dst, "big", upload, 1, CopySource(s3_src, "big", 6 * MiB), 0, 6 * MiB)
    assert job.clients["t:dst"].complete_multipart(s3_dst, "big", upload, [part]).size == 6 * MiB
    for bad in ({"op": "copy", "store": dst, "key": "k", "source": {"store": "file:///etc", "key": "passwd",
                                                                    "size": 1}},
                {"op": "copy_part", "store": s3_dst, "key": "k", "upload_id": upload, "part": 1, "offset": 0,
                 "length": 10, "source": {"store": s3_src, "key": "big", "size": 5}},
                {"op": "presign", "store": src, "key": "a/x", "seconds": 0}):
        with pytest.raises(Exception, match="answered 400"):
            job.clients["t:dst"]._call("POST", "/store", bad)
