"""Multicast on the emulated WAN: one source to several destinations with the direct star, the MST, the
Steiner tree and the ILP, measured against each other and against the planner's predictions.

    .venv/bin/python benchmarks/multicast_testbed.py --quick            # as root; 4 destinations
    .venv/bin/python benchmarks/multicast_testbed.py --dsts 6 --json m.json

The case is the planner benchmark's (benchmarks/planner_solve.py): gcp:us-central1 to two AWS, two Azure
and two GCP regions (the first ``--dsts`` of them), plus the relays the multicast MILP considers
(``skyplane_provider/testbed/draw.py``: ``multicast_scenario``), as gateway VMs with the planner's
per-VM caps (one VM per region), scaled so that a copy for every destination at the slowest
destination's max-flow fits two cores. Each plan is made on the testbed's grid and moves the same
data (sized so that the fastest plan takes about ``--seconds``) to a local-directory store in every
destination region. Per plan: time, data rate per destination, the planner's predicted time and
egress for the bytes that went on the wire, and the egress the shapers counted, priced.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from planner import Grid, solve
from skyplane_provider.testbed import Scenario
from skyplane_provider.testbed.draw import multicast_scenario
from skyplane_provider.transfer.request import parse_size

from _testbed_run import MiB, Run, agrees, make_dataset, open_testbed, run_transfer

SOLVERS = ("direct", "mst", "steiner", "ilp")
SRC = "gcp:us-central1"
DSTS = ["aws:us-west-2", "aws:eu-west-1", "azure:westeurope", "azure:eastus", "gcp:europe-west4", "gcp:asia-east1"]
QUICK_SECONDS = 5.0
FULL_SECONDS = 15.0
#: Frames per source byte of the data mix with lz4 (see overlay.py).
WIRE_PER_BYTE = 0.65


def bench_multicast(args: argparse.Namespace, work: Path) -> dict:
    """Run the four plans to ``args.dsts`` destinations; print the table; return every figure."""
    dsts = DSTS[:args.dsts]
    sc = multicast_scenario(SRC, dsts)
    with open_testbed(sc) as tb:
        grid = Grid.from_csv(tb.grid_csv(work / "multicast-grid.csv"))
        plans = {s: solve(SRC, dsts, solver=s, max_gateways_per_region=1, grid=grid) for s in SOLVERS}
        fastest = max(p.throughput_gbps for p in plans.values()) * tb.plan_scale
        files = max(8, int(fastest * 1e9 / 8 * args.seconds / WIRE_PER_BYTE / args.chunk_size))
        data = work / "multicast-src"
        make_dataset(data, files * args.chunk_size, file_size=args.chunk_size)
        runs: dict[str, Run] = {}
        for solver, plan in plans.items():
            outs = [(work / f"multicast-{solver}-{i}", d) for i, d in enumerate(dsts)]
            runs[solver] = run_transfer(tb, data, outs, SRC, plan, connections=args.connections,
                                        chunk_size=args.chunk_size)
            for out, _ in outs:
                shutil.rmtree(out)
        shutil.rmtree(data)
    print_table(sc, dsts, runs)
    return {"scenario": sc.to_dict(), "dsts": dsts, "runs": {s: r.record(sc) for s, r in runs.items()}}


def print_table(sc: Scenario, dsts: list[str], runs: dict[str, Run]) -> None:
    prices = sc.cost_per_gb
    relays = sorted({r for run in runs.values() for e in run.plan.edges for r in (e.src, e.dst)} - {SRC, *dsts})
    print(f"\n## Multicast {SRC} -> {len(dsts)} destinations ({', '.join(dsts)}); 1 VM per region, "
          f"scale {sc.scale_mbit_per_gbps:g} Mbit/s per grid Gbps; relays used: {', '.join(relays) or 'none'}\n")
    print("| plan | edges (partitions) | MiB | s | predicted s | data Mbit/s per destination "
          "| steady Mbit/s per destination | predicted / steady | predicted / end to end | headroom "
          "| egress $ predicted | egress $ measured | measured / predicted | egress $/GB of data (plan) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for solver, run in runs.items():
        usd = run.egress_usd_measured(prices)
        print(f"| {solver} | {len(run.plan.edges)} ({run.plan.partitions}) | {run.stats.bytes / MiB:.0f} "
              f"| {run.seconds:.2f} "
              f"| {run.predicted_seconds:.2f} | {run.gbps * 1000:.1f} | {run.steady_gbps * 1000:.1f} "
              f"| {run.predicted_gbps / run.steady_gbps:.3f} | {run.predicted_gbps / run.wire_gbps:.3f} "
              f"| {run.headroom(sc):.2f} "
              f"| {run.egress_usd_predicted:.6f} | {usd:.6f} | {usd / run.egress_usd_predicted:.3f} "
              f"| {run.plan.cost_per_gb:.4f} |")
    ok_time = sum(agrees(r.steady_gbps, r.predicted_gbps) for r in runs.values())
    ok_usd = sum(agrees(r.egress_usd_measured(prices), r.egress_usd_predicted) for r in runs.values())
    ilp, direct = runs["ilp"], runs["direct"]
    print(f"\nILP / direct {ilp.gbps / direct.gbps:.2f}x, ILP / MST {ilp.gbps / runs['mst'].gbps:.2f}x, ILP / Steiner "
          f"{ilp.gbps / runs['steiner'].gbps:.2f}x (data rate per destination); steady rate within 10% of the "
          f"prediction in {ok_time} of {len(runs)} plans, egress in {ok_usd} of {len(runs)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"4 destinations, about {QUICK_SECONDS:g} s for the fastest plan")
    ap.add_argument("--dsts", type=int, help=f"destinations, 3..{len(DSTS)} (default 6; 4 with --quick)")
    ap.add_argument("--seconds", type=float,
                    help=f"about how long the fastest plan moves data (default {FULL_SECONDS:g})")
    ap.add_argument("--chunk-size", type=parse_size, default=MiB, help="chunk and file size (default 1MiB)")
    ap.add_argument("--connections", type=int, default=4, help="TCP connections per gateway and edge (default 4)")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    args = ap.parse_args(argv)
    args.dsts = args.dsts or (4 if args.quick else len(DSTS))
    args.seconds = args.seconds or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    if not 3 <= args.dsts <= len(DSTS):
        raise SystemExit(f"--dsts must be 3..{len(DSTS)}")
    if os.geteuid() != 0:
        raise SystemExit("multicast_testbed.py needs root: it creates network namespaces")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="multicast-bench-", dir="/dev/shm") as tmp:
        result = bench_multicast(args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
