"""Server-side copy against the same copy through gateways and against rclone, on moto and fake-gcs-server.

    .venv/bin/python benchmarks/server_side.py                       # both routes, both mixes
    .venv/bin/python benchmarks/server_side.py --routes s3 --mixes small --scale 0.25

Routes: S3 us-east-1 -> S3 eu-west-1 (one moto server holds both buckets) and GCS -> GCS. Mixes as in
benchmarks/routes.py: ``big`` 8 x 64 MiB, ``small`` 2,000 x 64 KiB, random bytes.

- **ours**: ``skyplane-provider cp -r SRC DST --json`` with default flags (``--server-side auto``: the
  destination store copies, no gateway starts), timed around the whole process.
- **ours via gateways**: the same with ``--server-side never`` (a local gateway fleet moves the bytes).
- **rclone**: ``rclone copy --transfers 16`` with both buckets on one remote, so that rclone copies
  server-side too (its default for two buckets of one remote), timed around the whole process.

Every copy is checked object by object (sha256), then deleted. CPU: the tool's own (ours: the CLI
and every gateway process it starts) and the stores' (the emulator's process), per GiB and per 1,000
objects. Prints ``server_side ours/baseline=R`` lines (R = the baseline's seconds / ours).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from baselines import rclone_remote, run_rclone
from benchutil import clean_up, cpu_seconds, machine_line, ratio_line
from routes import Run, bucket_name, delete_prefix, make_mix, run_ours
from skyplane_provider.buckets import make_bucket
from skyplane_provider.testing.buckets import create_bucket, unique_name
from skyplane_provider.testing.emulators import EmulatorSet, start_all
from skyplane_provider.testing.samples import digests, put_objects

ROUTES = {"s3": ("s3", "S3 us-east-1 -> S3 eu-west-1"), "gcs": ("gcs", "GCS -> GCS")}
BENCH_MIXES = ("big", "small")
RCLONE_TRANSFERS = 16


def buckets(kind: str) -> tuple[str, str]:
    if kind == "s3":
        return create_bucket("s3"), make_bucket(f"s3://{unique_name()}", region="aws:eu-west-1")
    return create_bucket("gcs"), create_bucket("gcs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", default=",".join(ROUTES), help="comma-separated, of: " + ", ".join(ROUTES))
    ap.add_argument("--mixes", default=",".join(BENCH_MIXES), help="comma-separated, of: " + ", ".join(BENCH_MIXES))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every mix's object count (development)")
    args = ap.parse_args()
    routes = [r for r in args.routes.split(",") if r]
    mixes = [m for m in args.mixes.split(",") if m]
    for r in routes:
        if r not in ROUTES:
            ap.error(f"unknown route {r!r}")
    for m in mixes:
        if m not in BENCH_MIXES:
            ap.error(f"unknown mix {m!r}")
    scratch = Path(tempfile.mkdtemp(prefix="server-side-bench-"))
    os.environ["SKYPLANE_HOME"] = str(scratch / "home")
    runs: list[Run] = []
    emulators: EmulatorSet | None = None
    try:
        emulators = start_all(sorted({ROUTES[r][0] for r in routes}), log_dir=scratch / "logs")
        os.environ.update(emulators.env)
        env = {**os.environ}
        print(f"server_side: {', '.join(routes)} x {', '.join(mixes)} (scale {args.scale:g}); {machine_line()}",
              flush=True)
        for route in routes:
            kind, name = ROUTES[route]
            pid = emulators.running[kind].pid
            src_root, dst_root = buckets(kind)
            for mix in mixes:
                objects = make_mix(mix, args.scale)
                put_objects(src_root + "/data/", objects)
                expected = {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()}
                nbytes = sum(map(len, objects.values()))
                del objects

                def measured(tool: str, dest: str, go) -> None:
                    stores_before = cpu_seconds(pid)
                    seconds, cpu = go()
                    stores = cpu_seconds(pid) - stores_before
                    if digests(dest) != expected:
                        raise SystemExit(f"{name} {mix} {tool}: the copy at {dest} does not match the source")
                    delete_prefix(dest)
                    run = Run(name, mix, tool, seconds, len(expected), nbytes, cpu, stores)
                    runs.append(run)
                    print(f"  {name} {mix} {tool}: {seconds:.2f} s, {run.mib_s:.1f} MiB/s, {run.obj_s:.0f} obj/s, "
                          f"CPU {cpu:.2f} s (store {stores:.2f} s); per GiB {run.per_gib(cpu):.2f} s, "
                          f"per 1,000 objects {run.per_kobj(cpu):.2f} s", flush=True)

                def ours(extra: tuple[str, ...], dest: str, path: str):
                    def go():
                        seconds, cpu, stats = run_ours(src_root + "/data/", dest, env, extra)
                        cpu = sum(cpu.values())  # client, coordinator and gateways
                        if stats["paths"].get(path) != len(expected):
                            raise SystemExit(f"{name} {mix}: expected every copy {path}, got {stats['paths']}")
                        return seconds, cpu
                    return go

                measured("ours (default flags: server-side)", dst_root + "/ours/",
                         ours((), dst_root + "/ours/", "server-side"))
                measured("ours via gateways (--server-side never)", dst_root + "/gw/",
                         ours(("--server-side", "never"), dst_root + "/gw/", "gateways"))
                r_env = {**env, **rclone_remote("one", kind, emulators.endpoints[kind])}

                def go_rclone():
                    r = run_rclone(f"one:{bucket_name(src_root)}/data", f"one:{bucket_name(dst_root)}/rclone",
                                   r_env, RCLONE_TRANSFERS)
                    return r.seconds, r.cpu_seconds

                measured(f"rclone --transfers {RCLONE_TRANSFERS} (one remote)", dst_root + "/rclone/", go_rclone)
                delete_prefix(src_root + "/data/")
    finally:
        clean_up(scratch, emulators)
    print()
    by = {(r.route, r.mix, r.tool.split(" (")[0]): r for r in runs}
    for route in routes:
        name = ROUTES[route][1]
        for mix in mixes:
            ours = by.get((name, mix, "ours"))
            for base in ("ours via gateways", f"rclone --transfers {RCLONE_TRANSFERS}"):
                other = by.get((name, mix, base))
                if ours and other:
                    print(ratio_line("server_side", ours.seconds, other.seconds, f"{name} {mix}; baseline: {base}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
