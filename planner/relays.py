"""Choosing the few relay regions a MILP may route through, so that it solves in well under a second.

A relay earns its place either by speed (the bottleneck of src -> relay -> destination) or by
price (the egress of src -> relay -> destination), the two reasons an overlay beats the direct path.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

from planner.grid import Grid
from planner.providers import provider_of


def candidate_relays(grid: Grid, src: str, dsts: Sequence[str], *, fast: int, cheap: int) -> list[str]:
    """Up to ``fast`` relays with the widest two-hop bottleneck (links and VM caps; ties: the cheaper)
    plus ``cheap`` with the cheapest two-hop egress among those at least as fast as the median direct
    link. Destinations are not listed: the multicast MILP may relay through them anyway."""
    direct = [min(grid.gbps(src, d), provider_of(src).egress_gbps, provider_of(d).ingress_gbps)
              for d in dsts if d != src]
    floor = median(direct) if direct else 0.0
    scored = []
    for r in grid.regions:
        if r == src or r in dsts or grid.link(src, r) is None:
            continue
        outs = [(grid.gbps(r, d), grid.link(r, d)) for d in dsts if d != src]
        if any(link is None for _, link in outs):
            continue
        # Links faster than a VM can send or receive gain nothing: cap them, so that price breaks the tie.
        width = min(grid.gbps(src, r), median(g for g, _ in outs), provider_of(src).egress_gbps,
                    provider_of(r).ingress_gbps, provider_of(r).egress_gbps)
        price = grid.cost(src, r) + sum(link.cost_per_gb for _, link in outs) / len(outs)
        scored.append((r, width, price))
    by_width = [r for r, _, _ in sorted(scored, key=lambda s: (-s[1], s[2], s[0]))[:fast]]
    by_price = [r for r, w, _ in sorted(scored, key=lambda s: (s[2], -s[1], s[0])) if w >= floor and r not in by_width]
    return by_width + by_price[:cheap]
