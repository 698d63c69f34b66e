"""Chaos soak (issue #16): transfers in a loop while a fault injector strikes at random.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--transfers N] [--seed S]

Each transfer copies a random mix of objects (a few bytes to 256 KiB, CSV-like or random, and often
one of 5-12 MiB that moves in parts) from one store to one or two others (multicast) among S3
(moto), GCS (fake-gcs-server), Azure (Azurite) and a local directory, with one fault drawn from:

- ``none``: a control transfer;
- ``gateway_kill``: SIGKILL of a gateway worker process (or of a single-process gateway) up to 1 s
  after the fleet's processes appear: while it moves data, or (under load, often) while a gateway
  still starts, which fails the job loudly before anything moves;
- ``coordinator_kill``: SIGKILL of the job's coordinator process (docs/coordinator.md) once its
  fleet is up, then the job resumed under its id (``skyplane-provider resume``'s request: a sync);
- ``store_throttle`` / ``store_reset``: the source's or a destination's store behind a
  :class:`FaultProxy` that answers 30% of requests 503 SlowDown / 429 / ServerBusy, or drops 10%
  of connections without an answer;
- ``frame_corrupt`` / ``frame_cut``: a :class:`FrameTamperProxy` in front of the destination
  gateways flips a byte of one frame, or forwards half a frame and cuts the connection.

After every transfer: every object at every destination must be sha256-identical to the source,
or the transfer must have failed loudly (a ``SkyplaneError``) and its re-run (a ``sync`` without
faults) converged to that; and nothing may be left: no gateway or coordinator process, no temporary file, no
unfinished multipart upload, no GCS part object, no uncommitted Azure block. A fault the transfer
outran (it finished before the kill, or had fewer frames than the one to damage) is counted as
missed, not injected.

It starts its own emulators on loopback, unless ``AWS_ENDPOINT_URL``, ``STORAGE_EMULATOR_HOST`` and
``AZURE_STORAGE_CONNECTION_STRING`` already point at running ones (the tests' smoke run). Prints one
line per transfer, then a table of transfers, bytes, faults by kind, objects lost and leaks (both
must be 0; the exit status is 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchutil import MiB, clean_up, machine_line
from planner.errors import SkyplaneError
from skyplane_provider.cli.resume import resumed_request
from skyplane_provider.coordinator.jobdir import ADDRESS, job_dir
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.emulators import connection_string, start_all
from skyplane_provider.testing.faultproxy import FaultProxy
from skyplane_provider.testing.frameproxy import TamperingProvisioner
from skyplane_provider.testing.leftovers import coordinator_pids, gateway_pids, leftovers
from skyplane_provider.testing.samples import digests, put_objects, sha256s
from skyplane_provider.transfer import Transfer, TransferRequest

KINDS = ("local", "s3", "gcs", "azure")
#: Region tags the soak gives each kind of store (Azure and a directory cannot tell theirs).
REGION = {"local": "local", "s3": "aws:us-east-1", "gcs": "gcp:us-central1", "azure": "azure:eastus"}
FAULTS = ("none", "gateway_kill", "coordinator_kill", "store_throttle", "store_reset", "frame_corrupt", "frame_cut")
CHUNK = "5MiB"  # S3's smallest part: the big objects go in parts everywhere
#: Seconds a transfer's gateways and coordinator get to end by themselves before they count as a leak.
GATEWAYS_GONE_WITHIN = 20.0
_ENV = ("AWS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST", "AZURE_STORAGE_CONNECTION_STRING")


@dataclass
class Tally:
    transfers: int = 0
    objects: int = 0
    bytes: int = 0
    failed_loudly: int = 0
    converged: int = 0
    lost: int = 0
    injected: Counter = field(default_factory=Counter)
    missed: Counter = field(default_factory=Counter)
    leaks: Counter = field(default_factory=Counter)


@dataclass
class Store:
    """One side of a transfer: its kind, the URI the transfer names, the root leftovers are looked for in."""

    kind: str
    uri: str
    root: str
    prefix: str

    @classmethod
    def fresh(cls, kind: str, side: str, scratch: Path) -> "Store":
        if kind == "local":
            root = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=scratch))
            return cls(kind, f"file://{root}/", f"file://{root}", "")
        root = create_bucket(kind)
        return cls(kind, f"{root}/{side}/", root, f"{side}/")


def endpoints() -> dict[str, str]:
    """The emulators' URLs, from the environment they set."""
    azure = re.search(r"BlobEndpoint=([^;]+)", os.environ["AZURE_STORAGE_CONNECTION_STRING"]).group(1)
    return {"s3": os.environ["AWS_ENDPOINT_URL"], "gcs": os.environ["STORAGE_EMULATOR_HOST"],
            "azure": azure.rstrip("/").rsplit("/", 1)[0]}


def proxied(store: Store, url: str) -> dict:
    """A credentials document sending this one bucket's requests through the fault proxy at ``url``."""
    entry = {"s3": {"endpoint_url": url}, "gcs": {"endpoint": url},
             "azure": {"connection_string": connection_string(url)}}[store.kind]
    return {store.root: entry}


def objects(rng: random.Random) -> dict[str, bytes]:
    """A few to a few dozen small objects, half compressible, and often one that goes in parts."""
    out = {}
    for i in range(rng.randint(3, 30)):
        size = rng.choice((0, rng.randint(1, 4096), rng.randint(4096, 256 * 1024)))
        if i % 2:
            out[f"d{i % 3}/rows-{i:03d}.csv"] = b"".join(b"%d,%d,ok\n" % (i, j) for j in range(size // 8 + 1))[:size]
        else:
            out[f"d{i % 3}/blob-{i:03d}.bin"] = rng.randbytes(size)
    if rng.random() < 0.5:
        out["big.bin"] = rng.randbytes(rng.randint(5 * MiB, 12 * MiB))
    return out


def worker_pids(home: str) -> list[int]:
    """The gateway processes of this transfer that are worker processes (else the gateways themselves)."""
    every, gateways = gateway_pids(home), gateway_pids(home, workers=False)
    return [p for p in every if p not in gateways] or gateways


def request(src: Store, dsts: list[Store], *, sync: bool = False, credentials: dict | None = None) -> TransferRequest:
    return TransferRequest(src=src.uri, dsts=[d.uri for d in dsts], recursive=True, sync=sync, chunk_size=CHUNK,
                           src_region=REGION[src.kind], dst_regions=[REGION[d.kind] for d in dsts],
                           credentials=credentials or {})


def run_faulted(fault: str, rng: random.Random, src: Store, dsts: list[Store], home: str,
                ends: dict) -> tuple[bool, str | None]:
    """Run the transfer with ``fault``: whether the fault really struck, and the id of a job whose
    coordinator was killed (to resume). Raises the transfer's error."""
    if fault == "coordinator_kill":
        handle = Transfer(request(src, dsts)).start()
        deadline = time.monotonic() + 120
        while not handle.done() and not gateway_pids(home) and time.monotonic() < deadline:
            time.sleep(0.02)  # until its fleet is up: a kill before that tests nothing of ours
        if handle.wait(rng.uniform(0.0, 1.5)):
            handle.result()  # it finished first
            return False, None
        os.kill(json.loads((job_dir(handle.job_id) / ADDRESS).read_text())["pid"], signal.SIGKILL)
        return True, handle.job_id
    if fault in ("store_throttle", "store_reset"):
        store = rng.choice([s for s in (src, *dsts) if s.kind != "local"])
        proxy = FaultProxy(ends[store.kind], kind=store.kind, seed=rng.randrange(2**32),
                           **({"throttle": 0.3} if fault == "store_throttle" else {"reset": 0.1}))
        url = proxy.start()
        try:
            Transfer(request(src, dsts, credentials=proxied(store, url))).run()
        finally:
            proxy.stop()
        c = proxy.counts
        return (c.throttled if fault == "store_throttle" else c.reset) > 0, None
    if fault in ("frame_corrupt", "frame_cut"):
        frame = {rng.randrange(4)}
        prov = TamperingProvisioner({REGION[d.kind] for d in dsts},
                                    **({"corrupt": frame} if fault == "frame_corrupt" else {"truncate": frame}))
        try:
            Transfer(request(src, dsts), provisioner=prov).run()
        finally:
            for proxy in prov.proxies:
                proxy.stop()
        return any(p.counts.corrupted or p.counts.truncated for p in prov.proxies), None
    transfer = Transfer(request(src, dsts))
    if fault == "none":
        transfer.run()
        return True, None
    finished, struck = threading.Event(), threading.Event()
    delay = rng.uniform(0.0, 1.0)

    def kill_a_worker() -> None:  # once the fleet is up, after a random moment
        while not finished.is_set() and not gateway_pids(home):
            time.sleep(0.01)
        if finished.wait(delay):
            return
        pids = worker_pids(home)
        if pids:
            os.kill(rng.choice(pids), signal.SIGKILL)
            struck.set()

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    try:
        transfer.run()
    finally:
        finished.set()
        killer.join(10)
    return struck.is_set(), None


def processes_left(home: str, within: float) -> list[int]:
    """The gateway and coordinator processes of this transfer still running after ``within`` seconds
    (a finished job's coordinator serves its outcome a moment longer; killed gateways take a moment)."""
    deadline = time.monotonic() + within
    while (gateway_pids(home) or coordinator_pids(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return gateway_pids(home) + coordinator_pids(home)


def one_transfer(n: int, rng: random.Random, scratch: Path, ends: dict, tally: Tally) -> None:
    fault = rng.choice(FAULTS)
    src_kind = rng.choice(KINDS)
    others = [k for k in KINDS if k != src_kind] if fault.startswith("frame_") else list(KINDS)
    dst_kinds = rng.sample(others, 2 if rng.random() < 0.3 else 1)
    if fault.startswith("store_") and {src_kind, *dst_kinds} == {"local"}:
        dst_kinds = [rng.choice(KINDS[1:])]  # a store fault needs a store behind a proxy
    src = Store.fresh(src_kind, "in", scratch)
    dsts = [Store.fresh(k, "out", scratch) for k in dst_kinds]
    data = objects(rng)
    put_objects(src.uri, data)
    want = sha256s(data)
    home = str(scratch / f"home-{n:04d}")
    os.environ["SKYPLANE_HOME"] = home  # this transfer's fleet only, for the process check
    started = time.monotonic()
    outcome = "ok"
    try:
        struck, killed_job = run_faulted(fault, rng, src, dsts, home, ends)
        if fault == "coordinator_kill":
            if struck:
                tally.leaks["processes"] += len(left := processes_left(home, GATEWAYS_GONE_WITHIN))
                for pid in left:  # counted; do not let them disturb the next transfers
                    os.kill(pid, signal.SIGKILL)
                resumed = resumed_request(killed_job, credentials={}, provisioner_settings={})
                Transfer(resumed).run()
            outcome = "killed, resumed" if struck else "ended before the kill"
    except SkyplaneError as exc:
        struck = True
        tally.failed_loudly += 1
        outcome = f"failed loudly ({type(exc).__name__}: {str(exc)[:120]}), sync re-run"
        try:
            Transfer(request(src, dsts, sync=True)).run()
            tally.converged += 1
        except SkyplaneError as again:
            outcome += f" FAILED AGAIN ({again})"
    (tally.injected if struck else tally.missed)[fault] += 1
    lost = 0
    for d in dsts:
        got = digests(d.uri)
        lost += sum(got.get(k) != v for k, v in want.items())
        tally.leaks["stray objects"] += len(set(got) - set(want))
        tally.leaks["temporaries and uploads"] += len(leftovers(d.root, d.prefix))
    tally.leaks["processes"] += len(processes_left(home, GATEWAYS_GONE_WITHIN))
    tally.lost += lost
    tally.transfers += 1
    tally.objects += len(data) * len(dsts)
    tally.bytes += sum(map(len, data.values())) * len(dsts)
    print(f"#{n:03d} {src_kind} -> {'+'.join(dst_kinds)}, {len(data)} objects, "
          f"{sum(map(len, data.values())) / MiB:.1f} MiB, fault {fault}: {outcome}, {lost} lost, "
          f"{time.monotonic() - started:.1f} s", flush=True)
    for d in (src, *dsts):
        if d.kind == "local":
            shutil.rmtree(d.root[len("file://"):], ignore_errors=True)


def report(tally: Tally, minutes: float, seed: int) -> str:
    rows = ["| transfers | objects copied | bytes copied | failed loudly (re-run converged) | objects lost | leaks |",
            "|---|---|---|---|---|---|",
            f"| {tally.transfers} | {tally.objects} | {tally.bytes / MiB:.1f} MiB | {tally.failed_loudly} "
            f"({tally.converged}) | {tally.lost} | {sum(tally.leaks.values())} |", "",
            "| fault | injected | missed (the transfer ended first) |", "|---|---|---|"]
    rows += [f"| {f} | {tally.injected[f]} | {tally.missed[f]} |" for f in FAULTS]
    leaks = ", ".join(f"{k}: {v}" for k, v in sorted(tally.leaks.items())) or "none"
    rows += ["", f"soak: {minutes:g} min, seed {seed}, {machine_line()}; leaks by kind: {leaks}"]
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="run this long (default 10)")
    ap.add_argument("--transfers", type=int, help="stop after this many transfers (default: no bound)")
    ap.add_argument("--seed", type=int, help="random seed (default: drawn and printed)")
    ap.add_argument("--json", action="store_true", help="print the tally as JSON on the last line")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    scratch = Path(tempfile.mkdtemp(prefix="skyplane-soak-"))
    emulators = None
    if not all(os.environ.get(v) for v in _ENV):
        emulators = start_all(log_dir=scratch / "logs")
        os.environ.update(emulators.env)
    tally = Tally()
    deadline = time.monotonic() + args.minutes * 60
    try:
        while time.monotonic() < deadline and (args.transfers is None or tally.transfers < args.transfers):
            one_transfer(tally.transfers + 1, rng, scratch, endpoints(), tally)
    finally:
        clean_up(scratch, emulators)
    print(report(tally, args.minutes, seed))
    if args.json:
        print(json.dumps({"transfers": tally.transfers, "objects": tally.objects, "bytes": tally.bytes,
                          "failed_loudly": tally.failed_loudly, "converged": tally.converged, "lost": tally.lost,
                          "leaks": dict(tally.leaks), "injected": dict(tally.injected),
                          "missed": dict(tally.missed), "seed": seed}))
    return 0 if tally.lost == 0 and sum(tally.leaks.values()) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
