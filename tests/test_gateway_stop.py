"""A gateway's stop ends its idle readers and writers at once, not at their next queue poll: every job
waits for its gateways' stops (teardown), so a poll per stop was latency every user paid."""

from __future__ import annotations

import time

from gateway.config import GatewayConfig
from gateway.node import GatewayNode
from planner.plan import PartitionProgram, RegionProgram

REGION = "local:a"


def test_an_idle_gateway_stops_without_waiting_out_its_polls():
    program = RegionProgram(REGION, {0: PartitionProgram("read", (), write=True)})
    node = GatewayNode(GatewayConfig.from_dict({
        "gateway_id": f"{REGION}/0", "job_id": "ab" * 16, "region": REGION, "program": program.to_dict(),
        "job_secret": "cd" * 16, "control_token": "t" * 16, "encrypt": False, "workers": 1}))
    node.start()
    time.sleep(0.1)  # every reader and writer is waiting on its queue
    began = time.monotonic()
    node.stop(grace=10.0)  # a grace long enough to wait out each thread's poll (0.5 s) before the fix
    took = time.monotonic() - began
    assert all(not t.is_alive() for t in node._threads)
    assert took < 0.25, f"stop took {took:.2f} s"


def test_wait_exits_reaps_the_processes_that_exit_and_leaves_the_others():
    """gateway/exits.py: the teardown's wait (local fleets, a supervisor's workers) returns once every
    process exited, each reaped; one still running at the deadline is left as it is."""
    import subprocess
    import sys

    from gateway.exits import wait_exits

    quick = [subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"]) for code in (0, 3)]
    wait_exits(quick, 30)
    assert [p.returncode for p in quick] == [0, 3]
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        done = subprocess.Popen([sys.executable, "-c", "pass"])
        done.wait()  # reaped already: nothing to wait for
        wait_exits([slow, done], 0.5)
        assert slow.poll() is None and done.returncode == 0
    finally:
        slow.kill()
        slow.wait()
