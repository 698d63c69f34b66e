"""The bandwidth cap's parts: the pacer (a token bucket), how a cap is shared out (gateway/bandwidth.py),
and how a job's cap is written (``TransferRequest.bwlimit``)."""

from __future__ import annotations

import threading
import time

import pytest

from gateway.bandwidth import FLOOR, HEADROOM, Pacer, Sharer, Usage, check_rate, share_out
from planner.errors import BadOptionError
from skyplane_provider.transfer.request import TransferRequest, parse_rate

MiB = 1024**2


def test_pacer_holds_several_senders_to_its_rate():
    pacer = Pacer(8 * MiB)
    sent = [0] * 4
    started = time.monotonic()

    def send(i: int) -> None:
        while time.monotonic() - started < 1.5:
            sent[i] += pacer.take(MiB)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = sum(sent) / (time.monotonic() - started)
    assert 0.9 * 8 * MiB <= rate <= 1.1 * 8 * MiB, rate / MiB
    total, held = pacer.usage()
    assert total == sum(sent) and held > 1.0  # someone was waiting nearly all the time


def test_pacer_without_rate_grants_everything_and_counts_it():
    pacer = Pacer(None)
    assert pacer.take(10 * MiB) == 10 * MiB
    pacer.give_back(MiB)
    assert pacer.usage() == (9 * MiB, 0.0)


def test_a_new_rate_reaches_a_waiting_sender_and_a_stop_ends_the_wait():
    pacer = Pacer(1024)  # 1 KiB/s: a 1 MiB grant would take minutes
    pacer.take(MiB)  # empty the bucket
    got = []
    t = threading.Thread(target=lambda: got.append(pacer.take_all(MiB)))
    t.start()
    time.sleep(0.2)
    pacer.set_rate(None)
    t.join(5)
    assert got == [True]
    stop = threading.Event()
    slow = Pacer(1024)
    slow.take(MiB)
    stop.set()
    assert slow.take_all(MiB, stop=stop) is False


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "200MiB/s", True])
def test_bad_rates_are_refused(bad):
    with pytest.raises(BadOptionError, match="bytes per second"):
        check_rate(bad)


def test_an_idle_member_gives_its_share_to_the_busy_one():
    busy, idle = Usage(rate=50.0, held=0.9), Usage(rate=0.0, held=0.0)
    shares = share_out(100.0, [busy, idle])
    assert sum(shares) == pytest.approx(100.0)
    assert shares[1] == pytest.approx(FLOOR * 50.0)  # enough to start sending and be seen
    assert shares[0] == pytest.approx(100.0 - FLOOR * 50.0)


def test_members_held_back_split_what_the_others_leave_equally():
    shares = share_out(90.0, [Usage(10.0, 0.0), Usage(30.0, 0.5), Usage(30.0, 0.5)])
    assert shares[0] == pytest.approx(12.5 + 0.0)  # what it sent plus a quarter
    assert shares[1] == shares[2] == pytest.approx((90.0 - 12.5) / 2)


def test_nobody_held_back_keeps_equal_shares_and_the_sum_is_the_cap():
    shares = share_out(100.0, [Usage(5.0, 0.0), Usage(6.0, 0.0), Usage(0.0, 0.0)])
    assert sum(shares) == pytest.approx(100.0)
    # each keeps its demand (what it sent plus a quarter, or the floor), and the rest is split equally
    extra = [s - d for s, d in zip(shares, (HEADROOM * 5.0, HEADROOM * 6.0, FLOOR * 100.0 / 3))]
    assert max(extra) - min(extra) == pytest.approx(0.0, abs=1e-9)
    assert share_out(100.0, []) == []


def test_sharer_splits_once_per_period_from_cumulative_counters():
    now = [0.0]
    sharer = Sharer(100.0, period=1.0, clock=lambda: now[0])
    assert sharer.update({"a": (0, 0.0), "b": (0, 0.0)}) is None  # no period has passed
    now[0] = 1.0
    assert sharer.update({"a": (0, 0.0), "b": (0, 0.0)}) == {"a": 50.0, "b": 50.0}
    now[0] = 2.0
    shares = sharer.update({"a": (50, 0.9), "b": (0, 0.0)})  # a was held back, b idle
    assert shares["a"] == pytest.approx(100.0 - FLOOR * 50.0) and shares["b"] == pytest.approx(FLOOR * 50.0)
    now[0] = 3.0
    shares = sharer.update({"a": (145, 1.8), "b": (5, 0.9)})  # b started and was held back too
    assert shares["a"] == pytest.approx(50.0) and shares["b"] == pytest.approx(50.0)


@pytest.mark.parametrize("text, rate", [("200MiB/s", 200 * MiB), ("200M", 200 * MiB), ("1.5GiB/s", 3 * 512 * MiB),
                                        ("64KiB/s", 64 * 1024), (3 * MiB, 3 * MiB), (None, None)])
def test_a_jobs_bandwidth_cap_reads_as_rclone_writes_it(text, rate):
    assert TransferRequest(src="/tmp/a", dsts=["/tmp/b"], bwlimit=text).bwlimit == rate


@pytest.mark.parametrize("bad", ["fast", "200MB/h", "-5M", 0, 1000, float("nan"), True, [5]])
def test_bad_bandwidth_caps_say_what_to_write(bad):
    with pytest.raises(BadOptionError, match="200MiB/s"):
        parse_rate(bad)
