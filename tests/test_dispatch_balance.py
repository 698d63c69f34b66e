"""Dispatch shares a job's chunks between its source region's gateways as the plan does: every gateway
of a region runs the same program, so each source gateway reads about an equal share.

Through real gateway processes (local provisioner, local-directory stores). The job's bandwidth cap
(``bwlimit``, re-split between a region's gateways after what each one sends) keeps the run a few
seconds long whatever the machine's load, so the gateways drain their queues at the same pace and the
share each one read depends on dispatch alone. Before the fix, the first POST /chunks went to one
gateway and the next took every chunk listed so far (up to its 256 MiB of read-ahead): on the testbed
the second source gateway of a small direct plan sent a quarter to a third of what the first sent.

And a chunk that waits its turn at a busy gateway is not stalled: the dispatcher sends a chunk again
only when neither it nor any other chunk of the job had news for its stall timeout. The job's bandwidth
cap makes the one gateway write its chunks one after another for several seconds, so the last ones wait
in its queue longer than the (shortened) stall timeout while the others are written. Before the fix
each of them was sent again (and, at 100,000 small objects to moto under load, failed after four such
rounds while the fleet wrote at full speed).
"""

from __future__ import annotations

import os

import pytest

from planner.plan import Edge, Plan
from skyplane_provider.transfer import Transfer, TransferRequest, dispatch

from .helpers import gateway_pids, read_all

MiB = 1024**2
SRC, DST = "aws:us-east-1", "aws:us-west-2"


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    home = str(tmp_path / "home")
    monkeypatch.setenv("SKYPLANE_HOME", home)
    yield
    assert gateway_pids(home) == [], "a gateway process was left running"


def two_by_two() -> dict:
    """Two gateways in each region, direct: both source gateways run the same program."""
    return Plan(src=SRC, dsts=(DST,), solver="manual", gateways={SRC: 2, DST: 2},
                edges=[Edge(SRC, DST, 1.0, 8)], throughput_gbps=1.0, cost_per_gb=0.0).to_dict()


@pytest.mark.parametrize("files,size", [(40, MiB), (6, 7 * MiB)], ids=["40x1MiB", "6x7MiB-parts"])
def test_source_gateways_each_read_their_share(tmp_path, files, size):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(files):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(size))
    req = TransferRequest(src=f"file://{src}/", dsts=[f"file://{dst}/"], src_region=SRC, dst_regions=[DST],
                          plan=two_by_two(), chunk_size="1MiB", compress=False, bwlimit="16MiB")
    transfer = Transfer(req)
    stats = transfer.execute()  # in this process: the test reads the dispatcher's gateway counters
    assert stats.objects == files and stats.verified
    assert read_all(f"file://{dst}") == read_all(f"file://{src}")
    read = {gid: int(c.get("bytes_read", 0)) for gid, c in transfer.dispatcher.counters.items()
            if gid.startswith(SRC + "/")}
    assert len(read) == 2 and sum(read.values()) == files * size
    # An equal share each; 0.3-0.7 leaves room for the chunk in hand and the pacing's re-splits under load.
    shares = {gid: n / (files * size) for gid, n in read.items()}
    assert all(0.3 <= s <= 0.7 for s in shares.values()), shares


def test_chunks_queued_behind_a_busy_gateway_are_not_sent_again(tmp_path, monkeypatch):
    monkeypatch.setattr(dispatch, "STALL_SECONDS", 3.0)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(24):  # 2 MiB each: one chunk per object, all accepted by the gateway at once
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(2 * MiB))
    req = TransferRequest(src=f"file://{src}/", dsts=[f"file://{dst}/"], src_region="local:src",
                          dst_regions=["local:dst"], compress=False, bwlimit="6MiB")  # ~8 s of writes
    transfer = Transfer(req)
    stats = transfer.execute()  # in this process: the test reads the dispatcher
    assert stats.objects == 24 and stats.verified
    assert read_all(f"file://{dst}") == read_all(f"file://{src}")
    assert transfer.dispatcher.stall_seconds == 3.0
    assert stats.seconds > 2 * 3.0, "the copy was too quick to show anything: slow it down further"
    assert transfer.dispatcher.retries == 0
