"""An emulated wide-area network on one host: namespaces for regions (or their gateway VMs), shaped veths.

``Testbed(scenario).up()`` builds it (names and addresses: see ``addressing``; links and shapers:
``network``), checks every route (see ``safety``) and refuses to run otherwise; ``down()`` removes
every namespace, veth, process and store directory it made, also from a fresh process after a crash
(``Testbed.attach(id)`` or ``teardown(id)``), guided by the state file and by the testbed's name prefix.
The control links from the root namespace are not shaped.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from planner.errors import BadOptionError, ProvisionError

from . import iproute, network, processes, safety
from .addressing import ID_PATTERN, MAX_SLOT, NAMESPACE_PATTERN, PREFIX, Addressing, namespace_prefix, slot_of
from .network import Bytes
from .scenario import Scenario
from .state import TestbedState, host_lock, recorded_ids, state_file, state_root

log = logging.getLogger(__name__)


class Testbed:
    """One emulated network. Regions are the scenario's region tags."""

    def __init__(self, scenario: Scenario, *, testbed_id: str | None = None, root: Path | None = None) -> None:
        scenario.validate()
        self.scenario = scenario
        self.testbed_id = testbed_id or secrets.token_hex(3)
        self.root = root or state_root()
        self._state: TestbedState | None = None
        self._children: dict[int, subprocess.Popen] = {}
        if not ID_PATTERN.match(self.testbed_id):
            raise BadOptionError(f"testbed id {self.testbed_id!r} is not valid",
                                 hint="use 1-6 lowercase letters or digits (it becomes part of interface names)")

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def attach(cls, testbed_id: str, root: Path | None = None) -> "Testbed":
        """The testbed recorded under ``testbed_id`` (e.g. left by a crashed process)."""
        root = root or state_root()
        path = state_file(root, testbed_id)
        if not path.is_file():
            raise BadOptionError(f"no testbed {testbed_id!r} under {root}",
                                 hint=f"known: {', '.join(recorded_ids(root)) or 'none'}")
        state = TestbedState.load(path)
        testbed = cls(Scenario.from_dict(state.scenario), testbed_id=testbed_id, root=root)
        testbed._state = state
        return testbed

    def up(self) -> "Testbed":
        """Build the namespaces, links, shaping and routes, verify every route, create the store
        directories. On any failure, tear down what was built and raise ``ProvisionError``."""
        if self._state is not None:
            raise BadOptionError(f"testbed {self.testbed_id} is already up")
        taken = [ns for ns in iproute.namespaces() if ns.startswith(namespace_prefix(self.testbed_id))]
        if taken:
            raise BadOptionError(f"testbed id {self.testbed_id!r} is in use ({', '.join(taken)})",
                                 hint="pick another id, or take that testbed down first")
        try:
            with host_lock():
                plan = self._addressing(self._free_slot())
                self._state = TestbedState(
                    testbed_id=self.testbed_id, slot=plan.slot, scenario=self.scenario.to_dict(),
                    namespaces=plan.namespaces(),
                    root_devices=[plan.control_root_device(i, k) for i, k in plan.nodes()],
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                self._save()  # before the first namespace: a crash from here on is recoverable
                self._build(plan)
            self.verify()
            for region in self.scenario.regions:
                self.store_dir(region).mkdir(parents=True, exist_ok=True)
        except BaseException:
            try:
                self.down()
            except Exception:
                log.exception("testbed %s: teardown after a failed up() failed too", self.testbed_id)
            raise
        log.info("testbed %s up: slot %d, %d regions, %s", self.testbed_id, plan.slot, plan.regions,
                 f"{plan.vms} VM(s) per region" if plan.vms else "shared links")
        return self

    def down(self) -> None:
        """Stop every process, delete every namespace and veth, the stores and the state file.
        Idempotent; raises ``ProvisionError`` (keeping the state file) if something survives."""
        if self._state is not None:
            processes.stop([p.pid for p in self._state.processes if p.alive()])
        for child in self._children.values():
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children.clear()
        recorded = self._state.namespaces if self._state else []
        leftovers = remove_network(self.testbed_id, recorded)
        if leftovers:
            raise ProvisionError(f"testbed {self.testbed_id}: could not remove {', '.join(leftovers)}",
                                 hint="check `ip netns pids NAME` for processes that ignore SIGKILL, then retry")
        shutil.rmtree(self.root / self.testbed_id, ignore_errors=True)
        state_file(self.root, self.testbed_id).unlink(missing_ok=True)
        self._state = None

    def __enter__(self) -> "Testbed":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def _free_slot(self) -> int:
        used = {slot_of(a) for a in iproute.root_addresses()}
        for other in recorded_ids(self.root):
            try:
                used.add(TestbedState.load(state_file(self.root, other)).slot)
            except (OSError, ValueError, KeyError):
                log.warning("unreadable testbed state %s", state_file(self.root, other))
        for slot in range(1, MAX_SLOT + 1):
            if slot not in used:
                return slot
        raise ProvisionError("every testbed slot on this host is in use",
                             hint="take old testbeds down: `skyplane-provider testbed down`")

    def _build(self, plan: Addressing) -> None:
        network.build(plan, self.scenario)

    # ---- safety ----------------------------------------------------------------------------

    def verify(self) -> None:
        """Raise ``ProvisionError`` unless every testbed address routes over the testbed's own
        devices (``network.expected_routes``: between namespaces over the shaped links, from the root
        namespace over each namespace's control veth) and no namespace has a default route."""
        plan = self.addressing
        problems = [safety.isolation_problem(ns) for ns in plan.namespaces()]
        problems += [safety.route_problem(address, device, ns) for address, device, ns in network.expected_routes(plan)]
        problems = [p for p in problems if p]
        if problems:
            raise ProvisionError(f"testbed {self.testbed_id} routes are unsafe: " + "; ".join(problems),
                                 hint="nothing was sent; run `skyplane-provider testbed down` and try again")

    def assert_routed(self, address: str) -> None:
        """Before the root namespace talks to ``address``: it must be one of this testbed's region
        or control addresses, and route over that region's control veth."""
        plan = self.addressing
        for i, k in plan.nodes():
            if address in (plan.region_address(i, k), plan.control_address(i, k)):
                safety.check_route(address, plan.control_root_device(i, k))
                return
        raise BadOptionError(f"{address} is not an address of testbed {self.testbed_id}",
                             hint="use region_address() or control_address()")

    # ---- addresses and placement -----------------------------------------------------------

    @property
    def addressing(self) -> Addressing:
        if self._state is None:
            raise BadOptionError(f"testbed {self.testbed_id} is not up", hint="call up() first")
        return self._addressing(self._state.slot)

    def _addressing(self, slot: int) -> Addressing:
        vms = self.scenario.vms_per_region if self.scenario.capacity == "vm" else 0
        return Addressing(self.testbed_id, slot, len(self.scenario.regions), vms)

    @property
    def vms_per_region(self) -> int:
        """Namespaces per region: the scenario's VMs (``vm``), or the region's one (``link``)."""
        return self.scenario.vms_per_region if self.scenario.capacity == "vm" else 1

    def _index(self, region: str) -> int:
        try:
            return self.scenario.regions.index(region)
        except ValueError:
            raise BadOptionError(f"region {region!r} is not in scenario {self.scenario.name!r}",
                                 hint=f"use one of {', '.join(self.scenario.regions)}") from None

    def netns(self, region: str, vm: int = 0) -> str:
        """The namespace of the region (its VM ``vm`` on a ``vm`` testbed)."""
        return self.addressing.netns(self._index(region), vm)

    def region_address(self, region: str, vm: int = 0) -> str:
        """Where the region's gateways and stores bind (VM ``vm``'s on a ``vm`` testbed); reachable
        from every namespace (over the shaped links) and from the root namespace (over the control link)."""
        return self.addressing.region_address(self._index(region), vm)

    def control_address(self, region: str, vm: int = 0) -> str:
        """The namespace end of the region's (VM's) unshaped control link from the root namespace."""
        return self.addressing.control_address(self._index(region), vm)

    def store_dir(self, region: str) -> Path:
        """The region's store directory (the filesystem is shared by every namespace)."""
        return self.root / self.testbed_id / "stores" / region.replace(":", "_")

    def gateway_placement(self) -> dict[str, dict[str, str]]:
        """Where a provisioner starts each gateway: ``netns`` to run it in, ``bind_host`` to bind to
        (and advertise to peers), ``control_host`` for the orchestrator. Keyed by region (its first
        VM) and, on a ``vm`` testbed, by gateway id ``<region>/<k>`` (VM k): gateway k of a region
        runs in its own VM. A daemon bound to ``bind_host`` is reachable from the root namespace at
        ``bind_host`` too (routed over the control link); ``control_host`` reaches what listens on the
        control link (e.g. a daemon bound to 0.0.0.0 inside the namespace)."""
        placement = {}
        for region in self.scenario.regions:
            for k in range(self.vms_per_region):
                place = {"netns": self.netns(region, k), "bind_host": self.region_address(region, k),
                         "control_host": self.control_address(region, k)}
                if k == 0:
                    placement[region] = place
                if self.scenario.capacity == "vm":
                    placement[f"{region}/{k}"] = place
        return placement

    # ---- processes -------------------------------------------------------------------------

    def popen(self, region: str, argv: list[str], *, vm: int = 0, **kwargs) -> subprocess.Popen:
        """Start ``argv`` inside the region's namespace (its VM ``vm``'s). ``ip netns exec`` execs, so
        the Popen's PID is the program's own; it is recorded and stopped by ``down()`` at the latest."""
        ns = self.netns(region, vm)
        child = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)
        self._children[child.pid] = child
        self._state.processes.append(processes.record(child.pid, region, list(argv)))
        self._save()
        return child

    def stop(self, child: subprocess.Popen) -> None:
        """Stop a process started with ``popen`` (SIGTERM, then SIGKILL) and forget it."""
        processes.stop([child.pid])
        child.wait()
        self._children.pop(child.pid, None)
        if self._state is not None:
            self._state.processes = [p for p in self._state.processes if p.pid != child.pid]
            self._save()

    def run(self, region: str, argv: list[str], *, vm: int = 0, **kwargs) -> subprocess.CompletedProcess:
        """Run a short command to completion inside the region's namespace (its VM ``vm``'s)."""
        return subprocess.run(["ip", "netns", "exec", self.netns(region, vm), *argv], **kwargs)

    def _save(self) -> None:
        self._state.save(state_file(self.root, self.testbed_id))

    # ---- what the network offers -----------------------------------------------------------

    @property
    def plan_scale(self) -> float:
        """Testbed Gbps per Gbps of ``grid_csv``: a plan made on that grid predicts ``plan_scale``
        times its throughput here (1 for a ``link`` testbed, whose grid is in testbed Gbps)."""
        return self.scenario.scale_mbit_per_gbps / 1000 if self.scenario.capacity == "vm" else 1.0

    def grid_csv(self, path: str | Path) -> Path:
        """Write the grid to plan on for this testbed, with the scenario's egress prices (0 where it
        has none), as ``src,dst,gbps,cost_per_gb,capacity``.

        ``link``: the emulated (scaled) rates in Gbps, ``capacity`` = ``link`` (each is one veth
        direction, shared by every gateway and connection). ``vm``: the grid's own rates, ``capacity``
        = ``vm``, because the planner's per-VM caps are in grid Gbps; the testbed is that grid scaled
        by ``plan_scale``."""
        path = Path(path)
        vm = self.scenario.capacity == "vm"
        lines = ["src,dst,gbps,cost_per_gb,capacity"]
        for a in self.scenario.regions:
            for b in self.scenario.regions:
                if a != b:
                    cost = self.scenario.cost_per_gb.get((a, b), 0.0)
                    gbps = self.scenario.gbps[(a, b)] if vm else self.scenario.scaled_gbps(a, b)
                    lines.append(f"{a},{b},{gbps:.6f},{cost:g},{self.scenario.capacity}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def maxflow(self, src: str, dst: str) -> float:
        """Max-flow from src to dst over the capped links (and VMs), in testbed Gbps of payload: the
        physical limit of any plan."""
        return self.scenario.maxflow_gbps(src, dst) * self.scenario.scale_mbit_per_gbps / 1000

    def edge_bytes(self) -> dict[tuple[str, str], Bytes]:
        """(src region, dst region) -> what the shapers counted from src to dst since ``up()``
        (``network.edge_bytes``); take the difference of two readings for one transfer."""
        return network.edge_bytes(self.addressing, self.scenario)

    def vm_frames(self) -> dict[str, int]:
        """``<region>/<k>`` -> frame bytes VM k of the region has sent since ``up()`` (``network.vm_frames``):
        shows whether every gateway of a region carried its share."""
        return network.vm_frames(self.addressing, self.scenario)

    def status(self) -> dict:
        """What exists right now, from the kernel's point of view."""
        existing = set(iproute.namespaces())
        state = self._state
        regions = []
        for i, region in enumerate(self.scenario.regions):
            ns = state.namespaces[i] if state else None
            regions.append({
                "region": region, "netns": ns, "exists": ns in existing,
                "region_address": self.region_address(region) if state else None,
                "control_address": self.control_address(region) if state else None,
                "store": str(self.store_dir(region)),
                "processes": [p.pid for p in (state.processes if state else []) if p.region == region and p.alive()],
            })
            if state and self.vms_per_region > 1:
                regions[-1]["vms"] = [{"netns": self.netns(region, k), "region_address": self.region_address(region, k)}
                                      for k in range(self.vms_per_region)]
        up = [ns in existing for ns in (state.namespaces if state else [r["netns"] for r in regions])]
        return {"testbed_id": self.testbed_id, "scenario": self.scenario.name, "slot": state.slot if state else None,
                "capacity": self.scenario.capacity, "vms_per_region": self.vms_per_region,
                "state": "up" if all(up) else "partial" if any(up) else "down",
                "created": state.created if state else None, "regions": regions,
                "links_mbit": [{"src": a, "dst": b, "mbit": round(self.scenario.link_mbit(a, b), 3)}
                               for a in self.scenario.regions for b in self.scenario.regions if a != b]}


def remove_network(testbed_id: str, namespaces: list[str] = ()) -> list[str]:
    """Kill every process in the testbed's namespaces, delete them (their veths go with them) and
    any root device of the testbed. Namespaces are found by name prefix as well as from the given
    list. Returns what could not be removed."""
    ours_dev = re.compile(rf"^{PREFIX}{testbed_id}c\d+$")
    found = [ns for ns in iproute.namespaces() if _testbed_of(ns) == testbed_id or ns in namespaces]
    for ns in found:
        processes.stop(iproute.netns_pids(ns))
        iproute.run(["ip", "netns", "del", ns], check=False)
    for dev in iproute.links():
        if ours_dev.match(dev):
            iproute.ip("link", "del", dev, check=False)
    left = [ns for ns in iproute.namespaces() if ns in found]
    return left + [dev for dev in iproute.links() if ours_dev.match(dev)]


def unrecorded_testbeds(root: Path | None = None) -> dict[str, list[str]]:
    """Testbeds whose namespaces exist on this host but which have no state file under ``root``
    (left by a process that used another SKYPLANE_HOME, e.g. a killed test run): id -> namespaces.
    ``teardown(id)`` removes them; nothing here guesses whether their owner still runs."""
    recorded = set(recorded_ids(root or state_root()))
    found: dict[str, list[str]] = {}
    for ns in iproute.namespaces():
        testbed_id = _testbed_of(ns)
        if testbed_id and testbed_id not in recorded:
            found.setdefault(testbed_id, []).append(ns)
    return found


def _testbed_of(netns: str) -> str | None:
    m = NAMESPACE_PATTERN.match(netns)
    return m.group(1) if m else None


def teardown(testbed_id: str, root: Path | None = None) -> None:
    """Take a testbed down from any process: through its state file when there is one, else by
    its name prefix alone."""
    root = root or state_root()
    if state_file(root, testbed_id).is_file():
        Testbed.attach(testbed_id, root).down()
        return
    leftovers = remove_network(testbed_id)
    if leftovers:
        raise ProvisionError(f"testbed {testbed_id}: could not remove {', '.join(leftovers)}")
    shutil.rmtree(root / testbed_id, ignore_errors=True)
