"""The testbed's gateway VMs (``capacity`` = ``vm``): the address plan, the planner's capacity model as a
flow network, the scenarios drawn from the grid, and (as root) VM namespaces whose NIC caps hold for
real TCP, per-edge byte counters, and a transfer whose gateways each run in a VM of their own.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess

import pytest

from planner import Grid, solve
from planner.relays import candidate_relays
from skyplane_provider.testbed import Scenario, shipped_scenarios
from skyplane_provider.testbed.addressing import NAMESPACE_PATTERN, TESTBED_RANGE, Addressing
from skyplane_provider.testbed.draw import multicast_scenario, random_scenarios
from skyplane_provider.testbed.network import expected_routes
from skyplane_provider.testbed.scenario import VM_BUDGET_MBIT
from skyplane_provider.testbed.shaping import WIRE_OVERHEAD, RegionClass, nic_batch, tbf_args
from tests.fixtures.testbed import leftovers, needs_netns, tcp_flows, within_cap

# Caps (egress, ingress) of a made-up VM per provider; 2 Gbps between every pair of regions.
CAPS = {"aws": (3.0, 10.0), "gcp": (7.0, 3.0), "azure": (16.0, 16.0)}
REGIONS = ("aws:a", "gcp:b", "azure:c")


def vm_scenario(vms: int, gbps: float = 2.0, regions: tuple[str, ...] = REGIONS) -> Scenario:
    pairs = [(a, b) for a in regions for b in regions if a != b]
    return Scenario(name=f"vms{vms}", regions=regions, gbps=dict.fromkeys(pairs, gbps), scale_mbit_per_gbps=10.0,
                    cost_per_gb={p: 0.01 * (1 + i) for i, p in enumerate(pairs)}, capacity="vm",
                    vms_per_region=vms,
                    vm_caps={p: c for p, c in CAPS.items() if any(r.startswith(p) for r in regions)})


# ---- pure ---------------------------------------------------------------------------------------

def test_vm_addresses_are_unique_and_vm0_keeps_the_region_plan():
    plan = Addressing("ab12cd", 9, 16, vms=4)
    region_plan = Addressing("ab12cd", 9, 16)
    addresses, devices = [], []
    for i, k in plan.nodes():
        wan = plan.wan_end(i, k)
        addresses += [plan.region_address(i, k), plan.control_address(i, k), plan.control_root_address(i, k),
                      wan.address, wan.core_address]
        devices.append(plan.control_root_device(i, k))
        assert len(plan.control_root_device(i, k)) <= 15 and len(wan.core_device) <= 15
        if k == 0:
            assert (plan.netns(i), plan.region_address(i)) == (region_plan.netns(i), region_plan.region_address(i))
    assert len(addresses) == len(set(addresses)) and len(devices) == len(set(devices))
    assert all(ipaddress.ip_address(a) in TESTBED_RANGE for a in addresses)
    assert all(NAMESPACE_PATTERN.match(ns).group(1) == "ab12cd" for ns in plan.namespaces())
    assert plan.namespaces()[-1] == plan.core_netns()
    with pytest.raises(ValueError):
        Addressing("ab12cd", 9, 16, vms=5)  # 80 VMs: more than the address plan holds


def test_vm_routes_cover_every_pair_of_vms_and_the_control_links():
    plan = Addressing("x1", 3, 3, vms=2)
    routes = expected_routes(plan)
    for i, k in plan.nodes():
        ns = plan.netns(i, k)
        others = {plan.region_address(j, m) for j, m in plan.nodes() if (j, m) != (i, k)}
        assert {a for a, dev, where in routes if where == ns and dev == "wan"} == others
        assert (plan.region_address(i, k), plan.control_root_device(i, k), None) in routes
        assert (plan.region_address(i, k), plan.wan_end(i, k).core_device, plan.core_netns()) in routes


def test_vm_network_is_the_planners_model_as_a_flow_network():
    one, two = vm_scenario(1), vm_scenario(2)
    assert Scenario.from_dict(two.to_dict()) == two
    # direct 2 + via azure:c 2, within aws:a's egress (3 per VM) and gcp:b's ingress (3 per VM)
    assert one.maxflow_gbps("aws:a", "gcp:b") == pytest.approx(3.0)
    assert two.maxflow_gbps("aws:a", "gcp:b") == pytest.approx(6.0)
    # more VMs add capacity: min(n, m) times each pair's rate (2 x (direct 2 + via gcp:b 2))
    assert one.maxflow_gbps("azure:c", "aws:a") == pytest.approx(4.0)
    assert two.maxflow_gbps("azure:c", "aws:a") == pytest.approx(8.0)
    fast = vm_scenario(1, gbps=20.0)
    assert fast.pair_gbps("aws:a", "gcp:b") == 3.0  # within both NICs: aws egress 3, gcp ingress 3
    assert fast.maxflow_gbps("azure:c", "gcp:b") == pytest.approx(3.0)


def test_headroom_says_how_much_more_the_network_would_carry():
    sc = vm_scenario(2)
    # one aws VM sending 2 Gbps to each of two regions: each region's rate allows it, the NIC (3) does not
    assert sc.headroom({("aws:a", "gcp:b"): 2.0, ("aws:a", "azure:c"): 2.0}, {"aws:a": 1, "gcp:b": 1, "azure:c": 1}) \
        == pytest.approx(0.75)
    assert sc.headroom({("azure:c", "aws:a"): 2.0}, {"azure:c": 2, "aws:a": 2}) == pytest.approx(2.0)


def test_the_testbed_carries_exactly_what_the_planner_plans_on_the_shipped_scenarios(tmp_path):
    """The planner's capacity model and the emulated network agree: every plan fills the network
    exactly (no headroom) or leaves only what the ILP leaves on purpose (under 2%)."""
    from skyplane_provider.testbed import Testbed as WanTestbed

    for name, shipped in shipped_scenarios().items():
        sc = shipped.as_vms(2)
        grid = Grid.from_csv(WanTestbed(sc).grid_csv(tmp_path / f"{name}.csv"))
        for solver in ("direct", "widest", "ilp"):
            plan = solve(sc.found["src"], [sc.found["dst"]], solver=solver, max_gateways_per_region=2, grid=grid)
            flows = {(e.src, e.dst): e.gbps for e in plan.edges}
            assert 1.0 - 1e-6 <= sc.headroom(flows, plan.gateways) <= 1.02, (name, solver)


def test_vm_scenarios_scale_to_the_budget_and_refuse_too_many_vms():
    sc = vm_scenario(1, regions=("aws:a", "gcp:b")).as_vms(2)
    assert sc.vm_caps == {"aws": (5.0, 10.0), "gcp": (7.0, 16.0)}  # the planner's own caps
    assert sc.maxflow_gbps("aws:a", "gcp:b") * sc.scale_mbit_per_gbps <= VM_BUDGET_MBIT
    with pytest.raises(Exception, match="VMs"):
        vm_scenario(30).validate()


def test_nic_classes_cap_each_region_and_the_whole_vm():
    lines = nic_batch("wan", 30.0, [RegionClass(1, 20.0, ("198.18.1.2", "198.18.1.5")),
                                    RegionClass(2, 50.0, ("198.18.1.3",))], match="dst")
    classes = {ln.split("classid ")[1].split()[0]: ln for ln in lines if ln.startswith("class add")}
    rate = {c: int(ln.split(" rate ")[1].split("bit")[0]) for c, ln in classes.items()}
    ceil = {c: int(ln.split(" ceil ")[1].split("bit")[0]) for c, ln in classes.items()}
    assert ceil["1:1"] == rate["1:1"] == round(30e6 * WIRE_OVERHEAD)
    assert ceil["1:11"] == round(20e6 * WIRE_OVERHEAD) and ceil["1:12"] == ceil["1:1"]  # 50 > the VM's 30
    # guarantees never add up to more than the parent, or HTB would let children past its cap
    assert sum(rate[c] for c in ("1:2", "1:11", "1:12")) <= rate["1:1"]
    filters = [ln for ln in lines if ln.startswith("filter add")]
    assert len(filters) == 3 and all("match ip dst" in ln for ln in filters)
    assert "flowid 1:11" in next(ln for ln in filters if "198.18.1.5/32" in ln)
    assert tbf_args(100.0)[:3] == ["tbf", "rate", f"{round(100e6 * WIRE_OVERHEAD)}bit"]


def test_random_scenarios_are_drawn_from_the_whole_grid_with_their_best_relays():
    grid = Grid.load_default()
    drawn = random_scenarios(6, seed=7)
    assert [s.name for s in drawn] == [s.name for s in random_scenarios(6, seed=7)]
    assert [s.name for s in drawn] != [s.name for s in random_scenarios(6, seed=8)]
    assert len({s.name for s in drawn}) == 6
    for s in drawn:
        s.validate()
        src, dst = s.found["src"], s.found["dst"]
        assert s.capacity == "vm" and s.vms_per_region == 2
        assert list(s.regions[2:]) == candidate_relays(grid, src, [dst], fast=2, cheap=0)
        assert s.gbps[(src, dst)] == grid.gbps(src, dst) and s.cost_per_gb[(dst, src)] == grid.cost(dst, src)
        assert s.maxflow_gbps(src, dst) * s.scale_mbit_per_gbps <= VM_BUDGET_MBIT + 1e-9


def test_multicast_scenario_holds_the_relays_the_milp_considers():
    sc = multicast_scenario("gcp:us-central1", ["aws:us-west-2", "azure:westeurope", "gcp:asia-east1"])
    assert sc.regions[:4] == ("gcp:us-central1", "aws:us-west-2", "azure:westeurope", "gcp:asia-east1")
    assert len(sc.regions) == 4 + 6 and sc.vms_per_region == 1
    slowest = min(sc.maxflow_gbps(sc.regions[0], d) for d in sc.regions[1:4])
    assert 3 * slowest * sc.scale_mbit_per_gbps <= VM_BUDGET_MBIT + 1e-9


def test_vm_grid_is_the_grid_itself_and_plans_scale_onto_the_testbed(tmp_path):
    from skyplane_provider.testbed import Testbed as WanTestbed

    assert WanTestbed(vm_scenario(2)).plan_scale == pytest.approx(0.01)
    sc = shipped_scenarios()["aws-us-east-1--gcp-us-west4-a"].as_vms(2)
    tb = WanTestbed(sc)  # writing the grid needs no namespaces
    rows = tb.grid_csv(tmp_path / "grid.csv").read_text().splitlines()
    assert rows[1] == f"aws:us-east-1,gcp:us-west4-a,{sc.gbps[('aws:us-east-1', 'gcp:us-west4-a')]:.6f},0.09,vm"
    src, dst = sc.found["src"], sc.found["dst"]
    plan = solve(src, [dst], solver="ilp", max_gateways_per_region=2, grid=Grid.from_csv(tmp_path / "grid.csv"))
    # the planner's fastest plan fills the testbed's network (two AWS VMs' egress: 10 Gbps)
    assert plan.throughput_gbps == pytest.approx(sc.maxflow_gbps(src, dst), rel=0.02)
    assert tb.maxflow(src, dst) == pytest.approx(sc.maxflow_gbps(src, dst) * tb.plan_scale)


# ---- real namespaces ----------------------------------------------------------------------------

def wan_rx_bytes(tb, region: str, vm: int) -> int:
    out = subprocess.run(["ip", "-n", tb.netns(region, vm), "-s", "-j", "link", "show", "wan"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["stats64"]["rx"]["bytes"]


@pytest.mark.netns
@needs_netns
def test_vm_testbed_up_routes_and_down_leaves_nothing(testbeds):
    tb = testbeds(vm_scenario(2)).up()
    status = tb.status()
    assert status["state"] == "up" and status["capacity"] == "vm" and status["vms_per_region"] == 2
    placement = tb.gateway_placement()
    assert placement["gcp:b"] == placement["gcp:b/0"] != placement["gcp:b/1"]
    assert placement["gcp:b/1"] == {"netns": tb.netns("gcp:b", 1), "bind_host": tb.region_address("gcp:b", 1),
                                    "control_host": tb.control_address("gcp:b", 1)}
    tb.assert_routed(tb.region_address("azure:c", 1))
    tb.down()
    assert leftovers(tb.testbed_id) == []


@pytest.mark.netns
@needs_netns
def test_vm_caps_hold_for_real_tcp(testbeds):
    tb = testbeds(vm_scenario(2)).up()  # 20 Mbit/s per VM and remote region; aws egress 30, gcp ingress 30
    a, b, c = REGIONS
    pair = tcp_flows(tb, [(a, 0, b, 0)], 4).mbit
    assert within_cap(pair, 20.0)
    # one VM towards both VMs of a region: still its one rate towards that region
    assert within_cap(tcp_flows(tb, [(a, 0, b, 0), (a, 0, b, 1)], 3).mbit, 20.0)
    # both VMs to one VM of a region: its one rate from that region
    assert within_cap(tcp_flows(tb, [(a, 0, b, 0), (a, 1, b, 0)], 3).mbit, 20.0)
    # two VM pairs: twice the rate (more gateways add capacity)
    assert within_cap(tcp_flows(tb, [(a, 0, b, 0), (a, 1, b, 1)], 4).mbit, 40.0)
    # one aws VM towards two regions: its NIC's egress cap (30), not 2 x 20
    assert within_cap(tcp_flows(tb, [(a, 0, b, 0), (a, 0, c, 0)], 4).mbit, 30.0)
    # one gcp VM from two regions: its NIC's ingress cap (30)
    assert within_cap(tcp_flows(tb, [(a, 0, b, 0), (c, 0, b, 0)], 4).mbit, 30.0)


@pytest.mark.netns
@needs_netns
def test_a_vm_receives_from_a_region_more_than_one_vm_of_it_can_send(testbeds):
    # aws:a -> azure:c 4 Gbps per VM (40 Mbit/s), but one aws VM sends at most 3 (30 Mbit/s)
    tb = testbeds(vm_scenario(2, gbps=4.0, regions=("aws:a", "azure:c"))).up()
    assert within_cap(tcp_flows(tb, [("aws:a", 0, "azure:c", 0)], 4).mbit, 30.0)
    assert within_cap(tcp_flows(tb, [("aws:a", 0, "azure:c", 0), ("aws:a", 1, "azure:c", 0)], 4).mbit, 40.0)


@pytest.mark.netns
@needs_netns
def test_edge_counters_see_each_region_pair_and_replies_as_the_receivers_egress(testbeds):
    tb = testbeds(vm_scenario(2)).up()
    a, b, c = REGIONS
    before, vm_before = tb.edge_bytes(), tb.vm_frames()
    tcp_flows(tb, [(a, 0, b, 1), (a, 1, b, 0)], 2)
    moved = {edge: after - before[edge] for edge, after in tb.edge_bytes().items()}
    sent = {vm: n - vm_before[vm] for vm, n in tb.vm_frames().items()}
    assert sent[f"{a}/0"] > 2 << 20 and sent[f"{a}/1"] > 2 << 20  # each VM's own NIC
    assert sent[f"{c}/0"] < 4096 and sent[f"{c}/1"] < 4096
    payload = 4 << 20
    assert payload < moved[(a, b)].ip_bytes < moved[(a, b)].frames < payload * 1.06
    assert 0 < moved[(b, a)].frames < payload * 0.05  # acknowledgements: the receiver's egress
    assert moved[(a, c)].frames == moved[(c, a)].frames == moved[(b, c)].frames == 0


@pytest.mark.netns
@needs_netns
def test_a_transfer_runs_each_gateway_in_a_vm_of_its_own(testbeds, tmp_path):
    from skyplane_provider.transfer.request import TransferRequest
    from skyplane_provider.transfer.runner import Transfer

    sc = vm_scenario(2, regions=("aws:a", "gcp:b"))
    tb = testbeds(sc).up()
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    files = {f"f{i}": os.urandom(1 << 20) for i in range(12)}  # incompressible: lz4 cannot hide the traffic
    for name, data in files.items():
        (src / name).write_bytes(data)
    plan = solve("aws:a", ["gcp:b"], solver="direct", max_gateways_per_region=2,
                 grid=Grid.from_csv(tb.grid_csv(tmp_path / "grid.csv")))
    assert plan.gateways == {"aws:a": 2, "gcp:b": 2}
    rx = [wan_rx_bytes(tb, "gcp:b", k) for k in range(2)]
    request = TransferRequest(src=f"file://{src}/", dsts=[f"file://{dst}/"], src_region="aws:a", dst_regions=["gcp:b"],
                              plan=plan.to_dict(), chunk_size=1 << 20, connections=2,
                              provisioner_settings={"placement": tb.gateway_placement()})
    stats = Transfer(request).run()
    assert stats.objects == 12 and all((dst / name).read_bytes() == data for name, data in files.items())
    # each source gateway spreads its connections over both destination gateways, each in its own VM
    received = [wan_rx_bytes(tb, "gcp:b", k) - rx[k] for k in range(2)]
    assert all(r > 2 << 20 for r in received), received
