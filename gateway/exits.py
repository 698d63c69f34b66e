"""Waiting for child processes to exit without polling (Linux pidfds)."""

from __future__ import annotations

import os
import select
import subprocess
import time


def wait_exits(procs: list[subprocess.Popen], seconds: float) -> None:
    """Wait up to ``seconds`` until every process of ``procs`` has exited, and reap each. Woken by each
    exit (its pidfd turns readable): ``Popen.wait(timeout)`` sleeps up to 50 ms between two looks, and
    a job's end waits on its gateways' (and a gateway's on its workers') exits before its outcome."""
    deadline = time.monotonic() + seconds
    exits: dict[int, subprocess.Popen] = {}
    try:
        for proc in procs:
            if proc.poll() is None:
                try:
                    exits[os.pidfd_open(proc.pid)] = proc
                except ProcessLookupError:  # reaped meanwhile by someone else
                    proc.poll()
        while exits and (left := deadline - time.monotonic()) > 0:
            for fd in select.select(list(exits), [], [], left)[0]:
                os.close(fd)
                exits.pop(fd).poll()
    finally:
        for fd in exits:
            os.close(fd)
