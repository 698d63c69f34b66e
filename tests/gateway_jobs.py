"""Gateways under test on their own: jobs built from hand-written programs, chunk requests, socket checks.

Shared by the gateway daemon, security and fuzz tests; the fixtures that start such jobs (``home``,
``stores``, ``jobs``) live in tests/fixtures/gateways.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from pathlib import Path

from gateway import wire
from gateway.batch import ChunkMeta, DestStore, SentObject, Target
from gateway.codec import Codec
from gateway.control_client import GatewayClient
from planner.plan import Hop, PartitionProgram, RegionProgram
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.base import GatewaySpec
from skyplane_provider.provisioners.local import LocalFleet

MiB = 1024**2
SRC, RELAY, DST, DST2 = "t:src", "t:relay", "t:dst", "t:dst2"


class Job:
    """One job's secrets and a fleet built from hand-written programs."""

    def __init__(self, home: Path, programs: dict[str, RegionProgram], *, encrypt: bool = True,
                 compress: bool = True, queue_chunks: int = 4, overrides: dict[str, dict] | None = None,
                 wire_peers: bool = True, provisioner=None) -> None:
        self.id = uuid.uuid4().hex
        self.secret = os.urandom(32).hex()
        self.key = os.urandom(32).hex()
        self.home = home
        specs = []
        for region, program in programs.items():
            handles_data = any(p.source == "read" or p.write for p in program.partitions.values())
            config = {"program": program.to_dict(), "job_secret": self.secret, "control_token": uuid.uuid4().hex,
                      "compress": compress, "encrypt": encrypt, "queue_chunks": queue_chunks, "readers": 2,
                      "writers": 2, "credentials": {}}
            if encrypt and handles_data:
                config["encryption_key"] = self.key
            config.update((overrides or {}).get(region, {}))
            specs.append(GatewaySpec(gateway_id=f"{region}/0", region=region, config=config))
        self.fleet: LocalFleet = (provisioner or get_provisioner("local")).provision(self.id, specs)
        self.handles = {g.region: g for g in self.fleet.gateways}
        self.clients = {g.region: g.client() for g in self.fleet.gateways}
        if wire_peers:
            for region, program in programs.items():
                self.wire(region, program)

    def wire(self, region: str, program: RegionProgram) -> None:
        hops = {h.region for p in program.partitions.values() for h in p.send}
        if hops:
            self.clients[region].set_peers({r: [self.peer(r)] for r in hops})

    def peer(self, region: str) -> dict:
        h = self.handles[region]
        return {"gateway_id": h.gateway_id, "host": h.data_host, "data_port": h.data_port}

    def directory(self, region: str) -> Path:
        return Path(self.handles[region].extra["directory"])

    def events(self, region: str, want: int, timeout: float = 30.0, kind: str | None = None) -> list[dict]:
        """Poll until ``want`` events (of ``kind``) were reported by ``region``'s gateway."""
        found: list[dict] = []
        cursor, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.clients[region].status(cursor)
            cursor = status["next"]
            if kind == "written" and any(e["type"] == "failed" for e in status["events"]):
                raise AssertionError(f"{region} reported a failure: {status['events']}")
            found += [e for e in status["events"] if kind is None or e["type"] == kind]
            if len(found) >= want:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{region}: {len(found)} of {want} events after {timeout}s: {found} "
                             f"{self.clients[region].status(0)}\n{self.fleet.logs(region + '/0', 30)}")


def batch(src: str, dests: list[tuple[str, str]], *chunks: dict) -> dict:
    """A ``POST /chunks`` body: ``dests`` are (region, store root) rows, indexed by :func:`to`."""
    return {"src": src, "dests": [{"region": r, "store": s} for r, s in dests], "chunks": list(chunks)}


def chunk(cid: int, *objects: dict, partition: int = 0) -> dict:
    return {"id": cid, "partition": partition, "objects": list(objects)}


def obj(key: str, length: int, *targets: dict, offset: int = 0) -> dict:
    return {"key": key, "offset": offset, "length": length, "to": list(targets)}


def to(dest: int, key: str, upload_id: str | None = None, part: int | None = None) -> dict:
    return {"dest": dest, "key": key, "upload_id": upload_id, "part": part}


def one(cid: int, src: str, key: str, length: int, region: str, dst: str, dst_key: str | None = None) -> dict:
    """A batch of one chunk: the whole object ``key`` of ``src`` to ``dst_key`` in ``dst`` (``region``)."""
    return batch(src, [(region, dst)], chunk(cid, obj(key, length, to(0, dst_key or key))))


def frame_meta(region: str, store: str, *objects: tuple[str, int]) -> bytes:
    """The metadata of a frame holding whole objects ``(key, length)``, all for ``store`` in ``region``."""
    return ChunkMeta((DestStore(region, store),),
                     tuple(SentObject(i, n, (Target(0, k),)) for i, (k, n) in enumerate(objects))).encode()


def seal(codec: Codec, chunk_id: int, meta: bytes, data: bytes) -> wire.Frame:
    """The frame a source would send for ``data`` (one piece) with metadata ``meta``."""
    return codec.encode(chunk_id=chunk_id, partition=0, meta=meta, pieces=[data])[0]


def submit_all(client: GatewayClient, body: dict, timeout: float = 60.0) -> None:
    """Submit every chunk of ``body``, again and again while the gateway accepts only a prefix."""
    chunks, deadline = list(body["chunks"]), time.monotonic() + timeout
    while chunks:
        accepted = client.submit({**body, "chunks": chunks})
        chunks = chunks[accepted:]
        if chunks:
            assert time.monotonic() < deadline, f"{len(chunks)} chunks still refused after {timeout}s"
            time.sleep(0.05)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_hung_up(sock: socket.socket) -> None:
    """The peer closed the connection (a FIN, or a reset when it left our bytes unread)."""
    sock.settimeout(10)
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass


def assert_refused(sock: socket.socket) -> bool:
    """The peer ended a handshake we had not passed: at most its refusal message (docs/wire-protocol.md;
    none when its reset overtook it), never an accept, then the end of the connection. Whether the
    refusal came."""
    sock.settimeout(10)
    got = b""
    try:
        while b := sock.recv(64):
            got += b
    except ConnectionResetError:
        pass
    assert got == b"" or (got[:4] == b"SKYR" and len(got) == 5), got
    return bool(got)


def chain() -> dict[str, RegionProgram]:
    """Partition 0: source -> relay -> destination (2 connections per hop)."""
    return {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(RELAY, 2),))}),
            RELAY: RegionProgram(RELAY, {0: PartitionProgram("receive", (Hop(DST, 2),))}),
            DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
