"""The region grid: measured throughput (Gbps) and egress price (USD/GB) of directed region pairs.

The packaged grid is Skyplane's 2022-11-28 iperf3 grid with 2023-02 prices (``data/SOURCE.md``).
Users may plan on their own grid, e.g. the emulated WAN of the testbed: a CSV with the columns
``src,dst,gbps,cost_per_gb`` and optionally ``capacity``. A pair missing from the grid has no link. A
row with cost 0 makes its source a free-egress relay (e.g. a store class whose egress the user does
not pay), which the solvers then use like any other cheap link.

``capacity`` says what ``gbps`` is: ``vm`` (the default) the rate between one VM pair with 64
connections, which more gateways multiply (Skyplane's measurement); ``link`` the total capacity of
the path between the two regions, shared by all gateways and connections (an emulated link of the
testbed, a leased line).
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from planner.errors import BadOptionError, PlanError, UnknownRegionError

COLUMNS = ("src", "dst", "gbps", "cost_per_gb")
CAPACITY_KINDS = ("vm", "link")
DEFAULT_GRID = "grid.csv"

# GCP zones end in "-<letter>" after the region's digit: gcp:us-central1-a, gcp:europe-west1-b.
_GCP_ZONE = re.compile(r"^(gcp:.*\d)-[a-z]$")


def strip_zone(tag: str) -> str:
    """``gcp:us-central1-a`` -> ``gcp:us-central1``; any other tag unchanged."""
    m = _GCP_ZONE.match(tag)
    return m.group(1) if m else tag


@dataclass(frozen=True)
class Link:
    """One directed pair of the grid. ``shared``: ``gbps`` is the link's total capacity, whatever the
    number of gateways and connections (grid column ``capacity`` = ``link``)."""

    gbps: float
    cost_per_gb: float
    shared: bool = False


class Grid:
    """Directed links between region tags; immutable once built."""

    def __init__(self, links: dict[tuple[str, str], Link], *, name: str = "grid") -> None:
        self.name = name
        self._links = dict(links)
        self._out: dict[str, dict[str, Link]] = {}
        for (a, b), link in self._links.items():
            self._out.setdefault(a, {})[b] = link
            self._out.setdefault(b, {})
        self.regions: list[str] = sorted(self._out)
        # Lookup keys for tags users write differently: case, or a GCP zone the grid has not (or has).
        self._aliases: dict[str, str] = {}
        for r in reversed(self.regions):
            self._aliases[strip_zone(r.lower())] = r

    @classmethod
    @functools.cache
    def load_default(cls) -> "Grid":
        """The packaged grid (71 regions of AWS, Azure and GCP); loaded once per process."""
        text = resources.files("planner").joinpath("data", DEFAULT_GRID).read_text()
        return cls(_parse(io.StringIO(text), DEFAULT_GRID), name="skyplane-2022-11-28")

    @classmethod
    def from_csv(cls, path: str | Path) -> "Grid":
        """A user's grid: a CSV file with the columns ``src,dst,gbps,cost_per_gb``."""
        path = Path(path)
        try:
            with path.open(newline="") as f:
                links = _parse(f, str(path))
        except OSError as exc:
            raise BadOptionError(f"cannot read grid {path}: {exc.strerror or exc}",
                                 hint="pass a readable CSV with columns src,dst,gbps,cost_per_gb") from exc
        return cls(links, name=path.name)

    def link(self, a: str, b: str) -> Link | None:
        """The measured link a -> b, or None when the grid has none."""
        return self._links.get((a, b))

    def gbps(self, a: str, b: str) -> float:
        """Measured throughput a -> b in Gbps between one VM pair; 0 when the grid has no such link."""
        link = self._links.get((a, b))
        return link.gbps if link else 0.0

    def cost(self, a: str, b: str) -> float:
        """Egress price a -> b in USD per GB; raises :class:`PlanError` when the grid has no such link."""
        link = self._links.get((a, b))
        if link is None:
            raise PlanError(f"grid {self.name} has no link {a} -> {b}")
        return link.cost_per_gb

    def successors(self, a: str) -> dict[str, Link]:
        """Every region that ``a`` has a link to, with the link."""
        return self._out.get(a, {})

    def check_region(self, tag: str) -> str:
        """The grid's tag for ``tag`` (exact, case-insensitive, or a GCP tag with/without its zone).

        Raises :class:`UnknownRegionError` listing the three closest tags of the grid.
        """
        if tag in self._out:
            return tag
        found = self._aliases.get(strip_zone(tag.strip().lower()))
        if found is not None:
            return found
        close = difflib.get_close_matches(tag.strip().lower(), self.regions, n=3, cutoff=0.0)
        raise UnknownRegionError(
            f"region {tag!r} is not in the grid {self.name} ({len(self.regions)} regions)",
            hint=f"did you mean {', '.join(close)}? Tags look like aws:us-east-1, azure:eastus, gcp:us-central1"
                 if close else "the grid is empty")


def _parse(f: Iterable[str], where: str) -> dict[tuple[str, str], Link]:
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise BadOptionError(f"grid {where} lacks the column(s) {', '.join(missing)}",
                             hint=f"the header must be {','.join(COLUMNS)}")
    links: dict[tuple[str, str], Link] = {}
    for row in reader:
        line = reader.line_num
        src, dst = (row["src"] or "").strip(), (row["dst"] or "").strip()
        try:
            gbps, cost = float(row["gbps"]), float(row["cost_per_gb"])
        except (TypeError, ValueError):
            raise BadOptionError(f"grid {where} line {line}: gbps and cost_per_gb must be numbers",
                                 hint=f"got gbps={row['gbps']!r}, cost_per_gb={row['cost_per_gb']!r}") from None
        capacity = (row.get("capacity") or "vm").strip()
        if capacity not in CAPACITY_KINDS:
            raise BadOptionError(f"grid {where} line {line}: capacity must be one of {', '.join(CAPACITY_KINDS)}",
                                 hint=f"got {capacity!r}; vm: per VM pair, scaled by gateways; link: shared total")
        if not src or not dst or src == dst:
            raise BadOptionError(f"grid {where} line {line}: needs two different regions, got {src!r} -> {dst!r}")
        if not (math.isfinite(gbps) and math.isfinite(cost)) or gbps < 0 or cost < 0:
            raise BadOptionError(f"grid {where} line {line}: gbps and cost_per_gb must be finite and >= 0")
        if gbps > 0:
            links[(src, dst)] = Link(gbps, cost, shared=capacity == "link")
    if not links:
        raise BadOptionError(f"grid {where} has no link with gbps > 0", hint="add rows src,dst,gbps,cost_per_gb")
    return links
