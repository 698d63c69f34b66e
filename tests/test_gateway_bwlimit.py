"""The bandwidth cap in real gateway processes: a gateway sends (or writes what it read itself) at its
share of the cap, ``POST /bwlimit`` changes the share at once, and a host of two workers splits its
share between them (gateway/bandwidth.py). The cap across a region's gateways and on the emulated WAN
is tested with the transfer (tests/test_bwlimit_testbed.py)."""

from __future__ import annotations

import os
import time

import pytest

from gateway.config import GatewayConfig
from gateway.stores import open_store
from planner.errors import BadOptionError, GatewayError
from planner.plan import Hop, PartitionProgram, RegionProgram

from .gateway_jobs import DST, SRC, MiB, batch, chunk, obj, sha, submit_all, to

KiB = 1024


def _objects(store: str, n: int, size: int, prefix: str = "o") -> dict[str, bytes]:
    objects = {f"{prefix}{i:03d}": os.urandom(size) for i in range(n)}
    src = open_store(store)
    for key, data in objects.items():
        src.write(key, data)
    return objects


def _move(job, stores: dict, objects: dict[str, bytes], region: str, first_id: int = 0) -> float:
    """Submit one chunk per object from the source, wait for every ``written`` event in ``region``;
    returns the seconds from the submission to the last write."""
    dests = [(region, stores["dst"])]
    chunks = [chunk(first_id + i, obj(k, len(v), to(0, k))) for i, (k, v) in enumerate(objects.items())]
    started = time.monotonic()
    submit_all(job.clients[SRC], batch(stores["src"], dests, *chunks))
    job.events(region, len(chunks), timeout=60, kind="written")
    return time.monotonic() - started


def _two_regions() -> dict:
    return {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST, 2),))}),
            DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}


def _kept_to(cap: int, moved: int, seconds: float, counters: dict) -> None:
    """The cap's guarantee: never faster than ``cap`` (10% for the burst and timer slack), and the
    pacer, not something else, set the pace (it held the sends back). How close to the cap a loaded
    machine gets is a speed, measured in benchmarks, not asserted here: on 2 shared cores at load 17
    a two-worker host once reached 3.1 of its 4 MiB/s."""
    rate = moved / seconds
    assert rate <= 1.1 * cap, f"{rate / MiB:.2f} MiB/s under a cap of {cap / MiB:.2f}"
    assert counters["paced_held_seconds"] > 0.5, counters


def _capped_run(jobs, stores, cap: int, workers: int, count: int):
    """A source of ``workers`` workers capped at ``cap`` moves ``count`` objects of 256 KiB to DST;
    checks the cap held and returns the job, the objects, the seconds it took and the source's counters."""
    job = jobs(_two_regions(), compress=False, overrides={SRC: {"workers": workers, "bwlimit": cap},
                                                          DST: {"workers": 1}})
    objects = _objects(stores["src"], count, 256 * KiB)
    seconds = _move(job, stores, objects, DST)
    counters = job.clients[SRC].status(10**9)["counters"]
    _kept_to(cap, sum(map(len, objects.values())), seconds, counters)
    return job, objects, seconds, counters


def test_a_capped_source_sends_at_its_rate_and_a_new_cap_applies_at_once(jobs, stores):
    cap = 3 * MiB
    job, objects, seconds, counters = _capped_run(jobs, stores, cap, workers=1, count=24)
    assert counters["bwlimit"] == cap
    assert counters["paced_bytes"] == counters["bytes_sent_wire"] and counters["paced_held_seconds"] > 1.0
    job.clients[SRC].set_bwlimit(None)
    more = _objects(stores["src"], 24, 256 * KiB, prefix="p")
    assert _move(job, stores, more, DST, first_id=100) < seconds / 2
    assert job.clients[SRC].status(10**9)["counters"]["bwlimit"] == 0
    dst = open_store(stores["dst"])
    assert {k: sha(dst.read(k)) for k in {**objects, **more}} == {k: sha(v) for k, v in {**objects, **more}.items()}


def test_a_gateway_that_writes_what_it_read_paces_its_writes(jobs, stores):
    cap = 2 * MiB
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})}
    job = jobs(programs, overrides={SRC: {"workers": 1, "bwlimit": cap}})
    objects = _objects(stores["src"], 16, 256 * KiB)
    seconds = _move(job, stores, objects, SRC)
    _kept_to(cap, sum(map(len, objects.values())), seconds, job.clients[SRC].status(10**9)["counters"])


def test_a_host_of_two_workers_splits_its_cap_and_keeps_to_it(jobs, stores):
    cap = 4 * MiB
    _, _, _, counters = _capped_run(jobs, stores, cap, workers=2, count=32)
    assert counters["workers"] == 2 and counters["bwlimit"] == pytest.approx(cap)  # the workers' shares add up


def test_bad_caps_are_refused_by_the_control_api_and_the_config(jobs, stores):
    job = jobs(_two_regions(), overrides={SRC: {"workers": 1}, DST: {"workers": 1}})
    for bad in ({"bytes_per_second": -1}, {"bytes_per_second": "200MiB/s"}, {"rate": 5}, [5]):
        with pytest.raises(GatewayError, match="answered 400"):
            job.clients[SRC]._call("POST", "/bwlimit", bad)
    doc = {"gateway_id": "g", "job_id": "ab" * 16, "region": SRC, "program": {"region": SRC, "partitions": {}},
           "job_secret": "ab" * 16, "control_token": "x" * 16, "bwlimit": 0}
    with pytest.raises(BadOptionError, match="bwlimit"):
        GatewayConfig.from_dict(doc)
