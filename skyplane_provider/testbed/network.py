"""The namespaces, veths, addresses, routes and shapers of one testbed, and the routes it must have.

``build(plan, scenario)`` makes them (the address plan is :class:`Addressing`, the caps come from
:mod:`shaping`); ``expected_routes(plan)`` lists every (address, device, namespace) that ``verify``
asks the kernel about; ``edge_bytes(plan, scenario)`` reads what crossed each region pair from the
shapers' own counters (nothing in the gateways is asked).

- ``link`` testbed: namespace i has a veth ``to<j>`` to every other region j, its sending end capped
  with tbf at the pair's rate, and a host route to j's address over it.
- ``vm`` testbed: every VM has one veth ``wan`` to the ``core`` namespace, which forwards between VMs.
  The VM's end carries the VM's egress caps, the core's end (``n<node>``) its ingress caps
  (:func:`shaping.nic_batch`). A VM has a host route over ``wan`` to every other VM; the core a host
  route to every VM over that VM's veth; nothing has a default route.

Every namespace also has an unshaped control veth to the root namespace, which holds a host route to
the namespace's own address over it.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from planner.errors import ProvisionError

from . import iproute, shaping
from .addressing import CONTROL_NS_DEVICE, WAN_DEVICE, Addressing
from .scenario import Scenario


def build(plan: Addressing, scenario: Scenario) -> None:
    """Create every namespace, link, address, route and shaper of the testbed."""
    for i, k in plan.nodes():
        _node(plan, i, k)
    if plan.vms:
        _core(plan, scenario)
    else:
        _mesh(plan, scenario)


def _node(plan: Addressing, i: int, k: int) -> None:
    """Region i's VM k (the region itself on a link testbed): namespace, address, control link."""
    ns = plan.netns(i, k)
    iproute.run(["ip", "netns", "add", ns])
    root_dev = plan.control_root_device(i, k)
    _ip_batch(ns, ["link set lo up", f"address add {plan.region_address(i, k)}/32 dev lo"])
    iproute.ip("link", "add", root_dev, "type", "veth", "peer", "name", CONTROL_NS_DEVICE, "netns", ns)
    iproute.ip("addr", "add", f"{plan.control_root_address(i, k)}/31", "dev", root_dev)
    iproute.ip("link", "set", root_dev, "up")
    _ip_batch(ns, [f"address add {plan.control_address(i, k)}/31 dev {CONTROL_NS_DEVICE}",
                   f"link set {CONTROL_NS_DEVICE} up"])
    iproute.ip("route", "add", f"{plan.region_address(i, k)}/32", "via", plan.control_address(i, k),
               "dev", root_dev, "src", plan.control_root_address(i, k))


def _mesh(plan: Addressing, scenario: Scenario) -> None:
    regions = scenario.regions
    for i, j in plan.pairs():
        a, b = plan.link_end(i, j), plan.link_end(j, i)
        iproute.ip("link", "add", a.device, "netns", plan.netns(i), "type", "veth",
                   "peer", "name", b.device, "netns", plan.netns(j))
        for end in (a, b):
            ns = plan.netns(end.region_index)
            _ip_batch(ns, [f"address add {end.address}/31 dev {end.device}", f"link set {end.device} up",
                           f"route add {plan.region_address(end.peer_index)}/32 via {end.peer_address} "
                           f"dev {end.device} src {plan.region_address(end.region_index)}"])
            mbit = scenario.link_mbit(regions[end.region_index], regions[end.peer_index])
            iproute.tc("qdisc", "add", "dev", end.device, "root", *shaping.tbf_args(mbit), netns=ns)


def _core(plan: Addressing, scenario: Scenario) -> None:
    core = plan.core_netns()
    iproute.run(["ip", "netns", "add", core])
    iproute.ip("link", "set", "lo", "up", netns=core)
    iproute.run(["ip", "netns", "exec", core, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    core_lines = []
    for i, k in plan.nodes():
        ns, wan = plan.netns(i, k), plan.wan_end(i, k)
        iproute.ip("link", "add", WAN_DEVICE, "netns", ns, "type", "veth", "peer", "name", wan.core_device,
                   "netns", core)
        own = plan.region_address(i, k)
        _ip_batch(ns, [f"address add {wan.address}/31 dev {WAN_DEVICE}", f"link set {WAN_DEVICE} up"]
                  + [f"route add {plan.region_address(j, m)}/32 via {wan.core_address} dev {WAN_DEVICE} src {own}"
                     for j, m in plan.nodes() if (j, m) != (i, k)])
        core_lines += [f"address add {wan.core_address}/31 dev {wan.core_device}", f"link set {wan.core_device} up",
                       f"route add {own}/32 via {wan.address} dev {wan.core_device}"]
    _ip_batch(core, core_lines)
    regions = scenario.regions
    for i, k in plan.nodes():
        egress, ingress = scenario.vm_cap(regions[i])
        scale = scenario.scale_mbit_per_gbps
        # A region class is the grid's rate alone: the VM's own NIC cap is its parent; the other end's
        # NIC is not this VM's business (two VMs of a may together send more than one can).
        out = [shaping.RegionClass(j, scenario.gbps[(regions[i], regions[j])] * scale, _vm_addresses(plan, j))
               for j in range(plan.regions) if j != i]
        into = [shaping.RegionClass(j, scenario.gbps[(regions[j], regions[i])] * scale, _vm_addresses(plan, j))
                for j in range(plan.regions) if j != i]
        _tc_batch(plan.netns(i, k), shaping.nic_batch(WAN_DEVICE, _scaled(egress, scale), out, match="dst"))
        _tc_batch(core, shaping.nic_batch(plan.wan_end(i, k).core_device, _scaled(ingress, scale), into,
                                          match="src"))


def _scaled(gbps: float, scale: float) -> float | None:
    return gbps * scale if gbps != float("inf") else None


def _vm_addresses(plan: Addressing, i: int) -> tuple[str, ...]:
    return tuple(plan.region_address(i, k) for k in range(plan.vms_per_region))


def _ip_batch(netns: str, lines: list[str]) -> None:
    _batch(["ip", "-n", netns, "-batch", "-"], lines)


def _tc_batch(netns: str, lines: list[str]) -> None:
    _batch(["tc", "-n", netns, "-batch", "-"], lines)


def _batch(argv: list[str], lines: list[str]) -> None:
    """Run many ``ip``/``tc`` commands in one process; the first failing line stops it and raises."""
    proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProvisionError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}",
                             hint="the testbed needs root and iproute2; run `skyplane-provider testbed down` "
                                  "to remove a half-built testbed")


def expected_routes(plan: Addressing) -> list[tuple[str, str, str | None]]:
    """(address, device, namespace or None for the root) for every route the testbed relies on:
    each namespace reaches its own address over ``lo`` and every other testbed address over its
    shaped link, the root reaches each namespace's control and region address over its control veth,
    and the core (``vm`` testbeds) reaches each VM over that VM's veth."""
    routes: list[tuple[str, str, str | None]] = []
    nodes = plan.nodes()
    for i, k in nodes:
        ns = plan.netns(i, k)
        routes.append((plan.region_address(i, k), "lo", ns))
        for j, m in nodes:
            if (j, m) != (i, k):
                device = WAN_DEVICE if plan.vms else plan.link_end(i, j).device
                routes.append((plan.region_address(j, m), device, ns))
        for address in (plan.control_address(i, k), plan.region_address(i, k)):
            routes.append((address, plan.control_root_device(i, k), None))
        if plan.vms:
            routes.append((plan.region_address(i, k), plan.wan_end(i, k).core_device, plan.core_netns()))
    return routes


@dataclass(frozen=True)
class Bytes:
    """What a shaper counted: frame bytes and packets (each TCP segment of a GSO packet counted once)."""

    frames: int = 0
    packets: int = 0

    @property
    def ip_bytes(self) -> int:
        """The IP packets' bytes (without the 14-byte Ethernet header): what crosses a cloud network."""
        return self.frames - 14 * self.packets

    def __add__(self, other: "Bytes") -> "Bytes":
        return Bytes(self.frames + other.frames, self.packets + other.packets)

    def __sub__(self, other: "Bytes") -> "Bytes":
        return Bytes(self.frames - other.frames, self.packets - other.packets)


def edge_bytes(plan: Addressing, scenario: Scenario) -> dict[tuple[str, str], Bytes]:
    """(src region, dst region) -> what has crossed from src to dst since the testbed came up,
    from the sending end's shaper: a link testbed's tbf on ``to<j>``, a vm testbed's per-region
    class on each VM's ``wan`` (read from the class's leaf queue: this iproute2 prints no JSON for
    classes), summed over the region's VMs. Replies (TCP ACKs) count as the replying region's
    egress, as a cloud bills them."""
    regions = scenario.regions
    found: dict[tuple[str, str], Bytes] = {}
    for i, k in plan.nodes():
        ns = plan.netns(i, k)
        if plan.vms:
            by_handle = {q["handle"]: q for q in _qdiscs(ns, WAN_DEVICE)}
            for j in range(plan.regions):
                leaf = by_handle.get(shaping.region_class_id(j).split(":")[1] + ":")
                if j != i and leaf is not None:
                    edge = (regions[i], regions[j])
                    found[edge] = found.get(edge, Bytes()) + _counted(leaf)
        else:
            for j in range(plan.regions):
                if j != i:
                    qdiscs = _qdiscs(ns, plan.link_end(i, j).device)
                    found[(regions[i], regions[j])] = _counted(next(q for q in qdiscs if q.get("kind") == "tbf"))
    return found


def vm_frames(plan: Addressing, scenario: Scenario) -> dict[str, int]:
    """``<region>/<k>`` -> frame bytes VM k of the region has sent since the testbed came up (its NIC's
    root shaper on a vm testbed; a link testbed's one namespace per region is VM 0, all its links)."""
    sent = {}
    for i, k in plan.nodes():
        devices = [WAN_DEVICE] if plan.vms else [plan.link_end(i, j).device for j in range(plan.regions) if j != i]
        sent[f"{scenario.regions[i]}/{k}"] = sum(
            int(q.get("bytes", 0)) for d in devices for q in _qdiscs(plan.netns(i, k), d) if q.get("root"))
    return sent


def _qdiscs(netns: str, device: str) -> list[dict]:
    out = iproute.tc("-s", "-j", "qdisc", "show", "dev", device, netns=netns).stdout
    return json.loads(out) if out.strip() else []


def _counted(qdisc: dict) -> Bytes:
    return Bytes(int(qdisc.get("bytes", 0)), int(qdisc.get("packets", 0)))
