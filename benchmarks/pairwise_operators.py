"""S3 -> GCS with what an Airflow user has today against our gateways, in one run on one machine.

    .venv/bin/python benchmarks/pairwise_operators.py [--network loopback|testbed] [--objects 32] [--size 8MiB]

Three ways to move the same objects from moto (S3) to fake-gcs (GCS):

- **airflow**: Airflow's own ``S3ToGCSOperator`` (apache-airflow-providers-google 22.8.0 on Airflow
  3.3.2), executed for real in its own virtualenv (``benchmarks/setup_bench_venv.sh``, run when
  missing) through ``benchmarks/airflow_operator.py``, with ``aws_default`` / ``google_cloud_default``
  connections from ``AIRFLOW_CONN_*`` pointing at the emulators. It copies one object at a time
  through a temp file on the worker.
- **rclone**: ``rclone copy`` (Debian's 1.60.1) with ``--transfers`` parallel objects.
- **ours**: ``skyplane_provider.transfer.copy`` (what ``skyplane-provider cp`` and the operator
  run): gateways started by the local provisioner, several per region, several connections each.

``--network loopback``: everything on 127.0.0.1; measures the software, CPU-bound on 2 cores.
``--network testbed`` (root): the emulated WAN of ``skyplane_provider/testbed`` (scenario
``aws-us-east-1--gcp-us-west4-a``): moto runs in the aws:us-east-1 namespace, fake-gcs in
gcp:us-west4-a, our gateways in the regions the planner picks (on the testbed's own grid), and both
baselines in an extra ``airflow-worker`` namespace, an Airflow worker VM in aws:us-east-1 (its links
are aws:us-east-1's; the link to aws:us-east-1 itself is the testbed's fastest).

Every copy is checked object by object (sha256) against the source. Prints a table, bytes on the
wire against bytes moved, the egress each run is charged, and ``pairwise_operators ours/baseline=R``
lines (R = baseline seconds / our seconds: above 1, we are faster).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from baselines import airflow_env, rclone_remote, run_airflow, run_rclone
from benchutil import MiB, Timer, machine_line, mixed_objects, ratio_line
from planner import Grid
from planner.plan import BYTES_PER_GB
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.emulators import EMULATORS, RunningEmulator, start_all
from skyplane_provider.testing.samples import digests, put_objects
from skyplane_provider.transfer import copy
from skyplane_provider.transfer.request import parse_size

SCENARIO = "aws-us-east-1--gcp-us-west4-a"
WORKER = "airflow-worker"
PORTS = {"s3": 9000, "gcs": 4443}  # inside fresh namespaces every port is free


@dataclass
class World:
    """Where the stores live and how to run a baseline where an Airflow worker would."""

    env: dict[str, str]                    # points the SDKs (and rclone) at the emulators
    endpoints: dict[str, str]
    src_region: str
    dst_region: str
    cost_per_gb: float                     # the src -> dst egress price the baselines pay
    worker_prefix: list[str] = field(default_factory=list)  # argv prefix that runs a program on the worker
    transfer: dict = field(default_factory=dict)            # extra options for our copy()
    label: str = ""


@contextlib.contextmanager
def loopback_world(log_dir: Path) -> Iterator[World]:
    running = start_all(("s3", "gcs"), log_dir=log_dir)
    try:
        src, dst = "aws:us-east-1", "gcp:us-central1"  # moto's and fake-gcs's bucket locations
        yield World(env=running.env, endpoints=running.endpoints, src_region=src, dst_region=dst,
                    cost_per_gb=Grid.load_default().cost(src, dst), label="loopback (127.0.0.1, no shaping)")
    finally:
        running.stop()


@contextlib.contextmanager
def testbed_world(log_dir: Path, scratch: Path) -> Iterator[World]:
    from skyplane_provider.testbed import Testbed, load_scenario
    from skyplane_provider.testbed.maxflow import max_flow
    from skyplane_provider.testbed.scenario import MAX_LINK_MBIT, Scenario

    base = load_scenario(SCENARIO)
    src, dst = base.regions[0], base.regions[1]
    gbps, cost = dict(base.gbps), dict(base.cost_per_gb)
    for r in base.regions[1:]:  # the worker is a VM in the source region: it has the source's links
        gbps[(WORKER, r)], gbps[(r, WORKER)] = gbps[(src, r)], gbps[(r, src)]
        for pair, same in (((WORKER, r), (src, r)), ((r, WORKER), (r, src))):
            if same in cost:
                cost[pair] = cost[same]
    gbps[(WORKER, src)] = gbps[(src, WORKER)] = MAX_LINK_MBIT / base.scale_mbit_per_gbps
    scenario = Scenario(name=f"{SCENARIO}+worker", regions=(*base.regions, WORKER), gbps=gbps,
                        scale_mbit_per_gbps=base.scale_mbit_per_gbps, cost_per_gb=cost,
                        description=base.description + "; plus an Airflow worker in " + src)
    tb = Testbed(scenario).up()
    started: list[RunningEmulator] = []
    try:
        for name, region in (("s3", src), ("gcs", dst)):
            host = tb.region_address(region)
            tb.assert_routed(host)  # the root namespace probes it: over the control link only
            with open(log_dir / f"{name}.log", "ab") as log:
                started.append(EMULATORS[name].start(host, PORTS[name], log=log, cwd=log_dir,
                                                     prefix=["ip", "netns", "exec", tb.netns(region)]))
        env: dict[str, str] = {}
        for e in started:
            env.update(e.env)
        grid = scratch / "testbed-grid.csv"
        tb.grid_csv(grid)
        # the worker is not a place for gateways: leave it out of what the planner sees
        grid.write_text("".join(line for line in grid.read_text().splitlines(keepends=True) if WORKER not in line))
        placement = {r: p for r, p in tb.gateway_placement().items() if r != WORKER}
        gateway_caps = {(a, b): base.scaled_gbps(a, b) for (a, b) in base.gbps}
        yield World(env=env, endpoints={e.name: e.url for e in started}, src_region=src, dst_region=dst,
                    cost_per_gb=scenario.cost_per_gb.get((src, dst), 0.0),
                    worker_prefix=["ip", "netns", "exec", tb.netns(WORKER)],
                    transfer={"solver": "ilp", "grid": str(grid), "provisioner_settings": {"placement": placement}},
                    label=f"testbed {SCENARIO} (tbf-shaped links, {base.scale_mbit_per_gbps:g} Mbit/s per grid Gbps; "
                          f"direct {base.link_mbit(src, dst):.1f} Mbit/s, max-flow "
                          f"{max_flow(gateway_caps, src, dst) * 1000:.1f} Mbit/s without the worker)")
    finally:
        for e in started:
            e.stop()
        tb.down()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", choices=("loopback", "testbed"), default="loopback")
    ap.add_argument("--objects", type=int, default=32)
    ap.add_argument("--size", default="8MiB", help="bytes per object (at most 8 MiB keeps fake-gcs uploads one-shot)")
    ap.add_argument("--gateways", type=int, default=2, help="our gateways per region")
    ap.add_argument("--connections", type=int, default=4, help="our connections per gateway and out-edge")
    ap.add_argument("--rclone-transfers", type=int, default=8)
    ap.add_argument("--solver", default=None,
                    help="our planner (default: ilp on the testbed, direct on loopback); direct on the testbed "
                         "shows what the gateways gain without the overlay")
    ap.add_argument("--skip-baselines", action="store_true", help="run ours only (no ratio lines)")
    args = ap.parse_args()
    size = parse_size(args.size)
    scratch = Path(tempfile.mkdtemp(prefix="pairwise-bench-"))
    os.environ["SKYPLANE_HOME"] = str(scratch / "home")
    logs = scratch / "logs"
    logs.mkdir()
    try:
        world_cm = (testbed_world(logs, scratch) if args.network == "testbed" else loopback_world(logs))
        with world_cm as world:
            os.environ.update(world.env)
            if args.solver:
                world.transfer["solver"] = args.solver
            print(f"pairwise_operators: {args.objects} objects x {size / MiB:g} MiB "
                  f"({args.objects * size / MiB:g} MiB, half CSV text, half random), {world.label}", flush=True)
            print(f"  {machine_line()}", flush=True)
            src = create_bucket("s3")
            objects = mixed_objects(args.objects, size)
            put_objects(src + "/data/", objects)
            expected = digests(src + "/data/")
            total = sum(map(len, objects.values()))
            baseline_egress = total / BYTES_PER_GB * world.cost_per_gb
            rows: dict[str, dict] = {}

            def check(name: str, dest_prefix_uri: str) -> None:
                if digests(dest_prefix_uri) != expected:
                    raise SystemExit(f"{name}: the copy at {dest_prefix_uri} does not match the source")

            dst = create_bucket("gcs")
            if not args.skip_baselines:
                env = airflow_env(world.env, world.endpoints, scratch / "airflow-home")
                seconds = run_airflow("s3_to_gcs", src[len("s3://"):], "data/", dst + "/airflow/", env,
                                      world.worker_prefix).seconds
                check("airflow", dst + "/airflow/")
                rows["Airflow S3ToGCSOperator"] = {"seconds": seconds, "wire": total, "egress": baseline_egress}
                print(f"  airflow operator: {seconds:.2f} s", flush=True)

                env = {**world.env, **rclone_remote("src", "s3", world.endpoints["s3"]),
                       **rclone_remote("dst", "gcs", world.endpoints["gcs"])}
                seconds = run_rclone(f"src:{src[len('s3://'):]}/data", f"dst:{dst[len('gs://'):]}/rclone", env,
                                     args.rclone_transfers, world.worker_prefix).seconds
                check("rclone", dst + "/rclone/")
                rows[f"rclone copy --transfers {args.rclone_transfers}"] = {
                    "seconds": seconds, "wire": total, "egress": baseline_egress}
                print(f"  rclone: {seconds:.2f} s", flush=True)

            with Timer() as t:  # all of it: listing, planning, gateway start-up, transfer, teardown
                stats = copy(src + "/data/", dst + "/ours/", src_region=world.src_region,
                             dst_regions=[world.dst_region], gateways_per_region=args.gateways,
                             connections=args.connections, **world.transfer)
            check("ours", dst + "/ours/")
            route = " + ".join(f"{e['src']}->{e['dst']}" for e in stats.route)
            solver = world.transfer.get("solver", "direct")
            rows[f"ours ({solver}, {args.gateways} gateways/region x {args.connections} connections)"] = {
                "seconds": t.seconds, "wire": stats.bytes_on_wire, "egress": stats.egress_usd_actual,
                "predicted": stats.egress_usd_predicted}
            print(f"  ours: {t.seconds:.2f} s ({stats.seconds:.2f} s after planning), route {route}", flush=True)

        print()
        print("| run | seconds | MiB/s | bytes moved | bytes on the wire (wire/data) | egress $ |")
        print("|---|---|---|---|---|---|")
        for name, r in rows.items():
            egress = f"{r['egress']:.5f}" + (f" (plan: {r['predicted']:.5f} uncompressed)" if "predicted" in r else "")
            print(f"| {name} | {r['seconds']:.2f} | {total / r['seconds'] / MiB:.1f} | {total} | "
                  f"{r['wire']} ({r['wire'] / total:.3f}) | {egress} |")
        print()
        ours_name = list(rows)[-1]
        for base in list(rows)[:-1]:
            print(ratio_line("pairwise_operators", rows[ours_name]["seconds"], rows[base]["seconds"],
                             f"{args.network}; baseline: {base}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
