"""The emulated WAN testbed: address plan, scenarios, max-flow, and (as root) real namespaces.

The netns tests build real namespaces, veths and tbf qdiscs, and send TCP only between testbed
namespaces; every testbed they create is taken down by the ``testbeds`` fixture.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from planner.errors import BadOptionError, ProvisionError
# aliased: pytest would try to collect a class called Test*
from skyplane_provider.testbed import Scenario, shipped_scenarios, teardown, unrecorded_testbeds
from skyplane_provider.testbed import Testbed as WanTestbed
from skyplane_provider.testbed import iproute, safety
from skyplane_provider.testbed.addressing import TESTBED_RANGE, Addressing, namespace_prefix
from skyplane_provider.testbed.maxflow import max_flow
from skyplane_provider.testbed.scenario import MAX_LINK_MBIT
from skyplane_provider.testbed.state import state_file
from tests.fixtures.testbed import RECEIVER, leftovers, needs_netns, tcp_flows, within_cap

TWO = Scenario(name="two", regions=("t:a", "t:b"), gbps={("t:a", "t:b"): 5.0, ("t:b", "t:a"): 2.5},
               scale_mbit_per_gbps=20.0, cost_per_gb={("t:a", "t:b"): 0.09})
THREE = Scenario(name="three", regions=("t:a", "t:b", "t:c"),
                 gbps={("t:a", "t:b"): 1.0, ("t:b", "t:a"): 1.0, ("t:a", "t:c"): 4.0, ("t:c", "t:a"): 4.0,
                       ("t:b", "t:c"): 4.0, ("t:c", "t:b"): 3.0}, scale_mbit_per_gbps=10.0)


# ---- pure: addressing, scenarios, max-flow -------------------------------------------------------

def test_addresses_are_unique_and_inside_the_benchmarking_range():
    plan = Addressing("ab12cd", 7, 16)
    addresses = []
    for i in range(plan.regions):
        addresses += [plan.region_address(i), plan.control_address(i), plan.control_root_address(i)]
        assert len(plan.control_root_device(i)) <= 15
        for j in range(plan.regions):
            if j != i:
                end, peer = plan.link_end(i, j), plan.link_end(j, i)
                assert (end.address, end.peer_address) == (peer.peer_address, peer.address)
                assert ipaddress.ip_network(f"{end.address}/31", strict=False).overlaps(
                    ipaddress.ip_network(f"{peer.address}/31", strict=False))
                if i < j:
                    addresses += [end.address, peer.address]
    assert len(addresses) == len(set(addresses))
    assert all(ipaddress.ip_address(a) in TESTBED_RANGE for a in addresses)


def test_addressing_rejects_ids_that_break_interface_names():
    with pytest.raises(ValueError):
        Addressing("Too-Long-1", 1, 2)


def test_max_flow_adds_the_relay_paths():
    caps = {("s", "d"): 1.0, ("s", "r"): 4.0, ("r", "d"): 3.0, ("r", "s"): 9.0}
    assert max_flow(caps, "s", "d") == pytest.approx(4.0)
    assert max_flow(caps, "d", "s") == 0.0


def test_scenario_round_trips_and_rejects_links_too_fast_for_two_cores():
    assert Scenario.from_dict(THREE.to_dict()) == THREE
    with pytest.raises(BadOptionError, match="Mbit/s"):
        THREE.with_scale(MAX_LINK_MBIT).validate()
    with pytest.raises(BadOptionError, match="no rate"):
        Scenario(name="x", regions=("a", "b"), gbps={("a", "b"): 1.0}).validate()


def test_shipped_scenarios_come_from_the_grid_and_a_relay_wins_twice():
    scenarios = shipped_scenarios()
    assert len(scenarios) >= 3
    for s in scenarios.values():
        src, dst = s.found["src"], s.found["dst"]
        best_relay = max(min(s.gbps[(src, r)], s.gbps[(r, dst)]) for r in s.regions if r not in (src, dst))
        assert best_relay >= 2 * s.gbps[(src, dst)]
        assert 3 <= len(s.regions) <= 4
        assert max(s.link_mbit(a, b) for a, b in s.gbps) <= MAX_LINK_MBIT


# ---- real namespaces ---------------------------------------------------------------------------

@pytest.mark.netns
@needs_netns
def test_up_checks_routes_and_down_leaves_nothing(testbeds, testbed_home):
    tb = testbeds(THREE).up()
    assert tb.status()["state"] == "up"
    plan = tb.addressing
    for i, region in enumerate(THREE.regions):
        safety.check_route(tb.control_address(region), plan.control_root_device(i))
        safety.check_route(tb.region_address(region), plan.control_root_device(i))
        tb.assert_routed(tb.region_address(region))
        for j, other in enumerate(THREE.regions):
            if j != i:
                safety.check_route(tb.region_address(other), f"to{j}", netns=tb.netns(region))
        assert tb.store_dir(region).is_dir()
    assert tb.gateway_placement()["t:b"] == {"netns": tb.netns("t:b"), "bind_host": tb.region_address("t:b"),
                                             "control_host": tb.control_address("t:b")}
    # the physical limit a->b: 10 Mbit/s direct + min(40, 30) via c = 40 Mbit/s
    assert tb.maxflow("t:a", "t:b") == pytest.approx(0.04)
    tb.down()
    tb.down()  # idempotent
    assert leftovers(tb.testbed_id) == []
    assert not state_file(testbed_home, tb.testbed_id).exists()
    assert not (testbed_home / tb.testbed_id).exists()


@pytest.mark.netns
@needs_netns
def test_route_check_refuses_an_address_that_would_leave_through_eth0():
    # 198.19.254.254 is configured nowhere: the root namespace would send it to its default route.
    problem = safety.route_problem("198.19.254.254", "skytzzzzzzc0")
    assert problem and "not over skytzzzzzzc0" in problem
    with pytest.raises(ProvisionError, match="refusing to send traffic"):
        safety.check_route("198.19.254.254", "skytzzzzzzc0")
    with pytest.raises(ProvisionError, match="outside 198.18.0.0/15"):
        safety.check_route("192.0.2.1", "eth0")


class MissingRootRoute(WanTestbed):
    """Builds the network, then loses the root route to one region address, as a bug would."""

    def _build(self, plan):
        super()._build(plan)
        iproute.ip("route", "del", f"{plan.region_address(1)}/32")


@pytest.mark.netns
@needs_netns
def test_up_refuses_to_start_when_a_route_is_wrong_and_cleans_up(testbeds):
    tb = testbeds(TWO, MissingRootRoute)
    with pytest.raises(ProvisionError, match="routes are unsafe"):
        tb.up()
    assert leftovers(tb.testbed_id) == []


@pytest.mark.netns
@needs_netns
def test_shaped_links_carry_their_rate_of_payload_in_each_direction(testbeds):
    tb = testbeds(TWO).up()
    before = tb.edge_bytes()
    for src, dst, mib in (("t:a", "t:b", 8), ("t:b", "t:a", 4)):  # 100 and 50 Mbit/s of payload
        mbit = tcp_flows(tb, [(src, 0, dst, 0)], mib).mbit
        # the caps count headers, the rates are goodput (the grid's iperf3 figures): one stream gets the rate
        assert within_cap(mbit, TWO.link_mbit(src, dst)), f"{src}->{dst}: {mbit:.1f} Mbit/s"
    sent = tb.edge_bytes()[("t:a", "t:b")] - before[("t:a", "t:b")]
    # the shaper counted every frame: 8 MiB of payload and its TCP/IP/Ethernet headers (and the handshake)
    assert 8 << 20 < sent.ip_bytes < sent.frames < (8 << 20) * 1.06


@pytest.mark.netns
@needs_netns
def test_root_namespace_reaches_a_region_address_over_the_control_link(testbeds):
    tb = testbeds(TWO).up()
    address = tb.region_address("t:b")
    receiver = tb.popen("t:b", [sys.executable, "-c", RECEIVER, address], stdout=subprocess.PIPE, text=True)
    port = int(receiver.stdout.readline())
    tb.assert_routed(address)  # the orchestrator's duty before it sends anything to a testbed address
    with socket.create_connection((address, port), timeout=10) as conn:
        conn.sendall(bytes(4 << 20))
    received, first, last = receiver.stdout.readline().split()
    receiver.wait(timeout=10)
    assert int(received) == 4 << 20
    # unshaped: far above every data link of the scenario (100 Mbit/s at most)
    assert int(received) * 8 / (float(last) - float(first)) / 1e6 > 300
    with pytest.raises(BadOptionError, match="not an address of testbed"):
        tb.assert_routed("198.18.200.1")


CRASHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from skyplane_provider.testbed import Scenario, Testbed
    scenario = Scenario.from_dict({"name": "two", "regions": ["t:a", "t:b"], "links": [
        {"src": "t:a", "dst": "t:b", "gbps": 5}, {"src": "t:b", "dst": "t:a", "gbps": 5}]})
    tb = Testbed(scenario, root=Path(sys.argv[1])).up()
    sleeper = tb.popen("t:b", ["sleep", "300"])
    print(tb.testbed_id, sleeper.pid, flush=True)
    time.sleep(300)
""")


@pytest.mark.netns
@needs_netns
def test_down_from_a_fresh_process_cleans_up_after_a_crash(testbed_home):
    crasher = subprocess.Popen([sys.executable, "-c", CRASHER, str(testbed_home)],
                               stdout=subprocess.PIPE, text=True)
    try:
        testbed_id, sleeper = crasher.stdout.readline().split()
    finally:
        crasher.send_signal(signal.SIGKILL)
        crasher.wait()
    try:
        assert state_file(testbed_home, testbed_id).is_file()
        assert os.path.exists(f"/proc/{sleeper}")
        WanTestbed.attach(testbed_id, testbed_home).down()
        assert leftovers(testbed_id) == []
        assert not os.path.exists(f"/proc/{sleeper}") or _zombie(int(sleeper))
        assert not state_file(testbed_home, testbed_id).exists()
    finally:
        teardown(testbed_id, testbed_home)


@pytest.mark.netns
@needs_netns
def test_teardown_without_state_file_removes_namespaces_by_prefix(testbed_home):
    testbed_id = f"o{os.getpid() % 100000}"  # not a fixed id: two checkouts' suites may run at once
    ns = f"{namespace_prefix(testbed_id)}r0"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "300"])
    try:
        assert unrecorded_testbeds(testbed_home)[testbed_id] == [ns]
        teardown(testbed_id, testbed_home)
        assert leftovers(testbed_id) == []
        assert testbed_id not in unrecorded_testbeds(testbed_home)
        assert sleeper.wait(timeout=5) == -signal.SIGTERM
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.netns
@needs_netns
def test_cli_up_status_down(testbed_home, tmp_path):
    scenario_file = tmp_path / "two.json"
    scenario_file.write_text(json.dumps(TWO.to_dict()))
    grid = tmp_path / "grid.csv"
    env = {**os.environ, "SKYPLANE_HOME": str(testbed_home.parent)}

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", "testbed", *args],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    up = json.loads(cli("up", "--scenario", str(scenario_file), "--grid-csv", str(grid), "--json"))
    testbed_id = up["testbed_id"]
    try:
        assert up["state"] == "up"
        assert grid.read_text().splitlines() == ["src,dst,gbps,cost_per_gb,capacity", "t:a,t:b,0.100000,0.09,link",
                                                 "t:b,t:a,0.050000,0,link"]
        status = json.loads(cli("status", "--json"))["testbeds"]
        assert [s["testbed_id"] for s in status] == [testbed_id]
        assert status[0]["regions"][1]["region_address"] == up["regions"][1]["region_address"]
        assert f"testbed {testbed_id}: down" in cli("down")
        assert leftovers(testbed_id) == []
        assert json.loads(cli("status", "--json"))["testbeds"] == []
    finally:
        teardown(testbed_id, testbed_home)


@pytest.mark.netns
@needs_netns
def test_cli_up_vms_builds_gateway_vms_and_settings_place_gateways_on_them(testbed_home, tmp_path):
    env = {**os.environ, "SKYPLANE_HOME": str(testbed_home.parent)}

    def cli(*args: str, status: int = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", "testbed", *args],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == status, proc.stderr
        return proc

    refused = cli("up", "--scenario", "aws-us-east-1--gcp-us-west4-a", "--vms", "0", status=1)
    assert "0 VMs in each region" in refused.stderr and "Traceback" not in refused.stderr
    grid = tmp_path / "grid.csv"
    up = json.loads(cli("up", "--scenario", "aws-us-east-1--gcp-us-west4-a", "--vms", "2", "--grid-csv", str(grid),
                        "--json").stdout)
    testbed_id = up["testbed_id"]
    try:
        assert up["capacity"] == "vm" and up["vms_per_region"] == 2
        assert all(len(r["vms"]) == 2 for r in up["regions"])
        assert all(line.endswith(",vm") for line in grid.read_text().splitlines()[1:])  # the planner reads VM caps
        placement = json.loads(cli("settings", testbed_id).stdout)["placement"]
        src_vm1 = placement["aws:us-east-1/1"]
        assert src_vm1["netns"] == up["regions"][0]["vms"][1]["netns"] != placement["aws:us-east-1/0"]["netns"]
        assert "2 VM(s) per region" in cli("status", testbed_id).stdout
        cli("down", testbed_id)
        assert leftovers(testbed_id) == []
    finally:
        teardown(testbed_id, testbed_home)
