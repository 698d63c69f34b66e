"""A chunk that waits its turn at a busy gateway is not stalled: the dispatcher sends a chunk again
only when neither it nor any other chunk of the job had news for its stall timeout.

Through a real gateway process (local provisioner, local-directory stores). The job's bandwidth cap
makes the one gateway write its chunks one after another for several seconds, so the last ones wait
in its queue for longer than the (shortened) stall timeout while the others are written. Before the
fix each of them was sent again (and, at 100,000 small objects to moto under load, failed after four
such rounds while the fleet wrote at full speed).
"""

from __future__ import annotations

import os

import pytest

from skyplane_provider.transfer import Transfer, TransferRequest, dispatch

from .helpers import gateway_pids, read_all

MiB = 1024**2


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    home = str(tmp_path / "home")
    monkeypatch.setenv("SKYPLANE_HOME", home)
    yield
    assert gateway_pids(home) == [], "a gateway process was left running"


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
