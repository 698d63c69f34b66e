"""Overlay routing on the emulated WAN, and the planner's predictions checked against it: the same
data mix moved by the direct, widest-path and ILP plans (real gateway processes in the testbed's
namespaces) and by one plain TCP stream, compared with each other, with the network's max-flow and
with what the planner predicted.

    .venv/bin/python benchmarks/overlay.py --quick                       # shipped scenarios, short runs
    .venv/bin/python benchmarks/overlay.py --random 8 --seed 2026 --multicast --json out.json   # the full run

Needs root (network namespaces). Scenarios: the shipped ones (``skyplane_provider/testbed/scenarios.json``,
or those named with ``--scenario``) and, with ``--random K``, K region pairs drawn from the planner's
whole grid with their two best relays (``skyplane_provider/testbed/draw.py``, ``--seed``). By default
every scenario runs as gateway VMs (``--capacity vm``, docs/testbed.md): each gateway in a namespace of
its own with the planner's per-VM egress/ingress caps, the grid's rate per VM and remote region, up to
``--vms`` gateways per region, the whole scaled to fit two cores. ``--capacity link`` runs the shipped
scenarios as before: one namespace per region, links shared by every gateway.

For every scenario it brings a testbed up, plans each solver on the testbed's grid
(``Testbed.grid_csv``; the planner's default 1 TB job), moves a local-directory store from the source
region to the destination region with each plan, runs the single-stream baseline (one Python socket
over the direct path), and takes the testbed down (also on errors and SIGTERM). Every run lasts about
``--seconds`` (its data is sized from the plan's predicted rate), so short-run effects weigh the same on
every plan. Data lives on /dev/shm. Prints a table per scenario, a summary, then one line per scenario::

    <scenario> overlay/direct=R1 overlay/maxflow=R2 predicted/measured=R3

R1 = the ILP plan's data rate / the direct plan's (source bytes per second, both with lz4 on the same
data mix); R2 = the ILP plan's wire rate (frame bytes of one copy per second, end to end) / the
max-flow of the emulated network (its physical limit, every VM in use); R3 = the ILP plan's predicted
throughput / its steady rate (what the destination received per second between having 10% and 90% of
it: the planner predicts the rate of a full pipeline; filling and draining it is shown apart, as the
end-to-end ratio). Egress is checked the same way: the planner's USD per GB on the bytes that went on
the wire against the bytes each region pair's shaper counted, priced. Times run from the fleet being
up until the gateways confirmed every chunk written; gateway start-up and the final verification are
shown apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from planner import Grid, solve
from planner.plan import Plan
from skyplane_provider.testbed import Scenario, Testbed, shipped_scenarios
from skyplane_provider.testbed.draw import random_scenarios
from skyplane_provider.transfer.request import parse_size

from _testbed_run import MiB, Run, agrees, make_dataset, open_testbed, run_transfer, single_stream, subset

SOLVERS = ("direct", "widest", "ilp")
QUICK_SECONDS = 6.0
FULL_SECONDS = 20.0
#: Frames per source byte of the benchmark's data mix with lz4 (0.649 measured): sizes a scenario's first
#: run; later runs use what the previous one measured.
WIRE_PER_BYTE_GUESS = 0.65
MIN_FILES = 8


def select_scenarios(names: list[str] | None) -> list[str]:
    """The shipped scenarios to run: the named ones in the given order (each once), or every shipped one."""
    shipped = shipped_scenarios()
    if not names:
        return list(shipped)
    unknown = [n for n in names if n not in shipped]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; shipped: {', '.join(shipped)}")
    return list(dict.fromkeys(names))


def build_scenarios(args: argparse.Namespace) -> list[tuple[Scenario, str]]:
    """(scenario, kind) to run: the shipped ones (as VMs unless ``--capacity link``), then the drawn ones."""
    shipped = shipped_scenarios()
    chosen = []
    for name in [] if args.no_shipped else select_scenarios(args.scenario):
        sc = shipped[name]
        chosen.append((sc.as_vms(args.vms) if args.capacity == "vm" else sc, "shipped"))
    if args.random:
        chosen += [(sc, "random") for sc in random_scenarios(args.random, args.seed, vms_per_region=args.vms)]
    return chosen


@dataclass
class ScenarioResult:
    """One scenario's runs; the ratios of the final line."""

    scenario: Scenario
    kind: str
    src: str
    dst: str
    maxflow_gbps: float
    runs: dict[str, Run]
    single_gbps: float

    @property
    def ilp(self) -> Run:
        return self.runs["ilp"]

    @property
    def vs_direct(self) -> float:
        return self.ilp.gbps / self.runs["direct"].gbps

    @property
    def vs_widest(self) -> float:
        return self.ilp.gbps / self.runs["widest"].gbps

    @property
    def vs_maxflow(self) -> float:
        return self.ilp.wire_gbps / self.maxflow_gbps

    @property
    def predicted_over_measured(self) -> float:
        return self.ilp.predicted_gbps / self.ilp.steady_gbps

    def to_dict(self) -> dict:
        return {
            "scenario": self.scenario.name, "kind": self.kind, "src": self.src, "dst": self.dst,
            "capacity": self.scenario.capacity, "vms_per_region": self.scenario.vms_per_region,
            "scale_mbit_per_gbps": self.scenario.scale_mbit_per_gbps, "maxflow_mbit": self.maxflow_gbps * 1000,
            "single_stream_mbit": self.single_gbps * 1000, "overlay_vs_direct": self.vs_direct,
            "overlay_vs_widest": self.vs_widest, "overlay_vs_maxflow": self.vs_maxflow,
            "predicted_over_measured": self.predicted_over_measured,
            "runs": {solver: run.record(self.scenario) for solver, run in self.runs.items()},
        }


def route(plan: Plan) -> str:
    return "; ".join(f"{e.src}>{e.dst}" for e in plan.edges)


def plan_all(tb: Testbed, src: str, dst: str, args: argparse.Namespace, work: Path) -> dict[str, Plan]:
    """Each solver's plan on the testbed's own grid (the planner's default job size: a bulk transfer)."""
    grid = Grid.from_csv(tb.grid_csv(work / f"{tb.scenario.name}-grid.csv"))
    gateways = args.vms if tb.scenario.capacity == "vm" else args.max_gateways_per_region
    return {solver: solve(src, [dst], solver=solver, max_gateways_per_region=gateways, grid=grid)
            for solver in SOLVERS}


def run_bytes(gbps: float, seconds: float, wire_per_byte: float, file_size: int) -> int:
    """Source bytes that take about ``seconds`` at ``gbps`` of frames, in whole files (at least ``MIN_FILES``)."""
    files = int(gbps * 1e9 / 8 * seconds / wire_per_byte / file_size)
    return max(MIN_FILES, files) * file_size


def bench_scenario(sc: Scenario, kind: str, args: argparse.Namespace, work: Path) -> ScenarioResult:
    """Run one scenario and print its table."""
    src, dst = sc.found["src"], sc.found["dst"]
    with open_testbed(sc) as tb:
        plans = plan_all(tb, src, dst, args, work)
        sizes = {s: run_bytes(p.throughput_gbps * tb.plan_scale, args.seconds, WIRE_PER_BYTE_GUESS, args.chunk_size)
                 for s, p in plans.items()}
        single_size = run_bytes(sc.link_mbit(src, dst) / 1000, args.seconds, 1.0, args.chunk_size)
        pool = make_dataset(work / "pool", max(*sizes.values(), single_size), file_size=args.chunk_size)
        runs: dict[str, Run] = {}
        wire_per_byte = WIRE_PER_BYTE_GUESS
        for solver, plan in plans.items():
            size = run_bytes(plan.throughput_gbps * tb.plan_scale, args.seconds, wire_per_byte, args.chunk_size)
            data, out = work / f"src-{solver}", work / f"dst-{solver}"
            subset(pool, data, size)
            runs[solver] = run_transfer(tb, data, [(out, dst)], src, plan, connections=args.connections,
                                        chunk_size=args.chunk_size)
            wire_per_byte = runs[solver].wire_per_byte or wire_per_byte
            shutil.rmtree(data)
            shutil.rmtree(out)
        data, out = work / "src-single", work / "dst-single"
        moved = subset(pool, data, single_size)
        single_gbps = moved * 8 / single_stream(tb, data, out, src, dst) / 1e9
        for d in (data, out, work / "pool"):
            shutil.rmtree(d)
        result = ScenarioResult(sc, kind, src, dst, tb.maxflow(src, dst), runs, single_gbps)
    print_table(result)
    return result


def print_table(r: ScenarioResult) -> None:
    """The scenario's Markdown table: every plan's run and the single stream, in testbed and grid units."""
    sc = r.scenario
    scale = sc.scale_mbit_per_gbps
    prices = sc.cost_per_gb
    caps = ", ".join(f"{p} {e:g}/{i:g}" for p, (e, i) in sorted(sc.vm_caps.items()))
    shape = f"{sc.vms_per_region} VM(s) per region, VM caps {caps} Gbps" if sc.capacity == "vm" else "shared links"
    print(f"\n## {sc.name} ({r.kind}): {r.src} -> {r.dst}; {shape}; scale {scale:g} Mbit/s per grid Gbps")
    print(f"direct path {sc.link_mbit(r.src, r.dst):.1f} Mbit/s per VM pair, max-flow "
          f"{r.maxflow_gbps * 1000:.1f} Mbit/s (= {r.maxflow_gbps * 1000 / scale:.2f} grid Gbps)\n")
    print("| run | route | gateways | MiB | s | data Mbit/s | wire Mbit/s | steady Mbit/s | predicted Mbit/s "
          "| predicted / steady | predicted / wire | headroom | wire / max-flow | egress $ predicted "
          "| egress $ measured | measured / predicted | wire / data | source gateways' balance "
          "| busiest gateway CPU | start-up s | verify s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    maxflow_mbit = r.maxflow_gbps * 1000
    for solver, run in r.runs.items():
        measured_usd = run.egress_usd_measured(prices)
        print(f"| {solver} | {route(run.plan)} | {sum(run.plan.gateways.values())} | {run.stats.bytes / MiB:.0f} "
              f"| {run.seconds:.2f} | {run.gbps * 1000:.1f} | {run.wire_gbps * 1000:.1f} "
              f"| {run.steady_gbps * 1000:.1f} "
              f"| {run.predicted_gbps * 1000:.1f} | {run.predicted_gbps / run.steady_gbps:.3f} "
              f"| {run.predicted_gbps / run.wire_gbps:.3f} | {run.headroom(sc):.2f} "
              f"| {run.wire_gbps * 1000 / maxflow_mbit:.2f} | {run.egress_usd_predicted:.6f} | {measured_usd:.6f} "
              f"| {measured_usd / run.egress_usd_predicted if run.egress_usd_predicted else float('nan'):.3f} "
              f"| {run.wire_per_byte:.3f} | {run.source_balance:.2f} | {run.busiest_cpu:.0%} | {run.setup_seconds:.1f} "
              f"| {run.verify_seconds:.1f} |")
    print(f"| single TCP stream | {r.src}>{r.dst}, no lz4 | | | | {r.single_gbps * 1000:.1f} "
          f"| {r.single_gbps * 1000:.1f} "
          f"| | {sc.link_mbit(r.src, r.dst):.1f} | | {sc.link_mbit(r.src, r.dst) / (r.single_gbps * 1000):.3f} "
          f"| | {r.single_gbps * 1000 / maxflow_mbit:.2f} | | | | 1.000 | | | | |")
    print(f"\nILP / direct {r.vs_direct:.2f}x, ILP / widest {r.vs_widest:.2f}x, ILP / single stream "
          f"{r.ilp.gbps / r.single_gbps:.2f}x (data rates)", flush=True)


def print_summary(results: list[ScenarioResult]) -> None:
    """How often the planner's predictions held, and the overlay's gain over the drawn and the shipped scenarios."""
    plans = [(r, solver, run) for r in results for solver, run in r.runs.items()]
    steady_ok = [p for p in plans if agrees(p[2].steady_gbps, p[2].predicted_gbps)]
    wire_ok = [p for p in plans if agrees(p[2].wire_gbps, p[2].predicted_gbps)]
    usd_ok = [(r, solver, run) for r, solver, run in plans
              if agrees(run.egress_usd_measured(r.scenario.cost_per_gb), run.egress_usd_predicted)]
    n = len(plans)
    print(f"\nprediction check over {n} plans, within 10%: throughput {len(steady_ok)} ({len(steady_ok) / n:.0%}) "
          f"steady, {len(wire_ok)} ({len(wire_ok) / n:.0%}) end to end; egress $ {len(usd_ok)} ({len(usd_ok) / n:.0%})")
    for r, solver, run in plans:
        if (r, solver, run) not in steady_ok:
            print(f"  throughput off: {r.scenario.name} {solver}: predicted / steady "
                  f"{run.predicted_gbps / run.steady_gbps:.3f}, source gateways' balance {run.source_balance:.2f}")
    for kind in ("random", "shipped"):
        mine = [r for r in results if r.kind == kind]
        if mine:
            print(f"{kind} scenarios ({len(mine)}): ILP / direct median "
                  f"{statistics.median(r.vs_direct for r in mine):.2f}x (best {max(r.vs_direct for r in mine):.2f}x), "
                  f"ILP / widest median "
                  f"{statistics.median(r.vs_widest for r in mine):.2f}x, wire / max-flow median "
                  f"{statistics.median(r.vs_maxflow for r in mine):.2f} (lowest {min(r.vs_maxflow for r in mine):.2f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"runs of about {QUICK_SECONDS:g} s (default {FULL_SECONDS:g})")
    ap.add_argument("--scenario", action="append", help="a shipped scenario name (repeat for several; default all)")
    ap.add_argument("--no-shipped", action="store_true", help="no shipped scenario (with --random)")
    ap.add_argument("--random", type=int, default=0, metavar="K", help="also K region pairs drawn from the whole grid")
    ap.add_argument("--seed", type=int, default=2026, help="seed of the --random draw (default 2026)")
    ap.add_argument("--capacity", choices=("vm", "link"), default="vm",
                    help="vm: gateways as VMs with the planner's caps (default); link: shared links (shipped only)")
    ap.add_argument("--vms", type=int, default=2, help="VMs (the most gateways) per region (default 2)")
    ap.add_argument("--seconds", type=float, help="about how long each run moves data")
    ap.add_argument("--chunk-size", type=parse_size, default=MiB,
                    help="chunk and file size (default 1MiB: fine-grained enough to split over paths)")
    ap.add_argument("--connections", type=int, default=4, help="TCP connections per gateway and edge (default 4)")
    ap.add_argument("--max-gateways-per-region", type=int, default=2, help="with --capacity link (default 2)")
    ap.add_argument("--multicast", action="store_true", help="then the multicast benchmark (multicast_testbed.py)")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    if args.random and args.capacity == "link":
        raise SystemExit("--random draws vm scenarios; drop --capacity link")
    if args.no_shipped and not args.random:
        raise SystemExit("--no-shipped leaves nothing to run; add --random K")
    scenarios = build_scenarios(args)
    if os.geteuid() != 0:
        raise SystemExit("overlay.py needs root: it creates network namespaces")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    print(f"overlay benchmark: {len(scenarios)} scenario(s) ({args.capacity}), runs of about {args.seconds:g} s, "
          f"{args.chunk_size / MiB:g} MiB chunks, {args.connections} connections per gateway and edge; "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    results = []
    report: dict = {"argv": sys.argv[1:], "load_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="overlay-bench-", dir="/dev/shm") as tmp:
        for sc, kind in scenarios:
            results.append(bench_scenario(sc, kind, args, Path(tmp)))
        print_summary(results)
        if args.multicast:
            from multicast_testbed import DSTS, bench_multicast

            args.dsts = 4 if args.quick else len(DSTS)
            report["multicast"] = bench_multicast(args, Path(tmp))
    report.update(load_end=os.getloadavg(), seconds=time.monotonic() - started,
                  scenarios=[r.to_dict() for r in results])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"\ntotal {time.monotonic() - started:.0f} s, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    for r in results:
        print(f"{r.scenario.name} overlay/direct={r.vs_direct:.2f} overlay/maxflow={r.vs_maxflow:.2f} "
              f"predicted/measured={r.predicted_over_measured:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
