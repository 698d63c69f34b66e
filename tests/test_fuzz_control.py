"""Fuzzing a real gateway daemon from outside: its control API (methods, paths, tokens, bodies, raw
bytes) and its data port's handshake. Every answer must be a 4xx with a message (or a 200 for a
valid call), never a 5xx; the daemon stays up and healthy, and nothing lands in the stores.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from urllib.parse import quote, urlsplit

from hypothesis import strategies as st

from gateway import wire
from planner.plan import PartitionProgram, RegionProgram

from .fuzzing import fuzz, json_values
from .gateway_jobs import SRC, assert_refused
from .reliability_report import record

ENDPOINTS = ["/health", "/status", "/status?since=0", "/status?since=-1", "/status?since=%C2%B2", "/peers",
             "/chunks", "/store", "/", ""]
token_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40)


def _gateway(jobs, stores):
    job = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})})
    return job, job.handles[SRC]


def _assert_healthy_and_untouched(job, h, stores) -> None:
    assert job.fleet.alive(h.gateway_id)
    assert job.clients[SRC].health()["ok"] is True
    status = job.clients[SRC].status(0)
    assert status["events"] == [] and status["queued"] == 0
    assert status["counters"]["bytes_read"] == status["counters"]["bytes_written"] == 0
    for uri in stores.values():
        root = uri[len("file://"):]
        assert not os.listdir(root), root


@st.composite
def requests(draw, token: str):
    method = draw(st.sampled_from(["GET"] * 3 + ["POST"] * 5 + ["PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]))
    random_path = st.text(max_size=30).map(lambda t: "/" + quote(t, safe="/?=&"))
    path = draw(st.sampled_from(ENDPOINTS) if draw(st.integers(0, 9)) < 8 else random_path)
    good = st.sampled_from([f"Bearer {token}", f"bearer  {token} "])  # what check() lets through
    bad = st.one_of(st.none(), token_text.map(lambda t: f"Bearer {t}"), token_text.map(lambda t: f"Basic {t}"),
                    st.just(f"Bearer {token}x"), st.just(f"Bearer {token[:-1]}"), st.just(token))
    auth = draw(good if draw(st.integers(0, 9)) < 6 else bad)  # most requests get past the token check
    body = draw(st.one_of(
        st.none(), st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        json_values.map(lambda v: json.dumps({"chunks": v if isinstance(v, list) else [v]}).encode()),
        json_values.map(lambda v: json.dumps({"src": "file:///nonexistent", "dests": [{"region": SRC, "store": v}],
                                              "chunks": [v]}).encode()),
        json_values.map(lambda v: json.dumps({"op": v, "store": v, "key": v, "prefix": v}).encode()),
        json_values.map(lambda v: json.dumps({"peers": v}).encode()),
        json_values.map(lambda v: json.dumps({"peers": {"r": [{"gateway_id": "g", "host": "h", "data_port": v}]}})
                        .encode())))
    length = draw(st.one_of(st.none(), st.sampled_from(["²", "-1", "abc", "99999999999", "5"])))
    if method == "POST" and urlsplit(path).path == "/shutdown":
        path = "/shutdown-not"  # a valid shutdown would end the test's gateway, not probe it
    return method, path, auth, body, length


def test_fuzz_control_api_requests(jobs, stores):
    job, h = _gateway(jobs, stores)
    port = int(h.control_url.rsplit(":", 1)[1])

    def check(req) -> str:
        method, path, auth, body, length = req
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            if auth is not None:
                conn.putheader("Authorization", auth)
            if body is not None or length is not None:
                conn.putheader("Content-Length", length if length is not None else str(len(body)))
            conn.endheaders(body if body is not None and length is None else None)
            if length is not None and body:
                try:
                    conn.send(body[:5])
                    conn.sock.shutdown(socket.SHUT_WR)  # a body shorter than announced, then nothing
                except OSError:
                    pass  # the gateway already answered (say, 413) and hung up
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        assert resp.status < 500, (req, resp.status, data)
        if auth not in (f"Bearer {h.control_token}", f"bearer  {h.control_token} "):
            assert resp.status == 401, (req, resp.status)  # nothing gets past a missing or wrong token
        if resp.status >= 400 and method != "HEAD":
            assert json.loads(data)["error"], (req, data)
        return str(resp.status)

    fuzz("control API over HTTP", requests(h.control_token), check, examples=250,
         what="methods, known and random paths, right/missing/wrong/mangled tokens (every request without the "
         "right token must get 401), random JSON and bytes as "
         "bodies, bad and lying Content-Length")
    _assert_healthy_and_untouched(job, h, stores)


def test_fuzz_control_port_raw_bytes(jobs, stores):
    job, h = _gateway(jobs, stores)
    port = int(h.control_url.rsplit(":", 1)[1])

    def check(raw: bytes) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                answer = s.recv(200)
            except ConnectionResetError:
                return "reset"
        if not answer:
            return "closed without an answer"
        if not answer.startswith(b"HTTP/"):  # no version in the request line: an HTTP/0.9 answer, no status line
            assert b"Error code: 500" not in answer and b"internal error" not in answer, answer
            return "HTTP/0.9 answer"
        status = answer.split(b" ", 2)[1].decode()
        assert status != "500", answer
        return status

    raw = st.one_of(st.binary(max_size=300),
                    st.tuples(st.sampled_from([b"GET", b"POST", b"FOO", b"G\x00T"]), st.binary(max_size=40),
                              st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"XTTP/1.1", b""]),
                              st.binary(max_size=100)).map(lambda t: t[0] + b" /" + t[1] + b" " + t[2] + b"\r\n"
                                                           + t[3] + b"\r\n\r\n"))
    fuzz("control port, raw bytes", raw, check, examples=150,
         what="random bytes and broken request lines/headers, then end of stream")
    _assert_healthy_and_untouched(job, h, stores)


def test_fuzz_control_idle_connection_is_dropped(jobs, stores):
    """A client that sends half a request and then nothing does not keep a server thread forever."""
    job, h = _gateway(jobs, stores)
    port = int(h.control_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        started = time.monotonic()
        assert s.recv(1) == b""  # the server gives up on the request (within the 30 s timeout)
        waited = time.monotonic() - started
    assert 9 < waited < 20  # control.IDLE_TIMEOUT is 10 s
    _assert_healthy_and_untouched(job, h, stores)
    record("fault", "control API client sends half a request line, then nothing (unauthenticated)",
           f"connection dropped by the gateway after {waited:.1f} s; gateway healthy")


def test_fuzz_data_port_handshake(jobs, stores):
    job, h = _gateway(jobs, stores)
    job_id = bytes.fromhex(job.id)

    def check(raw: bytes) -> str:
        with socket.create_connection((h.data_host, h.data_port), timeout=15) as s:
            hello = s.recv(64)
            assert hello.startswith(b"SKYH")
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                return "reset while sending"
            started = time.monotonic()
            refused = assert_refused(s)  # never an ACCEPT
            assert time.monotonic() - started < 12
        return "refused" if refused else "hung up"

    raw = st.one_of(st.binary(max_size=300),
                    st.binary(min_size=wire.AUTH_SIZE - 21, max_size=wire.AUTH_SIZE + 100).map(
                        lambda b: b"SKYA" + bytes([wire.VERSION]) + job_id + b))
    fuzz("gateway data port handshake", raw, check, examples=100,
         what="random bytes and authentication messages with the right job id and made-up proofs, to a real "
         "gateway's data port")
    assert any("refused data connection" in e for e in job.clients[SRC].status(0)["errors"])
    _assert_healthy_and_untouched(job, h, stores)
