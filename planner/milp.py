"""The MILP backends (pulp over CBC or HiGHS); pulp is imported only when a MILP is solved."""

from __future__ import annotations

import logging
import warnings

from planner.errors import BadOptionError, PlanError

log = logging.getLogger(__name__)

BACKENDS = ("cbc", "highs")


def make_solver(backend: str, time_limit: float):
    """A pulp solver for ``backend`` that stops after ``time_limit`` seconds with its best solution."""
    import pulp

    if backend == "cbc":
        # One thread: the planner shares small machines with the data plane. No presolve: when CBC
        # 2.10's presolve proves a model infeasible, it then spins past its time limit.
        with warnings.catch_warnings():
            # Deprecated for pulp 4, where CBC moves to an extra; it is the bundled CBC until then.
            warnings.simplefilter("ignore", DeprecationWarning)
            return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, threads=1, presolve=False)
    if backend == "highs":
        solver = pulp.HiGHS(msg=False, timeLimit=time_limit, threads=1)
        if not solver.available():
            raise BadOptionError("the HiGHS backend is not installed", hint="pip install highspy, or use --backend cbc")
        return solver
    raise BadOptionError(f"unknown MILP backend {backend!r}", hint=f"choose one of {', '.join(BACKENDS)}")


def variable(problem, name: str, low: float | None = None, up: float | None = None, cat: str = "Continuous"):
    """A variable of ``problem`` (pulp >= 3.3 attaches it to the problem; older pulp has no such call)."""
    import pulp

    if hasattr(problem, "add_variable"):
        return problem.add_variable(name, low, up, cat=cat)
    return pulp.LpVariable(name, lowBound=low, upBound=up, cat=cat)


def run(problem, solver) -> bool:
    """Solve; True when a feasible solution was found (optimal, or the best one before the time limit)."""
    import pulp

    try:
        problem.solve(solver)
    except pulp.PulpSolverError as exc:
        raise PlanError(f"the MILP solver failed: {exc}", hint="try the other --backend") from exc
    log.debug("%s: status %s, solution %s", problem.name, pulp.LpStatus[problem.status],
              pulp.LpSolution.get(problem.sol_status, problem.sol_status))
    return problem.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)


def value(var) -> float:
    """A variable's value in the solution (0 when the solver left it unset)."""
    v = var.value()
    return float(v) if v is not None else 0.0
