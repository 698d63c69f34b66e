"""Names and addresses of one testbed: a pure function of (testbed id, slot, regions, VMs per region).

Every address lives in 198.18.0.0/15, the benchmarking range (RFC 2544), so no testbed address can
be a real host. ``S`` is the testbed's *slot* (1..254), unique on the host among live testbeds, so
that two testbeds can run side by side; ``i`` is the region's index in the scenario (0-based).

A testbed has one of two shapes (``Scenario.capacity``):

- ``link``: one namespace per region, a full mesh of veths between them (the tables below);
- ``vm``: one namespace per gateway VM, ``n`` per region, each with one veth (its NIC, ``wan``) to a
  ``core`` namespace that routes between them. VM ``k`` of region ``i`` is *node* ``i + k * regions``;
  VM 0 of region ``i`` is node ``i`` and keeps the link shape's names and addresses, so a region's
  address is always its first VM's. Node ``m`` has the region address ``198.18.S.(m+1)``, the control
  link ``198.19.S.(2m)/31`` and its NIC ``198.18.0.(2m)/31`` (core end ``198.18.0.(2m+1)``, device ``n<m>``).

========================  ======================  ===========================================
what                      address                 where
========================  ======================  ===========================================
region address            198.18.S.(i+1)/32       on ``lo`` of region i's namespace; gateways
                                                  and stores bind here
data link i<->j (k-th     198.18.0.(2k)/31 (i),   veth ``to<j>`` in ns i / ``to<i>`` in ns j;
pair, i<j, lexicographic) 198.18.0.(2k+1)/31 (j)  exists only inside the two namespaces
control link of region i  198.19.S.(2i)/31 (root) veth ``skyt<id>c<i>`` in the root namespace,
                          198.19.S.(2i+1)/31 (ns) ``ctl`` in region i's namespace (unshaped)
========================  ======================  ===========================================

Routes: namespace i has a host route to every other region address ``j`` over its direct veth
``to<j>`` (source = its own region address), and no default route, so nothing inside a
namespace can reach the outside world. The root namespace has a host route to each region address
over that region's control veth, so the orchestrator reaches anything bound to a region address
(gateway control APIs, stores) without crossing a shaped link.

Link addresses repeat across testbeds: they never appear in the root namespace. The slot keeps the
addresses that do appear there (control links, routes to region addresses) apart.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

#: Every testbed name (namespace, root veth) starts with this; ``down`` relies on it.
PREFIX = "skyt"
#: 16 regions -> 120 data links, which fill the 128 /31s of 198.18.0.0/24.
MAX_REGIONS = 16
#: VM namespaces of a ``vm`` testbed: one /31 of 198.18.0.0/24 and of 198.19.S.0/24 each.
MAX_NODES = 64
MAX_SLOT = 254
TESTBED_RANGE = ipaddress.ip_network("198.18.0.0/15")
#: Testbed ids are short so that ``skyt<id>c<i>`` fits Linux's 15-character interface names.
ID_PATTERN = re.compile(r"^[a-z0-9]{1,6}$")
#: A testbed namespace (a region's, a VM's or the core); group 1 is the testbed id.
NAMESPACE_PATTERN = re.compile(rf"^{PREFIX}-([a-z0-9]{{1,6}})-(r\d+(v\d+)?|core)$")
#: The namespace end of every control link.
CONTROL_NS_DEVICE = "ctl"
#: A VM's one data device (its NIC) in a ``vm`` testbed.
WAN_DEVICE = "wan"


@dataclass(frozen=True)
class LinkEnd:
    """One end of a data link: the veth in ``region``'s namespace towards ``peer``."""

    region_index: int
    peer_index: int
    device: str
    address: str  # without prefix length
    peer_address: str


@dataclass(frozen=True)
class WanEnd:
    """A VM's NIC in a ``vm`` testbed: ``wan`` in the VM's namespace, ``core_device`` in the core's."""

    node: int
    address: str  # the VM end, without prefix length
    core_device: str
    core_address: str


@dataclass(frozen=True)
class Addressing:
    """The address plan of one testbed; ``vms`` > 0 makes it a ``vm`` testbed with that many VMs per region."""

    testbed_id: str
    slot: int
    regions: int
    vms: int = 0

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.testbed_id):
            raise ValueError(f"testbed id {self.testbed_id!r} must be 1-6 lowercase letters or digits")
        if not 1 <= self.slot <= MAX_SLOT:
            raise ValueError(f"slot {self.slot} outside 1..{MAX_SLOT}")
        if not 1 <= self.regions <= MAX_REGIONS:
            raise ValueError(f"{self.regions} regions: a testbed holds 1..{MAX_REGIONS}")
        if self.vms < 0 or self.regions * self.vms > MAX_NODES:
            raise ValueError(f"{self.regions} regions x {self.vms} VMs: a vm testbed holds at most {MAX_NODES} VMs")

    @property
    def vms_per_region(self) -> int:
        """Namespaces per region: ``vms`` for a ``vm`` testbed, 1 for a ``link`` one."""
        return self.vms or 1

    def node(self, i: int, vm: int = 0) -> int:
        if not 0 <= vm < self.vms_per_region:
            raise ValueError(f"VM {vm} outside 0..{self.vms_per_region - 1}")
        return i + vm * self.regions

    def nodes(self) -> list[tuple[int, int]]:
        """Every (region index, VM index), VM 0 of every region first."""
        return [(i, k) for k in range(self.vms_per_region) for i in range(self.regions)]

    def netns(self, i: int, vm: int = 0) -> str:
        self.node(i, vm)
        return f"{namespace_prefix(self.testbed_id)}r{i}" + (f"v{vm}" if vm else "")

    def core_netns(self) -> str:
        """The namespace that routes between the VMs of a ``vm`` testbed."""
        return f"{namespace_prefix(self.testbed_id)}core"

    def namespaces(self) -> list[str]:
        """Every namespace of the testbed, the core (``vm`` testbeds) last."""
        return [self.netns(i, k) for i, k in self.nodes()] + ([self.core_netns()] if self.vms else [])

    def region_address(self, i: int, vm: int = 0) -> str:
        return f"198.18.{self.slot}.{self.node(i, vm) + 1}"

    def control_address(self, i: int, vm: int = 0) -> str:
        """The namespace end of the control link of region i (its VM ``vm``)."""
        return f"198.19.{self.slot}.{2 * self.node(i, vm) + 1}"

    def control_root_address(self, i: int, vm: int = 0) -> str:
        """The root-namespace end of that control link."""
        return f"198.19.{self.slot}.{2 * self.node(i, vm)}"

    def control_root_device(self, i: int, vm: int = 0) -> str:
        return f"{PREFIX}{self.testbed_id}c{self.node(i, vm)}"

    def wan_end(self, i: int, vm: int = 0) -> WanEnd:
        m = self.node(i, vm)
        return WanEnd(node=m, address=f"198.18.0.{2 * m}", core_device=f"n{m}", core_address=f"198.18.0.{2 * m + 1}")

    def pairs(self) -> list[tuple[int, int]]:
        """Unordered region pairs (i < j), in the order that numbers the data links."""
        return [(i, j) for i in range(self.regions) for j in range(i + 1, self.regions)]

    def link_end(self, i: int, j: int) -> LinkEnd:
        """Region i's end of the data link between regions i and j."""
        a, b = min(i, j), max(i, j)
        k = self.pairs().index((a, b))
        low, high = f"198.18.0.{2 * k}", f"198.18.0.{2 * k + 1}"
        mine, theirs = (low, high) if i == a else (high, low)
        return LinkEnd(region_index=i, peer_index=j, device=f"to{j}", address=mine, peer_address=theirs)


def namespace_prefix(testbed_id: str) -> str:
    """Every namespace of testbed ``testbed_id`` starts with this."""
    return f"{PREFIX}-{testbed_id}-"


def in_testbed_range(address: str) -> bool:
    return ipaddress.ip_address(address) in TESTBED_RANGE


def slot_of(address: str) -> int | None:
    """The slot an address in the testbed range belongs to (its third octet); None for link
    addresses (198.18.0.x) and for addresses outside the range."""
    if not in_testbed_range(address):
        return None
    third = int(address.split(".")[2])
    return third or None
