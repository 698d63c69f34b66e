"""Running transfers on the emulated WAN, timing them and checking the planner's predictions: shared
by the testbed benchmarks (overlay.py, multicast_testbed.py).

    with open_testbed(scenario) as tb:                  # a Scenario or a shipped name; always torn down
        pool = make_dataset(pool_dir, 256 * MiB, file_size=MiB)
        subset(pool, src_dir, 64 * MiB)                  # hard links to the first 64 files
        run = run_transfer(tb, src_dir, [(dst_dir, "gcp:us-west4-a")], "aws:us-east-1", plan,
                           connections=4, chunk_size=MiB)
        run.seconds, run.stats        # moving time (without gateway start-up and the final verification)
        run.wire_gbps, run.predicted_gbps, run.egress_usd_measured, run.egress_usd_predicted
        single_stream(tb, src_dir, dst_dir, "aws:us-east-1", "gcp:us-west4-a")   # seconds, one TCP stream

Gateways run inside the region (VM) namespaces: the local provisioner with the testbed's placement
(``Testbed.gateway_placement()``), passed as provisioner settings of the transfer request. The plan is
made by the caller (on ``Testbed.grid_csv``) and handed to the transfer, so the prediction checked is
the plan that ran. Stores are local directories (the filesystem is shared by every namespace; put them
on ``/dev/shm`` so the disk is not measured). Run as root from the repository root or ``benchmarks/``.

As a script this module is the single-stream baseline's two ends (started by ``single_stream`` inside
the namespaces)::

    python _testbed_run.py recv BIND_HOST DIR          # prints PORT, then "BYTES SECONDS SHA256"
    python _testbed_run.py send HOST PORT DIR          # prints "BYTES SHA256"
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from planner.plan import BYTES_PER_GB, Plan
from skyplane_provider.testbed import Scenario, Testbed, load_scenario, teardown
from skyplane_provider.testbed.network import Bytes
from skyplane_provider.testbed.shaping import HEADER_BYTES
from skyplane_provider.transfer.request import TransferRequest
from skyplane_provider.transfer.runner import Transfer
from skyplane_provider.transfer.stats import TransferStats

log = logging.getLogger(__name__)

MiB = 1024**2
_HEADER = struct.Struct("!QH")  # file size, name length; then the name and the bytes
_BUFFER = 4 * MiB
#: Within this share, a measured figure agrees with the planner's prediction (the issue's goal).
AGREEMENT = 0.10


@contextlib.contextmanager
def open_testbed(scenario: Scenario | str, *, scale_mbit_per_gbps: float | None = None) -> Iterator[Testbed]:
    """A testbed of ``scenario`` (a Scenario, a shipped name or a JSON path) that is taken down however
    the block ends: normally, on an exception, or on SIGTERM (turned into SystemExit while the block
    runs). If ``down()`` fails, the crash-proof ``teardown(id)`` runs as well."""
    sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
    if scale_mbit_per_gbps:
        sc = sc.with_scale(scale_mbit_per_gbps)
    tb = Testbed(sc)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        tb.up()
        yield tb
    finally:
        try:
            tb.down()
        except Exception:
            log.exception("testbed %s: down() failed; tearing down by id", tb.testbed_id)
            teardown(tb.testbed_id)
        finally:
            if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:  # else a fleet's teardown hook chains to it
                signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def make_dataset(directory: Path, size: int, *, file_size: int) -> list[Path]:
    """``size`` bytes in files of ``file_size``, each half CSV-like text (lz4 shrinks it to about a
    quarter) and half random bytes (incompressible), in quarter-file stretches so that every chunk of
    a transfer has the same mix."""
    from gateway_loopback import make_file  # benchmarks/ is on sys.path when a benchmark runs

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(max(1, size // file_size)):
        path = directory / f"part-{i:05d}.bin"
        make_file(path, file_size, max(1, file_size // 4))
        paths.append(path)
    return paths


def subset(pool: list[Path], directory: Path, size: int) -> int:
    """Hard-link the first files of ``pool`` (at least one) that add up to about ``size`` bytes into
    ``directory``; return their bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in pool:
        if total and total + path.stat().st_size > size:
            break
        os.link(path, directory / path.name)
        total += path.stat().st_size
    return total


class RxMeter:
    """TCP payload bytes arriving on the data links of some regions together (their veths ``to*`` on a
    link testbed, each VM's ``wan`` on a vm one), sampled every 20 ms by a small process in each of the
    regions' namespaces: the devices' received bytes less ``HEADER_BYTES`` per received packet (a GSO
    packet of many segments counts once there; dividing by ``WIRE_OVERHEAD`` took 4.4% too much off)."""

    PROGRAM = ("import glob, sys, time\n"
               "stats = glob.glob('/sys/class/net/to*/statistics/') + glob.glob('/sys/class/net/wan/statistics/')\n"
               f"def payload(d): return int(open(d + 'rx_bytes').read()) - {HEADER_BYTES} * int(open(d + 'rx_packets').read())\n"
               "while True:\n"
               "    n = sum(payload(d) for d in stats)\n"
               "    print(f'{time.monotonic():.4f} {n}', flush=True)\n"
               "    time.sleep(0.02)\n")

    def __init__(self, tb: Testbed, regions: list[str]) -> None:
        self._tb = tb
        self._samples: list[list[tuple[float, int]]] = []
        self._procs, self._readers = [], []
        for region, vm in ((r, k) for r in regions for k in range(tb.vms_per_region)):
            proc = tb.popen(region, [sys.executable, "-c", self.PROGRAM], vm=vm, stdout=subprocess.PIPE, text=True)
            samples: list[tuple[float, int]] = []
            reader = threading.Thread(target=self._read, args=(proc, samples), daemon=True)
            reader.start()
            self._procs.append(proc)
            self._readers.append(reader)
            self._samples.append(samples)

    @staticmethod
    def _read(proc: subprocess.Popen, samples: list[tuple[float, int]]) -> None:
        for line in proc.stdout:
            t, n = line.split()
            samples.append((float(t), int(n)))

    def stop(self) -> None:
        for proc in self._procs:
            self._tb.stop(proc)
        for reader in self._readers:
            reader.join(timeout=5)

    def _total(self, since: float) -> list[tuple[float, int]]:
        """The regions' total at every sample time of any of their namespaces (each namespace's last
        reading so far), from ``since`` on."""
        events = sorted((t, k, n) for k, samples in enumerate(self._samples) for t, n in samples if t >= since)
        last: dict[int, int] = {}
        out = []
        for t, k, n in events:
            last[k] = n
            if len(last) == len(self._samples):
                out.append((t, sum(last.values())))
        return out

    def steady(self, since: float, low: float = 0.1, high: float = 0.9) -> tuple[int, float]:
        """(bytes, seconds) between the moments the regions had received ``low`` and ``high`` of what
        arrived after ``since``: the rate once the pipeline is full and before it drains."""
        after = self._total(since)
        if len(after) < 2:
            return 0, 0.0
        base, total = after[0][1], after[-1][1] - after[0][1]
        if total <= 0:
            return 0, 0.0
        first = next((t, n) for t, n in after if n - base >= low * total)
        last = next((t, n) for t, n in after if n - base >= high * total)
        return last[1] - first[1], max(last[0] - first[0], 1e-9)


class CpuMeter:
    """CPU seconds used by the processes of each testbed namespace (the gateways of each VM), sampled
    every half second from /proc (a process's last half second before it exits is missed)."""

    def __init__(self, tb: Testbed, every: float = 0.5) -> None:
        self._inodes = {os.stat(f"/run/netns/{ns}").st_ino: ns for ns in tb.addressing.namespaces()}
        self._cpu: dict[int, tuple[str, float]] = {}
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(self._every):
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                try:
                    inode = os.stat(f"/proc/{pid}/ns/net").st_ino
                    if inode in self._inodes:
                        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                        self._cpu[pid] = (self._inodes[inode], (int(fields[11]) + int(fields[12])) / tick)
                except OSError:
                    continue  # gone, or not ours to read

    def stop(self) -> dict[str, float]:
        """Namespace -> CPU seconds of the processes seen in it."""
        self._stop.set()
        self._thread.join(timeout=5)
        by_ns: dict[str, float] = {}
        for ns, seconds in self._cpu.values():
            by_ns[ns] = by_ns.get(ns, 0.0) + seconds
        return by_ns


@dataclass
class Run:
    """One timed transfer of ``plan`` on the testbed.

    ``seconds`` run from the fleet being up until every object is written and verified (the streaming
    pipeline checks each copy from its store's receipt as it lands), ``setup_seconds`` is the gateways'
    start-up before it, ``verify_seconds`` a verification pass after it (0: there is none since ef276ed);
    ``edges`` what the shapers counted per region pair during the run;
    ``vm_sent`` the frame bytes each VM (``<region>/<k>``) sent during the run; ``steady`` the payload bytes
    the destination regions received together and the seconds they took
    between having 10% and 90% of them (the rate with the pipeline full: without the fill at the start,
    when the first chunks cross every hop one after the other, and the drain at the end)."""

    stats: TransferStats
    plan: Plan
    plan_scale: float
    seconds: float
    setup_seconds: float
    verify_seconds: float
    edges: dict[tuple[str, str], Bytes] = field(default_factory=dict)
    steady: tuple[int, float] = (0, 0.0)
    vm_sent: dict[str, int] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def source_balance(self) -> float:
        """Frame bytes sent by the least busy of the plan's source gateways (their VMs) over the busiest's:
        1 when the source region's gateways shared the work evenly, 0 when one of them sent nothing; nan
        when they do not have a VM each (a link testbed)."""
        vms = [f"{self.plan.src}/{k}" for k in range(self.plan.gateways[self.plan.src])]
        if any(vm not in self.vm_sent for vm in vms):
            return float("nan")
        sent = [self.vm_sent[vm] for vm in vms]
        return min(sent) / max(sent) if max(sent) else 0.0

    @property
    def busiest_cpu(self) -> float:
        """The busiest namespace's CPU seconds (its gateway, on a vm testbed) per second of the run
        (start-up and verification included: the gateways live that long)."""
        lifetime = self.setup_seconds + self.seconds + self.verify_seconds
        return max(self.cpu_seconds.values(), default=0.0) / lifetime if lifetime else 0.0

    @property
    def gbps(self) -> float:
        """Source bytes moved per second (after lz4, what the user gets), in Gbps."""
        return self.stats.bytes * 8 / self.seconds / 1e9

    @property
    def fanout(self) -> float:
        """Copies of each chunk the source sends: one per out-edge of the chunk's partition."""
        total = sum(self.plan.partition_weights) or 1.0
        return sum(w / total * sum(1 for e in self.plan.edges if e.src == self.plan.src and p in e.partitions)
                   for p, w in enumerate(self.plan.partition_weights)) or 1.0

    @property
    def copy_wire_bytes(self) -> float:
        """Frame bytes of one copy of the data (after lz4 and encryption): what every destination receives."""
        return self.stats.bytes_on_wire / self.fanout

    @property
    def wire_gbps(self) -> float:
        """Frame bytes of one copy per second, in testbed Gbps: the rate the plan's throughput predicts."""
        return self.copy_wire_bytes * 8 / self.seconds / 1e9

    @property
    def steady_gbps(self) -> float:
        """What each destination received per second with the pipeline full (``steady``, divided by the
        destinations), in Gbps of TCP payload (:class:`RxMeter`): comparable with the plan's throughput
        and the max-flow."""
        payload, seconds = self.steady
        return payload * 8 / seconds / 1e9 / len(self.plan.dsts) if seconds else 0.0

    @property
    def predicted_gbps(self) -> float:
        """The planner's throughput for this plan, in testbed Gbps."""
        return self.plan.throughput_gbps * self.plan_scale

    def headroom(self, scenario: Scenario) -> float:
        """How many times the plan's edge rates the emulated network could carry (``Scenario.headroom``):
        1 when the testbed is as tight as the planner's model of this plan."""
        grid_per_planned = self.plan_scale * 1000 / scenario.scale_mbit_per_gbps
        flows: dict[tuple[str, str], float] = {}
        for e in self.plan.edges:
            flows[(e.src, e.dst)] = flows.get((e.src, e.dst), 0.0) + e.gbps * grid_per_planned
        return scenario.headroom(flows, self.plan.gateways)

    @property
    def predicted_seconds(self) -> float:
        """The planner's time for the bytes this run sent (one copy of the frames)."""
        return self.copy_wire_bytes * 8 / (self.predicted_gbps * 1e9)

    @property
    def egress_usd_predicted(self) -> float:
        """The planner's egress for the bytes this run put on the wire: its USD per GB, which weighs every
        edge's price by the edge's share of the data, times one copy of the frames. (The plan prices
        source bytes; how much lz4 shrinks them is the data's business, reported apart as ``wire_per_byte``.)"""
        return self.plan.cost_per_gb * self.copy_wire_bytes / BYTES_PER_GB

    def egress_usd_measured(self, prices: dict[tuple[str, str], float]) -> float:
        """What the bytes that crossed each region pair cost (IP packets as the shapers counted them,
        TCP acknowledgements included as the receiver's egress)."""
        return sum(b.ip_bytes * prices.get(edge, 0.0) for edge, b in self.edges.items()) / BYTES_PER_GB

    @property
    def wire_per_byte(self) -> float:
        """Frame bytes per source byte of one copy (lz4, framing, encryption)."""
        return self.copy_wire_bytes / self.stats.bytes if self.stats.bytes else 0.0


    def record(self, scenario: Scenario) -> dict:
        """What the run measured and what its plan predicted, for a benchmark's ``--json``."""
        return {
            "edges": [f"{e.src}>{e.dst}" for e in self.plan.edges], "partitions": self.plan.partitions,
            "gateways": dict(self.plan.gateways), "bytes": self.stats.bytes, "seconds": self.seconds,
            "setup_seconds": self.setup_seconds, "verify_seconds": self.verify_seconds,
            "predicted_seconds": self.predicted_seconds, "data_mbit": self.gbps * 1000,
            "wire_mbit": self.wire_gbps * 1000, "steady_mbit": self.steady_gbps * 1000,
            "predicted_mbit": self.predicted_gbps * 1000, "headroom": self.headroom(scenario),
            "wire_per_byte": self.wire_per_byte, "egress_usd_predicted": self.egress_usd_predicted,
            "egress_usd_measured": self.egress_usd_measured(scenario.cost_per_gb),
            "egress_usd_plan_on_source_bytes": self.plan.egress_usd(self.stats.bytes),
            "counted": {f"{a}>{b}": {"frames": v.frames, "packets": v.packets}
                        for (a, b), v in self.edges.items() if v.frames},
            "vm_sent": {vm: n for vm, n in self.vm_sent.items() if n}, "source_balance": self.source_balance,
            "cpu_seconds": self.cpu_seconds, "busiest_cpu": self.busiest_cpu,
        }


def agrees(measured: float, predicted: float) -> bool:
    """Whether ``measured`` is within ``AGREEMENT`` of ``predicted``."""
    return predicted > 0 and abs(measured / predicted - 1) <= AGREEMENT


def run_transfer(tb: Testbed, src_dir: Path, dsts: list[tuple[Path, str]], src_region: str, plan: Plan,
                 **options) -> Run:
    """Copy every file of ``src_dir`` into each (directory, region) of ``dsts`` with ``plan``, through
    gateways in the testbed's namespaces. ``options`` are :class:`TransferRequest` fields
    (connections, chunk_size, ...)."""
    for directory, _ in dsts:
        directory.mkdir(parents=True, exist_ok=True)
    request = TransferRequest(src=f"file://{src_dir}/", dsts=[f"file://{d}/" for d, _ in dsts], src_region=src_region,
                              dst_regions=[r for _, r in dsts], plan=plan.to_dict(),
                              provisioner_settings={"placement": tb.gateway_placement()}, **options)
    transfer = Transfer(request).prepare()
    meter = RxMeter(tb, list(dict.fromkeys(r for _, r in dsts)))
    before, vm_before = tb.edge_bytes(), tb.vm_frames()
    cpu = CpuMeter(tb)
    try:
        started = time.monotonic()
        stats = transfer.run()
    finally:
        meter.stop()
        cpu_seconds = cpu.stop()
    after, vm_after = tb.edge_bytes(), tb.vm_frames()
    phases = stats.phases
    moving = started + phases["provision"]
    return Run(stats=stats, plan=plan, plan_scale=tb.plan_scale, seconds=phases["move"],
               setup_seconds=phases["provision"],
               # since the streaming pipeline (ef276ed) copies are verified from the stores' receipts
               # inside the move phase: no verification pass after it, so no "verify" phase
               verify_seconds=phases.get("verify", 0.0),
               edges={e: after[e] - before.get(e, Bytes()) for e in after},
               steady=meter.steady(moving), vm_sent={vm: n - vm_before.get(vm, 0) for vm, n in vm_after.items()},
               cpu_seconds=cpu_seconds)


def single_stream(tb: Testbed, src_dir: Path, dst_dir: Path, src_region: str, dst_region: str,
                  timeout: float = 600.0) -> float:
    """Seconds for one TCP connection from the source namespace to the destination namespace (the
    direct, shaped path; each region's first VM on a vm testbed) to carry every file of ``src_dir``
    into ``dst_dir``: plain bytes, no compression or encryption, timed by the receiver from accept to
    EOF. Checks the sha256."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    recv = tb.popen(dst_region, [*me, "recv", tb.region_address(dst_region), str(dst_dir)],
                    stdout=subprocess.PIPE, text=True)
    try:
        port = recv.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"single-stream receiver did not start (said {port!r})")
        sent = tb.run(src_region, [*me, "send", tb.region_address(dst_region), port, str(src_dir)],
                      capture_output=True, text=True, timeout=timeout, check=True).stdout.split()
        received = recv.stdout.readline().split()
        recv.wait(timeout=30)
    finally:
        if recv.poll() is None:
            tb.stop(recv)
    if len(received) != 3 or received[0] != sent[0] or received[2] != sent[1]:
        raise RuntimeError(f"single stream: sent {sent}, received {received}")
    return float(received[1])


def _receive(bind_host: str, directory: str) -> None:
    with socket.create_server((bind_host, 0)) as server:
        print(server.getsockname()[1], flush=True)
        conn, _ = server.accept()
    started = time.monotonic()
    digest, total, buf = hashlib.sha256(), 0, bytearray(_BUFFER)
    with conn, conn.makefile("rb") as stream:
        while header := stream.read(_HEADER.size):
            size, name_len = _HEADER.unpack(header)
            name = stream.read(name_len).decode()
            with open(os.path.join(directory, os.path.basename(name)), "wb") as out:
                left = size
                while left:
                    n = stream.readinto(memoryview(buf)[:min(left, _BUFFER)])
                    if not n:
                        raise EOFError(f"{name}: connection closed with {left} bytes missing")
                    digest.update(memoryview(buf)[:n])
                    out.write(memoryview(buf)[:n])
                    left -= n
                    total += n
    print(total, f"{time.monotonic() - started:.4f}", digest.hexdigest(), flush=True)


def _send(host: str, port: str, directory: str) -> None:
    digest, total = hashlib.sha256(), 0
    with socket.create_connection((host, int(port))) as conn:
        for path in sorted(Path(directory).iterdir()):
            data = path.read_bytes()
            conn.sendall(_HEADER.pack(len(data), len(path.name.encode())) + path.name.encode())
            conn.sendall(data)
            digest.update(data)
            total += len(data)
    print(total, digest.hexdigest(), flush=True)


if __name__ == "__main__":
    {"recv": _receive, "send": _send}[sys.argv[1]](*sys.argv[2:])
