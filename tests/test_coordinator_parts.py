"""The coordinator's parts that need no gateway: the streaming sync diff, the chunker, the manifest,
the report, and the HTTP API with its client and the client handle (over real loopback HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time

import pytest

from gateway.stores.base import Capabilities, ObjectInfo
from planner.errors import BadOptionError, CoordinatorError, JobEndedError, NotFoundError, TransferError
from skyplane_provider.coordinator.chunker import (MAX_BUNDLE_OBJECTS, Chunker, Copy, ObjectTask, PartitionPicker,
                                                   part_size_for)
from skyplane_provider.coordinator.client import CoordinatorClient
from skyplane_provider.coordinator.listing import DestCursor, diff, differs, flatten, pages
from skyplane_provider.coordinator.manifest import Manifest
from skyplane_provider.coordinator.report import Report
from skyplane_provider.coordinator.server import CoordinatorServer
from skyplane_provider.coordinator.state import JobState
from skyplane_provider.transfer.credential_sources import CredentialKeeper, CredentialSource
from skyplane_provider.transfer.handle import TransferHandle
from skyplane_provider.transfer.stats import Progress

MiB = 1024**2


def info(key: str, size: int = 10, **kw) -> ObjectInfo:
    return ObjectInfo(key, size, **kw)


def paged(objects: list[ObjectInfo], limit: int):
    """A ListPage over a sorted list, with the last key as continuation token; counts its calls."""
    calls = []

    def list_page(token):
        calls.append(token)
        start = 0 if token is None else next(i for i, o in enumerate(objects) if o.key == token) + 1
        page = objects[start:start + limit]
        more = start + limit < len(objects)
        return page, (page[-1].key if more else None)
    return list_page, calls


# ---- listing and diff ---------------------------------------------------------------------------------

def test_pages_are_fetched_one_at_a_time():
    objs = [info(f"k{i:03d}") for i in range(25)]
    list_page, calls = paged(objs, 10)
    it = pages(list_page)
    assert [o.key for o in next(it)] == [f"k{i:03d}" for i in range(10)]
    assert calls == [None]  # the second page is asked for only when the first was used
    assert [o.key for o in flatten(it)] == [f"k{i:03d}" for i in range(10, 25)]
    assert calls == [None, "k009", "k019"]


def test_diff_copy_everything_when_not_a_sync():
    src = [info("p/a"), info("p/dir/"), info("p/z")]
    got = list(diff(src, lambda k: k[2:], [lambda r: "x/" + r, lambda r: r], None))
    assert [(d.rel, d.copy, d.up_to_date) for d in got] == [("a", (0, 1), ()), ("z", (0, 1), ())]


def test_diff_merge_joins_several_destinations():
    src = [info("a", 1), info("b", 2), info("c", 3, md5="11" * 16), info("d", 4)]
    d0 = [info("0/a", 1), info("0/aa", 9), info("0/c", 3, md5="22" * 16), info("0/d", 4), info("0/e", 1)]
    d1 = [info("b", 2), info("c", 3, md5="11" * 16)]
    got = {d.rel: (d.copy, d.up_to_date) for d in diff(src, lambda k: k, [lambda r: "0/" + r, lambda r: r], [d0, d1])}
    assert got == {"a": ((1,), (0,)), "b": ((0,), (1,)), "c": ((0,), (1,)), "d": ((1,), (0,))}


def test_diff_streams_listing_pages():
    """The destination is read only as far as the source has got."""
    src = [info(f"k{i:04d}") for i in range(100)]
    read = []

    def dest():
        for o in src:
            read.append(o.key)
            yield o
    it = diff(iter(src), lambda k: k, [lambda r: r], [dest()])
    first = next(it)
    assert first.copy == () and len(read) <= 2


def test_diff_refuses_an_unsorted_listing():
    with pytest.raises(TransferError, match="listed 'a' after 'b'"):
        list(diff([info("b"), info("a")], lambda k: k, [lambda r: r], None))
    with pytest.raises(TransferError, match="must be sorted"):
        list(diff([info("a"), info("z")], lambda k: k, [lambda r: r], [[info("y"), info("x")]]))


def test_dest_cursor_reports_extra_objects():
    extra = []
    cursor = DestCursor([info("a"), info("b"), info("c"), info("d")], "dest", on_extra=extra.append)
    assert cursor.seek("b").key == "b" and cursor.seek("bb") is None
    cursor.drain()
    assert [o.key for o in extra] == ["a", "c", "d"]


def test_differs():
    assert differs(info("a", 1), None) and differs(info("a", 1), info("a", 2))
    assert not differs(info("a", 1, crc32c="aa"), info("a", 1, crc32c="aa"))
    assert differs(info("a", 1, md5="1" * 32), info("a", 1, md5="2" * 32))
    assert differs(info("a", 1, etag='"' + "1" * 32 + '"'), info("a", 1, etag="2" * 32))
    assert not differs(info("a", 1, etag="abc-3"), info("a", 1, etag="def-2"))


# ---- chunker -------------------------------------------------------------------------------------------

S3 = Capabilities(multipart=True, max_parts=10_000, min_part_size=5 * MiB)
GCS = Capabilities(multipart=True, max_parts=32, min_part_size=0)


def task(key: str, size: int, dests: int = 1, part_size: int | None = None) -> ObjectTask:
    return ObjectTask(info(key, size), [Copy(d, f"x/{key}") for d in range(dests)], part_size)


def test_part_size_respects_every_store():
    assert part_size_for(10 * MiB, 16 * MiB, [S3]) is None
    assert part_size_for(40 * MiB, 2 * MiB, [S3]) == 5 * MiB
    assert part_size_for(40 * MiB, 1 * MiB, [GCS]) == 40 * MiB // 32
    assert part_size_for(40 * MiB, 1 * MiB, [S3, Capabilities()]) is None  # one destination without multipart


def test_small_objects_are_bundled_up_to_the_limits():
    chunker = Chunker(chunk_size=1000, weights=(1.0,), max_objects=4)
    out = []
    for i in range(10):
        out += list(chunker.add(task(f"k{i}", 100)))
    out += chunker.flush()
    assert [len(c.pieces) for c in out] == [4, 4, 2] and [c.id for c in out] == [0, 1, 2]
    chunker = Chunker(chunk_size=1000, weights=(1.0,))
    out = [c for size in (600, 300, 200, 900, 0) for c in chunker.add(task("k", size))] + chunker.flush()
    assert [[p.length for p in c.pieces] for c in out] == [[600, 300], [200], [900, 0]]
    assert all(c.length <= 1000 for c in out) and MAX_BUNDLE_OBJECTS == 1024
    # Above the bundle threshold an object travels alone, and the bundle being filled waits for the next.
    chunker = Chunker(chunk_size=1000, weights=(1.0,), alone_above=500)
    out = [c for size in (100, 600, 200) for c in chunker.add(task("k", size))] + chunker.flush()
    assert [[p.length for p in c.pieces] for c in out] == [[600], [100, 200]]


def test_first_bundles_ramp_up_to_the_limit():
    # A small first bundle lands soon; each next one doubles until the sizing's limit.
    chunker = Chunker(chunk_size=10**6, weights=(1.0,), max_objects=16, ramp_from=2)
    out = [c for i in range(50) for c in chunker.add(task(f"k{i}", 10))] + chunker.flush()
    assert [len(c.pieces) for c in out] == [2, 4, 8, 16, 16, 4]
    # The bytes still bound a bundle while it ramps, and a page's flush counts as a bundle (4 -> 8 -> 16).
    chunker = Chunker(chunk_size=250, weights=(1.0,), max_objects=16, ramp_from=4)
    out = [c for i in range(3) for c in chunker.add(task(f"a{i}", 100))] + chunker.flush()
    out += [c for i in range(20) for c in chunker.add(task(f"b{i}", 10))] + chunker.flush()
    assert [len(c.pieces) for c in out] == [2, 1, 16, 4]


def test_chunk_spec_of_a_bundle_and_of_a_part():
    chunker = Chunker(chunk_size=MiB, weights=(1.0,))
    small = task("s", 10, dests=2)
    assert list(chunker.add(small)) == []
    [bundle] = chunker.flush()
    assert bundle.spec() == {"id": 0, "partition": 0, "objects": [
        {"key": "s", "offset": 0, "length": 10, "to": [{"dest": 0, "key": "x/s"}, {"dest": 1, "key": "x/s"}]}]}
    big = task("b", 5 * MiB + 1, dests=1, part_size=2 * MiB)
    big.copies[0].upload_id = "u1"
    parts = list(chunker.add(big))
    assert big.pieces_left == 3 and [c.length for c in parts] == [2 * MiB, 2 * MiB, MiB + 1]
    assert parts[2].spec()["objects"] == [{"key": "b", "offset": 4 * MiB, "length": MiB + 1,
                                           "to": [{"dest": 0, "key": "x/b", "upload_id": "u1", "part": 3}]}]


def test_parts_already_written_are_not_cut_again():
    big = task("b", 6 * MiB, dests=2, part_size=2 * MiB)
    big.copies[0].parts = {1: ("e1", 2 * MiB), 2: ("e2", 2 * MiB)}
    big.copies[1].parts = {1: ("f1", 2 * MiB)}
    parts = list(Chunker(MiB, (1.0,)).add(big))
    assert [(c.pieces[0].part, c.pieces[0].to) for c in parts] == [(2, (1,)), (3, (0, 1))]
    done = task("d", 4 * MiB, part_size=2 * MiB)
    done.copies[0].parts = {1: ("a", 2 * MiB), 2: ("b", 2 * MiB)}
    assert list(Chunker(MiB, (1.0,)).add(done)) == [] and done.pieces_left == 0


def test_big_objects_are_cut_lazily():
    big = task("b", 10_000 * MiB, part_size=MiB)
    it = Chunker(MiB, (1.0,)).add(big)
    assert next(it).pieces[0].part == 1 and big.pieces_left == 10_000


def test_partition_picker_interleaves_by_weight():
    picker = PartitionPicker((3.0, 1.0))
    picks = [picker.next() for _ in range(8)]
    assert picks.count(0) == 6 and picks.count(1) == 2 and picks[:4].count(1) == 1


# ---- manifest and report --------------------------------------------------------------------------------

def test_manifest_records_and_answers_resume_queries(tmp_path):
    path = tmp_path / "manifest.sqlite3"
    m = Manifest(path, {"src": "s3://a", "dsts": ["gs://b"]})
    assert not m.resumed
    m.record_upload(0, "x/big", "big", "up-1", 5 * MiB)
    m.record_part(0, "x/big", 1, "e1", 5 * MiB, "aead")
    m.record_copy("a", 0, "x/a", 3, "md5")
    m.commit()
    m.record_copy("b", 0, "x/b", 3, "md5")  # not committed yet: another connection does not see it
    again = Manifest(path, {"src": "s3://a", "dsts": ["gs://b"]})
    assert again.resumed and again.done_between("a", "z") == {("a", 0)}
    up = again.upload(0, "x/big")
    assert (up.upload_id, up.part_size, up.parts) == ("up-1", 5 * MiB, {1: ("e1", 5 * MiB, "aead")})
    assert again.uploads() == [(0, "x/big", "up-1")]
    m.commit()
    again.record_copy("big", 0, "x/big", 10, "aead")
    again.commit()
    assert again.uploads() == [] and again.upload(0, "x/big") is None and again.copies_done() == 3
    with pytest.raises(BadOptionError, match="records another transfer"):
        Manifest(path, {"src": "s3://other", "dsts": ["gs://b"]})


def test_manifest_survives_a_killed_writer(tmp_path):
    """A committed record is there after the writing process was SIGKILLed."""
    path = tmp_path / "m.sqlite3"
    pid = os.fork()
    if pid == 0:  # the child records, commits, and is killed before closing anything
        m = Manifest(path, {"job": 1})
        for i in range(1000):
            m.record_copy(f"k{i:04d}", 0, f"k{i:04d}", 1, "md5")
        m.commit()
        os.kill(os.getpid(), 9)
    os.waitpid(pid, 0)
    assert Manifest(path, {"job": 1}).copies_done() == 1000


def test_report_lines_and_counts(tmp_path):
    r = Report(tmp_path / "report.jsonl")
    r.add(key="a", dest="gs://b/", dest_key="x/a", status="copied", size=3, verified_by="md5")
    r.add(key="b", dest="gs://b/", dest_key="x/b", status="skipped", size=4)
    for i in range(7):
        r.add(key=f"c{i}", dest="gs://b/", dest_key=f"x/c{i}", status="failed", size=1, error="AccessDenied")
    r.close()
    lines = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert lines[0] == {"key": "a", "dest": "gs://b/", "dest_key": "x/a", "status": "copied", "size": 3,
                        "verified_by": "md5", "error": None}
    assert r.summary()["counts"] == {"copied": 1, "skipped": 1, "failed": 7}
    assert r.failure_text().startswith("c0 -> gs://b/: AccessDenied") and r.failure_text().endswith("and 2 more")
    assert stat.S_IMODE((tmp_path / "report.jsonl").stat().st_mode) == 0o600


# ---- HTTP API, client, handle ---------------------------------------------------------------------------

@pytest.fixture
def served():
    job = JobState("job-1")
    server = CoordinatorServer(job, "secret-token").start()
    yield job, server
    server.stop()


def test_api_needs_the_token_and_answers_each_call(served):
    job, server = served
    with pytest.raises(CoordinatorError, match="refused the token"):
        CoordinatorClient(server.url, "wrong").job()
    client = CoordinatorClient(server.url, "secret-token")
    assert client.health()["job_id"] == "job-1" and client.job()["state"] == "starting"
    assert client.result() is None  # 409 while running
    client.cancel()
    assert job.cancel_requested.is_set()
    job.fail(NotFoundError("gone", hint="look"), failed_objects=[{"key": "a"}], cancelled=True)
    with pytest.raises(NotFoundError, match="gone") as exc:
        client.result()
    assert exc.value.failed_objects == [{"key": "a"}] and job.fetched.is_set()
    assert "secret-token" not in repr(client)


def test_async_twins_from_an_event_loop(served):
    job, server = served
    client = CoordinatorClient(server.url, "secret-token")

    async def watch():
        first = await client.job_async()
        job.succeed({"objects": 3})
        return first, await client.result_async(), await client.health_async()

    first, result, health = asyncio.run(watch())
    assert first["state"] == "starting" and result == {"objects": 3} and health["ok"]


def test_handle_subscribes_cancels_and_returns_the_result(served):
    job, server = served
    handle = TransferHandle("job-1", server.url, "secret-token", poll_interval=0.05)
    seen: list[Progress] = []
    handle.subscribe(seen.append)
    job.running()
    job.progress(Progress("job-1", 5, 10, 1, 2, 1.0, listing_done=False).to_dict())
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen and seen[0].bytes_done == 5 and not seen[0].listing_done and "10 B+" in seen[0].line()
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.1)
    again = TransferHandle.from_dict(json.loads(json.dumps(handle.to_dict())))
    again.cancel()
    assert job.cancel_requested.is_set() and "secret-token" not in repr(again)
    threading.Timer(0.1, lambda: job.fail(TransferError("cancelled by the user"), cancelled=True)).start()
    with pytest.raises(TransferError, match="cancelled by the user"):
        handle.result(timeout=10)


def test_a_watcher_sees_the_end_at_once_not_at_its_next_poll(served):
    """``GET /job?wait=S`` holds the answer while the job runs, and answers as soon as it ends: a
    handle polling every 5 s sees the end of a job that ends 0.2 s in well before 5 s."""
    job, server = served
    client = CoordinatorClient(server.url, "secret-token")
    began = time.monotonic()
    assert client.job(wait=0.3)["state"] == "starting" and time.monotonic() - began >= 0.3
    with pytest.raises(CoordinatorError, match="wait must be a number"):
        client._call("GET", "/job?wait=nan")
    handle = TransferHandle("job-1", server.url, "secret-token", poll_interval=5.0)
    threading.Timer(0.2, lambda: job.succeed({"objects": 1})).start()
    began = time.monotonic()
    assert handle.wait(4) and time.monotonic() - began < 4 and client.result() == {"objects": 1}
    assert client.job(wait=30)["state"] == "succeeded"  # an ended job: at once
    assert not job.last_read.is_set()
    assert client.result(last=True) == {"objects": 1} and job.fetched.is_set()
    assert job.last_read.wait(5)  # set once the answer was written


def test_credentials_relayed_to_the_sink_refused_when_malformed_or_ended(served):
    """POST /job/credentials hands the entries to what the pipeline registered (in a real job,
    Transfer.push_credentials) and answers how many gateways took them; the handle, the client and
    its async twin call it. A malformed document is 400, an entry the sink refuses 400 with its
    error, a job that takes none yet or has ended 409. (The end-to-end relay to real gateways:
    tests/test_credentials_renewal.py.)"""
    job, server = served
    client = CoordinatorClient(server.url, "secret-token")
    with pytest.raises(CoordinatorError, match="409.*takes no credentials yet") as not_yet:
        client.push_credentials({"s3://raw": {"aws_access_key_id": "k"}})
    assert not isinstance(not_yet.value, JobEndedError)  # push again later
    got: list[dict] = []

    def sink(entries: dict) -> int:
        if "bad" in entries:
            raise BadOptionError("unknown field 'x' in credentials entry 'bad'")
        got.append(entries)
        return 2

    job.take_credentials(sink)
    handle = TransferHandle("job-1", server.url, "secret-token")
    assert handle.push_credentials({"s3://raw": {"aws_access_key_id": "k1"}}) == 2
    assert asyncio.run(client.push_credentials_async({"gs": {"access_token": "t"}})) == 2
    assert got == [{"s3://raw": {"aws_access_key_id": "k1"}}, {"gs": {"access_token": "t"}}]
    for bad in ({"credentials": []}, {"credentials": {"s3": "keys"}}, {"creds": {}}, {"credentials": {}}):
        with pytest.raises(CoordinatorError, match="400"):
            client._call("POST", "/job/credentials", body=bad)  # noqa: SLF001 - malformed on purpose
    with pytest.raises(CoordinatorError, match="400.*unknown field"):
        client.push_credentials({"bad": {"x": 1}})
    job.succeed({"objects": 1})
    with pytest.raises(JobEndedError, match="409.*succeeded"):
        client.push_credentials({"s3://raw": {"aws_access_key_id": "k2"}})
    with pytest.raises(JobEndedError, match="409.*succeeded"):
        asyncio.run(client.push_credentials_async({"gs": {"access_token": "t2"}}))
    assert len(got) == 2


class _Renewing(CredentialSource):
    """A source whose entry changes at every ask (a role's keys inside their refresh window)."""

    def __init__(self) -> None:
        super().__init__("s3://raw", {})
        self.asked = 0

    def current(self) -> dict:
        self.asked += 1
        return {"aws_access_key_id": f"k{self.asked}"}


def test_a_keeper_whose_job_ended_stops_without_a_warning(served, caplog):
    """A watcher (the trigger, a handle) ticks its keeper until it sees the job's end; a tick between
    the end and that poll is refused with 409. That is no failure to report: the keeper stops asking
    its sources and pushing, quietly. A job that takes no credentials yet is still a warning, and the
    next tick pushes again."""
    import logging

    job, server = served
    source = _Renewing()
    keeper = CredentialKeeper([source], CoordinatorClient(server.url, "secret-token").push_credentials,
                              started_with={})
    logger = "skyplane_provider.transfer.credential_sources"
    with caplog.at_level(logging.DEBUG, logger=logger):
        assert keeper.tick() == {} and not keeper.ended
        assert any(r.levelno == logging.WARNING and "takes no credentials yet" in r.getMessage()
                   for r in caplog.records)
        job.take_credentials(lambda entries: 1)
        assert list(keeper.tick()) == ["s3://raw"]
        caplog.clear()
        job.succeed({"objects": 1})
        assert keeper.tick() == {} and keeper.ended
        asked = source.asked
        assert keeper.tick() == {} and source.asked == asked  # nothing asked once the job ended
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


def test_handle_of_a_lost_coordinator(served):
    job, server = served
    handle = TransferHandle("job-1", server.url, "secret-token", poll_interval=0.05, gone_after=0.3)
    server.stop()
    with pytest.raises(CoordinatorError, match="resume"):
        handle.result(timeout=10)
