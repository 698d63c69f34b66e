"""What a user waits for: ``skyplane-provider cp -r`` with default flags as a whole process, against rclone.

    .venv/bin/python benchmarks/cli_copy.py [--counts 1,20000] [--size 4KiB] [--rounds 3] [--before DIR]

For each count, a tree of that many random files of ``--size`` (1,000 per directory, on tmpfs) is copied
local -> local, ``--rounds`` times per tool, the tools alternating within each round: ``before`` (the
checkout at ``--before``, run with this venv through PYTHONPATH: e.g. ``git archive main | tar -x -C
DIR``), ``ours`` (this checkout) and ``rclone copy --transfers 16 --checkers 16``. Each run is timed
from its start until the command exits: interpreter start-up, imports, planning, the coordinator and
gateway starts, the transfer, verification and teardown included. CPU: every process the command
started, the detached coordinator and the gateways included (this process is their child subreaper:
they are reparented to it and reaped, so ``RUSAGE_CHILDREN`` counts them), summed until the last one
exited. Both checkouts are byte-compiled first, as an installed package is (benchutil.compile_ours).
Every copy is checked (sha256) against the source. Prints one line per run, the medians and
``cli_copy_N ours/baseline=R`` per count (R = rclone's median seconds / ours: above 1, we are faster).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import compile_ours, machine_line, ratio_line
from skyplane_provider.testing.samples import digests
from skyplane_provider.transfer.request import parse_size
from small_files import make_tree

PR_SET_CHILD_SUBREAPER = 36


def libc_prctl(option: int, value: int) -> int:
    return ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value, 0, 0, 0)


def command(tool: str, src: Path, dst: Path) -> list[str]:
    if tool == "rclone":
        return ["rclone", "copy", "--transfers", "16", "--checkers", "16", str(src), str(dst)]
    return [sys.executable, "-m", "skyplane_provider.cli.main", "cp", "-r", f"{src}/", f"{dst}/"]


def run_once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """``(seconds until the command exited, CPU-s of it and of every process it started)``. ``cwd``: a
    directory without our packages (``python -m`` puts it before PYTHONPATH)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    while True:  # the coordinator and gateways it detached, reparented to us: wait for the last
        try:
            os.wait()
        except ChildProcessError:
            break
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="1,20000", help="file counts, comma-separated")
    ap.add_argument("--size", default="4KiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", type=Path, help="a checkout of the code to compare with (run through PYTHONPATH)")
    args = ap.parse_args()
    size = parse_size(args.size)
    if libc_prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        raise SystemExit("cannot become a child subreaper: the detached processes' CPU would be lost")
    tools = (["before"] if args.before else []) + ["ours", "rclone"]
    compile_ours()
    if args.before:
        compile_ours(args.before.resolve())
    scratch = Path(tempfile.mkdtemp(prefix="cli-copy-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "PYTHONPATH")}
    try:
        print(f"cli_copy: {args.counts} files x {size} B, local -> local, {args.rounds} rounds; {machine_line()}",
              flush=True)
        for count in (int(c) for c in args.counts.split(",")):
            src = scratch / f"src{count}"
            make_tree(src, count, size)
            expected = digests(f"file://{src}")
            results: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
            for r in range(args.rounds):
                for tool in tools:
                    dst = scratch / "dst"
                    shutil.rmtree(dst, ignore_errors=True)
                    dst.mkdir()
                    run_env = {**env, "SKYPLANE_HOME": str(scratch / f"home-{tool}")}
                    if tool == "before":
                        run_env["PYTHONPATH"] = str(args.before.resolve())
                    load = os.getloadavg()[0]
                    seconds, cpu = run_once(command(tool, src, dst), run_env, scratch)
                    if digests(f"file://{dst}") != expected:
                        raise SystemExit(f"{tool}'s copy does not match the source")
                    results[tool].append((seconds, cpu))
                    print(f"  {count} files, round {r}, {tool:6s}: {seconds:6.2f} s, {cpu:5.2f} CPU-s "
                          f"({cpu / count * 1000:.3f} per 1,000 objects), load {load:.1f}", flush=True)
            print(f"  medians, {count} files:")
            for tool, rows in results.items():
                s, c = statistics.median(x[0] for x in rows), statistics.median(x[1] for x in rows)
                print(f"    {tool:6s}: {s:6.2f} s, {c:5.2f} CPU-s ({c / count * 1000:.3f} per 1,000 objects)")
            ours, base = (statistics.median(x[0] for x in results[t]) for t in ("ours", "rclone"))
            print(ratio_line(f"cli_copy_{count}", ours, base, f"{count} x {size} B, local -> local, "
                             f"median of {args.rounds}, whole process"), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
