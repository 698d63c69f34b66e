"""Gateway throughput on loopback: one source and one destination gateway moving a file between two
local-directory stores, against a plain Python socket copy of the same bytes and against ``cp``.

    .venv/bin/python benchmarks/gateway_loopback.py [--size 1GiB] [--chunk 32MiB] [--connections 4] [--workers 1]

The file is half compressible (CSV-like text) and half random, in chunk-sized stretches. Every run
starts with a warm page cache; each figure is the best of ``--repeat`` runs. Prints one line per
comparison, ``gateway_loopback ours/baseline=R``, R = our throughput / the baseline's (>1: we are
faster). Gateways are started (and their start-up excluded) with the local provisioner, each with
``--workers`` worker processes. The gateways are told to treat the loopback hop as if it left the
host (``loopback_clear`` off), so the lz4 + AES-GCM run does all of that work; the CPU limit it is
compared with is measured in the same run: the cores times one core's rate of the same lz4 +
AES-GCM calls on the same file (the work each byte needs at the source and at the destination).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import crc32c

from benchutil import cpu_seconds, machine_line, peak_rss_mib
from gateway.sizing import choose
from gateway.batch import ChunkMeta, DestStore, SentObject, Target
from gateway.codec import Codec
from gateway.control_client import GatewayClient
from gateway.stores import open_store
from gateway.stores.base import PartInfo
from gateway.wire import Frame
from planner.plan import Hop, PartitionProgram, RegionProgram
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.base import GatewaySpec
from skyplane_provider.transfer.request import parse_size

MiB = 1024**2
SRC, DST = "bench:src", "bench:dst"


def make_file(path: Path, size: int, stretch: int) -> None:
    """Alternate stretches of CSV-like text and random bytes."""
    line = b"".join(b"%d,sensor-%d,%d.%d,ok\n" % (i, i % 50, i * 7 % 1000, i % 10) for i in range(20_000))
    text = (line * (stretch // len(line) + 1))[:stretch]
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            block = text if i % 2 == 0 else os.urandom(stretch)
            block = block[: size - written]
            f.write(block)
            written += len(block)
            i += 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 * MiB):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def two_gateways(connections: int, *, compress: bool, encrypt: bool, workers: int) -> Iterator[tuple]:
    """A source and a destination gateway wired to each other: ``(source client, destination client,
    {region: its processes' pids})``."""
    job_id, secret, key = uuid.uuid4().hex, os.urandom(32).hex(), os.urandom(32).hex()
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST, connections),))}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    specs = []
    for region, program in programs.items():
        config = {"program": program.to_dict(), "job_secret": secret, "control_token": uuid.uuid4().hex,
                  "compress": compress, "encrypt": encrypt, "queue_chunks": 4, "workers": workers,
                  "loopback_clear": False}
        if encrypt:
            config["encryption_key"] = key
        specs.append(GatewaySpec(f"{region}/0", region, config))
    with get_provisioner("local").provision(job_id, specs) as fleet:
        h = {g.region: g for g in fleet.gateways}
        src = GatewayClient(h[SRC].control_url, h[SRC].control_token)
        dst = GatewayClient(h[DST].control_url, h[DST].control_token)
        src.set_peers({DST: [{"gateway_id": h[DST].gateway_id, "host": h[DST].data_host,
                              "data_port": h[DST].data_port}]})
        yield src, dst, {g.region: [g.pid, *_children(g.pid)] for g in fleet.gateways}


def drive(src: GatewayClient, dst: GatewayClient, body: dict, chunks: list[dict]) -> list[dict]:
    """Submit ``chunks`` and poll like the orchestrator (every 50 ms: on 2 cores, control traffic costs
    CPU) until the destination wrote them all; returns the ``written`` events."""
    written: list[dict] = []
    accepted, cursor, polls = 0, 0, 0
    while len(written) < len(chunks):
        if accepted < len(chunks):
            accepted += src.submit({**body, "chunks": chunks[accepted:]})
        status = dst.status(cursor)
        cursor = status["next"]
        for e in status["events"]:
            if e["type"] != "written":
                raise RuntimeError(f"gateway reported {e}")
            written.append(e)
        polls += 1
        if polls % 20 == 0 and src.status(0)["events"]:
            raise RuntimeError(f"source gateway reported {src.status(0)['events']}")
        time.sleep(0.05)
    return written


def run_gateways(src_dir: Path, dst_dir: Path, size: int, chunk: int, connections: int, *, compress: bool,
                 encrypt: bool, workers: int) -> tuple[float, float, float]:
    """Seconds from the first submitted chunk until the destination object is complete, the
    gateways' CPU-seconds per GiB (source and destination together, after start-up) and the bytes
    on the wire per byte of data."""
    with two_gateways(connections, compress=compress, encrypt=encrypt, workers=workers) as (src, dst, procs):
        src_root, dst_root = "file://" + str(src_dir), "file://" + str(dst_dir)
        store = open_store(dst_root)
        at_start = {r: sum(cpu_seconds(p) for p in pids) for r, pids in procs.items()}  # start-up excluded
        started = time.perf_counter()
        upload = store.begin_multipart("out.bin")
        reqs = [{"id": i, "partition": 0,
                 "objects": [{"key": "in.bin", "offset": off, "length": min(chunk, size - off),
                              "to": [{"dest": 0, "key": "out.bin", "upload_id": upload, "part": i + 1}]}]}
                for i, off in enumerate(range(0, size, chunk))]
        events = drive(src, dst, {"src": src_root, "dests": [{"region": DST, "store": dst_root}]}, reqs)
        parts = [PartInfo(p["part_number"], p["etag"], p["size"]) for p in (e["objects"][0]["part"] for e in events)]
        moved = time.perf_counter() - started
        store.complete_multipart("out.bin", upload, parts)
        seconds = time.perf_counter() - started
        wire = src.status(0)["counters"]["bytes_sent_wire"]
        peak = {r: max(peak_rss_mib(p) for p in pids) for r, pids in procs.items()}
        cpu = {r: sum(cpu_seconds(p) for p in pids) - at_start[r] for r, pids in procs.items()}
    gib = size / 1024**3
    print(f"  gateways compress={compress} encrypt={encrypt} workers={workers}: {seconds:.2f} s, "
          f"{size / seconds / MiB:.0f} MiB/s (all parts written after {moved:.2f} s, then the upload "
          f"completed), wire/data={wire / size:.3f}, peak RSS per process: source {peak[SRC]:.0f} MiB, "
          f"destination {peak[DST]:.0f} MiB; gateway CPU after start-up: source {cpu[SRC] / gib:.2f}, "
          f"destination {cpu[DST] / gib:.2f} CPU-s/GiB", flush=True)
    return seconds, (cpu[SRC] + cpu[DST]) / gib, wire / size


def run_small(src_dir: Path, dst_dir: Path, count: int, size: int, *, bundled: bool, workers: int) -> float:
    """``count`` objects of ``size`` bytes, bundled as gateway.sizing chooses, or one per chunk (as the
    orchestrator sent them before bundles); returns gateway CPU-seconds per 1,000 objects."""
    keys = sorted(p.name for p in src_dir.iterdir())
    sizing = choose([size] * count, [open_store("file://" + str(dst_dir)).capabilities])
    per_chunk = min(sizing.bundle_objects, sizing.bundle_bytes // size) if bundled else 1
    chunks = [{"id": i, "partition": 0, "objects": [{"key": k, "offset": 0, "length": size, "to": [{"dest": 0, "key": k}]}
                                                    for k in keys[off:off + per_chunk]]}
              for i, off in enumerate(range(0, count, per_chunk))]
    with two_gateways(4, compress=True, encrypt=True, workers=workers) as (src, dst, procs):
        at_start = {r: sum(cpu_seconds(p) for p in pids) for r, pids in procs.items()}
        started = time.perf_counter()
        body = {"src": "file://" + str(src_dir), "dests": [{"region": DST, "store": "file://" + str(dst_dir)}]}
        for i in range(0, len(chunks), 256):  # batches as the orchestrator sends them
            drive(src, dst, body, chunks[i:i + 256])
        seconds = time.perf_counter() - started
        cpu = {r: sum(cpu_seconds(p) for p in pids) - at_start[r] for r, pids in procs.items()}
    per_k = sum(cpu.values()) / count * 1000
    print(f"  {count} x {size} B, {'bundles of ' + str(per_chunk) if bundled else 'one object per chunk'}: "
          f"{seconds:.2f} s, {count / seconds:.0f} objects/s; gateway CPU after start-up: source "
          f"{cpu[SRC] / count * 1000:.2f}, destination {cpu[DST] / count * 1000:.2f} CPU-s per 1,000 objects",
          flush=True)
    return per_k


def _children(pid: int) -> list[int]:
    """A supervisor's worker processes (none for a one-process gateway)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def codec_seconds(path: Path, chunk: int) -> tuple[float, float]:
    """CPU-seconds per GiB of the lz4 + AES-GCM encode and decode calls on this file, on one core
    (the codec's own, on buffers as the gateways have them: a read buffer the source encrypts in
    place, a received body the destination decrypts in place; making those buffers is not counted)."""
    reused: dict[int, bytearray] = {}  # a gateway's BufferPool hands out the same few buffers again
    codec = Codec(b"b" * 16, key=os.urandom(32), encrypt=True, compress=True, loopback_clear=False,
                  alloc=lambda n: reused.setdefault(n, bytearray(n)))
    data = memoryview(path.read_bytes())
    encode = decode = 0.0
    for i, off in enumerate(range(0, len(data), chunk)):
        piece = bytearray(data[off:off + chunk])
        meta = ChunkMeta((DestStore(DST, "file:///d"),), (SentObject(0, len(piece), (Target(0, "k", "u", 1),)),))
        started = time.process_time()
        frame, _ = codec.encode(chunk_id=i, partition=0, meta=meta.encode(), pieces=[piece], consume=True)
        encode += time.process_time() - started
        received = Frame(frame.header, frame.header_bytes, (bytearray(b"".join(frame.body)),))
        started = time.process_time()
        codec.decode(received, in_place=True)
        decode += time.process_time() - started
    gib = len(data) / 1024**3
    return encode / gib, decode / gib


def copy_stage_seconds(path: Path, scratch: Path, chunk: int) -> dict[str, float]:
    """CPU-seconds per GiB of the steps any copy of this file through two processes on this host
    pays besides the codec, each alone in this process: reading the file into a reused buffer,
    writing it to a new file beside it, sending it over a loopback TCP connection into a reused
    buffer (sender and receiver), and one CRC32C pass (a clear frame's check, paid at both ends)."""
    size = path.stat().st_size
    buf = bytearray(chunk)
    view = memoryview(buf)
    costs = {}
    started = time.process_time()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    costs["read"] = time.process_time() - started
    started = time.process_time()
    with open(scratch, "wb", buffering=0) as out:
        for _ in range(0, size, chunk):
            out.write(view)
    costs["write"] = time.process_time() - started
    scratch.unlink()
    started = time.process_time()
    run_socket_copy_of(size, chunk)
    costs["send+receive"] = time.process_time() - started
    started = time.process_time()
    for _ in range(0, size, chunk):
        crc32c.crc32c(view)
    costs["crc32c"] = time.process_time() - started
    gib = size / 1024**3
    return {k: v / gib for k, v in costs.items()}


def run_socket_copy_of(size: int, chunk: int) -> None:
    """Send ``size`` bytes from a reused buffer over one loopback TCP connection into another."""
    server = socket.create_server(("127.0.0.1", 0))

    def receive() -> None:
        conn, _ = server.accept()
        into = memoryview(bytearray(chunk))
        with conn:
            while conn.recv_into(into):
                pass

    t = threading.Thread(target=receive)
    t.start()
    with socket.create_connection(server.getsockname()) as s:
        block = memoryview(bytearray(chunk))
        for _ in range(0, size, chunk):
            s.sendall(block)
    t.join()
    server.close()


def run_socket_copy(src: Path, dst: Path) -> float:
    """Read the file, send it over one loopback TCP connection, write it: plain Python, 4 MiB buffers
    (the sender and the receiver threads of this process; its CPU is printed too)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def receive() -> None:
        conn, _ = server.accept()
        buf = bytearray(4 * MiB)
        view = memoryview(buf)
        with conn, open(dst, "wb") as out:
            while n := conn.recv_into(view):
                out.write(view[:n])

    t = threading.Thread(target=receive)
    started, cpu = time.perf_counter(), time.process_time()
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as s, open(src, "rb") as f:
        buf = bytearray(4 * MiB)
        while n := f.readinto(buf):
            s.sendall(memoryview(buf)[:n])
    t.join()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    server.close()
    size = src.stat().st_size
    print(f"  python socket copy: {seconds:.2f} s, {size / seconds / MiB:.0f} MiB/s, "
          f"{cpu / (size / 1024**3):.2f} CPU-s/GiB", flush=True)
    return seconds


def run_cp(src: Path, dst: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    seconds = time.perf_counter() - started
    print(f"  cp: {seconds:.2f} s, {src.stat().st_size / seconds / MiB:.0f} MiB/s", flush=True)
    return seconds


def small_objects(src_dir: Path, dst_dir: Path, count: int, workers: int) -> int:
    size = 4096
    for i in range(count):
        (src_dir / f"o{i:07d}").write_bytes(os.urandom(size))
    print(f"gateway_loopback --small: {count} x {size} B, lz4 + AES-GCM, {workers} worker(s) per gateway; "
          f"{machine_line()}", flush=True)
    runs = {}
    for bundled in (False, True):
        shutil.rmtree(dst_dir, ignore_errors=True)
        dst_dir.mkdir()
        runs[bundled] = run_small(src_dir, dst_dir, count, size, bundled=bundled, workers=workers)
        if sorted(p.name for p in dst_dir.iterdir()) != sorted(p.name for p in src_dir.iterdir()):
            raise SystemExit("the copy does not have every object")
    print(f"gateway_loopback cpu_per_object bundled/one_per_chunk={runs[True] / runs[False]:.2f} "
          f"({runs[True]:.2f} vs {runs[False]:.2f} gateway CPU-s per 1,000 objects)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--chunk", default="32MiB")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1, help="worker processes per gateway")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--small", type=int, default=0, metavar="COUNT",
                    help="instead: COUNT objects of 4 KiB, bundled vs one per chunk (CPU per 1,000 objects)")
    ap.add_argument("--dir", default=None,
                    help="work directory (default: a temp dir in /dev/shm, so that the disk is not measured)")
    args = ap.parse_args()
    size, chunk = parse_size(args.size), parse_size(args.chunk)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(args.dir or tempfile.mkdtemp(prefix="gw-bench-", dir=shm))
    os.environ.setdefault("SKYPLANE_HOME", str(work / "home"))
    try:
        src_dir, dst_dir = work / "src", work / "dst"
        src_dir.mkdir(parents=True, exist_ok=True)
        if args.small:
            return small_objects(src_dir, dst_dir, args.small, args.workers)
        make_file(src_dir / "in.bin", size, chunk)
        expected = sha256_file(src_dir / "in.bin")
        print(f"gateway_loopback: {size / MiB:.0f} MiB, chunks of {chunk / MiB:.0f} MiB, "
              f"{args.connections} connections, {args.workers} worker(s) per gateway, best of {args.repeat}; "
              f"{machine_line()}", flush=True)

        def best(run, check: Path):
            """The fastest of ``--repeat`` runs (a time, or a tuple that starts with one)."""
            results = []
            for _ in range(args.repeat):
                shutil.rmtree(dst_dir, ignore_errors=True)
                dst_dir.mkdir()
                results.append(run())
                if sha256_file(check) != expected:
                    raise SystemExit(f"copy at {check} does not match the source")
            return min(results)

        runs = {
            "compress+encrypt": best(lambda: run_gateways(src_dir, dst_dir, size, chunk, args.connections,
                                                          compress=True, encrypt=True, workers=args.workers),
                                     dst_dir / "out.bin"),
            "plain": best(lambda: run_gateways(src_dir, dst_dir, size, chunk, args.connections,
                                               compress=False, encrypt=False, workers=args.workers),
                          dst_dir / "out.bin"),
        }
        ours = {name: seconds for name, (seconds, _, _) in runs.items()}
        baselines = {
            "python socket copy": best(lambda: run_socket_copy(src_dir / "in.bin", dst_dir / "out.bin"),
                                       dst_dir / "out.bin"),
            "cp": best(lambda: run_cp(src_dir / "in.bin", dst_dir / "out.bin"), dst_dir / "out.bin"),
        }
        encode, decode = codec_seconds(src_dir / "in.bin", chunk)
        cores = len(os.sched_getaffinity(0))
        limit = cores / (encode + decode) * 1024**3
        print(f"  CPU limit: lz4 + AES-GCM encode {encode:.2f} + decode {decode:.2f} CPU-s/GiB on one core, "
              f"x {cores} cores = {limit / MiB:.0f} MiB/s", flush=True)
        stage = copy_stage_seconds(src_dir / "in.bin", dst_dir / "stage.bin", chunk)
        print("  other steps alone, CPU-s/GiB: " + ", ".join(f"{k} {v:.2f}" for k, v in stage.items()), flush=True)
        for name, seconds in ours.items():
            for base, base_seconds in baselines.items():
                print(f"gateway_loopback ours/baseline={base_seconds / seconds:.2f} "
                      f"(ours: {name} {size / seconds / MiB:.0f} MiB/s; baseline: {base} "
                      f"{size / base_seconds / MiB:.0f} MiB/s)")
        rate = size / ours["compress+encrypt"]
        print(f"gateway_loopback ours/cpu_limit={rate / limit:.2f} (ours: compress+encrypt {rate / MiB:.0f} MiB/s; "
              f"limit: {limit / MiB:.0f} MiB/s)")
        # What a copy through two processes cannot do without (docs/benchmarks.md, "gateway_loopback"):
        # read, write, the loopback hop for the bytes on the wire, and the frame's check (a CRC32C at
        # each end, or the codec). With every core busy, a copy spending F CPU-s/GiB runs at cores / F.
        copies = stage["read"] + stage["write"]
        _, plain_cpu, _ = runs["plain"]
        _, sealed_cpu, sealed_wire = runs["compress+encrypt"]
        floor_plain = copies + stage["send+receive"] + 2 * stage["crc32c"]
        floor_sealed = copies + sealed_wire * stage["send+receive"] + encode + decode
        print(f"gateway_loopback cpu_per_gib plain: ours {plain_cpu:.2f}, floor {floor_plain:.2f} "
              f"(read + write + send+receive + 2 x crc32c); compress+encrypt: ours {sealed_cpu:.2f}, floor "
              f"{floor_sealed:.2f} (read + write + {sealed_wire:.3f} x send+receive + encode + decode)")
        print(f"gateway_loopback cpu_limit_ceiling={(encode + decode) / floor_sealed:.2f} (the most of the CPU "
              f"limit a copy at the floor reaches with every core busy; ours at full use of the cores: "
              f"{(encode + decode) / sealed_cpu:.2f})")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
