"""Many small objects: our gateways against rclone, objects per second, in one run on one machine.

    .venv/bin/python benchmarks/small_files.py [--count 100000] [--size 4KiB] [--to local|s3] [--quick]

Source: ``--count`` files of ``--size`` bytes (random, so compression cannot help) in a local
directory tree (1,000 per directory) on tmpfs (``/dev/shm`` when it has room; the disk is not
measured). Destination ``--to local``: another tmpfs directory, the most honest comparison on this
machine (rclone's local backend against our local stores behind a source and a destination
gateway, no emulator in the way); ``--to s3``: a moto bucket (moto itself tops out near 400 small
puts/s on these 2 cores, so this measures moto as much as either tool: keep ``--count`` small).

- **rclone**: ``rclone copy SRC DST --transfers T --checkers T`` (Debian's 1.60.1).
- **ours**: ``skyplane_provider.transfer.copy`` (what ``skyplane-provider cp -r`` runs), timed from
  the call to its return: listing, gateway start-up, transfer, verification and teardown.

Every destination object is checked (sha256) against the source. CPU per 1,000 objects: rclone's
process; ours: this process during the call, the job's coordinator and every gateway process (all
started for the call, coordinator included: ``benchutil.TreeCPU``). Prints a table and
``small_files ours/baseline=R`` (R = rclone's seconds / ours: above 1, we are faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from baselines import run_rclone
from benchutil import MiB, Timer, TreeCPU, clean_up, compile_ours, machine_line, ratio_line
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.emulators import start_all
from skyplane_provider.testing.samples import digests
from skyplane_provider.transfer import copy
from skyplane_provider.transfer.request import parse_size

PER_DIR = 1000


def make_tree(root: Path, count: int, size: int) -> None:
    block = os.urandom(size + count)  # object i is a distinct window of it: distinct, cheap to make
    for i in range(count):
        d = root / f"d{i // PER_DIR:04d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i:07d}").write_bytes(block[i:i + size])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--size", default="4KiB")
    ap.add_argument("--to", choices=("local", "s3"), default="local")
    ap.add_argument("--quick", action="store_true", help="10,000 objects (development)")
    ap.add_argument("--transfers", type=int, default=16, help="rclone's --transfers and --checkers")
    ap.add_argument("--gateways", type=int, default=1, help="our gateways per region")
    ap.add_argument("--connections", type=int, default=None, help="our connections per gateway (default: plan's)")
    args = ap.parse_args()
    compile_ours()  # as an installed package is: no module compiled again in each process
    count = 10_000 if args.quick else args.count
    size = parse_size(args.size)
    room = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    base_dir = "/dev/shm" if room > 4 * count * max(size, 4096) + 2 * 1024**3 else None
    scratch = Path(tempfile.mkdtemp(prefix="small-files-", dir=base_dir))
    os.environ["SKYPLANE_HOME"] = str(scratch / "home")
    emulators = None
    try:
        src = scratch / "src"
        make_tree(src, count, size)
        expected = digests("file://" + str(src))
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # Debian's rclone cannot load it
        if args.to == "s3":
            emulators = start_all(("s3",), log_dir=scratch / "logs")
            os.environ.update(emulators.env)
            env.update(emulators.env)
            env.update({"RCLONE_CONFIG_DST_TYPE": "s3", "RCLONE_CONFIG_DST_PROVIDER": "Other",
                        "RCLONE_CONFIG_DST_ENDPOINT": emulators.endpoints["s3"],
                        "RCLONE_CONFIG_DST_ACCESS_KEY_ID": "testing", "RCLONE_CONFIG_DST_SECRET_ACCESS_KEY": "testing",
                        "RCLONE_CONFIG_DST_REGION": "us-east-1", "RCLONE_CONFIG_DST_FORCE_PATH_STYLE": "true",
                        "RCLONE_CONFIG": "/dev/null"})
            bucket = create_bucket("s3")
            dests = {"rclone": (f"dst:{bucket[len('s3://'):]}/rclone", bucket + "/rclone/"),
                     "ours": (bucket + "/ours/", bucket + "/ours/")}
        else:
            dests = {name: (str(scratch / name), "file://" + str(scratch / name)) for name in ("rclone", "ours")}
            for name in dests:
                (scratch / name).mkdir()
        where = "tmpfs" if base_dir else "disk"
        print(f"small_files: {count} objects x {size} B ({count * size / MiB:.0f} MiB, random) from a local "
              f"directory ({where}) to {args.to}", flush=True)
        print(f"  {machine_line()}", flush=True)

        rclone = run_rclone(str(src), dests["rclone"][0], env, args.transfers,
                            extra=("--checkers", str(args.transfers)))
        rclone_s = rclone.seconds
        if digests(dests["rclone"][1]) != expected:
            raise SystemExit("rclone's copy does not match the source")
        print(f"  rclone: {rclone_s:.2f} s", flush=True)

        tree = TreeCPU(os.getpid(), marker=os.environ["SKYPLANE_HOME"], from_now=True)
        with Timer() as t:
            # two region tags, as two regions' stores would be: on this one host the plan has the source's
            # gateway write the destination itself (Plan.on_one_host), as a user's default run does
            regions = {"src_region": "local:src"}
            if args.to == "local":
                regions["dst_regions"] = ["local:dst"]
            stats = copy(str(src), dests["ours"][0], gateways_per_region=args.gateways,
                         connections=args.connections, **regions)
        ours_cpu = tree.total()
        if digests(dests["ours"][1]) != expected:
            raise SystemExit("our copy does not match the source")
        print(f"  ours: {t.seconds:.2f} s ({stats.seconds:.2f} s after listing and planning), "
              f"{stats.chunks} chunks, {stats.retries} retries", flush=True)

        print()
        print("| run | seconds | objects/s | MiB/s | CPU-s per 1,000 objects | bytes moved | "
              "bytes on the wire (wire/data) | egress $ |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| rclone copy --transfers {args.transfers} --checkers {args.transfers} | {rclone_s:.2f} | "
              f"{count / rclone_s:.0f} | {count * size / rclone_s / MiB:.2f} | {rclone.cpu_seconds / count * 1000:.3f} | "
              f"{count * size} | {count * size} (1.000) | 0 |")
        print(f"| ours ({args.gateways} gateway/region) | {t.seconds:.2f} | {count / t.seconds:.0f} | "
              f"{count * size / t.seconds / MiB:.2f} | {ours_cpu / count * 1000:.3f} | {stats.bytes} | "
              f"{stats.bytes_on_wire} ({stats.bytes_on_wire / max(stats.bytes, 1):.3f}) | "
              f"{stats.egress_usd_actual:.5f} |")
        print()
        print(ratio_line("small_files", t.seconds, rclone_s,
                         f"{count} x {size} B to {args.to}; ours {count / t.seconds:.0f} obj/s, "
                         f"rclone {count / rclone_s:.0f} obj/s"))
    finally:
        clean_up(scratch, emulators)
    return 0


if __name__ == "__main__":
    sys.exit(main())
