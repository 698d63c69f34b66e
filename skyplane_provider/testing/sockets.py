"""Socket odds and ends shared by the test relays and proxies."""

from __future__ import annotations

import socket


def cut(*socks: socket.socket, close: bool = True) -> None:
    """Shut both directions of every socket, as a network cut would, ignoring ones already gone;
    then close them unless ``close`` is False (their owner closes them later)."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if close:
            s.close()
