"""The supervisor's data port (gateway/listener.py, HandOver): connections handed to the workers in
turn over real Unix sockets, and none to a worker whose process is gone."""

from __future__ import annotations

import socket
import time

from gateway.listener import HandOver


def _taken(end: socket.socket) -> int:
    """How many connections wait on a worker's end of its channel (each is closed here)."""
    end.setblocking(False)
    n = 0
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(end, 1, 1)
        except BlockingIOError:
            return n
        for fd in fds:
            socket.socket(fileno=fd).close()
            n += 1


def _connect(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def _settle(ends: list[socket.socket], want: int) -> list[int]:
    """Connections each worker got, once ``want`` arrived in all (or after 5 s)."""
    counts = [0] * len(ends)
    deadline = time.monotonic() + 5
    while sum(counts) < want and time.monotonic() < deadline:
        counts = [c + _taken(e) for c, e in zip(counts, ends)]
        time.sleep(0.01)
    return counts


def test_connections_are_handed_to_the_workers_in_turn_and_never_to_a_dead_one():
    handover = HandOver("127.0.0.1", 0, 2)
    ends = [handover.channel(0), handover.channel(1)]
    handover.start()
    try:
        conns = _connect(handover.port, 4)
        assert _settle(ends, 4) == [2, 2]
        ends[0].close()  # worker 0's process is gone: its channel refuses, worker 1 takes everything
        conns += _connect(handover.port, 3)
        assert _settle(ends[1:], 3) == [3]
        ends[0] = handover.channel(0)  # restarted: it gets its turn again
        conns += _connect(handover.port, 4)
        assert sorted(_settle(ends, 4)) == [2, 2]
    finally:
        handover.close()
        for c in conns:
            c.close()
        for e in ends:
            e.close()
