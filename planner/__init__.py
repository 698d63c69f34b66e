"""The planner: region grid + job -> :class:`Plan` (pure; reads only its packaged data and a user's grid).

``solve()`` is the entry point; the MILP stack (pulp) and networkx load only when a solver needs them,
so gateways can import ``planner.plan`` and ``planner.errors`` cheaply.
"""

from planner.plan import Plan
from planner.solve import DEFAULT_SIZE_GB, SOLVERS, solve

__all__ = ["DEFAULT_SIZE_GB", "Grid", "Plan", "SOLVERS", "solve"]


def __getattr__(name: str):
    # The grid (and its csv, difflib, importlib.resources) loads on first use: every gateway imports
    # this package for planner.errors and planner.plan, and its start waited ~30 ms for a grid it
    # never reads.
    if name == "Grid":
        from planner.grid import Grid

        return Grid
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
