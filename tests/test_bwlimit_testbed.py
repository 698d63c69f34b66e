"""The job option ``bwlimit`` on the emulated WAN: one cap per region, shared by the region's gateways
(each in a VM of its own), holds within 10% as the destination's network interfaces count it.

The cap's parts are tested elsewhere: pacing and a host's split over its workers in real gateways
(tests/test_gateway_bwlimit.py), the split rule itself (tests/test_bandwidth.py), bad values with
the other bad input (tests/test_bad_input.py).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from planner import Grid, solve
from skyplane_provider.testbed import Scenario
from skyplane_provider.testbed.shaping import WIRE_OVERHEAD
from skyplane_provider.transfer.request import TransferRequest
from skyplane_provider.transfer.runner import Transfer
from tests.fixtures.testbed import needs_netns

from .test_testbed_vms import wan_rx_bytes

MiB = 1024**2
SRC, DST = "aws:a", "gcp:b"


def _scenario() -> Scenario:
    # 40 Mbit/s between each pair of VMs, 30 Mbit/s out of an aws VM: two source VMs could send
    # ~60 Mbit/s, so the cap (2 MiB/s, ~17 Mbit/s) is what binds, not the network.
    return Scenario(name="bwlimit", regions=(SRC, DST), gbps={(SRC, DST): 4.0, (DST, SRC): 4.0},
                    scale_mbit_per_gbps=10.0, cost_per_gb={(SRC, DST): 0.02, (DST, SRC): 0.02}, capacity="vm",
                    vms_per_region=2, vm_caps={"aws": (3.0, 10.0), "gcp": (7.0, 7.0)})


class _Sampler(threading.Thread):
    """Samples the bytes the destination VMs' WAN interfaces received, every 0.2 s."""

    def __init__(self, tb) -> None:
        super().__init__(daemon=True)
        self.tb, self.samples, self.done = tb, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic(), sum(wan_rx_bytes(self.tb, DST, k) for k in range(2))))
            self.done.wait(0.2)

    def steady_rate(self) -> float:
        """Payload bytes per second over the middle 60% of the time data was arriving."""
        base = self.samples[0][1]
        moving = [(t, n - base) for t, n in self.samples if n - base > 64 * 1024]
        start, end = moving[0][0], moving[-1][0]
        lo, hi = start + 0.2 * (end - start), start + 0.8 * (end - start)
        window = [(t, n) for t, n in moving if lo <= t <= hi]
        (t0, n0), (t1, n1) = window[0], window[-1]
        return (n1 - n0) / WIRE_OVERHEAD / (t1 - t0)


@pytest.mark.netns
@needs_netns
def test_a_jobs_cap_is_shared_by_a_regions_gateways_and_holds_within_ten_percent(testbeds, tmp_path):
    tb = testbeds(_scenario()).up()
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    files = {f"f{i:02d}": os.urandom(MiB) for i in range(20)}  # incompressible, and not compressed anyway
    for name, data in files.items():
        (src / name).write_bytes(data)
    plan = solve(SRC, [DST], solver="direct", max_gateways_per_region=2,
                 grid=Grid.from_csv(tb.grid_csv(tmp_path / "grid.csv")))
    assert plan.gateways == {SRC: 2, DST: 2}
    cap = 2 * MiB
    request = TransferRequest(src=f"file://{src}/", dsts=[f"file://{dst}/"], src_region=SRC, dst_regions=[DST],
                              plan=plan.to_dict(), chunk_size=MiB, connections=2, compress=False,
                              bwlimit="2MiB/s", provisioner_settings={"placement": tb.gateway_placement()})
    assert request.bwlimit == cap
    sampler = _Sampler(tb)
    sampler.start()
    try:
        stats = Transfer(request).run()
    finally:
        sampler.done.set()
        sampler.join()
    assert stats.objects == 20 and all((dst / name).read_bytes() == data for name, data in files.items())
    rate = sampler.steady_rate()
    assert 0.9 * cap <= rate <= 1.1 * cap, f"{rate / MiB:.3f} MiB/s under a cap of {cap / MiB:.3f} MiB/s"
