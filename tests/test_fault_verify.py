"""Faults: a corrupt or short copy at the destination is caught by the verifier, loudly and by name,
and the stats say how each copy was verified, per store pair (real emulators, real gateways)."""

from __future__ import annotations

import os

import pytest

from gateway.stores import open_store
from planner.errors import VerificationError
from gateway.stores.base import ObjectInfo
from skyplane_provider.coordinator.finish import check_copy, shared_kinds
from skyplane_provider.transfer import copy

from .helpers import digests, gateway_pids, put_objects, read_all
from .reliability_report import record

MiB = 1024**2
AZ = "azure:eastus"
_BUCKET_FIXTURE = {"s3": "s3_bucket", "gcs": "gcs_bucket", "azure": "azure_container", "local": "local_root"}


def verify_one(src_root: str, dst_root: str, key: str, receipt: ObjectInfo, integrity: str | None = "aead") -> str:
    """The check a copy gets as it lands: the source object as listed (here a HEAD, which carries every
    checksum the store keeps, as GCS and Azure listings do) against what the destination store answered
    to the write (``receipt``); ``integrity``: the weakest of the copy's chunks. Returns the method."""
    src, dst = open_store(src_root), open_store(dst_root)
    return check_copy(src.head(key), receipt, f"{dst_root}/{key}", shared_kinds(src, dst), integrity)


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure", "local"])
def test_fault_verifier_catches_corrupt_copy(kind, request, local_root, emulators):
    """Same size, one flipped byte: the MD5 in the store's answer to the write tells (a local directory
    answers with the size only: there the gateways' end-to-end check of the chunk is what vouches for
    the bytes). Then a short copy: the size tells, whatever the store."""
    data = os.urandom(64 * 1024)
    put_objects(local_root, {"obj": data})
    dst = request.getfixturevalue(_BUCKET_FIXTURE[kind])
    if kind == "local":  # a second directory, not the source itself
        dst = request.getfixturevalue("tmp_path_factory").mktemp("dst").as_uri()
    store = open_store(dst)
    native = kind != "local"
    assert verify_one(local_root, dst, "obj", store.write("obj", data)) == ("md5" if native else "aead")
    corrupt = store.write("obj", data[:100] + bytes([data[100] ^ 1]) + data[101:])
    if native:
        with pytest.raises(VerificationError, match=r"/obj has md5 [0-9a-f]{32}, the source obj [0-9a-f]{32}"):
            verify_one(local_root, dst, "obj", corrupt)
    short = store.write("obj", data[:-1])
    with pytest.raises(VerificationError, match=f"/obj has {len(data) - 1} bytes, the source obj {len(data)}"):
        verify_one(local_root, dst, "obj", short)
    record("fault", f"verifier: a copy in {kind} with one flipped byte, then one byte short, checked against "
           "the store's answer to the write", "VerificationError naming the object both times (md5 mismatch, "
           "then size mismatch)" if native else "size mismatch raised VerificationError (a local write answers "
           "with the size only)")


def test_fault_verifier_needs_every_chunk_confirmed(s3_bucket, local_root):
    """Without a native checksum in common (a multipart S3 copy has none) an unconfirmed chunk fails."""
    data = os.urandom(6 * MiB)
    put_objects(local_root, {"big": data})
    store = open_store(s3_bucket)
    upload = store.begin_multipart("big")
    parts = [store.upload_part("big", upload, n + 1, data[n * 5 * MiB:(n + 1) * 5 * MiB]) for n in range(2)]
    done = store.complete_multipart("big", upload, parts)
    assert verify_one(local_root, s3_bucket, "big", done) == "aead"
    assert verify_one(local_root, s3_bucket, "big", done, "crc32c") == "chunk-crc32c"
    with pytest.raises(VerificationError, match="big: no gateway confirmed the integrity of every chunk"):
        verify_one(local_root, s3_bucket, "big", done, integrity=None)


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SKYPLANE_HOME", str(home))
    yield
    assert gateway_pids(marker=str(home)) == [], "a gateway process was left running"


# Pairs, and how each object of (small, 6 MiB in parts) is verified on the emulators, from the source
# listing and the destination's answers to the writes (no HEAD, no second pass).
PAIRS = [
    # One host: the source's gateway reads and writes every chunk itself (``local``): a local listing
    # reads no file (no MD5), S3 multipart ETags are no MD5.
    ("local", "s3", {"local": 2}, {}),
    # A gateway per region (one_gateway false): S3 listings carry no MD5 (an ETag may not be one), so
    # the chunks' CRC32C (local gateways send clear frames to each other).
    ("s3", "azure", {"chunk-crc32c": 2}, {"one_gateway": False}),
    ("azure", "gcs", {"md5": 2}, {}),  # fake-gcs keeps an MD5 of composed objects (real GCS: aead)
    ("gcs", "local", {"local": 2}, {}),  # a local write answers with the size only
]


@pytest.mark.parametrize("src_kind,dst_kind,expected,settings", PAIRS, ids=[f"{a}-{b}" for a, b, _, _ in PAIRS])
def test_fault_stats_say_how_copies_were_verified(src_kind, dst_kind, expected, settings, request, own_home):
    objs = {"small.txt": b"hello\n" * 100, "big.bin": os.urandom(6 * MiB + 7)}
    src = request.getfixturevalue(_BUCKET_FIXTURE[src_kind])
    dst = request.getfixturevalue(_BUCKET_FIXTURE[dst_kind])
    if dst_kind == "local":
        dst = request.getfixturevalue("tmp_path_factory").mktemp("dst").as_uri()
    put_objects(src, objs)
    regions = {"src_region": AZ} if src_kind == "azure" else {"dst_regions": [AZ]} if dst_kind == "azure" else {}
    stats = copy(f"{src}/", f"{dst}/", chunk_size="1MiB", provisioner_settings=settings, **regions)
    assert read_all(dst) == digests(objs)
    assert stats.verified and stats.verification == {"objects": 2, "by": expected}
    record("fault", f"verification of a {src_kind} -> {dst_kind} copy (one small object, one of 6 MiB in parts)",
           f"stats.verification = {stats.verification}")


def test_fault_verifier_uses_crc32c_when_only_that_is_shared():
    """A composed GCS object has only a CRC32C (fake-gcs keeps an MD5 too, so this is checked here)."""
    src = ObjectInfo("k", 10, md5=None, crc32c="0a0b0c0d")
    assert check_copy(src, ObjectInfo("k", 10, crc32c="0a0b0c0d"), "gs://b/k", ("md5", "crc32c"), None) == "crc32c"
    with pytest.raises(VerificationError, match="crc32c"):
        check_copy(src, ObjectInfo("k", 10, crc32c="ffffffff"), "gs://b/k", ("md5", "crc32c"), "c0ffee")
    # Neither side has a shared native checksum: how the gateways checked the chunks decides (the weakest,
    # kept per copy as its chunks land: ``Copy.note_integrity``).
    assert check_copy(src, ObjectInfo("k", 10, md5="aa"), "gs://b/k", ("md5", "crc32c"), "aead") == "aead"
    assert check_copy(src, ObjectInfo("k", 10, md5="aa"), "gs://b/k", ("md5", "crc32c"), "crc32c") == "chunk-crc32c"
    with pytest.raises(VerificationError, match="no gateway confirmed"):
        check_copy(src, ObjectInfo("k", 10, md5="aa"), "gs://b/k", ("md5", "crc32c"), None)
    record("fault", "verifier on copies with only a CRC32C in common (a composed GCS object), a wrong CRC32C, "
           "and no common checksum with one chunk unconfirmed", "crc32c used and a mismatch raised "
           "VerificationError; the chunks' integrity (aead, chunk-crc32c) used otherwise, an unconfirmed chunk "
           "raised VerificationError")
