"""A testbed scenario: regions, the grid's throughput between them, and the scale that shrinks it.

A scenario is data. It carries its own rates (Gbps as measured between the cloud regions, taken
from the throughput grid) so that the testbed does not depend on the planner's grid, and a scale
factor (Mbit/s of emulated link per Gbps of grid) that makes the whole mesh fit on two cores.
Scenarios shipped with the package live in ``scenarios.json`` beside this module, written by
``scripts/find_overlay_scenarios.py`` together with the source of every figure.

JSON form of one scenario::

    {"name": "...", "description": "...", "regions": ["aws:us-east-1", ...],
     "scale_mbit_per_gbps": 20,
     "links": [{"src": "aws:us-east-1", "dst": "gcp:us-west4-a", "gbps": 0.55, "cost_per_gb": 0.09}, ...],
     "found": {...}}

``links`` lists every ordered pair of distinct regions; ``cost_per_gb`` is optional (0 when absent);
``found`` is free-form provenance (what the finder measured on the grid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from planner.errors import BadOptionError

from .addressing import MAX_REGIONS

#: Above this, the emulated mesh would not fit two shared cores (the caps hold within 4-12% up to here).
MAX_LINK_MBIT = 400.0
#: Below this, tbf's accuracy and the test time both suffer.
MIN_LINK_MBIT = 1.0

SHIPPED_FILE = "scenarios.json"


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

    def validate(self) -> None:
        """Raise ``BadOptionError`` unless every ordered pair has a rate that scales into
        [MIN_LINK_MBIT, MAX_LINK_MBIT]."""
        if len(set(self.regions)) != len(self.regions):
            raise BadOptionError(f"scenario {self.name!r} lists a region twice", hint="list each region once")
        if not 2 <= len(self.regions) <= MAX_REGIONS:
            raise BadOptionError(f"scenario {self.name!r} has {len(self.regions)} regions",
                                 hint=f"a testbed holds 2..{MAX_REGIONS} regions")
        if self.scale_mbit_per_gbps <= 0:
            raise BadOptionError(f"scenario {self.name!r}: scale must be positive")
        for a in self.regions:
            for b in self.regions:
                if a == b:
                    continue
                if (a, b) not in self.gbps:
                    raise BadOptionError(f"scenario {self.name!r} has no rate for {a} -> {b}",
                                         hint="give a rate for every ordered pair of regions")
                mbit = self.link_mbit(a, b)
                if not MIN_LINK_MBIT <= mbit <= MAX_LINK_MBIT:
                    raise BadOptionError(
                        f"scenario {self.name!r}: {a} -> {b} scales to {mbit:.1f} Mbit/s",
                        hint=f"choose a scale that keeps every link within {MIN_LINK_MBIT:g}-{MAX_LINK_MBIT:g} "
                             f"Mbit/s (at most {MAX_LINK_MBIT / max(self.gbps.values()):.2f} Mbit/s per Gbps here)")

    def link_mbit(self, src: str, dst: str) -> float:
        """The emulated cap of src -> dst in Mbit/s."""
        return self.gbps[(src, dst)] * self.scale_mbit_per_gbps

    def scaled_gbps(self, src: str, dst: str) -> float:
        """The emulated cap of src -> dst in Gbps (what the testbed really offers)."""
        return self.link_mbit(src, dst) / 1000.0

    def with_scale(self, scale_mbit_per_gbps: float) -> "Scenario":
        return replace(self, scale_mbit_per_gbps=scale_mbit_per_gbps)

    def to_dict(self) -> dict:
        links = []
        for a in self.regions:
            for b in self.regions:
                if a != b and (a, b) in self.gbps:
                    link = {"src": a, "dst": b, "gbps": self.gbps[(a, b)]}
                    if (a, b) in self.cost_per_gb:
                        link["cost_per_gb"] = self.cost_per_gb[(a, b)]
                    links.append(link)
        return {"name": self.name, "description": self.description, "regions": list(self.regions),
                "scale_mbit_per_gbps": self.scale_mbit_per_gbps, "links": links, "found": self.found}

    @classmethod
    def from_dict(cls, d: dict) -> "Scenario":
        try:
            links = d["links"]
            scenario = cls(
                name=d["name"], regions=tuple(d["regions"]),
                gbps={(x["src"], x["dst"]): float(x["gbps"]) for x in links},
                scale_mbit_per_gbps=float(d.get("scale_mbit_per_gbps", 20.0)),
                cost_per_gb={(x["src"], x["dst"]): float(x["cost_per_gb"]) for x in links if "cost_per_gb" in x},
                description=d.get("description", ""), found=d.get("found", {}))
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
