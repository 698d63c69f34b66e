"""Which regions of a plan have no price: a cost of $0 there means "unknown", not "free"."""

from __future__ import annotations

import planner
from planner.errors import UnknownRegionError
from planner.providers import provider_name


def unpriced_regions(plan: dict, grid_csv: str | None) -> list[str]:
    """Cloud regions of ``plan`` (a ``Plan.summary()``) that the price grid does not hold, such as
    ``azure:unknown`` for an Azure store whose region was not named. Local and testbed regions cost
    nothing and are not listed."""
    grid = planner.Grid.from_csv(grid_csv) if grid_csv else planner.Grid.load_default()
    missing = []
    for region in dict.fromkeys([plan["src"], *plan["dsts"], *plan["gateways"]]):
        if provider_name(region) not in ("aws", "gcp", "azure"):
            continue
        try:
            grid.check_region(region)
        except UnknownRegionError:
            missing.append(region)
    return missing
