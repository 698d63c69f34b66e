"""Real gateway processes (started by the local provisioner) moving chunks between local-directory stores.

Programs are written by hand here, so the gateways are tested on their own, without the planner or
the orchestrator: source -> relay -> destination, fan-out, the relay's lack of a key, refused peers,
tampered and replayed frames, backpressure, the control API's input checks and clean teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import crc32c
import pytest

from gateway import wire
from gateway.codec import Codec
from gateway.control_client import GatewayClient
from gateway.stores import open_store
from gateway.stores.base import PartInfo
from planner.errors import GatewayError, NotFoundError, ProtocolError, ProvisionError
from planner.plan import Hop, PartitionProgram, RegionProgram
from skyplane_provider.coordinator.gateway_store import GatewayStore
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.base import GatewaySpec
from skyplane_provider.provisioners import spares
from skyplane_provider.provisioners.local import PIDS_FILE, LocalProvisioner, local_workers
from skyplane_provider.transfer.launch import ONE_WORKER_BYTES, ONE_WORKER_OBJECTS, workers_for
from skyplane_provider.testbed import Scenario
from tests.fixtures.testbed import needs_netns

from .gateway_jobs import (
    DST,
    DST2,
    RELAY,
    SRC,
    Job,
    MiB,
    assert_hung_up,
    assert_refused,
    batch,
    chain,
    chunk,
    frame_meta,
    obj,
    one,
    seal,
    sha,
    submit_all,
    to,
)
from .helpers import gateway_pids, put_objects


def test_chain_whole_objects_and_parts_through_a_keyless_relay(jobs, stores):
    """Encrypted and compressed as between hosts (loopback_clear off: the gateways are all on this one)."""
    job = jobs(chain(), overrides={r: {"loopback_clear": False} for r in (SRC, RELAY, DST)})
    relay_config = json.loads((job.directory(RELAY) / "config.json").read_text())
    assert "encryption_key" not in relay_config and relay_config["encrypt"] is True
    assert "encryption_key" in json.loads((job.directory(DST) / "config.json").read_text())
    for region in (SRC, RELAY, DST):
        assert (job.directory(region) / "config.json").stat().st_mode & 0o777 == 0o600

    src, dst = open_store(stores["src"]), open_store(stores["dst"])
    text = b"".join(b"%d,event-%d,%d\n" % (i, i % 13, i * i) for i in range(60_000))  # compresses
    big = os.urandom(5 * MiB + 12345)  # does not: sent raw, in parts
    objects = {"logs/a.csv": text, "empty": b"", "bin/big": big}
    for k, v in objects.items():
        src.write(k, v)
    upload = dst.begin_multipart("out/big")
    reqs = [chunk(0, obj("logs/a.csv", len(text), to(0, "out/a.csv"))), chunk(1, obj("empty", 0, to(0, "out/empty")))]
    part_size = 2 * MiB
    for n, off in enumerate(range(0, len(big), part_size), start=1):
        reqs.append(chunk(1 + n, obj("bin/big", min(part_size, len(big) - off), to(0, "out/big", upload, n),
                                     offset=off)))
    submit_all(job.clients[SRC], batch(stores["src"], [(DST, stores["dst"])], *reqs))
    written = job.events(DST, len(reqs), kind="written")
    assert sorted(e["chunk_id"] for e in written) == list(range(len(reqs)))
    assert all(e["region"] == DST and e["integrity"] == "aead" and len(e["objects"]) == 1 for e in written)
    entries = {e["chunk_id"]: e["objects"][0] for e in written}
    assert entries[0]["receipt"]["size"] == len(text) and entries[1]["receipt"]["size"] == 0
    assert (entries[0]["i"], entries[0]["dest"], entries[0]["key"], entries[0].get("part")) == (0, 0, "out/a.csv", None)
    parts = sorted((entries[c]["part"] for c in range(2, len(reqs))), key=lambda p: p["part_number"])
    assert [p["part_number"] for p in parts] == [1, 2, 3] and all("receipt" not in entries[c] for c in range(2, 5))
    dst.complete_multipart("out/big", upload, [PartInfo(p["part_number"], p["etag"], p["size"]) for p in parts])

    assert sha(dst.read("out/a.csv")) == sha(text)
    assert dst.read("out/empty") == b""
    assert sha(dst.read("out/big")) == sha(big)
    counters = {r: job.clients[r].status(10**9)["counters"] for r in (SRC, RELAY, DST)}
    total = len(text) + len(big)
    assert counters[SRC]["bytes_read"] == total and counters[DST]["bytes_written"] == total
    assert counters[RELAY]["bytes_received_wire"] == counters[RELAY]["bytes_sent_wire"] \
        == counters[DST]["bytes_received_wire"] == counters[SRC]["bytes_sent_wire"]
    # The text went compressed, the random bytes raw: the wire carries less than the data.
    assert counters[SRC]["bytes_sent_wire"] < total
    assert counters[DST]["chunks_written"] == counters[DST]["objects_written"] == len(reqs)
    assert counters[DST]["frames_rejected"] == 0
    assert counters[SRC]["bytes_sent_wire_to"] == {RELAY: counters[SRC]["bytes_sent_wire"]}
    assert counters[RELAY]["bytes_sent_wire_to"] == {DST: counters[RELAY]["bytes_sent_wire"]}
    assert job.clients[RELAY].status(0)["events"] == []  # relays write nothing

    pids_record = json.loads((job.home / "jobs" / job.id / PIDS_FILE).read_text())
    assert {g["gateway_id"] for g in pids_record["gateways"]} == {f"{r}/0" for r in (SRC, RELAY, DST)}
    for g in pids_record["gateways"]:
        assert job.id in g["cmdline_marker"]
        cmdline = Path(f"/proc/{g['pid']}/cmdline").read_bytes().decode()
        assert g["cmdline_marker"] in cmdline


def test_bundle_of_many_objects_travels_in_one_frame_and_an_unreadable_one_fails_alone(jobs, stores):
    """300 small objects and two bad ones in one chunk, through a keyless relay, to two stores of the
    destination region: the missing object and the one whose size changed fail alone (named by their
    index), the 300 others arrive in one frame, each written whole, in one ``written`` event."""
    job = jobs(chain(), overrides={r: {"loopback_clear": False} for r in (SRC, RELAY, DST)})
    src = open_store(stores["src"])
    objects = {f"small/{i:04d}.json": b'{"id": %d, "v": "%s"}\n' % (i, b"x" * (i % 50)) * 20 for i in range(300)}
    for k, v in objects.items():
        src.write(k, v)
    entries = [obj(k, len(v), to(0, "out/" + k), to(1, "copy/" + k)) for k, v in objects.items()]
    entries.insert(7, obj("small/missing", 10, to(0, "out/missing")))
    entries.insert(20, obj("small/0000.json", len(objects["small/0000.json"]) - 1, to(0, "out/changed")))
    body = batch(stores["src"], [(DST, stores["dst"]), (DST, stores["dst2"])], chunk(0, *entries))
    assert job.clients[SRC].submit(body) == 1
    failed = sorted(job.events(SRC, 2, kind="failed"), key=lambda e: e["objects"])
    assert [(e["chunk_id"], e["objects"], e["retryable"]) for e in failed] == [(0, [7], False), (0, [20], False)]
    assert failed[0]["error_type"] == "NotFoundError" and "small/missing" in failed[0]["error"]
    assert "small/0000.json changed" in failed[1]["error"]
    (written,) = job.events(DST, 1, kind="written")
    assert written["chunk_id"] == 0 and written["integrity"] == "aead"
    good = [i for i in range(len(entries)) if i not in (7, 20)]
    assert sorted((o["i"], o["dest"]) for o in written["objects"]) == sorted((i, d) for i in good for d in (0, 1))
    assert all(o["receipt"]["size"] == len(objects[o["key"].split("/", 1)[1]]) for o in written["objects"])
    for root, prefix in ((stores["dst"], "out/"), (stores["dst2"], "copy/")):
        copies = {o.key: open_store(root).read(o.key) for o in open_store(root).list()}
        assert copies == {prefix + k: v for k, v in objects.items()}
    counters = {r: job.clients[r].status(10**9)["counters"] for r in (SRC, RELAY, DST)}
    total = sum(map(len, objects.values()))
    assert counters[SRC]["bytes_read"] == total and counters[DST]["bytes_written"] == 2 * total
    assert counters[DST]["chunks_written"] == 1 and counters[DST]["objects_written"] == 600
    # One frame, compressed once: JSON lines shrink, and the relay forwarded exactly what it got.
    assert counters[RELAY]["bytes_received_wire"] == counters[RELAY]["bytes_sent_wire"] < total


def test_a_chain_that_never_leaves_the_host_skips_lz4_and_encryption(jobs, stores):
    """By default frames to a peer on a loopback address go clear and uncompressed (CRC32C checked),
    the counters say what was skipped and why, and a relay forwards them only to loopback peers."""
    job = jobs(chain())
    text = b"".join(b"%d,event,%d\n" % (i, i * i) for i in range(50_000))  # would compress
    open_store(stores["src"]).write("t.csv", text)
    assert job.clients[SRC].submit(one(0, stores["src"], "t.csv", len(text), DST, stores["dst"])) == 1
    (written,) = job.events(DST, 1, kind="written")
    assert written["integrity"] == "crc32c" and open_store(stores["dst"]).read("t.csv") == text
    counters = job.clients[SRC].status(0)["counters"]
    assert counters["skipped"] == {"lz4_loopback": 1, "encryption_loopback": 1}
    assert counters["bytes_sent_wire"] > len(text)  # sent as it is

    # A relay told that its next hop is elsewhere refuses to let the clear frame leave the host.
    job.clients[RELAY].set_peers({DST: [{"gateway_id": "far", "host": "10.255.255.1", "data_port": 9}]})
    assert job.clients[SRC].submit(one(1, stores["src"], "t.csv", len(text), DST, stores["dst"], "again")) == 1
    (failed,) = job.events(RELAY, 1, kind="failed")
    assert failed["chunk_id"] == 1 and "not on this host" in failed["error"]
    assert not open_store(stores["dst"]).exists("again")


def test_store_operations_through_the_gateway(jobs, stores):
    """``POST /store`` with GatewayClient: paged listing, head, write, multipart begin/list parts/complete/
    abort, pending uploads, delete; a store's refusal comes back as the same error class."""
    job = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})})
    client, root = job.clients[SRC], stores["dst"]
    keys = ["a", "b/c", "b/d", "b-e", "f 文件"]
    for k in keys:
        assert client.write(root, k, k.encode()).size == len(k.encode())
    pages, token = [], None
    while True:
        page, token = client.list_page(root, token=token, limit=2)
        pages.append([o.key for o in page])
        if token is None:
            break
    assert sum(pages, []) == sorted(keys) and all(len(p) <= 2 for p in pages)
    assert [o.key for o in client.list_page(root, prefix="b/")[0]] == ["b/c", "b/d"]
    info = client.head(root, "b/c")
    assert (info.key, info.size, info.md5) == ("b/c", 3, hashlib.md5(b"b/c").hexdigest())
    with pytest.raises(NotFoundError, match="nope") as refused:
        client.head(root, "nope")
    assert (refused.value.message.endswith("nope does not exist"), refused.value.hint) == (True, "check the path")
    upload = client.begin_multipart(root, "big")
    parts = [open_store(root).upload_part("big", upload, n, bytes([n]) * 1000) for n in (1, 2)]
    assert client.pending_uploads(root) == [("big", upload)]
    listed = client.list_parts(root, "big", upload)
    assert [(p.part_number, p.etag, p.size, p.crc32c) for p in listed] == \
        [(p.part_number, p.etag, 1000, f"{crc32c.crc32c(bytes([p.part_number]) * 1000):08x}") for p in parts]
    # What a remote fleet's coordinator asks on resume, through its GatewayStore: part 2's checksum only.
    via = GatewayStore(root, capabilities=open_store(root).capabilities, region=SRC, clients=lambda: [client])
    assert [(p.part_number, p.crc32c) for p in via.list_parts("big", upload, [2])] == [(1, None), (2, listed[1].crc32c)]
    done = client.complete_multipart(root, "big", upload, parts)
    assert (done.key, done.size) == ("big", 2000)
    other = client.begin_multipart(root, "aborted")
    client.abort_multipart(root, "aborted", other)
    assert client.pending_uploads(root) == []
    client.delete(root, "a")
    assert not open_store(root).exists("a") and open_store(root).read("big")[999:1001] == b"\x01\x02"
    for bad in ({"op": "nope", "store": root}, {"op": "list", "store": root, "limit": 5001},
                {"op": "write", "store": root, "key": "k", "data": "not base64!"},
                {"op": "head", "store": "s3://bucket/with-key", "key": "k"}, {"op": "head", "store": root}):
        with pytest.raises(GatewayError, match="answered 400"):
            client._call("POST", "/store", bad)


def test_fan_out_and_local_write(jobs, stores):
    """The source writes locally, and sends each chunk to two destinations (multicast)."""
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST), Hop(DST2)), write=True)}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)}),
                DST2: RegionProgram(DST2, {0: PartitionProgram("receive", (), write=True)})}
    job = jobs(programs, encrypt=False, compress=False)
    data = os.urandom(300_000)
    open_store(stores["src"]).write("x", data)
    dests = [(SRC, stores["src"]), (DST, stores["dst"]), (DST2, stores["dst2"])]
    body = batch(stores["src"], dests, chunk(0, obj("x", len(data), to(0, "copy-of-x"), to(1, "x"), to(2, "x"))))
    assert job.clients[SRC].submit(body) == 1
    for i, (region, integrity) in enumerate(((SRC, "local"), (DST, "crc32c"), (DST2, "crc32c"))):
        (event,) = job.events(region, 1, kind="written")
        assert (event["region"], event["integrity"]) == (region, integrity)
        assert [(o["i"], o["dest"], o["receipt"]["size"]) for o in event["objects"]] == [(0, i, len(data))]
    for store, key in ((stores["src"], "copy-of-x"), (stores["dst"], "x"), (stores["dst2"], "x")):
        assert sha(open_store(store).read(key)) == sha(data)


def test_buffers_sealed_or_opened_in_place_never_reach_a_reader_of_the_original(jobs, stores):
    """lz4 + AES-GCM between hosts (loopback_clear off): a source that also writes its chunk keeps its
    read buffers in the clear (sealed into a new buffer), a relay that also writes decrypts into buffers
    of its own (the frame it passes on stays as it came), a destination opens the body in place:
    every copy of every object is whole, compressible or not."""
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(RELAY),), write=True)}),
                RELAY: RegionProgram(RELAY, {0: PartitionProgram("receive", (Hop(DST),), write=True)}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    # The relay sends at 1 MB/s: its writer opens a frame while the frame is still being passed on.
    job = jobs(programs, overrides={r: {"loopback_clear": False, **({"bwlimit": 1e6} if r == RELAY else {})}
                                    for r in programs})
    text = b"".join(b"%d,event-%d,%d\n" % (i, i % 13, i * i) for i in range(60_000))  # compresses
    objects = {"text": text, "random": os.urandom(MiB)}
    for k, v in objects.items():
        open_store(stores["src"]).write(k, v)
    dests = [(SRC, stores["src"]), (RELAY, stores["dst2"]), (DST, stores["dst"])]
    chunks = [chunk(i, obj(k, len(v), to(0, "copy-" + k), to(1, k), to(2, k))) for i, (k, v) in enumerate(objects.items())]
    assert job.clients[SRC].submit(batch(stores["src"], dests, *chunks)) == 2
    for region, integrity in ((SRC, "local"), (RELAY, "aead"), (DST, "aead")):
        assert {e["integrity"] for e in job.events(region, 2, kind="written")} == {integrity}
    for store, prefix in ((stores["src"], "copy-"), (stores["dst2"], ""), (stores["dst"], "")):
        assert {k: sha(open_store(store).read(prefix + k)) for k in objects} == {k: sha(v) for k, v in objects.items()}


def test_peer_with_wrong_job_secret_is_refused(jobs, stores):
    """A gateway started with another secret cannot deliver to the destination; the test's own
    connection with a wrong secret is dropped too."""
    rogue = "t:rogue"
    programs = {DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)}),
                rogue: RegionProgram(rogue, {0: PartitionProgram("read", (Hop(DST),))})}
    job = jobs(programs, overrides={rogue: {"job_secret": os.urandom(32).hex()}})
    open_store(stores["src"]).write("x", b"secret data")
    job.clients[rogue].submit(one(0, stores["src"], "x", 11, DST, stores["dst"]))
    (failed,) = job.events(rogue, 1, kind="failed")
    assert "refused" in failed["error"] and failed["retryable"] is False
    assert (failed["objects"], failed["region"], failed["error_type"]) == (None, None, "ProtocolError")
    with pytest.raises(ProtocolError):
        wire.connect(job.handles[DST].data_host, job.handles[DST].data_port, job_id=bytes.fromhex(job.id),
                     secret=os.urandom(32))
    # The gateway records the refusal after it dropped the connection, so the client's error can come first.
    deadline = time.monotonic() + 10
    while len(refused := [e for e in job.clients[DST].status(0)["errors"] if "refused data connection" in e]) < 2:
        assert time.monotonic() < deadline, refused
        time.sleep(0.05)
    assert len(refused) == 2
    assert not open_store(stores["dst"]).exists("x")


def test_tampered_bundle_is_not_written_and_a_resend_is_harmless(jobs, stores):
    """A peer holding the job secret (say, a compromised relay) sends the destination a bundle of
    three objects with one flipped bit: it is rejected with a retryable failure and none of them is
    written. The intact frame is then written once; sending it again only confirms it; another job's
    frame ends the connection."""
    job = jobs({DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})})
    codec = Codec(bytes.fromhex(job.id), key=bytes.fromhex(job.key), encrypt=True, compress=True)
    objects = {"k": b"important bytes " * 5000, "k2": b"more", "k3": os.urandom(1000)}
    data = b"".join(objects.values())
    meta = frame_meta(DST, stores["dst"], *((k, len(v)) for k, v in objects.items()))
    frame = seal(codec, 5, meta, data)
    body = bytearray(b"".join(frame.body))  # as it arrives: one buffer
    body[len(body) // 2] ^= 1
    h = job.handles[DST]
    conn = wire.connect(h.data_host, h.data_port, job_id=bytes.fromhex(job.id), secret=bytes.fromhex(job.secret))
    with conn:
        wire.send_frame(conn, wire.Frame(frame.header, frame.header_bytes, (body,)))
        (failed,) = job.events(DST, 1)
        assert failed["type"] == "failed" and failed["chunk_id"] == 5 and failed["retryable"] is True
        assert (failed["objects"], failed["error_type"]) == (None, "ChecksumError")
        assert list(open_store(stores["dst"]).list()) == []
        wire.send_frame(conn, frame)
        wire.send_frame(conn, frame)
        events = job.events(DST, 3)
    assert [e["type"] for e in events] == ["failed", "written", "written"]
    assert [o["key"] for o in events[1]["objects"]] == [o["key"] for o in events[2]["objects"]] == list(objects)
    assert all(open_store(stores["dst"]).read(k) == v for k, v in objects.items())
    counters = job.clients[DST].status(0)["counters"]
    assert counters["chunks_written"] == 1 and counters["objects_written"] == 3 and counters["frames_rejected"] == 1

    other = Codec(os.urandom(16), key=bytes.fromhex(job.key), encrypt=True, compress=True)
    with wire.connect(h.data_host, h.data_port, job_id=bytes.fromhex(job.id),
                      secret=bytes.fromhex(job.secret)) as conn:
        wire.send_frame(conn, seal(other, 6, meta, data))
        assert_hung_up(conn)
    assert job.clients[DST].status(0)["counters"]["frames_rejected"] == 2


def test_backpressure_accepts_a_prefix(jobs, stores):
    """While the source cannot send (no peers yet), its full queues make it accept only a prefix."""
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST),))}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    job = jobs(programs, overrides={SRC: {"read_ahead_bytes": 1}}, queue_chunks=1, wire_peers=False)
    open_store(stores["src"]).write("x", b"abc")
    reqs = [chunk(i, obj("x", 3, to(0, f"k{i}"))) for i in range(50)]

    def submit(chunks: list[dict]) -> int:
        return job.clients[SRC].submit(batch(stores["src"], [(DST, stores["dst"])], *chunks))

    accepted = submit(reqs)
    assert accepted == 1  # one request at most waits when each is above the read-ahead budget
    time.sleep(0.5)
    for _ in range(5):  # the two readers each hold one chunk, then nothing moves
        accepted += submit(reqs[accepted:])
    assert accepted <= 1 + 2 + 1 and job.clients[SRC].status(0)["queued"] == 1
    job.wire(SRC, programs[SRC])
    deadline = time.monotonic() + 60
    while accepted < len(reqs) and time.monotonic() < deadline:
        accepted += submit(reqs[accepted:])
        time.sleep(0.01)
    assert accepted == len(reqs)
    written = job.events(DST, 50, kind="written", timeout=60)
    assert {e["chunk_id"] for e in written} == set(range(50))


def test_missing_source_object_fails_without_retry(jobs, stores):
    job = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})})
    job.clients[SRC].submit(one(3, stores["src"], "nope", 10, SRC, stores["dst"]))
    (failed,) = job.events(SRC, 1)
    assert failed["type"] == "failed" and failed["retryable"] is False and "nope" in failed["error"]
    assert (failed["chunk_id"], failed["objects"], failed["error_type"]) == (3, [0], "NotFoundError")
    assert job.clients[SRC].status(0)["counters"]["retries"] == 0


def test_control_api_checks_token_and_input(jobs, stores):
    job = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})})
    h = job.handles[SRC]

    def call(method: str, path: str, body: bytes | None = None, token: str | None = h.control_token) -> tuple:
        req = urllib.request.Request(h.control_url + path, data=body, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert call("GET", "/health", token=None)[0] == 401
    assert call("GET", "/health", token="wrong")[0] == 401
    assert call("POST", "/shutdown", b"{}", token=h.control_token + "x")[0] == 401
    assert call("GET", "/health") == (200, {"ok": True, "gateway_id": h.gateway_id, "region": SRC, "pid": h.pid})
    assert call("GET", "/nope")[0] == 404
    for path in ("/status?since=-1", "/status?since=abc", "/status?wait=-1", "/status?wait=abc", "/status?wait=nan",
                 "/status?wait=6", "/status?wait=1&wait=2"):
        assert call("GET", path)[0] == 400
    dests = [(SRC, stores["dst"])]
    part = obj("k", 1, to(0, "k", "upload", 1))
    bad_bodies = [b"not json", b"[]", b'{"chunks": 3}', b'{"chunks": [{"id": "x"}]}',
                  batch(stores["src"], dests, chunk(0, obj("k", 1, to(0, "k"), offset=-5))),
                  batch(stores["src"], dests, chunk(0, obj("k", 1, to(0, "k"), offset=5))),  # a whole object at 5
                  batch(stores["src"], dests, chunk(0, obj("k", 1))),
                  batch(stores["src"], dests, chunk(0)),
                  batch(stores["src"], dests, chunk(0, *[obj(f"k{i}", 1, to(0, f"k{i}")) for i in range(1025)])),
                  batch(stores["src"], dests, chunk(0, part, obj("j", 1, to(0, "j")))),  # a part in a bundle
                  batch(stores["src"], dests, chunk(0, obj("k", 1, to(1, "k")))),  # no dest 1
                  batch(stores["src"], dests, chunk(0, obj("k", 1, to(0, "k", "upload", 1), to(0, "k2")))),
                  batch(stores["src"] + "/sub", [(SRC, "s3://bucket/key")], chunk(0, obj("k", 1, to(0, "k")))),
                  batch(stores["src"], dests, chunk(0, obj("k", 1, to(0, "k"))), chunk(1, obj("k", 1, to(0, "k")),
                                                                                      partition=7))]
    for body in bad_bodies:
        status, doc = call("POST", "/chunks", body if isinstance(body, bytes) else json.dumps(body).encode())
        assert status == 400 and doc["error"], body
    for body in (b'{"peers": []}', b'{"peers": {"r": [{"gateway_id": "g", "host": "h", "data_port": 0}]}}'):
        assert call("POST", "/peers", body)[0] == 400
    assert job.clients[SRC].status(0)["queued"] == 0  # nothing was accepted
    with pytest.raises(GatewayError, match="refused the control token"):
        GatewayClient(h.control_url, "wrong").health()
    assert job.fleet.alive(h.gateway_id)


def test_sigterm_stops_a_gateway_cleanly_and_teardown_reaps_everything(jobs, stores):
    job = jobs(chain())
    src = job.handles[SRC]
    os.kill(src.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while job.fleet.alive(src.gateway_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job.fleet.alive(src.gateway_id)
    assert job.fleet._members[src.gateway_id].proc.returncode == 0
    with pytest.raises(GatewayError, match="cannot reach"):
        GatewayClient(src.control_url, src.control_token, timeout=2).health()
    # A gateway that ignores SIGTERM-free shutdown paths is still killed: freeze one with SIGSTOP.
    relay = job.handles[RELAY]
    os.kill(relay.pid, signal.SIGSTOP)
    job.fleet._grace = 0.5
    job.fleet.teardown()
    assert gateway_pids(job.id) == []
    job.fleet.teardown()  # idempotent


def test_bad_config_exits_with_a_message(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"gateway_id": "g", "job_id": "zz"}))
    out = subprocess.run([sys.executable, "-m", "gateway.daemon", "--config", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "gateway config" in out.stderr


def test_provisioning_failure_tears_down_what_started(home, stores):
    good = RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})
    specs = [GatewaySpec(f"{SRC}/0", SRC, {"program": good.to_dict(), "job_secret": "ab" * 32,
                                           "control_token": "t" * 32, "encrypt": False}),
             GatewaySpec(f"{DST}/0", DST, {"program": {"region": DST, "partitions": {}}, "job_secret": "ab" * 32,
                                           "control_token": "short", "encrypt": False})]
    job_id = uuid.uuid4().hex
    with pytest.raises(ProvisionError, match="control_token is too short"):
        get_provisioner("local", health_timeout=20).provision(job_id, specs)
    assert gateway_pids(job_id) == []
    assert not (home / "jobs" / job_id).exists()


def test_gateways_started_ahead_are_used_and_unused_ones_exit(home, stores):
    """The coordinator starts a job's gateway processes before it knows their configs (their imports
    run beside its own); provisioning hands each its config, and one the fleet does not use exits."""
    program = RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})
    job_id = uuid.uuid4().hex
    prov = get_provisioner("local")
    prov.start_ahead(job_id, [f"{SRC}/0", f"{SRC}/1"], [SRC, SRC])
    ahead = {path: proc for path, (proc, _) in spares._held.items()}
    assert len(ahead) == 2 and not (home / "jobs" / job_id).exists()  # nothing written before the go
    fleet = prov.provision(job_id, [GatewaySpec(f"{SRC}/0", SRC, {"program": program.to_dict(), "job_secret": "ab" * 32,
                                                                  "control_token": "t" * 32, "encrypt": False})])
    try:
        used = ahead.pop(str(fleet._members[f"{SRC}/0"].config_path))
        assert fleet.gateways[0].pid == used.pid and fleet.alive(f"{SRC}/0")
        assert spares._held == {}
        assert f"gateway {SRC}/0" in (fleet._members[f"{SRC}/0"].directory / "gateway.log").read_text()
        (unused,) = ahead.values()
        assert unused.poll() is not None  # ended (and reaped) when provisioning dropped the spares
    finally:
        fleet.teardown()
    assert gateway_pids(job_id) == []


def test_gateways_started_before_the_plan_take_the_first_gateways_and_log_once_told(home, stores):
    """Daemons started before any plan exists (the coordinator started ahead of a local job: spares.py)
    write nothing until provisioning takes one: it gets the fleet's first gateway, its directory the
    one its command line names (deprovision finds it there), its log beside its config; one not taken
    exits when dropped, its directory never made."""
    program = RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})
    job_id = uuid.uuid4().hex
    job_dir = home / "jobs" / job_id
    spares.start_unnamed(job_dir, 2)
    unnamed = {path: proc for path, (proc, _) in spares._held.items()}
    assert len(unnamed) == 2 and not job_dir.exists()
    spec = GatewaySpec(f"{SRC}/0", SRC, {"program": program.to_dict(), "job_secret": "ab" * 32,
                                         "control_token": "t" * 32, "encrypt": False})
    fleet = get_provisioner("local").provision(job_id, [spec])
    try:
        member = fleet._members[f"{SRC}/0"]
        assert member.directory == job_dir / "gw-ahead-0"
        assert fleet.gateways[0].pid == unnamed.pop(str(member.config_path)).pid and fleet.alive(f"{SRC}/0")
        record = json.loads((job_dir / PIDS_FILE).read_text())["gateways"][0]
        cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert record["cmdline_marker"] in cmdline
        assert f"gateway {SRC}/0" in (member.directory / "gateway.log").read_text()  # its log, once told
        (unused,) = unnamed.values()
        assert unused.poll() is not None and not (job_dir / "gw-ahead-1").exists()
    finally:
        fleet.teardown()
    assert gateway_pids(job_id) == [] and not job_dir.exists()


def test_data_port_refuses_garbage_before_allocating(jobs):
    job = jobs({DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})})
    h = job.handles[DST]
    with socket.create_connection((h.data_host, h.data_port), timeout=15) as s:
        s.recv(64)  # the server's challenge
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(100))
        assert_refused(s)
    assert job.fleet.alive(h.gateway_id)


@pytest.mark.netns
@needs_netns
def test_chain_across_testbed_namespaces(testbeds, stores):
    """Each gateway in its region's network namespace (placement from the testbed), frames over the
    shaped veths between namespaces, control from here over the control links."""
    scenario = Scenario(name="gw3", regions=(SRC, RELAY, DST), scale_mbit_per_gbps=50.0,
                        gbps={(a, b): 1.0 for a in (SRC, RELAY, DST) for b in (SRC, RELAY, DST) if a != b})
    tb = testbeds(scenario).up()
    placement = tb.gateway_placement()
    for region in scenario.regions:
        tb.assert_routed(placement[region]["control_host"])
    job = Job(tb.root.parent, chain(), provisioner=get_provisioner("local", placement=placement))
    try:
        for region in scenario.regions:
            h = job.handles[region]
            assert h.data_host == tb.region_address(region)
            assert os.readlink(f"/proc/{h.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        data = os.urandom(700_000)
        open_store(stores["src"]).write("x", data)
        assert job.clients[SRC].submit(one(0, stores["src"], "x", len(data), DST, stores["dst"], "y")) == 1
        job.events(DST, 1, kind="written", timeout=60)
        assert sha(open_store(stores["dst"]).read("y")) == sha(data)
        assert job.clients[RELAY].status(0)["counters"]["bytes_received_wire"] > len(data)
    finally:
        pids = [g.pid for g in job.fleet.gateways]
        job.fleet.teardown()
    assert not any(p in gateway_pids() for p in pids)


#: An orchestrator that starts a fleet, says READY and then exits, or waits for a signal. It starts with
#: Python's own SIGINT handler, as at a terminal, even when pytest runs with SIGINT ignored (a background
#: job), which its children would inherit.
ORCHESTRATOR = """
import json, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from planner.plan import PartitionProgram, RegionProgram
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.base import GatewaySpec
program = RegionProgram("t:a", {0: PartitionProgram("read", (), write=True)}).to_dict()
specs = [GatewaySpec(f"t:a/{i}", "t:a", {"program": program, "job_secret": "ab" * 32, "control_token": "t" * 32,
                                          "encrypt": False}) for i in range(2)]
fleet = get_provisioner("local").provision(sys.argv[1], specs)
print("READY", json.dumps([g.pid for g in fleet.gateways]), flush=True)
if sys.argv[2] != "exit":
    time.sleep(120)
"""


@pytest.mark.parametrize("how", ["exit", "SIGTERM", "SIGINT"])
def test_fleet_torn_down_when_the_orchestrator_exits_or_is_signalled(home, how):
    job_id = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", ORCHESTRATOR, job_id, how], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "SKYPLANE_HOME": str(home)})
    try:
        line = proc.stdout.readline().split(" ", 1)
        assert line[0] == "READY", proc.stderr.read()
        pids = json.loads(line[1])
        if how != "exit":
            assert all(p in gateway_pids(job_id) for p in pids)
            proc.send_signal(getattr(signal, how))
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The signal was handed on to the previous handler: the default action for SIGTERM, KeyboardInterrupt for
    # SIGINT (an uncaught KeyboardInterrupt ends Python by SIGINT too).
    assert code == {"exit": 0, "SIGTERM": -signal.SIGTERM, "SIGINT": -signal.SIGINT}[how]
    assert gateway_pids(job_id) == []
    assert not (home / "jobs" / job_id).exists()


def test_a_local_fleet_shares_the_cpus_among_its_gateways_and_a_small_job_runs_one_worker():
    assert [local_workers(2, n) for n in (1, 2, 3)] == [2, 1, 1]
    assert [local_workers(8, n) for n in (1, 2, 3, 8)] == [8, 4, 2, 1]
    assert local_workers(1, 1) == 1
    assert workers_for(1, 4096, listed_in_full=True) == 1  # a 1-file copy: no worker processes to start
    assert workers_for(ONE_WORKER_OBJECTS, ONE_WORKER_BYTES, listed_in_full=True) == 1
    assert workers_for(ONE_WORKER_OBJECTS + 1, 4096, listed_in_full=True) is None  # the host decides
    assert workers_for(3, ONE_WORKER_BYTES + 1, listed_in_full=True) is None
    assert workers_for(3, 4096, listed_in_full=False) is None  # more listing pages to come
    # Store servers on the fleet's host (emulators on loopback) share its CPUs with the gateways.
    big = dict(objects=ONE_WORKER_OBJECTS + 1, size=4096, listed_in_full=True)
    assert workers_for(**big, store_servers=2, cpus=2, gateways=1) == 1
    assert workers_for(**big, store_servers=2, cpus=8, gateways=1) == 2
    assert workers_for(**big, store_servers=0, cpus=2, gateways=1) is None
    assert workers_for(3, 4096, listed_in_full=True, store_servers=2, cpus=8) == 1  # small: one, as before


def test_a_local_copy_runs_as_many_workers_as_its_size_needs(tmp_path):
    """Through a real local fleet: a copy of a few files runs its gateway as one process, one of more
    objects than a listing page holds as the host's share of workers (a supervisor and its workers)."""
    from skyplane_provider.provisioners.local import LocalProvisioner
    from skyplane_provider.transfer import Transfer, TransferRequest

    def workers(count: int) -> int:
        src, dst = tmp_path / f"src{count}", tmp_path / f"dst{count}"
        src.mkdir()
        dst.mkdir()
        for i in range(count):
            (src / f"{i:05d}").write_bytes(b"x%d" % i)
        transfer = Transfer(TransferRequest(src=f"{src}/", dsts=[f"{dst}/"], recursive=True),
                            provisioner=LocalProvisioner())
        stats = transfer.execute()
        assert stats.objects == count and len(list(dst.iterdir())) == count
        (counters,) = transfer.dispatcher.counters.values()
        return counters["workers"]

    assert workers(3) == 1
    assert workers(ONE_WORKER_OBJECTS + 200) == local_workers(len(os.sched_getaffinity(0)), 1)


def test_a_copy_between_store_servers_on_this_host_leaves_them_their_share_of_the_cpus(home, s3_bucket, gcs_bucket):
    """Through a real local fleet, moto -> fake-gcs-server (both on loopback): a copy of more objects
    than a listing page holds runs the CPUs shared among its one gateway and the two servers, not the
    gateway's share alone (on 2 CPUs: 1 worker, where a local-directory copy runs 2)."""
    from skyplane_provider.transfer import Transfer, TransferRequest

    count = ONE_WORKER_OBJECTS + 200
    put_objects(s3_bucket, {f"d/{i:05d}": b"x%d" % i for i in range(count)})
    transfer = Transfer(TransferRequest(src=f"{s3_bucket}/d/", dsts=[f"{gcs_bucket}/d/"], recursive=True),
                        provisioner=LocalProvisioner())
    stats = transfer.execute()
    assert stats.objects == count and stats.verified
    (counters,) = transfer.dispatcher.counters.values()
    assert counters["workers"] == local_workers(len(os.sched_getaffinity(0)), 3)


def test_get_provisioner_by_name_or_object():
    from planner.errors import BadOptionError
    from skyplane_provider.provisioners.local import LocalProvisioner

    prov = get_provisioner("local", bind_host="127.0.0.1")
    assert isinstance(prov, LocalProvisioner) and get_provisioner(prov) is prov
    with pytest.raises(BadOptionError, match="unknown provisioner"):
        get_provisioner("gcp-someday")
    with pytest.raises(BadOptionError, match="unknown local provisioner settings"):
        get_provisioner("local", hosts=["x"])
    with pytest.raises(BadOptionError):
        get_provisioner(prov, bind_host="0.0.0.0")


# ---- several workers per gateway host (gateway/supervisor.py) -------------------------------------------
def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        return [int(p) for p in f.read().split()]


def _connections(pid: int, port: int) -> int:
    """Established TCP connections the process holds on local ``port`` (/proc/net/tcp{,6} by socket inode)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
                    inodes.add(fields[9])
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held += os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").removesuffix("]") in inodes
        except OSError:
            pass  # closed meanwhile
    return held


def _move(job: Job, body: dict, chunks: list[dict], *, during=None, timeout: float = 120.0) -> dict:
    """Act as a coordinator: submit ``chunks``, re-submit every one reported failed (retryable), until the
    destination wrote them all; ``during(written)`` runs after each poll. Returns the retries made and
    the retryable failures reported (also those of chunks already written, which are only confirmed)."""
    by_id = {c["id"]: c for c in chunks}
    pending, written, retries, reported = list(chunks), set(), 0, 0
    cursors = {SRC: 0, DST: 0}
    deadline = time.monotonic() + timeout
    while len(written) < len(chunks):
        assert time.monotonic() < deadline, f"{len(written)} of {len(chunks)} chunks written after {timeout}s"
        if pending:
            took = job.clients[SRC].submit({**body, "chunks": pending})
            pending = pending[took:]
        for region in (SRC, DST):
            status = job.clients[region].status(cursors[region])
            cursors[region] = status["next"]
            for e in status["events"]:
                if e["type"] == "written":
                    written.add(e["chunk_id"])
                    continue
                reported += e["retryable"]
                if e["chunk_id"] not in written:
                    assert e["retryable"], json.dumps(e)
                    pending.append(by_id[e["chunk_id"]])
                    retries += 1
        if during:
            during(written)
        time.sleep(0.05)
    return {"retries": retries, "reported": reported, "cursors": cursors}


def test_a_host_of_two_workers_moves_data_behind_one_port_and_one_control_endpoint(jobs, stores):
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST, 4),))}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    job = jobs(programs, overrides={SRC: {"workers": 2}, DST: {"workers": 2}})
    src = open_store(stores["src"])
    objects = {f"o{i:03d}": os.urandom(100_000 + i) for i in range(40)}
    for k, v in objects.items():
        src.write(k, v)
    chunks = [chunk(i, obj(k, len(v), to(0, k))) for i, (k, v) in enumerate(objects.items())]
    _move(job, batch(stores["src"], [(DST, stores["dst"])]), chunks)
    dst = open_store(stores["dst"])
    assert {o.key: dst.read(o.key) for o in dst.list()} == objects
    for region in (SRC, DST):
        h = job.handles[region]
        assert len(_children(h.pid)) == 2  # the supervisor, started by the provisioner, and its workers
        assert job.clients[region].health()["pid"] == h.pid
    counters = {r: job.clients[r].status(0)["counters"] for r in (SRC, DST)}
    assert counters[SRC]["workers"] == counters[DST]["workers"] == 2
    assert counters[DST]["objects_written"] == 40 and counters[SRC]["bytes_read"] == sum(map(len, objects.values()))
    assert counters[SRC]["bytes_sent_wire_to"] == {DST: counters[SRC]["bytes_sent_wire"]}
    assert counters[DST]["bytes_received_wire"] == counters[SRC]["bytes_sent_wire"]
    # Both workers of the destination received frames: the supervisor hands connections over in turn.
    assert all(w.counters.get("bytes_received_wire") for w in _supervisor_workers(job, DST))


def _copy_one_at_a_time(job: Job, stores: dict, objects: dict[str, bytes], writer: str) -> None:
    """Copy each of ``objects`` from the source's store to the destination's as a chunk of its own, one
    after the other: each written (by ``writer``'s gateway) before the next is submitted."""
    cursor = 0
    for i, (k, v) in enumerate(objects.items()):
        assert job.clients[SRC].submit(one(i, stores["src"], k, len(v), writer, stores["dst"])) == 1
        deadline, written = time.monotonic() + 30, False
        while not written:
            assert time.monotonic() < deadline, f"chunk {i} not written"
            status = job.clients[writer].status(cursor)
            cursor = status["next"]
            written = any(e["type"] == "written" and e["chunk_id"] == i for e in status["events"])
            time.sleep(0.05)


def test_received_payloads_of_one_size_are_reused_once_written_and_each_object_arrives_whole(jobs, stores):
    """A destination receives each big frame into a buffer a written frame of the same size handed back
    (gateway/buffers.py: not zeroed again): every object still arrives as it was, none with bytes of
    the frame before it."""
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST, 1),))}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    job = jobs(programs, overrides={SRC: {"readers": 1}, DST: {"writers": 1}})
    src = open_store(stores["src"])
    objects = {f"same{i}": os.urandom(2 * MiB) for i in range(4)}
    objects["short"] = bytes(2 * MiB - 1)  # one byte shorter: an earlier frame's buffer, cut to its length
    for k, v in objects.items():
        src.write(k, v)
    _copy_one_at_a_time(job, stores, objects, DST)
    dst = open_store(stores["dst"])
    assert {o.key: sha(dst.read(o.key)) for o in dst.list()} == {k: sha(v) for k, v in objects.items()}
    assert job.clients[DST].status(0)["counters"].get("buffers_reused", 0) >= 3


def test_whole_objects_read_and_written_on_one_host_reuse_their_read_buffers_across_sizes(jobs, stores):
    """A gateway that reads and writes on one host hands each whole object's read buffer back once the
    object is written; the next object of the same size class (gateway/buffers.py: larger, smaller,
    the extra byte read past its end included) is read into it, cut to its length in place. Each
    arrives as it was, none with a byte of the object before it; another class gets a buffer of its own."""
    job = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})},
               overrides={SRC: {"readers": 1, "writers": 2}})  # two writers: two idle buffers kept
    src = open_store(stores["src"])
    sizes = {"a": 2 * MiB, "b": 2 * MiB + 5, "c": 2 * MiB - 1, "d": 2 * MiB + 100_000, "e": 3 * MiB}
    objects = {k: os.urandom(n) for k, n in sizes.items()}
    for k, v in objects.items():
        src.write(k, v)
    _copy_one_at_a_time(job, stores, objects, SRC)
    dst = open_store(stores["dst"])
    assert {o.key: sha(dst.read(o.key)) for o in dst.list()} == {k: sha(v) for k, v in objects.items()}
    # b and d: a's size class; c: the class below (2 MiB and its extra byte); e: a class above.
    assert job.clients[SRC].status(0)["counters"].get("buffers_reused", 0) == 2


@pytest.mark.parametrize("clear, compressible", [(True, False), (False, False), (False, True)],
                         ids=["clear", "sealed-in-place", "compressed"])
def test_read_buffers_of_parts_are_reused_once_their_frame_is_done_and_each_part_arrives_whole(
        jobs, stores, clear, compressible):
    """A source reads each part into a buffer an earlier part handed back: at once when lz4's output
    travelled instead, once the frame was sent when the frame carried the buffer itself (clear, or
    sealed in place). Its link is paced, so frames wait in its queue while later parts are read: a
    buffer handed out while its frame still waits would corrupt that part. A destination decrypts
    objects of one size into reused buffers too. Every part arrives as it was."""
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST, 1),))}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    job = jobs(programs, overrides={SRC: {"readers": 1, "loopback_clear": clear, "bwlimit": 8e6},
                                    DST: {"writers": 1, "loopback_clear": clear}})
    part, count = 2 * MiB, 8
    if compressible:
        data = b"".join(b"%d,part-%d,%d\n" % (i, i % 7, i * 3) for i in range(1_200_000))[:count * part]
    else:
        data = os.urandom(count * part)
    open_store(stores["src"]).write("big", data)
    dst = open_store(stores["dst"])
    upload = dst.begin_multipart("big")
    reqs = [chunk(n, obj("big", part, to(0, "big", upload, n), offset=(n - 1) * part)) for n in range(1, count + 1)]
    submit_all(job.clients[SRC], batch(stores["src"], [(DST, stores["dst"])], *reqs))
    written = job.events(DST, count, kind="written")
    dst.complete_multipart("big", upload, [PartInfo(e["chunk_id"], e["objects"][0]["part"]["etag"], part)
                                           for e in written])
    assert sha(dst.read("big")) == sha(data)
    assert job.clients[SRC].status(0)["counters"].get("buffers_reused", 0) >= 1
    # lz4 frames vary in size: those of one size class share buffers (gateway/buffers.py), as do the
    # objects they decompress into.
    assert job.clients[DST].status(0)["counters"].get("buffers_reused", 0) >= 1


def _supervisor_workers(job: Job, region: str) -> list:
    """The destination's workers' own counters, read from their private control endpoints."""
    directory = job.directory(region)
    out = []
    for ready in sorted(directory.glob("worker-*.ready.json")):
        config = json.loads((directory / ready.name.replace(".ready", "")).read_text())
        port = json.loads(ready.read_text())["control_port"]
        out.append(type("W", (), {"counters": GatewayClient(f"http://127.0.0.1:{port}",
                                                            config["control_token"]).status(0)["counters"]}))
    return out


def test_a_worker_killed_mid_transfer_is_replaced_and_the_copy_completes(jobs, stores):
    """SIGKILL one of the destination's two workers while chunks flow: the supervisor restarts it and
    reports the chunks it held failed (retryable); sent again, every object arrives identical; nothing
    is left running after the teardown."""
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST, 4),))}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    job = jobs(programs, overrides={SRC: {"workers": 2}, DST: {"workers": 2, "writers": 1}}, queue_chunks=4)
    src = open_store(stores["src"])
    objects = {f"big{i:02d}": os.urandom(2 * MiB + i) for i in range(40)}
    for k, v in objects.items():
        src.write(k, v)
    chunks = [chunk(i, obj(k, len(v), to(0, k))) for i, (k, v) in enumerate(objects.items())]
    dst_pid, data_port = job.handles[DST].pid, job.handles[DST].data_port
    victims: list[int] = []

    def kill_one(written: set) -> None:
        # At the first written chunk, while the senders still open data connections: a worker killed
        # inside a handshake ends it without a refusal, which the sender retries (docs/wire-protocol.md).
        if not victims and written:
            # A worker that holds data connections (the supervisor gives them out in turn, two each here):
            # killing one with none would test nothing.
            victims.append(max(_children(dst_pid), key=lambda pid: _connections(pid, data_port)))
            os.kill(victims[0], signal.SIGKILL)

    moved = _move(job, batch(stores["src"], [(DST, stores["dst"])]), chunks, during=kill_one)
    dst = open_store(stores["dst"])
    assert {o.key: sha(dst.read(o.key)) for o in dst.list()} == {k: sha(v) for k, v in objects.items()}
    deadline = time.monotonic() + 30
    while job.clients[DST].status(10**9)["counters"]["workers"] < 2:
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        time.sleep(0.2)
    # What it held is reported failed: chunks not written yet are sent again, and those it wrote last
    # are only confirmed. By the supervisor (frames the worker had taken) and by the senders (frames
    # sent last on its connections, every one of which carried some). The survivor may have written the
    # rest before either noticed the death (0.5 s polls; on a quiet machine the first written chunk
    # comes late in the copy): the report then comes after it.
    reported, cursors = moved["reported"], dict(moved["cursors"])
    deadline = time.monotonic() + 10
    while victims and not reported:
        assert time.monotonic() < deadline, "nothing the dead worker held was reported failed"
        for region in (SRC, DST):
            status = job.clients[region].status(cursors[region])
            cursors[region] = status["next"]
            reported += sum(e["type"] == "failed" and e["retryable"] for e in status["events"])
        time.sleep(0.1)
    assert victims
    counters = job.clients[DST].status(10**9)["counters"]
    assert counters["worker_restarts"] == 1 and victims[0] not in _children(dst_pid)
    job.fleet.teardown()
    assert gateway_pids(job.id) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_status_long_poll_answers_with_the_news_it_waited_for(jobs, stores, workers):
    """``GET /status?since=N&wait=S`` (docs/gateway.md) holds the read until an event numbered N or
    later exists: a read begun before a chunk was submitted answers with that chunk's written event,
    one gateway process or a supervisor of two workers alike; with no news it answers empty."""
    import threading

    job = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})},
               overrides={SRC: {"workers": workers}})
    client = job.clients[SRC]
    quiet = client.status(0, wait=0.2)
    assert quiet["events"] == [] and quiet["next"] == 0
    open_store(stores["src"]).write("k", b"news")
    answers: list[dict] = []
    reader = threading.Thread(target=lambda: answers.append(client.status(quiet["next"], wait=5)))
    reader.start()
    time.sleep(0.3)  # the read is waiting at the gateway (had it answered at once, it would hold nothing)
    submit_all(client, batch(stores["src"], [(SRC, stores["dst"])], chunk(0, obj("k", 4, to(0, "k")))))
    reader.join(10)
    assert not reader.is_alive()
    assert [e["type"] for e in answers[0]["events"]] == ["written"] and answers[0]["next"] == 1
    assert open_store(stores["dst"]).read("k") == b"news"


def test_a_supervisors_status_numbers_its_workers_events_in_one_log_passed_on_whole(jobs, stores):
    """The workers' events reach ``/status`` as they wrote them (gateway/events.py ``encoded``: the
    supervisor numbers each line, never decodes it): every written event whole, numbered 0, 1, 2, ...
    across both workers, a read from a cursor answering from there on."""
    job = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})},
               overrides={SRC: {"workers": 2}})
    client = job.clients[SRC]
    objects = {f"d/o{i:02d}": os.urandom(10 + i) for i in range(12)}
    for k, v in objects.items():
        open_store(stores["src"]).write(k, v)
    keys = list(objects)
    chunks = [chunk(n, *(obj(k, len(objects[k]), to(0, k)) for k in keys[n * 3:n * 3 + 3])) for n in range(4)]
    submit_all(client, batch(stores["src"], [(SRC, stores["dst"])], *chunks))
    events: list[dict] = []
    deadline = time.monotonic() + 30
    while len([e for e in events if e["type"] == "written"]) < 4 and time.monotonic() < deadline:
        events += client.status(events[-1]["seq"] + 1 if events else 0, wait=1)["events"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    written = [e for e in events if e["type"] == "written"]
    assert sorted(e["chunk_id"] for e in written) == [0, 1, 2, 3]
    for e in written:
        assert e["region"] == SRC and e["integrity"] == "local"
        assert [(o["i"], o["dest"], o["receipt"]["size"]) for o in e["objects"]] == [
            (i, 0, len(objects[o["key"]])) for i, o in enumerate(e["objects"])]
    assert sorted(o["key"] for e in written for o in e["objects"]) == keys
    assert client.status(len(events))["events"] == [] and client.status(len(events))["next"] == len(events)
    dst = open_store(stores["dst"])
    assert {k: dst.read(k) for k in keys} == objects
