"""A supervisor's event log (gateway/events.py, ``encoded``): its workers' lines passed on as they came,
numbered in one log, never decoded; ``/status`` answers them spliced into its JSON (gateway/json_reply.py)."""

from __future__ import annotations

import json

from gateway.events import EventLog, relay_lines
from gateway.json_reply import Encoded, encode
from planner.errors import GatewayError


def _worker_lines(*events: dict) -> list[bytes]:
    """What a supervised worker writes to its pipe for ``events`` (EventLog with a stream)."""
    import os

    read, write = os.pipe()
    log = EventLog(write)
    for e in events:
        log.written(**e)
    log.held(7)
    os.close(write)
    with open(read, "rb") as pipe:
        return list(pipe)


def test_worker_lines_are_numbered_in_one_log_and_answered_whole():
    written = {"chunk_id": 3, "region": "local:dst", "integrity": "local",
               "objects": [{"i": 0, "dest": 0, "key": "a/é", "receipt": {"size": 5, "md5": "ab"}}]}
    lines = _worker_lines(written, {**written, "chunk_id": 4})
    assert all(b'"seq"' not in line for line in lines)  # the supervisor numbers them

    log = EventLog(encoded=True)
    log.failed(9, GatewayError("worker 0 died while it held the chunk"), retryable=True)  # its own event
    held: list[int] = []
    relay_lines(lines, log, held.append)
    assert held == [7]
    doc = json.loads(encode(log.status(0)))
    assert [e["seq"] for e in doc["events"]] == [0, 1, 2] and doc["next"] == 3
    assert doc["events"][0]["type"] == "failed" and doc["events"][0]["retryable"] is True
    assert doc["events"][1] == {"seq": 1, "type": "written", **written}
    assert doc["events"][2]["chunk_id"] == 4
    assert doc["counters"]["workers"] == 1 and doc["errors"] == ["chunk 9: worker 0 died while it held the chunk"]

    later = json.loads(encode(log.status(2)))  # events before 2 acknowledged and released
    assert [e["seq"] for e in later["events"]] == [2] and later["next"] == 3
    assert json.loads(encode(log.status(3)))["events"] == []


def test_a_line_cut_by_a_worker_killed_while_it_wrote_is_dropped():
    whole = b'{"type":"written","chunk_id":1,"region":"r","integrity":"local","objects":[]}\n'
    log, held = EventLog(encoded=True), []
    relay_lines([whole, b'{"type":"written","chunk_id":2,"reg'], log, held.append)
    doc = json.loads(encode(log.status(0)))
    assert [e["chunk_id"] for e in doc["events"]] == [1] and doc["next"] == 1 and held == []
    relay_lines([b'{"type":"held","chunk_id":3}\n', b'{"type":"held","chu'], log, held.append)
    assert held == [3]


def test_encode_splices_encoded_values_and_encodes_the_rest():
    doc = {"next": 2, "events": Encoded([b'{"seq":0}', b'{"seq":1,"a":[1,2]}']), "errors": ["x"]}
    assert json.loads(encode(doc)) == {"next": 2, "events": [{"seq": 0}, {"seq": 1, "a": [1, 2]}], "errors": ["x"]}
    assert json.loads(encode({"events": Encoded([])})) == {"events": []}
    assert encode({"a": 1}) == b'{"a":1}'
