"""Where a small ``skyplane-provider cp -r`` spends its wall time, per process, seen from outside.

    .venv/bin/python benchmarks/cli_timeline.py [--count 1] [--runs 3] [--imports] [--code DIR] [--from s3]

Copies a tree of ``--count`` random 4 KiB files local -> local (``--from s3|gcs|azure``: from a bucket
of that store's emulator, started here, to a local directory) with default flags under
``strace -f --seccomp-bpf`` tracing only process starts and ends, ``listen``, ``connect`` and
``rename`` (no system call of an import is stopped), and prints, per run, each process of the job
(the CLI, the coordinator's two and every gateway) with the milliseconds since the CLI's start at
which it started, exec'd Python, listened, renamed its files into place (the coordinator's address,
a gateway's ready file, the copied object: its first byte is visible when it is renamed into place)
and exited. ``--imports``: ``python -X importtime`` of what each kind of process imports before it
works (the CLI's command, the coordinator's job modules, a gateway), run alone, slowest first.
``--code DIR``: run the checkout at DIR (through PYTHONPATH, as cli_copy.py's ``--before``) instead
of this one. The tree is on tmpfs; the code run is byte-compiled first (benchutil.compile_ours).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from benchutil import REPO, compile_ours, machine_line
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.emulators import start_all
from skyplane_provider.testing.samples import put_objects
from small_files import make_tree

#: ``PID SECONDS.MICROS rest``, strace -f -ttt's line.
_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_SPAWN = re.compile(r"^(vfork|fork|clone3?)\(.*= (\d+)$")
_EXEC = re.compile(r'^execve\("[^"]*", \[(.*?)\]')
_OBJECT = re.compile(r'^(?:rename(?:at2?)?|linkat)\(.*"([^"]*)"(?:, [A-Z_]+)?\) = 0$')
#: An HTTP request's first line (the control APIs': the coordinator's and every gateway's).
_REQUEST = re.compile(r'^sendto\(\d+, "((?:GET|POST|PUT|DELETE) [^ \\"?]*)')
_RESUMED = re.compile(r"^<\.\.\. \w+ resumed>(.*)$")
#: What each process's argv says it is.
_ROLES = (("skyplane_provider.cli.main", "cli"), ("skyplane_provider.coordinator", "coordinator"),
          ("gateway.daemon", "gateway"))
#: What each kind of process imports before it works (``--imports``).
_IMPORTS = {
    "cli (cp)": "import skyplane_provider.cli.main, skyplane_provider.cli.cp, skyplane_provider.transfer.runner",
    "coordinator (job modules)": "import skyplane_provider.coordinator.process as p; p._import_job_modules()",
    "gateway": "import gateway.daemon, gateway.stores.local",
}


def trace(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
    """Run ``argv`` under strace into ``log``; ``cwd``: a directory without our packages (``python -m``
    puts it before PYTHONPATH)."""
    strace = ["strace", "-f", "--seccomp-bpf", "-qq", "-ttt", "-o", str(log),
              "-e", "trace=execve,clone,clone3,vfork,fork,listen,connect,rename,renameat,renameat2,linkat,exit_group,sendto", "-s", "48"]
    proc = subprocess.run(strace + argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")


def timeline(log: Path, dst: Path) -> list[tuple[float, str, str]]:
    """``(ms since the CLI's exec, process, event)`` in order, from one strace log."""
    rows: list[tuple[float, int, str]] = []
    role: dict[int, str] = {}
    parent: dict[int, int] = {}  # of every process and thread
    threads: set[int] = set()
    pending: dict[int, tuple[float, str]] = {}
    t0 = None
    for line in log.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        pid, t, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        if rest.endswith("<unfinished ...>"):  # another process's call came between: joined below
            pending[pid] = (t, rest[:-len("<unfinished ...>")].rstrip())
            continue
        if (r := _RESUMED.match(rest)) and pid in pending:
            t, head = pending.pop(pid)
            rest = head + r.group(1)
        t0 = t if t0 is None else t0
        ms = (t - t0) * 1000
        if s := _SPAWN.match(rest):
            child = int(s.group(2))
            parent[child] = pid
            if "CLONE_THREAD" in rest:
                threads.add(child)
        elif (e := _EXEC.match(rest)) and rest.endswith("= 0"):
            args = e.group(1)
            role[pid] = next((r for marker, r in _ROLES if marker in args), "other")
            if "--ahead" in args or "--wait-for-config" in args:
                role[pid] += " (ahead)"
            rows.append((ms, pid, "exec"))
        elif rest.startswith("listen("):
            rows.append((ms, pid, "listen"))
        elif rest.startswith("connect(") and "sin_port" in rest:
            port = re.search(r"htons\((\d+)\)", rest)
            rows.append((ms, pid, f"connect :{port.group(1) if port else '?'}"))
        elif (q := _REQUEST.match(rest)):
            rows.append((ms, pid, q.group(1)))
        elif o := _OBJECT.match(rest):
            target = o.group(1)
            rows.append((ms, pid, "object in place" if target.startswith(str(dst)) else f"-> {Path(target).name}"))
        elif rest.startswith("exit_group("):
            rows.append((ms, pid, "exit"))

    def name(pid: int) -> str:
        while pid in threads:
            pid = parent[pid]
        p = pid
        while p not in role and p in parent:
            p = parent[p]  # a fork that did not exec: its parent's kind
        kind = role.get(p, "other")
        return f"{kind} {pid}" if p == pid else f"{kind}, fork {pid}"

    named = [(ms, name(pid), ev) for ms, pid, ev in sorted(rows)]
    # Of an event a process repeats (objects, chunk batches, polls): the first two and the last, counted.
    seen: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (_, who, ev) in enumerate(named):
        seen[(who, ev)].append(i)
    keep, last = set(), {}
    for rows_of in seen.values():
        keep.update(rows_of[:2] + rows_of[-1:])
        if len(rows_of) > 3:
            last[rows_of[-1]] = len(rows_of)
    return [(ms, who, f"{ev} (the last of {last[i]})" if i in last else ev)
            for i, (ms, who, ev) in enumerate(named) if i in keep]


#: The milestones of a run (the first event of each kind), as :func:`milestones` finds them.
MILESTONES = (("coordinator exec", "coordinator", "exec"), ("gateway exec", "gateway", "exec"),
              ("job document (go)", "cli", "-> request.json"), ("coordinator listens", "coordinator", "listen"),
              ("gateway config", "coordinator", "-> config.json"), ("gateway ready", "gateway", "-> ready.json"),
              ("chunks sent", "coordinator", "POST /chunks"), ("first object", "gateway", "object in place"),
              ("teardown asked", "coordinator", "POST /shutdown"), ("gateway exit", "gateway", "exit"),
              ("result written", "coordinator", "-> result.json"), ("CLI exit", "cli", "exit"))


def milestones(rows: list[tuple[float, str, str]]) -> dict[str, float]:
    """The ms of each of :data:`MILESTONES` in one run's timeline (a gateway's: its first process's)."""
    found: dict[str, float] = {}
    for name, who, event in MILESTONES:
        for ms, process, ev in rows:
            if process.startswith(who) and ev.startswith(event) and "worker" not in ev:
                found[name] = ms
                break
    return found


_OURS = ("planner", "gateway", "skyplane_provider", "benchmarks")


def imports(python: str, env: dict[str, str]) -> None:
    """Each kind of process's imports alone (best of 3 by total), and the other packages they pull in:
    an outside package's whole import (its own imports included) counted where our code imports it."""
    for what, code in _IMPORTS.items():
        runs = []
        for _ in range(3):
            proc = subprocess.run([python, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True,
                                  cwd=env.get("PYTHONPATH", REPO))
            rows = []
            for line in proc.stderr.splitlines():
                m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
                if m:
                    rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)))
            runs.append(rows)
        best = min(runs, key=lambda rows: sum(c for _, c, depth, _ in rows if depth == 1))
        total = sum(c for _, c, depth, _ in best if depth == 1)
        ours = sum(own for own, _, _, module in best if module.split(".")[0] in _OURS)
        outside: dict[str, int] = defaultdict(int)
        stack: list[tuple[int, str]] = []
        for own, cumulative, depth, module in reversed(best):  # post-order reversed: parents first
            while stack and stack[-1][0] >= depth:
                stack.pop()
            external = module.split(".")[0] not in _OURS
            if external and not any(m.split(".")[0] not in _OURS for _, m in stack):
                outside[module.split(".")[0]] += cumulative
            stack.append((depth, module))
        print(f"  imports of {what}: {total / 1000:.0f} ms (best of 3); our modules' own code "
              f"{ours / 1000:.0f} ms; the packages they import, slowest first:")
        for module, us in sorted(outside.items(), key=lambda kv: -kv[1])[:12]:
            print(f"    {us / 1000:6.1f} ms  {module}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--imports", action="store_true", help="also time each kind of process's imports alone")
    ap.add_argument("--code", type=Path, help="a checkout to run instead of this one (through PYTHONPATH)")
    ap.add_argument("--from", dest="source", choices=("local", "s3", "gcs", "azure"), default="local",
                    help="where the files are: a tmpfs tree, or a bucket of that store's emulator (started here)")
    args = ap.parse_args()
    compile_ours(args.code.resolve() if args.code else REPO)
    scratch = Path(tempfile.mkdtemp(prefix="cli-timeline-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "PYTHONPATH")}
    env["SKYPLANE_HOME"] = str(scratch / "home")
    if args.code:
        env["PYTHONPATH"] = str(args.code.resolve())
    emulators = None
    try:
        print(f"cli_timeline: {args.count} x 4 KiB, {args.source} -> local, code at {args.code or REPO}; "
              f"{machine_line()}", flush=True)
        if args.source == "local":
            src = scratch / "src"
            make_tree(src, args.count, 4096)
        else:  # the client checks the bucket and lists its first page: what the store SDKs were imported for
            emulators = start_all([args.source], log_dir=scratch / "logs")
            os.environ.update(emulators.env)
            env.update(emulators.env)
            src = create_bucket(args.source) + "/data"
            put_objects(src + "/", {f"f{i:06d}": os.urandom(4096) for i in range(args.count)})
        runs: list[dict[str, float]] = []
        for run in range(args.runs):
            dst = scratch / "dst"
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir()
            log = scratch / "strace.log"
            trace([sys.executable, "-m", "skyplane_provider.cli.main", "cp", "-r", f"{src}/", f"{dst}/"], env, log,
                  scratch)
            print(f"run {run} (load {os.getloadavg()[0]:.1f}):")
            rows = timeline(log, dst)
            for ms, who, event in rows:
                print(f"  {ms:7.1f} ms  {who:32s} {event}")
            runs.append(milestones(rows))
        if runs:
            print(f"milestones, ms since the CLI's exec (median of {len(runs)} runs; each run's):")
            for name, _, _ in MILESTONES:
                times = [r[name] for r in runs if name in r]
                if times:
                    print(f"  {name:20s} {statistics.median(times):7.0f}   ({', '.join(f'{t:.0f}' for t in times)})")
        if args.imports:
            imports(sys.executable, env)
    finally:
        if emulators is not None:
            emulators.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
