"""Resume keeps the parts the store holds and can vouch for (#15 item 4; coordinator/stored_parts.py).

``list_parts`` per store against the real emulators (through a gateway's ``POST /store``:
tests/test_gateway_daemon.py), then the job's coordinator SIGKILLed in the middle of a multipart upload, the manifest made to miss
parts the store holds (written, not recorded: what a kill inside the commit interval leaves), parts
overwritten with other bytes through the store's API, and the job resumed under its id. Real
coordinator, real gateways, real emulators. The gateways of the killed coordinator finish what they
had taken on before they stop (gateway/daemon.py, ``drain``), so the store holds every part.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest

from gateway.stores import open_store
from gateway.stores.common import Digest
from planner.errors import BadOptionError
from skyplane_provider.coordinator.jobdir import job_dir
from skyplane_provider.transfer import Transfer, TransferRequest

from .helpers import digests, read_all, wait_gone
from .reliability_report import record

MiB = 1024**2
PART = 5 * MiB  # S3's smallest part
BIG = 8 * PART + 12345  # nine parts
#: Frame headers and the small-object bundle's bytes on the wire beyond the parts' own, at most.
SLACK = 64 * 1024


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    monkeypatch.setenv("SKYPLANE_HOME", str(path))
    return path


def test_list_parts_reports_each_parts_checksums_or_is_not_offered(store_uri):
    store = open_store(store_uri)
    kinds = store.capabilities.part_checksums
    upload = store.begin_multipart("k.bin")
    data = {1: os.urandom(PART), 2: os.urandom(1000)}
    try:
        for n, b in data.items():
            store.upload_part("k.bin", upload, n, b)
        if not kinds:  # Azure: block lists carry no digest
            with pytest.raises(BadOptionError):
                store.list_parts("k.bin", upload)
            return
        listed = store.list_parts("k.bin", upload)
        only = store.list_parts("k.bin", upload, [2])
    finally:
        store.abort_multipart("k.bin", upload)
    assert [(p.part_number, p.size) for p in listed] == [(1, PART), (2, 1000)]
    for p in listed:
        for kind in kinds:
            digest = Digest(kind)
            digest.update(data[p.part_number])
            assert getattr(p, kind) == digest.hexdigest(), (kind, p)
    # Asked for part 2's checksums only, a store may leave out part 1's (the local one reads no more).
    (second,) = [p for p in only if p.part_number == 2]
    assert all(getattr(second, kind) == getattr(listed[1], kind) for kind in kinds)


def _recorded_parts(manifest) -> dict[int, int]:
    """part -> size the manifest records written, read the way another process may (WAL)."""
    try:
        with sqlite3.connect(f"file:{manifest}?mode=ro", uri=True, timeout=5) as db:
            return dict(db.execute("SELECT part, size FROM parts"))
    except sqlite3.Error:
        return {}


def test_fault_resume_keeps_parts_written_but_not_recorded_and_resends_tampered_ones(home, tmp_path, store_uri):
    kind = store_uri.split(":")[0]
    # The destination's store as the job opens it: a local one is rooted at the directory, keys below it.
    store, prefix = (open_store(store_uri + "/r"), "") if kind == "file" else (open_store(store_uri), "r/")
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(BIG)
    objs = {"a-big.bin": big, "b.txt": b"small\n" * 100}
    for k, v in objs.items():
        (src / k).write_bytes(v)
    if kind == "file":
        os.mkdir(store_uri.removeprefix("file://") + "/r")  # a local destination directory must exist
    # Another region than the destination's, so that every byte goes over a TCP hop and is counted.
    regions = {"src_region": "local:src", **({"dst_regions": ["local:dst"]} if kind == "file" else {})}
    options = dict(src=str(src), dsts=[f"{store_uri}/r/"], chunk_size="5MiB", **regions)
    # The cap stretches the copy over seconds, so that the kill lands between parts.
    handle = Transfer(TransferRequest(**options, bwlimit="6MiB/s")).start()
    directory = job_dir(handle.job_id)
    manifest = directory / "manifest.sqlite3"
    deadline = time.monotonic() + 60
    while len(_recorded_parts(manifest)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(json.loads((directory / "coordinator.json").read_text())["pid"], signal.SIGKILL)
    assert wait_gone(handle.job_id) == [], "the gateways outlived their killed coordinator"
    with sqlite3.connect(manifest) as db:
        key, upload_id = db.execute("SELECT dest_key, upload_id FROM uploads").fetchone()
        recorded = sorted(n for (n,) in db.execute("SELECT part FROM parts"))
        assert 4 <= len(recorded) < 9, f"the kill did not land mid-upload: {recorded}"
        # Written, not recorded: one part as it is, one overwritten with other bytes of its size.
        unrecorded, damaged = recorded[0], recorded[1]
        db.execute("DELETE FROM parts WHERE part IN (?, ?)", (unrecorded, damaged))
    # Recorded, then overwritten at the store: a part whose recorded ETag no longer holds (not on
    # Azure, whose block lists give neither a digest nor a version to tell it by).
    overwritten = recorded[2] if kind != "az" else None
    for n in (damaged, overwritten):
        if n is not None:
            store.upload_part(key, upload_id, n, os.urandom(len(big[(n - 1) * PART:n * PART])))
    assert "a-big.bin" not in read_all(store_uri, "r/"), "a partial object was visible"
    at_store = {p.part_number for p in store.list_parts(key, upload_id)} if store.capabilities.part_checksums \
        else set()

    if store.capabilities.part_checksums:
        # The gateways drained before they stopped (gateway/daemon.py): every part they had taken on
        # is at the store (the ~25 MiB left take ~4 s at the cap, of the drain's 10 s).
        assert at_store == set(range(1, 10)), f"parts at the store after the kill: {sorted(at_store)}"

    stats = Transfer(TransferRequest(**options, job_id=handle.job_id, resume=True)).run()

    size = {n: len(big[(n - 1) * PART:n * PART]) for n in range(1, 10)}
    if store.capabilities.part_checksums:
        again = [n for n in range(1, 10) if n not in at_store or n in (damaged, overwritten)]
    else:  # every part the manifest does not record goes again
        again = [n for n in range(1, 10) if n not in recorded or n in (unrecorded, damaged)]
    expected = sum(size[n] for n in again)
    small = len(objs["b.txt"])  # sent again unless it was copied before the kill
    final = read_all(store_uri, "r/")
    record("fault", f"{kind}: SIGKILL of the coordinator with parts {recorded} of 9 recorded; part {unrecorded} "
           f"then unrecorded, part {damaged} unrecorded and overwritten, part {overwritten} overwritten; resumed",
           f"resumed run sent {stats.bytes_on_wire} B on the wire; parts sent again {again} ({expected} B); "
           f"final sha256-identical: {final == digests(objs)}; verified by {stats.verification}")
    assert final == digests(objs)
    assert store.pending_uploads(prefix) == []
    # One chunk per part sent again, and one bundle for the small object unless it was recorded done.
    assert stats.chunks == len(again) + (stats.objects - 1)
    assert stats.bytes_on_wire <= expected + small + SLACK
    assert unrecorded not in again if store.capabilities.part_checksums else unrecorded in again
    assert wait_gone(handle.job_id) == []
