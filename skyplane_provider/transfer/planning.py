"""Choosing the Plan for a request: a hand-written one, the planner's, or a grid-free direct plan."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from planner.errors import BadOptionError, UnknownRegionError
from planner.plan import BYTES_PER_GB, Plan, direct_plan
from planner.providers import is_cloud

from .request import TransferRequest

log = logging.getLogger(__name__)


def make_plan(req: TransferRequest, src_region: str, dst_regions: list[str], size_bytes: int, *,
              server_side: Sequence[str] = (), requests_usd: Callable[[Sequence[str]], float] | None = None,
              one_host: bool = False) -> Plan:
    """The plan for this request. Regions the grid does not know (``local``, ``azure:unknown``,
    testbed tags without ``--grid``) are fine for the direct solver, which needs no grid; any other
    solver names the unknown region. ``server_side``: the destination regions whose stores can copy
    from the source (probed, transfer/server_side.py); the planner copies them server-side where
    that is cheaper at the requested speed (``req.server_side``: auto, always, never), pricing the
    stores' requests with ``requests_usd``. ``one_host``: every gateway runs on this host (the
    provisioner's ``writes_at_source``), so the source's gateways write the destinations they reach
    straight themselves (``Plan.on_one_host``); a plan the user gave is kept as given."""
    dsts = list(dict.fromkeys(dst_regions))
    if req.plan is not None:
        plan = Plan.from_dict(req.plan)
        if plan.src != src_region or not set(dsts) <= set(plan.dsts):
            raise BadOptionError(
                f"the given plan routes {plan.src} -> {', '.join(plan.dsts)}, but the transfer is "
                f"{src_region} -> {', '.join(dsts)}", hint="pass --src-region/--dst-region or fix the plan")
    elif server_side and req.server_side != "never":
        plan = _choose(req, src_region, dsts, size_bytes, server_side, requests_usd)
    else:
        plan = _solve(req, src_region, dsts, size_bytes)
    plan = _override(plan, req)
    if one_host and req.plan is None:
        plan = plan.on_one_host()
    plan.validate()
    return plan


def _choose(req: TransferRequest, src: str, dsts: list[str], size_bytes: int, candidates: Sequence[str],
            requests_usd: Callable[[Sequence[str]], float] | None) -> Plan:
    import planner
    from planner.server_side import choose

    grid = planner.Grid.from_csv(req.grid) if req.grid else planner.Grid.load_default()
    return choose(src, dsts, candidates, routed=lambda regions: _solve(req, src, regions, size_bytes), grid=grid,
                  size_gb=max(size_bytes / BYTES_PER_GB, 1e-6), throughput_gbps=req.throughput_gbps,
                  mode=req.server_side, requests_usd=requests_usd or (lambda server_side: 0.0))


def _solve(req: TransferRequest, src: str, dsts: list[str], size_bytes: int) -> Plan:
    import planner  # the ILP stack loads only when a transfer plans

    n = req.gateways_per_region or req.max_gateways_per_region
    if req.solver == "direct" and not req.grid and not any(is_cloud(r) for r in (src, *dsts)):
        # A local or testbed route: no grid holds it, so it is not parsed (~30 ms of every such job's start).
        return direct_plan(src, dsts, gateways_per_region=n, connections=req.connections or 8)
    grid = planner.Grid.from_csv(req.grid) if req.grid else planner.Grid.load_default()
    try:
        for region in (src, *dsts):
            grid.check_region(region)
    except UnknownRegionError:
        if req.solver != "direct":
            _name_unknown_region(region, req.solver)
            raise
        log.info("region outside the grid: direct plan without cost figures")
        return direct_plan(src, dsts, gateways_per_region=n, connections=req.connections or 8)
    return planner.solve(
        src, dsts, solver=req.solver, throughput_gbps=req.throughput_gbps,
        max_cost_per_gb=req.max_cost_per_gb, max_gateways_per_region=req.max_gateways_per_region,
        size_gb=max(size_bytes / BYTES_PER_GB, 1e-6), grid=grid)


def _name_unknown_region(region: str, solver: str) -> None:
    """A store that does not report its region (Azure) needs the user to name it: say how."""
    if region.endswith(":unknown"):
        raise UnknownRegionError(
            f"an {region.split(':')[0]} store does not report its region, and the {solver} solver needs it",
            hint="name it: --dst-region URI=TAG or --src-region TAG on the command line (e.g. --dst-region "
                 "az://account/container=azure:westeurope); src_region= / dst_regions=[...] in Python, "
                 "Airflow and Prefect")


def _override(plan: Plan, req: TransferRequest) -> Plan:
    """Apply the user's fixed fleet shape: gateways per region and connections per gateway."""
    gateways = dict(plan.gateways)
    if req.gateways_per_region:
        gateways = {r: req.gateways_per_region for r in gateways}
    edges = plan.edges
    if req.connections:
        edges = [dataclasses.replace(e, connections=req.connections * gateways[e.src]) for e in edges]
    elif gateways != plan.gateways:
        edges = [dataclasses.replace(e, connections=max(1, e.connections // plan.gateways[e.src]) * gateways[e.src])
                 for e in edges]
    return dataclasses.replace(plan, gateways=gateways, edges=edges)
