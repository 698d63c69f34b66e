"""``skyplane-provider plan``: show the route, throughput and cost the planner picks, without moving data."""

from __future__ import annotations

import argparse

import planner
from planner.milp import BACKENDS
from planner.model import transfer_usd
from planner.plan import Plan

from .wording import examples

EXAMPLES = examples(
    "skyplane-provider plan --src aws:us-east-1 --dst gcp:us-west4-a                   # the direct path",
    "skyplane-provider plan --src aws:us-east-1 --dst gcp:us-west4-a --solver ilp --throughput-gbps 5",
    "skyplane-provider plan --src aws:us-east-1 --dst gcp:us-central1 --dst azure:westeurope --solver steiner",
    "skyplane-provider plan --src aws:us-east-1 --dst gcp:us-west4-a --solver ilp --json > plan.json   # for cp --plan",
)


def register(sub: argparse._SubParsersAction) -> None:
    help_text = "plan a route between regions: gateways, edges, throughput and cost (no data moves)"
    p = sub.add_parser("plan", help=help_text, description=help_text, epilog=EXAMPLES)
    p.add_argument("--src", required=True, metavar="TAG", help="source region, e.g. aws:us-east-1")
    p.add_argument("--dst", required=True, action="append", metavar="TAG",
                   help="destination region; repeat for a multicast")
    p.add_argument("--solver", choices=planner.SOLVERS, default="direct", help="route planner")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--throughput-gbps", type=float, metavar="X",
                        help="throughput target (multicast: the rate each destination receives at)")
    target.add_argument("--max-cost-per-gb", type=float, metavar="Y", help="egress cost ceiling in USD/GB")
    p.add_argument("--max-gateways-per-region", type=int, default=1, metavar="N",
                   help="gateways the planner may use per region")
    p.add_argument("--size", type=float, default=planner.DEFAULT_SIZE_GB, metavar="GB",
                   help=f"data size in GB, for the cost of the whole transfer (default {planner.DEFAULT_SIZE_GB:g})")
    p.add_argument("--grid", metavar="CSV",
                   help="plan on this grid (src,dst,gbps,cost_per_gb[,capacity: vm|link]) instead of the built-in one")
    p.add_argument("--backend", choices=BACKENDS, default="cbc", help="MILP solver for --solver ilp")
    p.add_argument("--json", action="store_true", help="print the plan as JSON and nothing else")
    p.add_argument("--png", metavar="FILE", help="also draw the plan into this PNG file")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    grid = planner.Grid.from_csv(args.grid) if args.grid else None
    plan = planner.solve(
        args.src, args.dst, solver=args.solver, throughput_gbps=args.throughput_gbps,
        max_cost_per_gb=args.max_cost_per_gb, max_gateways_per_region=args.max_gateways_per_region,
        size_gb=args.size, grid=grid, backend=args.backend)
    if args.png:
        from planner.draw import draw_plan

        draw_plan(plan, args.png)
    if args.json:
        print(plan.to_json())
        return 0
    print(summary(plan, args.size))
    if args.png:
        print(f"picture: {args.png}")
    return 0


def summary(plan: Plan, size_gb: float) -> str:
    """A readable description of ``plan`` and of what moving ``size_gb`` with it costs."""
    seconds = plan.predicted_seconds(int(size_gb * 1e9))
    egress = plan.cost_per_gb * size_gb
    total = transfer_usd(plan, size_gb)
    lines = [
        f"plan {plan.src} -> {', '.join(plan.dsts)}  (solver {plan.solver}, solved in {plan.solve_seconds:.2f} s)",
        f"  throughput  {plan.throughput_gbps:.3f} Gbps: {size_gb:g} GB in {_duration(seconds)}",
        f"  egress      ${plan.cost_per_gb:.4f}/GB: ${egress:,.2f}",
        f"  gateways    {sum(plan.gateways.values())} at ${plan.vm_cost_per_hour:.2f}/h: "
        f"${total - egress:,.2f} with start-up",
        f"  total       ${total:,.2f}",
        "  regions     " + ", ".join(f"{r} x{n}" for r, n in plan.gateways.items()),
        "  edges",
    ]
    width = max(len(f"{e.src} -> {e.dst}") for e in plan.edges) if plan.edges else 0
    for e in plan.edges:
        route = f"{e.src} -> {e.dst}"
        part = f"  partitions {','.join(map(str, e.partitions))}" if plan.partitions > 1 else ""
        lines.append(f"    {route:<{width}}  {e.gbps:7.3f} Gbps  {e.connections:4d} conn  "
                     f"${e.cost_per_gb:.4f}/GB{part}")
    if plan.partitions > 1:
        lines.append("  partitions  " + ", ".join(f"{p}: {w:.1%}" for p, w in enumerate(plan.partition_weights)))
    lines += [f"  note        {n}" for n in plan.notes]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
