"""The manifest kept off the coordinator's host (#15 item 4, ``state_uri``): a job whose coordinator is
SIGKILLed mid-job and whose host is then lost (its job directory removed) resumes from the snapshot
in a moto bucket: what the snapshot records is skipped, the rest copied, every object sha256-identical,
and the snapshot deleted once the job succeeded. Real coordinator, real gateways, real moto server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time

import boto3
import pytest
from botocore.exceptions import ClientError

from planner.errors import BadOptionError
from skyplane_provider.coordinator.jobdir import job_dir
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.transfer import Transfer, TransferRequest

from .helpers import digests, read_all, wait_gone
from .reliability_report import record

MiB = 1024**2


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    monkeypatch.setenv("SKYPLANE_HOME", str(path))
    return path


def _snapshot_copies(bucket: str, key: str, scratch) -> int | None:
    """Copies the snapshot at ``s3://bucket/key`` records done; None while there is none."""
    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchKey":
            return None
        raise
    scratch.write_bytes(body)
    with sqlite3.connect(scratch) as db:  # a plain database file, complete in itself
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        return db.execute("SELECT COUNT(*) FROM copies").fetchone()[0]


def _source(tmp_path, n: int) -> tuple:
    """A local source of ``n`` random objects above the bundle threshold (1 MiB): each travels alone, so
    they land, and are recorded, one by one."""
    src = tmp_path / "src"
    src.mkdir()
    objs = {f"obj-{i:02d}.bin": os.urandom(MiB + 512 * 1024) for i in range(n)}
    for k, v in objs.items():
        (src / k).write_bytes(v)
    return src, objs


def test_resume_from_the_state_uri_after_the_coordinator_host_is_lost(home, tmp_path, s3_bucket):
    src, objs = _source(tmp_path, 24)
    state = create_bucket("s3")
    state_bucket = state.removeprefix("s3://")
    options = dict(src=str(src), dsts=[f"{s3_bucket}/r/"], chunk_size="5MiB", state_uri=f"{state}/skyplane-state")
    # A bandwidth cap over one connection stretches the first run (~36 s nominal) and lands the objects one
    # after the other, so the kill comes mid-job with some of them recorded. After the kill the gateways
    # still finish the objects they hold, for up to 10 s (gateway/daemon.py's drain, ~7 objects at this
    # cap): with 12 objects that could be all of them. The resume runs uncapped (the cap is not part of
    # what makes it the same transfer).
    handle = Transfer(TransferRequest(**options, bwlimit="1MiB/s", connections=1)).start()
    key = f"skyplane-state/{handle.job_id}/manifest.sqlite3"
    scratch = tmp_path / "snapshot.sqlite3"
    deadline = time.monotonic() + 90
    seen = None
    while time.monotonic() < deadline:
        seen = _snapshot_copies(state_bucket, key, scratch)
        if seen is not None and seen >= 2:
            break
        time.sleep(0.2)
    assert seen is not None and seen >= 2, f"no snapshot recording copies appeared at {state}/{key}: {seen}"
    directory = job_dir(handle.job_id)
    os.kill(json.loads((directory / "coordinator.json").read_text())["pid"], signal.SIGKILL)
    assert wait_gone(handle.job_id) == [], "the gateways outlived their killed coordinator"
    visible = read_all(s3_bucket, "r/")
    assert len(visible) < len(objs), "the job finished before the kill"
    shutil.rmtree(home)  # the coordinator's host is lost: its manifest, resume.json and report with it

    with pytest.raises(BadOptionError, match="records another transfer"):  # the snapshot names its transfer
        Transfer(TransferRequest(**{**options, "chunk_size": "6MiB"}, job_id=handle.job_id, resume=True)).prepare()
    shutil.rmtree(home)  # what that refused attempt fetched
    stats = Transfer(TransferRequest(**options, job_id=handle.job_id, resume=True)).run()

    final = read_all(s3_bucket, "r/")
    left = boto3.client("s3").list_objects_v2(Bucket=state_bucket).get("KeyCount", 0)
    record("fault", f"SIGKILL of the job's coordinator with {seen} of {len(objs)} copies in the manifest's snapshot "
           f"at state_uri (moto), then its job directory removed (host lost) and the job resumed from the snapshot",
           f"{stats.resumed_copies} copies skipped as recorded, {stats.objects} copied again; final "
           f"{len(final)}/{len(objs)} sha256-identical; {left} state objects left")
    assert final == digests(objs)
    assert stats.resumed_copies >= seen > 0
    assert stats.objects + stats.resumed_copies == len(objs)
    assert left == 0, "the snapshot outlived the job's success"
    assert not (job_dir(handle.job_id) / "manifest.sqlite3").exists()
    assert wait_gone(handle.job_id) == []


def test_cli_resume_on_a_host_without_the_job_from_a_cancelled_jobs_snapshot(home, tmp_path, capsys, emulators):
    """A cancelled job writes its snapshot once more as it ends; ``skyplane-provider resume JOB
    --state-uri URI`` on a host without the job's directory takes the request kept in the snapshot
    (no secret in it) and finishes the job."""
    from skyplane_provider.cli.main import main

    src = tmp_path / "src"
    src.mkdir()
    objs = {f"f{i}.bin": os.urandom(MiB) for i in range(6)}
    for k, v in objs.items():
        (src / k).write_bytes(v)
    (tmp_path / "dst").mkdir()
    state = create_bucket("s3")
    state_uri = f"{state}/st"
    handle = Transfer(TransferRequest(src=str(src), dsts=[str(tmp_path / "dst")], chunk_size="1MiB",
                                      state_uri=state_uri, credentials={"gs": {"project": "s3cr3t"}})).start()
    handle.cancel()
    with pytest.raises(Exception, match="cancel"):
        handle.result()
    assert wait_gone(handle.job_id) == []
    scratch = tmp_path / "snapshot.sqlite3"
    assert _snapshot_copies(state.removeprefix("s3://"), f"st/{handle.job_id}/manifest.sqlite3", scratch) is not None
    with sqlite3.connect(scratch) as db:
        kept = json.loads(db.execute("SELECT value FROM meta WHERE name = 'request'").fetchone()[0])
    assert kept["src"] == str(src) and kept["credentials"] == {} and "s3cr3t" not in json.dumps(kept)
    shutil.rmtree(home)  # another host: no job directory, no resume.json

    assert main(["resume", handle.job_id, "--json"]) == 1
    assert "--state-uri" in capsys.readouterr().err
    assert main(["resume", handle.job_id, "--state-uri", state_uri, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert stats["job_id"] == handle.job_id
    assert read_all("file://" + str(tmp_path / "dst")) == digests(objs)
    assert boto3.client("s3").list_objects_v2(Bucket=state.removeprefix("s3://")).get("KeyCount", 0) == 0
    assert wait_gone(handle.job_id) == []


def test_a_snapshot_that_cannot_be_written_is_a_warning_and_is_written_again_later(home, tmp_path, s3_bucket):
    """The state bucket disappears while the job runs: the coordinator logs a warning per failed
    snapshot and goes on; once the bucket is back, the next snapshot lands; the job succeeds and its
    snapshot is deleted."""
    src, objs = _source(tmp_path, 6)
    state = create_bucket("s3")
    bucket = state.removeprefix("s3://")
    s3 = boto3.client("s3")
    handle = Transfer(TransferRequest(src=str(src), dsts=[f"{s3_bucket}/r/"], state_uri=state, bwlimit="1MiB/s",
                                      connections=1, provisioner_settings={"one_gateway": False})).start()
    # A gateway per region: one connection between them sends the paced objects one after the other, so
    # they land (and the manifest changes) while the job runs. One gateway writing for both paces all
    # its writers at once, and every object lands at the end.
    key = f"{handle.job_id}/manifest.sqlite3"
    scratch = tmp_path / "snapshot.sqlite3"
    log = job_dir(handle.job_id) / "coordinator.log"

    def until(what, condition, seconds=60.0):
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    until("the first snapshot", lambda: _snapshot_copies(bucket, key, scratch) is not None)
    s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
    until("a warning about the failed snapshot", lambda: "could not write the manifest's snapshot" in log.read_text())
    s3.create_bucket(Bucket=bucket)
    until("a snapshot written again", lambda: _snapshot_copies(bucket, key, scratch) is not None)
    stats = handle.result(timeout=120)
    assert stats.objects == len(objs) and read_all(s3_bucket, "r/") == digests(objs)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert wait_gone(handle.job_id) == []
