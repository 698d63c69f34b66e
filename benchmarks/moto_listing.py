"""What listing a bucket costs moto itself: flat pages (what our coordinator asks: ListObjectsV2 of
1,000 keys after a continuation token, the fewest requests S3 takes) against a listing directory by
directory (what rclone asks by default: the top level with ``delimiter=/``, then each directory's
pages), on one bucket laid out as ``benchmarks/scale.py`` lays it out (1,000 objects per directory).

moto answers every ListObjectsV2 by walking and sorting every key of the bucket, then slicing after
the token, so a flat listing costs it O(n log n) per page where a directory's costs a prefix test per
key: at 100,000 objects the shapes differ by about a quarter of a CPU-second per 1,000 objects, the
gap between the two tools' moto CPU in ``scale.py --from s3`` (docs/benchmarks.md, "Scale"). S3 itself
answers a page in the same time whatever the bucket's size; this script measures the emulator, not us.

    .venv/bin/python benchmarks/moto_listing.py --objects 100000    # ~6 min, most of it seeding
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from benchutil import cpu_seconds, machine_line
from small_files import PER_DIR

from skyplane_provider.testing.emulators import start_all


def _keys(s3, bucket: str, **query) -> int:
    """Keys listed by every page (1,000 at most, after each continuation token) of one ListObjectsV2."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 1000}, **query)
    return sum(page["KeyCount"] - len(page.get("CommonPrefixes", [])) for page in pages)


def flat(s3, bucket: str) -> int:
    """Every key, in pages of 1,000 after each continuation token; the number listed."""
    return _keys(s3, bucket)


def by_directory(s3, bucket: str) -> int:
    """The top level's directories (``delimiter=/``), then each directory's pages; the number listed."""
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/", MaxKeys=1000)
    dirs = [d["Prefix"] for d in top.get("CommonPrefixes", [])]
    return top["KeyCount"] - len(dirs) + sum(_keys(s3, bucket, Prefix=d, Delimiter="/") for d in dirs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="moto-listing-") as scratch:
        emulators = start_all(("s3",), log_dir=Path(scratch))
        try:
            pid = emulators.running["s3"].pid
            s3 = boto3.client("s3", endpoint_url=emulators.endpoints["s3"], aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
            s3.create_bucket(Bucket="listing")
            body = os.urandom(1024)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: s3.put_object(Bucket="listing", Key=f"d{i // PER_DIR:04d}/f{i:07d}",
                                                      Body=body), range(args.objects)))
            print(f"moto_listing: {args.objects} objects, {PER_DIR} per directory; {machine_line()}", flush=True)
            per_k = 1000 / args.objects
            costs: dict[str, float] = {}
            for _ in range(args.rounds):
                for shape in (flat, by_directory):
                    before = cpu_seconds(pid)
                    assert shape(s3, "listing") == args.objects
                    costs[shape.__name__] = cpu_seconds(pid) - before
                    print(f"  {shape.__name__}: moto {costs[shape.__name__]:.2f} CPU-s "
                          f"({costs[shape.__name__] * per_k:.3f} per 1,000 objects)", flush=True)
            print(f"moto_listing flat/by_directory={costs['flat'] / costs['by_directory']:.2f} "
                  f"(moto CPU-s per 1,000 objects: {costs['flat'] * per_k:.3f} against "
                  f"{costs['by_directory'] * per_k:.3f})")
        finally:
            emulators.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
