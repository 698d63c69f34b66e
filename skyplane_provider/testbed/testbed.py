"""An emulated wide-area network on one host: one network namespace per region, a shaped full mesh.

``Testbed(scenario).up()`` builds it (names and addresses: see ``addressing``), checks every route
(see ``safety``) and refuses to run otherwise; ``down()`` removes every namespace, veth, process
and store directory it made, also from a fresh process after a crash (``Testbed.attach(id)`` or
``teardown(id)``), guided by the state file and by the testbed's name prefix.

Each direction of a data link is capped on the sending end's egress with
``tbf rate R burst B limit L``; the control links from the root namespace are not shaped.
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

from . import iproute, processes, safety
from .addressing import (CONTROL_NS_DEVICE, ID_PATTERN, MAX_SLOT, NAMESPACE_PATTERN, PREFIX, Addressing,
                         namespace_prefix, slot_of)
from .maxflow import max_flow
from .scenario import Scenario
from .state import TestbedState, host_lock, recorded_ids, state_file, state_root

log = logging.getLogger(__name__)

#: tbf bucket: 2 ms worth of the rate, at least 32 KiB (tbf undershoots with a tiny bucket).
TBF_MIN_BURST = 32 * 1024
TBF_BURST_SECONDS = 0.002
#: tbf queue: 50 ms worth of the rate, at least 256 KiB. With a 50 ms queue alone, a 10.9 Mbit/s
#: link dropped a third of its packets and one TCP stream got 83% of the cap; with 256 KiB, 97%.
TBF_MIN_LIMIT = 256 * 1024
TBF_QUEUE_SECONDS = 0.05


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
                plan = Addressing(self.testbed_id, self._free_slot(), len(self.scenario.regions))
                self._state = TestbedState(
                    testbed_id=self.testbed_id, slot=plan.slot, scenario=self.scenario.to_dict(),
                    namespaces=[plan.netns(i) for i in range(plan.regions)],
                    root_devices=[plan.control_root_device(i) for i in range(plan.regions)],
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
        log.info("testbed %s up: slot %d, %d regions", self.testbed_id, plan.slot, plan.regions)
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
        regions = self.scenario.regions
        for i in range(len(regions)):
            ns = plan.netns(i)
            iproute.run(["ip", "netns", "add", ns])
            iproute.ip("link", "set", "lo", "up", netns=ns)
            iproute.ip("addr", "add", f"{plan.region_address(i)}/32", "dev", "lo", netns=ns)
            root_dev = plan.control_root_device(i)
            iproute.ip("link", "add", root_dev, "type", "veth", "peer", "name", CONTROL_NS_DEVICE, "netns", ns)
            iproute.ip("addr", "add", f"{plan.control_root_address(i)}/31", "dev", root_dev)
            iproute.ip("link", "set", root_dev, "up")
            iproute.ip("addr", "add", f"{plan.control_address(i)}/31", "dev", CONTROL_NS_DEVICE, netns=ns)
            iproute.ip("link", "set", CONTROL_NS_DEVICE, "up", netns=ns)
            iproute.ip("route", "add", f"{plan.region_address(i)}/32", "via", plan.control_address(i),
                       "dev", root_dev, "src", plan.control_root_address(i))
        for i, j in plan.pairs():
            a, b = plan.link_end(i, j), plan.link_end(j, i)
            iproute.ip("link", "add", a.device, "netns", plan.netns(i), "type", "veth",
                       "peer", "name", b.device, "netns", plan.netns(j))
            for end in (a, b):
                ns = plan.netns(end.region_index)
                iproute.ip("addr", "add", f"{end.address}/31", "dev", end.device, netns=ns)
                iproute.ip("link", "set", end.device, "up", netns=ns)
                mbit = self.scenario.link_mbit(regions[end.region_index], regions[end.peer_index])
                iproute.tc("qdisc", "add", "dev", end.device, "root", *tbf_args(mbit), netns=ns)
                iproute.ip("route", "add", f"{plan.region_address(end.peer_index)}/32", "via", end.peer_address,
                           "dev", end.device, "src", plan.region_address(end.region_index), netns=ns)

    # ---- safety ----------------------------------------------------------------------------

    def verify(self) -> None:
        """Raise ``ProvisionError`` unless every testbed address routes over the testbed's own
        devices: region addresses between namespaces over the direct veth, control and region
        addresses from the root namespace over the region's control veth, and no namespace has a
        default route."""
        plan = self.addressing
        problems = []
        for i in range(plan.regions):
            ns = plan.netns(i)
            problems.append(safety.isolation_problem(ns))
            problems.append(safety.route_problem(plan.region_address(i), "lo", ns))
            for j in range(plan.regions):
                if j != i:
                    problems.append(safety.route_problem(plan.region_address(j), plan.link_end(i, j).device, ns))
            for address in (plan.control_address(i), plan.region_address(i)):
                problems.append(safety.route_problem(address, plan.control_root_device(i)))
        problems = [p for p in problems if p]
        if problems:
            raise ProvisionError(f"testbed {self.testbed_id} routes are unsafe: " + "; ".join(problems),
                                 hint="nothing was sent; run `skyplane-provider testbed down` and try again")

    def assert_routed(self, address: str) -> None:
        """Before the root namespace talks to ``address``: it must be one of this testbed's region
        or control addresses, and route over that region's control veth."""
        plan = self.addressing
        for i in range(plan.regions):
            if address in (plan.region_address(i), plan.control_address(i)):
                safety.check_route(address, plan.control_root_device(i))
                return
        raise BadOptionError(f"{address} is not an address of testbed {self.testbed_id}",
                             hint="use region_address() or control_address()")

    # ---- addresses and placement -----------------------------------------------------------

    @property
    def addressing(self) -> Addressing:
        if self._state is None:
            raise BadOptionError(f"testbed {self.testbed_id} is not up", hint="call up() first")
        return Addressing(self.testbed_id, self._state.slot, len(self.scenario.regions))

    def _index(self, region: str) -> int:
        try:
            return self.scenario.regions.index(region)
        except ValueError:
            raise BadOptionError(f"region {region!r} is not in scenario {self.scenario.name!r}",
                                 hint=f"use one of {', '.join(self.scenario.regions)}") from None

    def netns(self, region: str) -> str:
        return self.addressing.netns(self._index(region))

    def region_address(self, region: str) -> str:
        """Where the region's gateways and stores bind; reachable from every namespace (over the
        shaped direct link) and from the root namespace (over the control link)."""
        return self.addressing.region_address(self._index(region))

    def control_address(self, region: str) -> str:
        """The namespace end of the region's unshaped control link from the root namespace."""
        return self.addressing.control_address(self._index(region))

    def store_dir(self, region: str) -> Path:
        """The region's store directory (the filesystem is shared by every namespace)."""
        return self.root / self.testbed_id / "stores" / region.replace(":", "_")

    def gateway_placement(self) -> dict[str, dict[str, str]]:
        """Per region, where a provisioner starts its gateways: ``netns`` to run them in,
        ``bind_host`` to bind to (and advertise to peers), ``control_host`` for the orchestrator.
        A daemon bound to ``bind_host`` is reachable from the root namespace at ``bind_host`` too
        (routed over the control link); ``control_host`` reaches what listens on the control link
        (e.g. a daemon bound to 0.0.0.0 inside the namespace)."""
        return {r: {"netns": self.netns(r), "bind_host": self.region_address(r),
                    "control_host": self.control_address(r)} for r in self.scenario.regions}

    # ---- processes -------------------------------------------------------------------------

    def popen(self, region: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` inside the region's namespace. ``ip netns exec`` execs, so the Popen's
        PID is the program's own; it is recorded and stopped by ``down()`` at the latest."""
        ns = self.netns(region)
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

    def run(self, region: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a short command to completion inside the region's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.netns(region), *argv], **kwargs)

    def _save(self) -> None:
        self._state.save(state_file(self.root, self.testbed_id))

    # ---- what the network offers -----------------------------------------------------------

    def grid_csv(self, path: str | Path) -> Path:
        """Write the testbed's own grid: the emulated (scaled) rates in Gbps, with the scenario's
        egress prices (0 where it has none), as ``src,dst,gbps,cost_per_gb,capacity``. Each rate is
        the cap of one veth direction, shared by every gateway and connection: ``capacity`` = ``link``."""
        path = Path(path)
        lines = ["src,dst,gbps,cost_per_gb,capacity"]
        for a in self.scenario.regions:
            for b in self.scenario.regions:
                if a != b:
                    cost = self.scenario.cost_per_gb.get((a, b), 0.0)
                    lines.append(f"{a},{b},{self.scenario.scaled_gbps(a, b):.6f},{cost:g},link")
        path.write_text("\n".join(lines) + "\n")
        return path

    def maxflow(self, src: str, dst: str) -> float:
        """Max-flow from src to dst over the capped links, in Gbps: the physical limit."""
        self._index(src)
        self._index(dst)
        regions = self.scenario.regions
        caps = {(a, b): self.scenario.scaled_gbps(a, b) for a in regions for b in regions if a != b}
        return max_flow(caps, src, dst)

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
        up = [r["exists"] for r in regions]
        return {"testbed_id": self.testbed_id, "scenario": self.scenario.name, "slot": state.slot if state else None,
                "state": "up" if all(up) else "partial" if any(up) else "down",
                "created": state.created if state else None, "regions": regions,
                "links_mbit": [{"src": a, "dst": b, "mbit": round(self.scenario.link_mbit(a, b), 3)}
                               for a in self.scenario.regions for b in self.scenario.regions if a != b]}


def tbf_args(mbit: float) -> list[str]:
    """``tc`` arguments of a tbf qdisc capping at ``mbit`` Mbit/s."""
    bytes_per_second = mbit * 1e6 / 8
    burst = max(TBF_MIN_BURST, int(bytes_per_second * TBF_BURST_SECONDS))
    limit = max(TBF_MIN_LIMIT, int(bytes_per_second * TBF_QUEUE_SECONDS))
    return ["tbf", "rate", f"{round(mbit * 1000)}kbit", "burst", str(burst), "limit", str(limit)]


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
