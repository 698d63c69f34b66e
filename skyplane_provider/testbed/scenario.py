"""A testbed scenario: regions, the grid's throughput between them, and the scale that shrinks it.

A scenario is data. It carries its own rates (Gbps as measured between the cloud regions, taken
from the throughput grid) so that the testbed does not depend on the planner's grid, and a scale
factor (Mbit/s of emulated link per Gbps of grid) that makes the whole mesh fit on two cores.
Scenarios shipped with the package live in ``scenarios.json`` beside this module, written by
``scripts/find_overlay_scenarios.py`` together with the source of every figure.

Two readings of a rate (``capacity``), as the planner's grid has them (``planner/grid.py``):

- ``link`` (the default): ``gbps`` is the total capacity between two regions, one shaped veth
  shared by every gateway and connection;
- ``vm``: ``gbps`` is what one gateway VM sends to (and receives from) the other region, as the
  grid was measured (one VM pair, 64 connections). Every region has ``vms_per_region`` VMs, each
  with its provider's NIC caps (``vm_caps``, from ``planner/providers.py`` when the scenario was made):
  a VM sends at most ``egress_gbps`` in all and at most ``gbps(a, b)`` towards region b, and receives
  at most ``ingress_gbps`` in all and at most ``gbps(a, b)`` from region a. Between two regions with
  ``n`` and ``m`` VMs that is ``min(n, m) * gbps``: the planner's model, where a VM's 64 connections
  carry ``gbps``.

JSON form of one scenario::

    {"name": "...", "description": "...", "regions": ["aws:us-east-1", ...],
     "scale_mbit_per_gbps": 20,
     "links": [{"src": "aws:us-east-1", "dst": "gcp:us-west4-a", "gbps": 0.55, "cost_per_gb": 0.09}, ...],
     "found": {...},
     "capacity": "vm", "vms_per_region": 2,                                  # vm scenarios only
     "vm_caps": {"aws": {"egress_gbps": 5.0, "ingress_gbps": 10.0}, ...}}

``links`` lists every ordered pair of distinct regions; ``cost_per_gb`` is optional (0 when absent);
``found`` is free-form provenance (what the finder measured on the grid).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from planner.errors import BadOptionError

from .addressing import MAX_NODES, MAX_REGIONS
from .maxflow import max_flow

#: Above this, the emulated mesh would not fit two shared cores (the caps hold within 4-12% up to here).
MAX_LINK_MBIT = 400.0
#: Below this, tbf's accuracy and the test time both suffer.
MIN_LINK_MBIT = 1.0

SHIPPED_FILE = "scenarios.json"
CAPACITY_KINDS = ("link", "vm")
#: What a ``vm`` scenario's whole network may carry at once, testbed Mbit/s: the gateways that move
#: it share two cores (the link scenarios' fastest mesh, 636 Mbit/s, made the gateways' CPU the limit).
VM_BUDGET_MBIT = 240.0
MAX_SCALE = 20.0


@dataclass(frozen=True)
class Scenario:
    """Regions and the directed grid rates between them; ``gbps[(a, b)]`` is a -> b."""

    name: str
    regions: tuple[str, ...]
    gbps: dict[tuple[str, str], float]
    scale_mbit_per_gbps: float = 20.0
    cost_per_gb: dict[tuple[str, str], float] = field(default_factory=dict)
    description: str = ""
    found: dict = field(default_factory=dict)
    capacity: str = "link"
    vms_per_region: int = 1
    vm_caps: dict[str, tuple[float, float]] = field(default_factory=dict)  # provider -> (egress, ingress) Gbps

    def validate(self) -> None:
        """Raise ``BadOptionError`` unless every ordered pair has a rate that scales into
        [MIN_LINK_MBIT, MAX_LINK_MBIT] (and, for ``vm`` scenarios, the VMs fit the address plan)."""
        if len(set(self.regions)) != len(self.regions):
            raise BadOptionError(f"scenario {self.name!r} lists a region twice", hint="list each region once")
        if not 2 <= len(self.regions) <= MAX_REGIONS:
            raise BadOptionError(f"scenario {self.name!r} has {len(self.regions)} regions",
                                 hint=f"a testbed holds 2..{MAX_REGIONS} regions")
        if self.scale_mbit_per_gbps <= 0:
            raise BadOptionError(f"scenario {self.name!r}: scale must be positive")
        if self.capacity not in CAPACITY_KINDS:
            raise BadOptionError(f"scenario {self.name!r}: capacity {self.capacity!r}",
                                 hint=f"use one of {', '.join(CAPACITY_KINDS)}")
        if self.capacity == "vm" and not 1 <= self.vms_per_region * len(self.regions) <= MAX_NODES:
            raise BadOptionError(f"scenario {self.name!r}: {self.vms_per_region} VMs in each of "
                                 f"{len(self.regions)} regions", hint=f"a testbed holds 1..{MAX_NODES} VMs")
        for provider, caps in self.vm_caps.items():
            if len(caps) != 2 or not all(c > 0 for c in caps):
                raise BadOptionError(f"scenario {self.name!r}: VM caps of {provider} must be two positive Gbps")
        for a in self.regions:
            for b in self.regions:
                if a == b:
                    continue
                if (a, b) not in self.gbps:
                    raise BadOptionError(f"scenario {self.name!r} has no rate for {a} -> {b}",
                                         hint="give a rate for every ordered pair of regions")
        for a, b in self.gbps:
            mbit = self.link_mbit(a, b)
            if not MIN_LINK_MBIT <= mbit <= MAX_LINK_MBIT:
                fastest = max(self.pair_gbps(*pair) for pair in self.gbps)
                raise BadOptionError(
                    f"scenario {self.name!r}: {a} -> {b} scales to {mbit:.1f} Mbit/s",
                    hint=f"choose a scale that keeps every link within {MIN_LINK_MBIT:g}-{MAX_LINK_MBIT:g} "
                         f"Mbit/s (at most {MAX_LINK_MBIT / fastest:.2f} Mbit/s per Gbps here)")

    def pair_gbps(self, src: str, dst: str) -> float:
        """Grid Gbps src -> dst: of the shared link (``link``), or of one VM of src to one of dst
        within their NIC caps (``vm``)."""
        gbps = self.gbps[(src, dst)]
        if self.capacity == "vm":
            gbps = min(gbps, self.vm_cap(src)[0], self.vm_cap(dst)[1])
        return gbps

    def link_mbit(self, src: str, dst: str) -> float:
        """The emulated cap of src -> dst in Mbit/s of payload (``pair_gbps`` times the scale)."""
        return self.pair_gbps(src, dst) * self.scale_mbit_per_gbps

    def scaled_gbps(self, src: str, dst: str) -> float:
        """The emulated cap of src -> dst in Gbps (what the testbed really offers)."""
        return self.link_mbit(src, dst) / 1000.0

    def with_scale(self, scale_mbit_per_gbps: float) -> "Scenario":
        return replace(self, scale_mbit_per_gbps=scale_mbit_per_gbps)

    def vm_cap(self, region: str) -> tuple[float, float]:
        """(egress, ingress) Gbps of one VM of ``region`` (of its provider); inf when uncapped."""
        return self.vm_caps.get(region.split(":", 1)[0], (math.inf, math.inf))

    def as_vms(self, vms_per_region: int, *, budget_mbit: float = VM_BUDGET_MBIT) -> "Scenario":
        """This scenario as gateway VMs (``capacity`` = ``vm``) with the planner's per-VM caps, scaled
        (:meth:`fitted_scale`) so that what its plans can move fits ``budget_mbit``."""
        from planner.providers import provider_of  # the caps the planner plans with

        if vms_per_region < 1:  # before the scale is fitted, which divides by what the VMs can move
            raise BadOptionError(f"scenario {self.name!r}: {vms_per_region} VMs in each region",
                                 hint="give at least 1 VM per region")
        caps = {}
        for region in self.regions:
            vm = provider_of(region)
            if math.isfinite(vm.egress_gbps) and math.isfinite(vm.ingress_gbps):
                caps[vm.name] = (vm.egress_gbps, vm.ingress_gbps)
        scenario = replace(self, capacity="vm", vms_per_region=vms_per_region, vm_caps=caps)
        return scenario.with_scale(scenario.fitted_scale(budget_mbit))

    def fitted_scale(self, budget_mbit: float) -> float:
        """The largest scale (0.1 steps, at most ``MAX_SCALE``) at which the widest transfer of the
        scenario moves at most ``budget_mbit`` through the network: the max-flow of the ``found``
        pair; for a multicast (``found`` lists ``dsts``) a copy for each destination at the slowest
        destination's max-flow; otherwise the widest pair."""
        found = self.found
        if "dsts" in found:
            widest = len(found["dsts"]) * min(self.maxflow_gbps(found["src"], d) for d in found["dsts"])
        elif {"src", "dst"} <= set(found):
            widest = self.maxflow_gbps(found["src"], found["dst"])
        else:
            widest = max(self.maxflow_gbps(a, b) for a in self.regions for b in self.regions if a != b)
        return min(MAX_SCALE, math.floor(budget_mbit / widest * 10) / 10)

    def maxflow_gbps(self, src: str, dst: str) -> float:
        """Max-flow from ``src`` to ``dst`` in grid Gbps: what the emulated network can carry at most
        (every VM of every region in use, for ``vm`` scenarios)."""
        for region in (src, dst):
            if region not in self.regions:
                raise BadOptionError(f"region {region!r} is not in scenario {self.name!r}",
                                     hint=f"use one of {', '.join(self.regions)}")
        if self.capacity == "link":
            return max_flow(dict(self.gbps), src, dst)
        return max_flow(self._vm_graph(src, dst), "source", "sink")

    def headroom(self, flows: dict[tuple[str, str], float], gateways: dict[str, int]) -> float:
        """How many times ``flows`` (grid Gbps per region pair, e.g. a plan's edges) the emulated
        network could carry with ``gateways`` per region (``vm``: each region's traffic spread evenly
        over its VMs, as the gateways spread their connections): 1 when the scenario is exactly as
        tight as the flows, more when it has room the flows' model does not see."""
        if self.capacity == "link":
            return min((self.gbps[e] / f for e, f in flows.items() if f > 0), default=math.inf)
        limits = []
        out: dict[str, float] = {}
        into: dict[str, float] = {}
        for (a, b), f in flows.items():
            if f <= 0:
                continue
            limits.append(self.gbps[(a, b)] * min(gateways[a], gateways[b]) / f)  # per VM and remote region
            out[a] = out.get(a, 0.0) + f
            into[b] = into.get(b, 0.0) + f
        limits += [self.vm_cap(v)[0] * gateways[v] / f for v, f in out.items()]
        limits += [self.vm_cap(v)[1] * gateways[v] / f for v, f in into.items()]
        return min(limits, default=math.inf)

    def _vm_graph(self, src: str, dst: str) -> dict[tuple[str, str], float]:
        """The ``vm`` network as a flow graph: per VM, its egress and ingress caps and its per-region
        caps on both sides; ``source`` feeds the source region's VMs, ``sink`` drains the destination's."""
        caps: dict[tuple[str, str], float] = {}
        for a in self.regions:
            egress, ingress = self.vm_cap(a)
            for k in range(self.vms_per_region):
                vm = f"{a}#{k}"
                caps[(f"{vm}.in", vm)] = ingress
                caps[(vm, f"{vm}.out")] = egress
                if a == src:
                    caps[("source", vm)] = math.inf
                if a == dst:
                    caps[(vm, "sink")] = math.inf
                for b in self.regions:
                    if b != a:
                        caps[(f"{vm}.out", f"{vm}>{b}")] = self.gbps[(a, b)]
                        caps[(f"{vm}<{b}", f"{vm}.in")] = self.gbps[(b, a)]
                        for m in range(self.vms_per_region):
                            caps[(f"{vm}>{b}", f"{b}#{m}<{a}")] = math.inf
        return caps

    def to_dict(self) -> dict:
        links = []
        for a in self.regions:
            for b in self.regions:
                if a != b and (a, b) in self.gbps:
                    link = {"src": a, "dst": b, "gbps": self.gbps[(a, b)]}
                    if (a, b) in self.cost_per_gb:
                        link["cost_per_gb"] = self.cost_per_gb[(a, b)]
                    links.append(link)
        d = {"name": self.name, "description": self.description, "regions": list(self.regions),
             "scale_mbit_per_gbps": self.scale_mbit_per_gbps, "links": links, "found": self.found}
        if self.capacity != "link":
            d.update(capacity=self.capacity, vms_per_region=self.vms_per_region,
                     vm_caps={p: {"egress_gbps": e, "ingress_gbps": i} for p, (e, i) in sorted(self.vm_caps.items())})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scenario":
        try:
            links = d["links"]
            scenario = cls(
                name=d["name"], regions=tuple(d["regions"]),
                gbps={(x["src"], x["dst"]): float(x["gbps"]) for x in links},
                scale_mbit_per_gbps=float(d.get("scale_mbit_per_gbps", 20.0)),
                cost_per_gb={(x["src"], x["dst"]): float(x["cost_per_gb"]) for x in links if "cost_per_gb" in x},
                description=d.get("description", ""), found=d.get("found", {}),
                capacity=d.get("capacity", "link"), vms_per_region=int(d.get("vms_per_region", 1)),
                vm_caps={p: (float(c["egress_gbps"]), float(c["ingress_gbps"]))
                         for p, c in d.get("vm_caps", {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise BadOptionError(f"malformed scenario: {exc!r}",
                                 hint="see skyplane_provider/testbed/scenario.py for the JSON form") from exc
        scenario.validate()
        return scenario


def shipped_scenarios() -> dict[str, Scenario]:
    """The scenarios that ship with the package, by name."""
    text = resources.files(__package__).joinpath(SHIPPED_FILE).read_text()
    return {s["name"]: Scenario.from_dict(s) for s in json.loads(text)["scenarios"]}


def load_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a scenario JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return Scenario.from_dict(json.loads(path.read_text()))
    shipped = shipped_scenarios()
    if name_or_path not in shipped:
        raise BadOptionError(f"no scenario {name_or_path!r}",
                             hint=f"use one of {', '.join(sorted(shipped))} or the path of a scenario .json file")
    return shipped[name_or_path]
