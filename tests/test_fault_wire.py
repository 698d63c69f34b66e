"""Frames damaged on the wire during a real transfer (orchestrator + gateway processes).

A :class:`FrameTamperProxy` sits between the source and the destination gateway: the plan's peer
wiring gives the source the proxy's address instead of the destination's data port. Damaged frames
must never be written; the orchestrator sends their chunks again and the copy ends sha256-identical.
"""

from __future__ import annotations

import os
import time

import pytest

from skyplane_provider.testing.frameproxy import TamperingProvisioner
from skyplane_provider.transfer import Transfer, TransferRequest

from .helpers import digests, gateway_pids, read_all
from .reliability_report import record

MiB = 1024**2
SRC, DST = "aws:us-east-1", "aws:us-west-2"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path / "home"))
    yield
    assert gateway_pids(str(tmp_path / "home")) == [], "a gateway process was left running"


def _objects() -> dict[str, bytes]:
    objs = {f"rand-{i}": os.urandom(MiB + 1000 * i) for i in range(6)}  # 12 chunks, not compressible
    objs["text.csv"] = b"".join(b"%d,row,%d\n" % (i, i * 7) for i in range(150_000))  # compresses
    return objs


def _run(tmp_path, prov: TamperingProvisioner, **options) -> tuple[Transfer, float]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    objs = _objects()
    for k, v in objs.items():
        (src / k).write_bytes(v)
    transfer = Transfer(TransferRequest(src=str(src), dsts=[str(dst)], recursive=True, chunk_size="1MiB",
                                        solver="direct", src_region=SRC, dst_regions=[DST], **options),
                        provisioner=prov)
    started = time.monotonic()
    stats = transfer.run()
    seconds = time.monotonic() - started
    assert read_all("file://" + str(dst)) == digests(objs)
    assert stats.verified and stats.objects == len(objs)
    for proxy in prov.proxies:
        proxy.stop()
    return transfer, seconds


@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypted", "clear"])
def test_fault_corrupted_frames_are_rejected_and_resent(tmp_path, encrypt):
    prov = TamperingProvisioner(DST, corrupt={1, 4, 6})
    transfer, seconds = _run(tmp_path, prov, encrypt=encrypt)
    counts = prov.proxies[0].counts
    rejected = transfer.dispatcher.counter_sum("frames_rejected", DST)
    written = transfer.dispatcher.counter_sum("chunks_written", DST)
    assert counts.corrupted == 3 and rejected == 3 and transfer.dispatcher.retries >= 3
    assert written == transfer.dispatcher.chunk_count  # every chunk written once, no damaged one
    record("fault", f"MITM flips one body byte in 3 of {counts.frames} frames between source and destination "
           f"gateway ({'AES-GCM' if encrypt else 'clear, checksummed'} frames, {written} chunks)",
           f"{rejected} frames rejected by the destination, {transfer.dispatcher.retries} chunk retries, "
           f"{written} chunks written once, copy sha256-identical in {seconds:.1f} s")


def test_fault_frame_cut_mid_body_is_resent(tmp_path):
    prov = TamperingProvisioner(DST, truncate={3})
    transfer, seconds = _run(tmp_path, prov)
    counts = prov.proxies[0].counts
    rejected = transfer.dispatcher.counter_sum("frames_rejected", DST)
    assert counts.truncated == 1 and counts.connections >= 2 and rejected == 1
    assert transfer.dispatcher.retries >= 1
    # Frames the sender had already pushed into the cut connection are reported lost by the sender:
    # nothing waits for the orchestrator's stall timeout.
    assert seconds < transfer.dispatcher.stall_seconds / 2
    record("fault", "MITM forwards half of one frame's body, then closes the connection (network cut)",
           f"destination reports the cut chunk (frames_rejected={rejected}), sender reconnects "
           f"({counts.connections} connections), {transfer.dispatcher.retries} chunk retries, "
           f"copy sha256-identical in {seconds:.1f} s")
