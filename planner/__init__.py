"""The planner: region grid + job -> :class:`Plan` (pure; reads only its packaged data and a user's grid).

``solve()`` is the entry point; the MILP stack (pulp) and networkx load only when a solver needs them,
so gateways can import ``planner.plan`` and ``planner.errors`` cheaply.
"""

from planner.grid import Grid
from planner.plan import Plan
from planner.solve import DEFAULT_SIZE_GB, SOLVERS, solve

__all__ = ["DEFAULT_SIZE_GB", "Grid", "Plan", "SOLVERS", "solve"]
