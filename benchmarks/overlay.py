"""Overlay routing on the emulated WAN: the same data moved by the direct, widest-path and ILP plans
(real gateway processes in the testbed's region namespaces), by one plain TCP stream, and compared
with the network's max-flow.

    .venv/bin/python benchmarks/overlay.py [--quick] [--scenario NAME ...] [--size 192MiB]

Needs root (network namespaces). For every scenario of ``skyplane_provider/testbed/scenarios.json``
(or the ones named) it brings a testbed up, plans on the testbed's own grid (``Testbed.grid_csv``:
the scaled rates, ``capacity=link``), copies a local-directory store from the source region to the
destination region with each plan, runs the single-stream baseline (a Python socket sender in the
source namespace, a receiver in the destination namespace, over the direct shaped link), and takes
the testbed down (also on errors and SIGTERM). Data lives on /dev/shm. Prints a table per scenario,
then one line per scenario::

    <scenario> overlay/direct=R1 overlay/maxflow=R2

R1 = the ILP plan's throughput / the direct plan's (source bytes per second, both with lz4 on the same
data); R2 = the ILP plan's rate on the wire (frame bytes leaving the source per second) / the max-flow
of the capped mesh (the physical limit; the veths' caps do not grow with gateways, so it does not
depend on the plan's gateway count). Times run from the fleet being up until the gateways confirmed
every chunk written: gateway start-up and the final verification (an MD5 read of every local file;
cloud stores report it without reading) are shown apart. ``--quick`` (48 MiB) takes
about 2.5 minutes on two cores, the default (192 MiB) about 8.5.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from skyplane_provider.testbed import Scenario, shipped_scenarios
from skyplane_provider.transfer.request import parse_size

from _testbed_run import MiB, Run, make_dataset, open_testbed, run_transfer, single_stream

SOLVERS = ("direct", "widest", "ilp")
QUICK_SIZE = 48 * MiB
FULL_SIZE = 192 * MiB


def select_scenarios(names: list[str] | None) -> list[str]:
    """The scenarios to run: the named ones in the given order (each once), or every shipped one."""
    shipped = shipped_scenarios()
    if not names:
        return list(shipped)
    unknown = [n for n in names if n not in shipped]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; shipped: {', '.join(shipped)}")
    return list(dict.fromkeys(names))


def bench_scenario(name: str, args: argparse.Namespace, work: Path) -> tuple[float, float]:
    """Run one scenario, print its table; return (overlay/direct, overlay/maxflow)."""
    with open_testbed(name) as tb:
        sc = tb.scenario
        src, dst = sc.found["src"], sc.found["dst"]
        grid = tb.grid_csv(work / f"{name}-grid.csv")
        data = work / "src"
        make_dataset(data, args.size, file_size=args.chunk_size)
        maxflow = tb.maxflow(src, dst)
        runs: dict[str, Run] = {}
        for solver in SOLVERS:
            out = work / f"dst-{solver}"
            runs[solver] = run_transfer(tb, data, out, src, dst, grid=str(grid), solver=solver,
                                        max_gateways_per_region=args.max_gateways_per_region,
                                        connections=args.connections, chunk_size=args.chunk_size)
            shutil.rmtree(out)
        out = work / "dst-single"
        single_seconds = single_stream(tb, data, out, src, dst)
        moved = sum(p.stat().st_size for p in data.iterdir())
        shutil.rmtree(out)
        shutil.rmtree(data)
    print_table(name, sc, src, dst, runs, single_seconds, moved, maxflow)
    ilp = runs["ilp"]
    return ilp.gbps / runs["direct"].gbps, ilp.wire_gbps / maxflow


def print_table(name: str, sc: Scenario, src: str, dst: str, runs: dict[str, Run], single_seconds: float,
                moved: int, maxflow: float) -> None:
    """The scenario's Markdown table: every plan's run and the single stream, in testbed and grid units."""
    scale = sc.scale_mbit_per_gbps

    def mbit(gbps: float) -> float:  # the testbed's scaled Gbps -> its Mbit/s
        return gbps * 1000

    def grid_gbps(gbps: float) -> float:  # -> the Gbps of the cloud grid the scenario was scaled from
        return mbit(gbps) / scale

    print(f"\n## {name}: {src} -> {dst}, {moved / MiB:.0f} MiB, scale {scale:g} Mbit/s per grid Gbps")
    print(f"direct link {sc.link_mbit(src, dst):.1f} Mbit/s, max-flow {mbit(maxflow):.1f} Mbit/s "
          f"(= {grid_gbps(maxflow):.2f} grid Gbps)\n")
    print("| run | route (gateways; connections per edge) | planned Mbit/s | s | data Mbit/s | wire Mbit/s "
          "| wire / max-flow | dst rx Mbit/s while receiving | rx / max-flow | data grid Gbps | wire / data "
          "| egress $ (actual) | $/GB | start-up s | verify s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for solver, r in runs.items():
        plan = r.stats.plan
        route = "; ".join(f"{e['src']}>{e['dst']} x{e['connections']}" for e in plan["edges"])
        gws = sum(plan["gateways"].values())
        gb = r.stats.bytes / 1e9
        print(f"| {solver} | {gws} gw: {route} | {mbit(plan['throughput_gbps']):.1f} | {r.seconds:.2f} "
              f"| {mbit(r.gbps):.1f} | {mbit(r.wire_gbps):.1f} | {r.wire_gbps / maxflow:.2f} | {mbit(r.rx_gbps):.1f} "
              f"| {r.rx_gbps / maxflow:.2f} | {grid_gbps(r.gbps):.2f} | {r.stats.bytes_on_wire / r.stats.bytes:.3f} "
              f"| {r.stats.egress_usd_actual:.5f} | {r.stats.egress_usd_actual / gb:.4f} | {r.setup_seconds:.1f} "
              f"| {r.verify_seconds:.1f} |")
    single = moved * 8 / single_seconds / 1e9
    print(f"| single TCP stream | 1 connection {src}>{dst}, no lz4 | | {single_seconds:.2f} | {mbit(single):.1f} "
          f"| {mbit(single):.1f} | {single / maxflow:.2f} | | | {grid_gbps(single):.2f} | 1.000 | | | | |")
    print(f"\nILP / direct {runs['ilp'].gbps / runs['direct'].gbps:.2f}x, ILP / widest "
          f"{runs['ilp'].gbps / runs['widest'].gbps:.2f}x, ILP / single stream {runs['ilp'].gbps / single:.2f}x "
          f"(data rates)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"move {QUICK_SIZE // MiB} MiB per run (about 2.5 min)")
    ap.add_argument("--scenario", action="append", help="a shipped scenario name (repeat for several; default all)")
    ap.add_argument("--size", type=parse_size, help=f"data per run (default {FULL_SIZE // MiB}MiB)")
    ap.add_argument("--chunk-size", type=parse_size, default=MiB,
                    help="chunk and file size (default 1MiB: fine-grained enough to split over paths)")
    ap.add_argument("--connections", type=int, default=4, help="TCP connections per gateway and edge")
    ap.add_argument("--max-gateways-per-region", type=int, default=2)
    args = ap.parse_args(argv)
    args.size = args.size or (QUICK_SIZE if args.quick else FULL_SIZE)
    names = select_scenarios(args.scenario)
    if os.geteuid() != 0:
        raise SystemExit("overlay.py needs root: it creates network namespaces")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    print(f"overlay benchmark: {len(names)} scenario(s), {args.size / MiB:.0f} MiB per run, "
          f"{args.chunk_size / MiB:g} MiB chunks, {args.connections} connections per gateway and edge, "
          f"max {args.max_gateways_per_region} gateways per region; {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="overlay-bench-", dir="/dev/shm") as tmp:
        for name in names:
            ratios[name] = bench_scenario(name, args, Path(tmp))
    print(f"\ntotal {time.monotonic() - started:.0f} s, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    for name, (vs_direct, vs_maxflow) in ratios.items():
        print(f"{name} overlay/direct={vs_direct:.2f} overlay/maxflow={vs_maxflow:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
