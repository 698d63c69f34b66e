"""Planner benchmarks on the full 71-region grid: MILP solve times (CBC vs HiGHS) and what the
overlay buys against the direct, MST and Steiner baselines.

    .venv/bin/python benchmarks/planner_solve.py [--pairs 20] [--seed 2026] [--png docs/img/multicast_cost.png]

1. Unicast: ``--pairs`` random ordered region pairs (seeded). Per pair the direct plan (one gateway per
   region) and the widest one-relay plan, then the MILP (a) at the direct plan's throughput and at
   the widest plan's (cheapest plan at equal speed) and (b) without a target (fastest plan, then the
   cheapest at that speed), with CBC and with HiGHS (timed: (a) at direct's rate, and (b)).
2. Multicast: gcp:us-central1 -> six AWS/Azure/GCP regions. Direct star, MST and Steiner with 1 and 2
   gateways per region, and the partitioned MILP at several throughput targets (= replication-time
   targets for ``--size-gb``), with both backends; egress $/GB and total cost of ``--size-gb``.
   Saves a plot of egress cost against throughput.

Ends with ``NAME ours/baseline=R`` lines: R < 1 is cheaper (or faster to solve) for costs and times,
R > 1 is faster for throughputs; "ours" is the MILP (or HiGHS when comparing backends), the
baseline the heuristic (or CBC).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import planner  # noqa: E402
from planner.errors import InfeasiblePlanError  # noqa: E402
from planner.model import transfer_usd  # noqa: E402

SRC = "gcp:us-central1"
DSTS = ["aws:us-west-2", "aws:eu-west-1", "azure:westeurope", "azure:eastus", "gcp:europe-west4", "gcp:asia-east1"]
BACKENDS = ("cbc", "highs")


#: Why a timed solve gave no plan (printed under the tables: "infeasible" and "out of time" differ).
NO_PLAN: list[str] = []


def timed(**kwargs) -> tuple[planner.Plan | None, float]:
    started = time.perf_counter()
    try:
        plan = planner.solve(**kwargs)
    except InfeasiblePlanError as exc:
        NO_PLAN.append(f"{kwargs.get('backend', 'cbc')}, {kwargs.get('throughput_gbps') or 'no'} Gbps target: "
                       f"{exc.message}")
        plan = None
    return plan, time.perf_counter() - started


def unicast(pairs: int, seed: int, size_gb: float) -> dict[str, float]:
    rng = random.Random(seed)
    regions = planner.Grid.load_default().regions
    chosen = [tuple(rng.sample(regions, 2)) for _ in range(pairs)]
    print("### Unicast: MILP vs direct, 1 gateway per region\n")
    print("| src -> dst | direct Gbps, $/GB | widest Gbps, $/GB | MILP fastest Gbps, $/GB "
          "| MILP cost / direct at direct's Gbps | MILP cost / widest at widest's Gbps "
          "| CBC s (equal / fastest) | HiGHS s (equal / fastest) |")
    print("|---|---|---|---|---|---|---|---|")
    cost_ratios, widest_ratios, speedups, times = [], [], [], {b: [] for b in BACKENDS}
    for src, dst in chosen:
        direct = planner.solve(src, [dst], solver="direct")
        widest = planner.solve(src, [dst], solver="widest")
        at_widest = planner.solve(src, [dst], solver="ilp", throughput_gbps=widest.throughput_gbps, size_gb=size_gb)
        widest_ratios.append(transfer_usd(at_widest, size_gb) / transfer_usd(widest, size_gb))
        cells = {}
        for backend in BACKENDS:
            equal, t_equal = timed(src=src, dsts=[dst], solver="ilp", throughput_gbps=direct.throughput_gbps,
                                   size_gb=size_gb, backend=backend)
            fastest, t_fast = timed(src=src, dsts=[dst], solver="ilp", size_gb=size_gb, backend=backend)
            times[backend] += [t_equal, t_fast]
            cells[backend] = (equal, fastest, t_equal, t_fast)
        equal, fastest, _, _ = cells["cbc"]
        ratio = transfer_usd(equal, size_gb) / transfer_usd(direct, size_gb)
        cost_ratios.append(ratio)
        speedups.append(fastest.throughput_gbps / direct.throughput_gbps)
        print(f"| {src} -> {dst} | {gbps_usd(direct)} | {gbps_usd(widest)} | {gbps_usd(fastest)} | {ratio:.3f} | "
              f"{widest_ratios[-1]:.3f} | "
              + " | ".join(f"{cells[b][2]:.2f} / {cells[b][3]:.2f}" for b in BACKENDS) + " |")
    print()
    for backend in BACKENDS:
        t = sorted(times[backend])
        print(f"- {backend}: median {statistics.median(t):.2f} s, p90 {t[int(0.9 * (len(t) - 1))]:.2f} s, "
              f"max {t[-1]:.2f} s over {len(t)} solves")
    print()
    return {
        "unicast_ilp_vs_direct_cost": statistics.mean(cost_ratios),
        "unicast_ilp_vs_widest_cost": statistics.mean(widest_ratios),
        "unicast_ilp_vs_direct_throughput": math.exp(statistics.mean(math.log(s) for s in speedups)),
        "unicast_ilp_solve_time_highs_vs_cbc": statistics.median(times["highs"]) / statistics.median(times["cbc"]),
    }


def multicast(size_gb: float, png: Path) -> dict[str, float]:
    print(f"### Multicast: {SRC} -> {', '.join(DSTS)}; {size_gb:g} GB\n")
    print("| plan | gateways/region | Gbps | time for the data | egress $/GB | total $ | CBC s | HiGHS s |")
    print("|---|---|---|---|---|---|---|---|")
    heuristics = {}
    for n in (1, 2):
        for solver in ("direct", "mst", "steiner"):
            plan, seconds = timed(src=SRC, dsts=DSTS, solver=solver, max_gateways_per_region=n, size_gb=size_gb)
            heuristics[(solver, n)] = plan
            row(plan, f"{solver}", n, size_gb, f"{seconds:.2f}", "")
    # Each heuristic's own throughput (to compare costs at equal speed), then a sweep up to the caps.
    targets = {n: sorted({*(heuristics[(s, n)].throughput_gbps for s in ("direct", "mst", "steiner")), *sweep})
               for n, sweep in ((1, (2, 4, 5, 6, 6.9)), (2, (7, 9, 11, 13)))}
    curves: dict[int, list[planner.Plan]] = {1: [], 2: []}
    times = {b: [] for b in BACKENDS}
    for n, rates in targets.items():
        for rate in rates:
            results = {b: timed(src=SRC, dsts=DSTS, solver="ilp", throughput_gbps=rate, max_gateways_per_region=n,
                                size_gb=size_gb, backend=b) for b in BACKENDS}
            for b in BACKENDS:
                times[b].append(results[b][1])
            plan = results["cbc"][0]
            if plan is not None:
                curves[n].append(plan)
            row(plan, f"ILP at {rate:.2f} Gbps", n, size_gb, *(f"{results[b][1]:.2f}" for b in BACKENDS))
    same_price, t_price = timed(src=SRC, dsts=DSTS, solver="ilp", max_cost_per_gb=heuristics[("mst", 1)].cost_per_gb,
                                size_gb=size_gb)
    row(same_price, "ILP fastest at MST's egress price", 1, size_gb, f"{t_price:.2f}", "")
    print()
    for reason in NO_PLAN:
        print(f"- no plan ({reason})")
    for backend in BACKENDS:
        print(f"- {backend}: median {statistics.median(times[backend]):.2f} s, max {max(times[backend]):.2f} s "
              f"over {len(times[backend])} multicast MILPs")
    print()
    plot(heuristics, curves, size_gb, png)
    print(f"Plot: {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}\n")

    def at(rate: float, n: int = 1) -> planner.Plan:
        return next(p for p in curves[n] if abs(p.throughput_gbps - rate) < 1e-9)

    def cost_ratio(baseline: planner.Plan) -> float:
        """The MILP's cost at the baseline's throughput over the baseline's."""
        return transfer_usd(at(baseline.throughput_gbps), size_gb) / transfer_usd(baseline, size_gb)

    direct, mst, steiner = (heuristics[(s, 1)] for s in ("direct", "mst", "steiner"))
    return {
        "multicast_ilp_vs_direct_cost": cost_ratio(direct),
        "multicast_ilp_vs_mst_cost": cost_ratio(mst),
        "multicast_ilp_vs_steiner_cost": cost_ratio(steiner),
        "multicast_ilp_vs_mst_throughput": same_price.throughput_gbps / mst.throughput_gbps,
        "multicast_ilp_solve_time_highs_vs_cbc": statistics.median(times["highs"]) / statistics.median(times["cbc"]),
    }


def gbps_usd(plan: planner.Plan) -> str:
    return f"{plan.throughput_gbps:.2f}, {plan.cost_per_gb:.3f}"


def row(plan: planner.Plan | None, name: str, n: int, size_gb: float, *times: str) -> None:
    if plan is None:
        print(f"| {name} | {n} | no plan (CBC) | | | | {' | '.join(times)} |")
        return
    minutes = plan.predicted_seconds(int(size_gb * 1e9)) / 60
    print(f"| {name} | {n} | {plan.throughput_gbps:.2f} | {minutes:.0f} min | {plan.cost_per_gb:.4f} | "
          f"{transfer_usd(plan, size_gb):.0f} | {' | '.join(times)} |")


def plot(heuristics: dict, curves: dict[int, list[planner.Plan]], size_gb: float, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for n, style in ((1, "-o"), (2, "--s")):
        plans = sorted(curves[n], key=lambda p: p.throughput_gbps)
        ax.plot([p.throughput_gbps for p in plans], [p.cost_per_gb for p in plans], style, color="black",
                label=f"ILP, up to {n} gateway(s)/region", zorder=3)
    colours = {"direct": "#c44e52", "mst": "#4c72b0", "steiner": "#55a868"}
    sizes = {"direct": 90, "mst": 200, "steiner": 70}  # MST and Steiner often coincide: keep both visible
    for (solver, n), plan in heuristics.items():
        ax.scatter(plan.throughput_gbps, plan.cost_per_gb, s=sizes[solver], marker="o" if n == 1 else "s",
                   facecolors=colours[solver] if n == 1 else "none", edgecolors=colours[solver], linewidths=2,
                   label=f"{solver}, {n} gateway(s)/region", zorder=4)
    ax.set_xlabel("replication throughput (Gbps, every destination)")
    ax.set_ylabel("egress cost (USD per GB of source data)")
    ax.set_title(f"{SRC} -> 6 regions (AWS, Azure, GCP)", fontsize=10)
    top = ax.secondary_xaxis("top", functions=(lambda g: size_gb * 8 / 60 / g.clip(1e-3),
                                               lambda m: size_gb * 8 / 60 / m.clip(1e-3)))
    top.set_xlabel(f"minutes to replicate {size_gb:g} GB")
    top.set_xticks([m for m in (240, 120, 60, 30, 20, 15, 10, 5) if size_gb * 8 / 60 / m <= ax.get_xlim()[1]])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--size-gb", type=float, default=1000.0)
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "multicast_cost.png")
    args = ap.parse_args()
    print(f"load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores\n")
    ratios = unicast(args.pairs, args.seed, args.size_gb)
    ratios |= multicast(args.size_gb, args.png.resolve())
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    for name, r in ratios.items():
        print(f"{name} ours/baseline={r:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
