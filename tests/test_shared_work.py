"""Shared reads of a bundle: the steps' bookkeeping on its own, and a gateway whose idle readers help
read a bundle from moto."""

from __future__ import annotations

import threading
import time

from gateway.shared_work import SharedWork
from gateway.stores import open_store

from tests.gateway_jobs import DST, SRC, batch, chain, chunk, obj, to


def test_steps_are_done_once_each_by_owner_and_helpers_and_a_failure_stays_its_own():
    threads: dict[int, str] = {}
    release = threading.Event()

    def step(i: int) -> int:
        threads[i] = threading.current_thread().name
        if i == 0:
            release.wait(5)  # the owner holds step 0 while helpers take the rest
        if i == 13:
            raise ValueError("unreadable")
        time.sleep(0.002)
        return i * i

    work = SharedWork(40, step)
    helpers = [threading.Thread(target=lambda: (work.help(), release.set()), name=f"h{k}")
               for k in range(3)]
    results: list = []
    owner = threading.Thread(target=lambda: results.extend(work.finish()), name="owner")
    owner.start()
    while work.open and not threads:
        time.sleep(0.001)
    for h in helpers:
        h.start()
    owner.join(10)
    for h in helpers:
        h.join(10)
    assert not work.open and len(results) == 40
    assert isinstance(results[13], ValueError)
    assert [r for i, r in enumerate(results) if i != 13] == [i * i for i in range(40) if i != 13]
    assert set(threads.values()) - {"owner"}, "no helper took a step"
    assert threads[0] == "owner"


def test_idle_readers_help_read_a_bundle_from_moto_and_every_object_arrives_whole(jobs, stores, s3_bucket):
    """One chunk of 120 small objects from moto, a source gateway with 4 readers: the three without a
    chunk read part of the bundle (``objects_read_helping``), and every object arrives whole, in one
    ``written`` event."""
    job = jobs(chain(), overrides={SRC: {"readers": 4}})
    src = open_store(s3_bucket)
    objects = {f"b/{i:03d}": (b"%d," % i) * (50 + i) for i in range(120)}
    for k, v in objects.items():
        src.write(k, v)
    entries = [obj(k, len(v), to(0, "out/" + k)) for k, v in objects.items()]
    assert job.clients[SRC].submit(batch(s3_bucket, [(DST, stores["dst"])], chunk(0, *entries))) == 1
    (written,) = job.events(DST, 1, kind="written")
    assert sorted(o["i"] for o in written["objects"]) == list(range(120))
    dst = open_store(stores["dst"])
    assert {o.key: dst.read(o.key) for o in dst.list()} == {"out/" + k: v for k, v in objects.items()}
    counters = job.clients[SRC].status(10**9)["counters"]
    assert 0 < counters["objects_read_helping"] < 120
    assert counters["bytes_read"] == sum(map(len, objects.values()))


def test_idle_writers_help_write_a_bundle_to_moto_and_every_object_arrives_whole(jobs, stores, s3_bucket):
    """One chunk of 120 small objects to moto, a destination gateway with 4 writers: the three without
    a chunk write part of the bundle (``objects_written_helping``), and every object arrives whole,
    reported in one ``written`` event."""
    job = jobs(chain(), overrides={DST: {"writers": 4}})
    src = open_store(stores["src"])
    objects = {f"b/{i:03d}": (b"%d;" % i) * (40 + i) for i in range(120)}
    for k, v in objects.items():
        src.write(k, v)
    entries = [obj(k, len(v), to(0, "in/" + k)) for k, v in objects.items()]
    assert job.clients[SRC].submit(batch(stores["src"], [(DST, s3_bucket)], chunk(0, *entries))) == 1
    (written,) = job.events(DST, 1, kind="written")
    assert sorted(o["i"] for o in written["objects"]) == list(range(120))
    assert all(o["receipt"]["size"] == len(objects[o["key"][3:]]) for o in written["objects"])
    dst = open_store(s3_bucket)
    assert {o.key: dst.read(o.key) for o in dst.list()} == {"in/" + k: v for k, v in objects.items()}
    counters = job.clients[DST].status(10**9)["counters"]
    assert 0 < counters["objects_written_helping"] < 120
    assert counters["objects_written"] == 120 and counters["chunks_written"] == 1
