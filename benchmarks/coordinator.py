"""What running a job in its own coordinator process costs: ``Transfer.run()`` (the client prepares,
starts the coordinator, watches it over HTTP) against ``Transfer.execute()`` (the same pipeline in the
calling process, as every client ran it before the coordinator).

    .venv/bin/python benchmarks/coordinator.py [--count 200] [--size 65536] [--repeat 3]

Source: ``--count`` random files of ``--size`` bytes in a local directory; destination: an empty
directory; local gateways, default flags. Each mode runs as a whole Python process (start-up
included), ``--repeat`` times, alternating, best time kept; CPU seconds are those of the process and
every process it starts, the detached coordinator and the gateways included (benchutil.TreeCPU).
Prints a table and a ``coordinator ours/baseline=R`` line (R = in-process seconds / ours: below 1,
the coordinator costs time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchutil import Timer, TreeCPU, machine_line, ratio_line

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from skyplane_provider.transfer import Transfer, TransferRequest
transfer = Transfer(TransferRequest(src=sys.argv[2], dsts=[sys.argv[3]]))
stats = transfer.run() if sys.argv[1] == "coordinator" else transfer.execute()
assert stats.verified and stats.objects == int(sys.argv[4]), stats
"""


def one_run(mode: str, src: Path, dst: Path, count: int, home: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one whole process copying ``src`` into an empty ``dst``."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    env = {**os.environ, "SKYPLANE_HOME": str(home), "PYTHONPATH": str(REPO)}
    with Timer() as t:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode, str(src), str(dst), str(count)], env=env)
        cpu = TreeCPU(proc.pid)
        if proc.wait() != 0:
            raise SystemExit(f"{mode} run failed")
    return t.seconds, cpu.total()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="coordinator-bench-") as tmp:
        src, dst, home = Path(tmp, "src"), Path(tmp, "dst"), Path(tmp, "home")
        src.mkdir()
        for i in range(args.count):
            (src / f"f{i:05d}").write_bytes(os.urandom(args.size))
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for mode in ("in-process", "coordinator"):
                run = one_run(mode, src, dst, args.count, home)
                best[mode] = min(best.get(mode, run), run)
    gib = args.count * args.size / 2**30
    print(f"{'mode':<12} {'seconds':>8} {'CPU s':>7} {'CPU s/GiB':>10} {'CPU s/1k obj':>13}")
    for mode, (seconds, cpu) in best.items():
        print(f"{mode:<12} {seconds:8.2f} {cpu:7.2f} {cpu / gib:10.1f} {cpu / args.count * 1000:13.2f}")
    print(ratio_line("coordinator", best["coordinator"][0], best["in-process"][0],
                     f"{args.count} x {args.size} B local -> local, best of {args.repeat}, whole processes; "
                     f"extra {best['coordinator'][0] - best['in-process'][0]:.2f} s and "
                     f"{best['coordinator'][1] - best['in-process'][1]:.2f} CPU s per job"))


if __name__ == "__main__":
    main()
