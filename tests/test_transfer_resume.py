"""Resume from the job's manifest (#15 item 4): the job's coordinator process is killed with SIGKILL in the
middle of a multipart upload to S3 (moto); the job resumed with the same job id sends again only the
parts its manifest does not record, completes the upload it began, and every object comes out
sha256-identical, with nothing partial visible in between. Real coordinator, real gateways."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import boto3
import pytest

from planner.errors import BadOptionError
from skyplane_provider.coordinator.jobdir import job_dir
from skyplane_provider.transfer import Transfer, TransferRequest

from .helpers import digests, read_all, wait_gone
from .reliability_report import record

MiB = 1024**2
PART = 5 * MiB  # S3's smallest part
BIG = 8 * PART + 12345  # nine parts


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    monkeypatch.setenv("SKYPLANE_HOME", str(path))
    return path


def _parts_recorded(manifest) -> tuple[int, int]:
    """(parts, bytes) the manifest records written, read the way another process may (WAL)."""
    try:
        with sqlite3.connect(f"file:{manifest}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM parts").fetchone()
    except sqlite3.Error:
        return 0, 0


def test_resume_after_the_coordinator_is_killed_mid_multipart(home, tmp_path, s3_bucket):
    src = tmp_path / "src"
    src.mkdir()
    objs = {"a-big.bin": os.urandom(BIG), "b.txt": b"small\n" * 100, "c.txt": b"other\n" * 50}
    for k, v in objs.items():
        (src / k).write_bytes(v)
    total = sum(map(len, objs.values()))
    bucket = s3_bucket.removeprefix("s3://")
    options = dict(src=str(src), dsts=[f"{s3_bucket}/r/"], chunk_size="5MiB")
    # A bandwidth cap stretches the copy over several seconds, so the kill lands between parts. The
    # resumed run goes uncapped (a cap is not part of what makes the job the same job): the ~25 MiB
    # it still has to send took ~4 s at the cap, which proved nothing.
    first = Transfer(TransferRequest(**options, bwlimit="6MiB/s"))
    handle = first.start()
    directory = job_dir(handle.job_id)
    manifest = directory / "manifest.sqlite3"
    deadline = time.monotonic() + 60
    while _parts_recorded(manifest)[0] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    coordinator = json.loads((directory / "coordinator.json").read_text())["pid"]
    os.kill(coordinator, signal.SIGKILL)
    assert wait_gone(handle.job_id) == [], "the gateways outlived their killed coordinator"
    parts, recorded = _parts_recorded(manifest)
    visible = read_all(s3_bucket, "r/")
    s3 = boto3.client("s3")
    open_uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert 3 <= parts < 9, f"the kill did not land mid-upload: {parts} of 9 parts recorded"
    assert "a-big.bin" not in visible and all(visible[k] == digests(objs)[k] for k in visible), "a partial object"
    assert [u["Key"] for u in open_uploads] == ["r/a-big.bin"]  # left open by the kill, for the resume

    with pytest.raises(BadOptionError, match="records another transfer"):  # a job id is never another job
        Transfer(TransferRequest(**{**options, "chunk_size": "6MiB"}, job_id=handle.job_id, resume=True)).prepare()
    stats = Transfer(TransferRequest(**options, job_id=handle.job_id, resume=True)).run()

    final = read_all(s3_bucket, "r/")
    left = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    report = [json.loads(line) for line in (directory / "report.jsonl").read_text().splitlines()]
    resent = stats.bytes_on_wire - (total - recorded - sum(len(objs[k]) for k in visible))
    record("fault", f"SIGKILL of the job's coordinator with {parts}/9 parts of a {BIG} B object recorded in the "
           f"manifest ({len(visible)} small objects visible), then the job resumed (same job id, resume=True)",
           f"resumed run sent {stats.bytes_on_wire} B on the wire for {total - recorded} B not recorded "
           f"({max(resent, 0)} B more: framing and in-flight parts), continued upload {open_uploads[0]['UploadId'][:8]}..., "
           f"{stats.resumed_copies} copies skipped as recorded; final {len(final)}/{len(objs)} sha256-identical, "
           f"{len(left)} multipart uploads left")
    assert final == digests(objs)
    assert left == []
    assert stats.resumed_copies == len(visible)
    # Only what the manifest did not record went again: never a recorded part (lz4 leaves random data
    # alone; framing adds a few hundred bytes per chunk).
    assert stats.bytes_on_wire <= total - recorded + 64 * 1024
    assert stats.bytes_on_wire < total * 0.8
    assert {r["key"] for r in report if r["status"] == "copied"} == set(objs)
    assert wait_gone(handle.job_id) == []
