"""CPU per small S3 read, write and HEAD from moto: the S3 store's light client against the same
calls through botocore's client, and what moto spends on each; then moto's own CPU for listing a tree
flat (as our listing asks) against directory by directory (as rclone's does).

    .venv/bin/python benchmarks/s3_small_reads.py [--objects 2000] [--size 1KiB] [--rounds 3]
                                                  [--listing 100000] [--profile]

Reads: ``--objects`` objects seeded into a bucket of a moto_server started for the run, each read
whole with ``S3Store.read_into`` (one byte past its size, as a gateway reads), then written again
(``write``) and HEADed, one at a time, in rounds that alternate the two paths: ``botocore`` (the
store on botocore alone, as where the light client does not apply: every read is a ``get_object``
call) and ``ours`` (the store as the gateways open it: the light client, gateway/stores/s3_api.py).
CPU-seconds per 1,000 calls of this process and of moto, per verb.
``--profile``: a cProfile (CPU time) of each path's last round of reads, its top lines printed.

Listing: moto's backend in this process (no HTTP: what its server spends for the same requests
before the XML), ``--listing`` keys at 1,000 per directory (benchmarks/small_files.py's tree), listed
1,000 keys per request flat with ``StartAfter`` (ours) and with delimiter ``/``, root then each
directory (rclone's). moto sorts every key the request's prefix matches, for each request.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from benchutil import clean_up, cpu_seconds, machine_line

from gateway.stores import open_store
from gateway.stores.s3 import S3Clients, S3Store
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.emulators import start_all
from skyplane_provider.transfer.request import parse_size


def timed_round(store: S3Store, keys: list[str], op: Callable[[S3Store, str], object], moto_pid: int,
                profile: cProfile.Profile | None = None) -> tuple[float, float]:
    """(our, moto's) CPU-seconds for ``op(store, key)`` on every key once."""
    ours, moto = time.process_time(), cpu_seconds(moto_pid)
    if profile:
        profile.enable()
    for key in keys:
        op(store, key)
    if profile:
        profile.disable()
    return time.process_time() - ours, cpu_seconds(moto_pid) - moto


def reader(size: int) -> Callable[[S3Store, str], object]:
    """Read a key whole into a buffer of one byte more (as a gateway reads)."""
    view = memoryview(bytearray(size + 1))

    def read(store: S3Store, key: str) -> None:
        if store.read_into(key, 0, view) != size:
            raise SystemExit(f"{key}: a short read")

    return read


def listing_cost(count: int) -> tuple[float, int, float, int]:
    """moto's CPU-seconds and requests for a flat listing and for a listing by directory of ``count`` keys."""
    from moto import mock_aws
    from moto.s3.models import s3_backends

    with mock_aws():
        backend = s3_backends["123456789012"]["aws"]
        backend.create_bucket("listing-cost", "us-east-1")
        for i in range(count):
            backend.put_object("listing-cost", f"d{i // 1000:04d}/f{i:07d}", b"x")
        bucket = backend.get_bucket("listing-cost")

        def walk(prefix: str, delimiter: str | None) -> tuple[list, int]:
            entries, requests, after = [], 0, None
            while True:
                page, truncated, _ = backend.list_objects_v2(bucket, prefix, delimiter, None, after, 1000)
                requests += 1
                entries += page
                if not truncated:
                    return entries, requests
                after = page[-1] if isinstance(page[-1], str) else page[-1].name

        start = time.process_time()
        flat, flat_requests = walk("", None)
        flat_seconds = time.process_time() - start
        start = time.process_time()
        folders, by_dir_requests = walk("", "/")
        listed = 0
        for folder in folders:
            keys, requests = walk(folder, "/")
            listed, by_dir_requests = listed + len(keys), by_dir_requests + requests
        by_dir_seconds = time.process_time() - start
        if len(flat) != count or listed != count:
            raise SystemExit(f"listed {len(flat)} flat and {listed} by directory, not {count}")
        return flat_seconds, flat_requests, by_dir_seconds, by_dir_requests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--size", default="1KiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--listing", type=int, default=100_000, help="keys in moto's listing measure (0: skip it)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    size = parse_size(args.size)
    scratch = Path(tempfile.mkdtemp(prefix="s3-small-reads-"))
    emulators = start_all(("s3",), log_dir=scratch / "logs")
    os.environ.update(emulators.env)
    try:
        print(f"s3_small_reads: {args.objects} objects x {size} B from moto, {args.rounds} rounds", flush=True)
        print(f"  {machine_line()}", flush=True)
        moto_pid = emulators.running["s3"].pid
        bucket = create_bucket("s3")
        ours = open_store(bucket)
        botocore_clients = S3Clients({})
        botocore_clients.api = None  # the same settings, botocore for every verb
        botocore_only = S3Store(ours.bucket, botocore_clients)
        keys = [f"d{i // 1000:04d}/f{i:07d}" for i in range(args.objects)]
        block = os.urandom(size + args.objects)
        for i, key in enumerate(keys):
            ours.write(key, block[i:i + size])
        ops = {"reads": reader(size), "writes": lambda store, key: store.write(key, block[:size]),
               "heads": lambda store, key: store.head(key)}
        for store in (ours, botocore_only):
            for op in ops.values():
                op(store, keys[0])  # connections opened, botocore's client built
        totals = {(op, name): [0.0, 0.0] for op in ops for name in ("botocore", "ours")}
        profiles = {name: cProfile.Profile(time.process_time) for name in ("botocore", "ours")} if args.profile else {}
        per_k = 1000 / len(keys)
        for r in range(args.rounds):
            for op, call in ops.items():
                for name, store in (("botocore", botocore_only), ("ours", ours)):
                    profile = profiles.get(name) if r == args.rounds - 1 and op == "reads" else None
                    cpu, moto = timed_round(store, keys, call, moto_pid, profile)
                    totals[op, name][0] += cpu
                    totals[op, name][1] += moto
                    print(f"  round {r + 1} {op} {name}: {cpu * per_k:.3f} CPU-s per 1,000, moto {moto * per_k:.3f}",
                          flush=True)
        per_k = 1000 / (len(keys) * args.rounds)
        print()
        print("| verb | path | CPU-s per 1,000 | moto CPU-s per 1,000 |")
        print("|---|---|---|---|")
        for (op, name), (cpu, moto) in totals.items():
            print(f"| {op} | {name} | {cpu * per_k:.3f} | {moto * per_k:.3f} |")
        for op in ops:
            print(f"s3_small_reads {op} ours/botocore CPU={totals[op, 'ours'][0] / totals[op, 'botocore'][0]:.2f} "
                  f"moto={totals[op, 'ours'][1] / totals[op, 'botocore'][1]:.2f}")
        for name, profile in profiles.items():
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(25)
            print(f"\n{name}, last round (cProfile, CPU time):\n{out.getvalue()}")
    finally:
        clean_up(scratch, emulators)
    if args.listing:
        flat, flat_requests, by_dir, by_dir_requests = listing_cost(args.listing)
        print(f"\nmoto listing {args.listing} keys (1,000 per directory), its CPU-s: flat {flat:.2f} "
              f"({flat_requests} requests), by directory {by_dir:.2f} ({by_dir_requests} requests); "
              f"flat/by directory={flat / by_dir:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
