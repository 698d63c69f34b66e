"""A mirror's dry run, with and without a filter that confines the listing: ours against rclone's.

    .venv/bin/python benchmarks/dry_run.py [--count 20000] [--quick]

Source: ``--count`` files of 1 KiB in a local directory tree (1,000 per directory) on tmpfs
(``/dev/shm`` when it has room). Destination: a copy (``cp -a``: same sizes and times) of the first
three quarters of the directories plus 1,000 files the source does not have. So a mirror would copy a
quarter of the source and delete 1,000 files.

- **rclone**: ``rclone sync SRC DST --dry-run`` (sync deletes by default; Debian's 1.60.1).
- **ours**: ``skyplane-provider sync SRC DST --delete --dry-run`` (lists both sides, diffs, plans,
  prices, prints every copy and deletion; no gateway starts).

Both as whole processes (start-up included), their output captured, run ``--repeat`` times each,
alternating, best time kept; CPU seconds are user + system of the process and its children. Twice: the
whole tree, and with ``--include '/dNNNN/**'`` naming the last directory (which the destination lacks):
both tools then list only that directory.
The counts of copies and deletions each tool reports are checked against each other. Prints a table and
``dry_run ours/baseline=R`` lines (R = rclone's seconds / ours: above 1, we are faster).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchutil import Timer, machine_line, ratio_line

PER_DIR = 1000
SIZE = 1024


def make_trees(src: Path, dst: Path, count: int) -> None:
    block = os.urandom(SIZE + count)
    for i in range(count):
        d = src / f"d{i // PER_DIR:04d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i:07d}").write_bytes(block[i:i + SIZE])
    dirs = sorted(p.name for p in src.iterdir())
    dst.mkdir()
    for name in dirs[: len(dirs) * 3 // 4]:
        subprocess.run(["cp", "-a", str(src / name), str(dst / name)], check=True)
    (dst / "stale").mkdir()
    for i in range(PER_DIR):
        (dst / "stale" / f"s{i:04d}").write_bytes(block[i:i + SIZE])


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, CPU seconds of the process and its children, stdout + stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with Timer() as t:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        raise SystemExit(f"{argv[0]} failed:\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return t.seconds, cpu, out.stdout + out.stderr


def rclone_counts(output: str) -> tuple[int, int]:
    return output.count("Skipped copy as --dry-run"), output.count("Skipped delete as --dry-run")


def ours_counts(output: str) -> tuple[int, int]:
    return output.count("would copy "), output.count("would delete ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4,000 files, one repeat (development)")
    args = ap.parse_args()
    count, repeat = (4_000, 1) if args.quick else (args.count, args.repeat)
    room = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    scratch = Path(tempfile.mkdtemp(prefix="dry-run-", dir="/dev/shm" if room > 8 * count * 4096 else None))
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # Debian's rclone cannot load it
    env["SKYPLANE_HOME"] = str(scratch / "home")
    ours_cli = [str(Path(sys.executable).parent / "skyplane-provider")]
    try:
        src, dst = scratch / "src", scratch / "dst"
        make_trees(src, dst, count)
        print(f"dry_run: mirror of {count} files x {SIZE} B (local tmpfs) onto a destination holding 3/4 of them "
              f"and {PER_DIR} others", flush=True)
        print(f"  {machine_line()}", flush=True)
        rows = []
        last = f"/d{(count - 1) // PER_DIR:04d}/**"
        listed = {"whole tree": count + sum(1 for p in dst.rglob("*") if p.is_file()), f"--include '{last}'": PER_DIR}
        for label, extra in (("whole tree", []), (f"--include '{last}'", ["--include", last])):
            commands = {"rclone": ["rclone", "sync", str(src), str(dst), "--dry-run", "--config", "/dev/null", *extra],
                        "ours": [*ours_cli, "sync", f"{src}/", f"{dst}/", "--delete", "--dry-run", *extra]}
            best: dict[str, tuple[float, float, str]] = {}
            for _ in range(repeat):
                for name, argv in commands.items():
                    run = timed(argv, env)
                    if name not in best or run[0] < best[name][0]:
                        best[name] = run
            counts = {"rclone": rclone_counts(best["rclone"][2]), "ours": ours_counts(best["ours"][2])}
            if counts["rclone"] != counts["ours"]:
                raise SystemExit(f"{label}: rclone would copy/delete {counts['rclone']}, we {counts['ours']}")
            summary = next(line for line in best["ours"][2].splitlines() if line.startswith("predicted cost"))
            rows.append((label, counts["ours"], best, summary))
            print(f"  {label}: rclone {best['rclone'][0]:.2f} s, ours {best['ours'][0]:.2f} s", flush=True)
        print()
        print("| listing | would copy / delete | rclone s (CPU s) | ours s (CPU s) | "
              "ours CPU s per 1,000 listed |")
        print("|---|---|---|---|---|")
        for label, (copies, deletions), best, _ in rows:
            print(f"| {label} | {copies} / {deletions} | {best['rclone'][0]:.2f} ({best['rclone'][1]:.2f}) | "
                  f"{best['ours'][0]:.2f} ({best['ours'][1]:.2f}) | {best['ours'][1] / listed[label] * 1000:.3f} |")
        print()
        for label, _, best, summary in rows:
            print(ratio_line("dry_run", best["ours"][0], best["rclone"][0],
                             f"{label}; CPU s ours {best['ours'][1]:.2f}, rclone {best['rclone'][1]:.2f}; ours: {summary}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
