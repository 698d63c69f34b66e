"""A cancel is seen within a second or two whatever the gateways do, and the fleet is torn down: real
coordinator and gateway processes, the gateways frozen (SIGSTOP) as hung ones would be, while the
job moves data and while its fleet starts.

The bounds are loose (a loaded machine must pass): before the cancel was prompt, a cancel of hung
gateways took ~28 s to be seen and ~10 s more to tear them down; a cancel during the fleet's start
waited for its 30 s health timeout."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from planner.errors import TransferError
from skyplane_provider.coordinator.jobdir import LOG, job_dir
from skyplane_provider.transfer import Transfer, TransferRequest

from .helpers import gateway_pids, wait_gone

MiB = 1024**2
#: Seconds from the cancel to the job's end (fleet torn down) that these tests allow (~3 s unloaded).
ENDS_WITHIN = 12.0
#: A gateway per region (not one writing for both, as on one host by default): two to freeze.
TWO_GATEWAYS = {"one_gateway": False}


def _source(root: Path, n: int) -> str:
    root.mkdir()
    (root.parent / "dst").mkdir()
    for i in range(n):
        (root / f"f{i:02d}").write_bytes(os.urandom(MiB))
    return str(root)


def _cancel_and_time(handle) -> float:
    began = time.monotonic()
    handle.cancel()
    with pytest.raises(TransferError, match="cancel"):
        handle.result(timeout=120)
    took = time.monotonic() - began
    print(f"the cancelled job ended {took:.1f} s after the cancel")
    return took


def _kill(pids: list[int]) -> None:
    """What the teardown did not end, when a test failed: not left to other tests."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_cancel_of_a_job_whose_gateways_hang_ends_it_at_once(home, tmp_path):
    src = _source(tmp_path / "src", n=24)
    # Two regions, a gateway each; ~12 s of moving at the cap: they are frozen while they move data.
    handle = Transfer(TransferRequest(src=src, dsts=[str(tmp_path / "dst")], chunk_size="1MiB", bwlimit="2MiB/s",
                                      src_region="aws:us-east-1", dst_regions=["aws:eu-west-1"],
                                      provisioner_settings=TWO_GATEWAYS)).start()
    moving = threading.Event()
    handle.subscribe(lambda progress: moving.set())  # the dispatch loop reports from its first round
    frozen: list[int] = []
    try:
        assert moving.wait(60) and not handle.done(), "the job did not start moving"
        frozen = gateway_pids(handle.job_id)
        assert len(gateway_pids(handle.job_id, workers=False)) == 2
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(1)  # the dispatch loop (50 ms rounds) is now waiting on a call to a frozen gateway
        took = _cancel_and_time(handle)
        assert handle.client.job()["state"] == "cancelled"
        assert took < ENDS_WITHIN, f"the cancel took {took:.1f} s"
        assert wait_gone(handle.job_id) == []  # the frozen gateways too
        assert len(os.listdir(tmp_path / "dst")) < 24
        assert not [p for p in (tmp_path / "dst").iterdir() if p.name.startswith(".")]  # no temp file left
    finally:
        _kill(frozen)


def test_a_cancel_while_the_fleet_starts_ends_the_start(home, tmp_path, monkeypatch):
    """The gateways stop themselves (SIGSTOP) before they bind their ports, through a
    ``sitecustomize`` that only the gateway daemon acts on: a start that would hang until the
    provisioner's health timeout (30 s)."""
    hang = tmp_path / "hang"
    hang.mkdir()
    (hang / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "if 'gateway.daemon' in sys.orig_argv:\n"
        "    os.kill(os.getpid(), signal.SIGSTOP)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hang), os.environ.get("PYTHONPATH")])))
    src = _source(tmp_path / "src", n=2)
    handle = Transfer(TransferRequest(src=src, dsts=[str(tmp_path / "dst")], src_region="aws:us-east-1",
                                      dst_regions=["aws:eu-west-1"], provisioner_settings=TWO_GATEWAYS)).start()
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 60
        # Both gateways started and stopped themselves, and the fleet's start began (its record: processes
        # started ahead, of the plan or at its go, stop themselves before provisioning told them anything).
        while len(stopped) < 2 or not (job_dir(handle.job_id) / "pids.json").exists():
            assert time.monotonic() < deadline and not handle.done(), "the gateways did not start"
            stopped = [p for p in gateway_pids(handle.job_id) if _state(p) == "T"]
            time.sleep(0.05)
        took = _cancel_and_time(handle)
        assert handle.client.job()["state"] == "cancelled"
        assert took < ENDS_WITHIN, f"the cancel took {took:.1f} s"
        assert wait_gone(handle.job_id) == []
        log = (job_dir(handle.job_id) / LOG).read_text()
        assert "torn down" in log and "gateway(s) up" not in log  # it ended the start
        assert not os.listdir(tmp_path / "dst")
    finally:
        _kill(stopped)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
