"""Scenarios drawn from the planner's whole grid, so that results describe the grid and not its best cases.

``random_scenarios(k, seed)`` draws ``k`` distinct ordered region pairs uniformly from the packaged
grid (``planner/data/grid.csv``: Skyplane's 2022-11-28 iperf3 grid, 71 regions, 4,970 pairs, with
2023-02 egress prices) and gives each its best relays, as the planner ranks them
(``planner.relays.candidate_relays``: the widest two-hop bottleneck of links and VM caps, ties to
the cheaper). ``multicast_scenario(src, dsts)`` holds a source, its destinations and the relays the
multicast solvers would consider. Both are ``vm`` scenarios (:meth:`Scenario.as_vms`): gateway VMs
with the planner's per-VM caps, scaled to fit two cores.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from planner.grid import Grid
from planner.relays import candidate_relays

from .addressing import MAX_REGIONS
from .scenario import Scenario

RELAYS = 2
#: The multicast MILP's candidate relays (planner/multicast_ilp.py: 3 fast, 3 cheap).
MULTICAST_FAST_RELAYS = 3
MULTICAST_CHEAP_RELAYS = 3


def random_pairs(k: int, seed: int, grid: Grid | None = None) -> list[tuple[str, str]]:
    """``k`` distinct ordered pairs of the grid, drawn uniformly with ``random.Random(seed)``."""
    grid = grid or Grid.load_default()
    pairs = [(a, b) for a in grid.regions for b in grid.successors(a)]
    return random.Random(seed).sample(pairs, k)


def random_scenarios(k: int, seed: int, *, vms_per_region: int = 2, relays: int = RELAYS,
                     grid: Grid | None = None) -> list[Scenario]:
    """One ``vm`` scenario per drawn pair: the pair and its ``relays`` best relays."""
    grid = grid or Grid.load_default()
    scenarios = []
    for n, (src, dst) in enumerate(random_pairs(k, seed, grid)):
        chosen = candidate_relays(grid, src, [dst], fast=relays, cheap=0)
        best = chosen[0] if chosen else None
        found = {"src": src, "dst": dst, "direct_gbps": grid.gbps(src, dst),
                 "drawn": f"seed {seed}, pair {n + 1} of {k}"}
        if best:
            found.update(best_relay=best, best_relay_gbps=min(grid.gbps(src, best), grid.gbps(best, dst)))
        name = f"{src}--{dst}".replace(":", "-")
        scenarios.append(from_grid(grid, name, [src, dst, *chosen], found=found,
                                   description=f"{src} -> {dst}, drawn from the grid (seed {seed}); relays "
                                               f"{', '.join(chosen) or 'none'}").as_vms(vms_per_region))
    return scenarios


def multicast_scenario(src: str, dsts: Sequence[str], *, vms_per_region: int = 1,
                       grid: Grid | None = None) -> Scenario:
    """A ``vm`` scenario for one source and several destinations, with the relays the multicast MILP
    would consider (at most ``MAX_REGIONS`` regions in all)."""
    grid = grid or Grid.load_default()
    src = grid.check_region(src)
    dsts = [grid.check_region(d) for d in dsts]
    relays = candidate_relays(grid, src, dsts, fast=MULTICAST_FAST_RELAYS, cheap=MULTICAST_CHEAP_RELAYS)
    regions = list(dict.fromkeys([src, *dsts, *relays]))[:MAX_REGIONS]
    name = f"{src}--{len(dsts)}-dsts".replace(":", "-")
    found = {"src": src, "dsts": dsts, "relays": regions[1 + len(dsts):]}
    return from_grid(grid, name, regions, found=found,
                     description=f"{src} -> {', '.join(dsts)}; relays {', '.join(found['relays']) or 'none'}"
                     ).as_vms(vms_per_region)


def from_grid(grid: Grid, name: str, regions: Sequence[str], *, found: dict, description: str) -> Scenario:
    """A ``link`` scenario over ``regions`` with the grid's rates and prices (every pair must have a link)."""
    pairs = [(a, b) for a in regions for b in regions if a != b]
    return Scenario(name=name, regions=tuple(regions), gbps={p: grid.gbps(*p) for p in pairs},
                    cost_per_gb={p: grid.cost(*p) for p in pairs}, description=description, found=found)
