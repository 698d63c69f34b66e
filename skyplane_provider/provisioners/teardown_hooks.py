"""Fleets are torn down when this process ends: at exit, on SIGTERM and on Ctrl-C.

A provisioner calls :func:`register` for each fleet it starts and :func:`unregister` once the
fleet is torn down. The first registration installs an ``atexit`` hook and, when called from the
main thread, SIGTERM/SIGINT handlers that tear every registered fleet down and then hand the signal
to the handler that was there before (so Airflow's, Prefect's or the default behaviour still run).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from typing import Callable

from .base import Fleet

log = logging.getLogger(__name__)

_lock = threading.Lock()
_fleets: list[Fleet] = []
_installed = False
_previous: dict[int, Callable | int | None] = {}


def register(fleet: Fleet) -> None:
    global _installed
    with _lock:
        _fleets.append(fleet)
        if _installed:
            return
        _installed = True
    atexit.register(teardown_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue  # whoever ignores it does not want us to act on it either
            _previous[sig] = previous
            signal.signal(sig, _on_signal)


def unregister(fleet: Fleet) -> None:
    with _lock:
        if fleet in _fleets:
            _fleets.remove(fleet)


def teardown_all() -> None:
    """Tear down every registered fleet (each teardown is idempotent and never raises)."""
    with _lock:
        fleets = list(_fleets)
    for fleet in fleets:
        try:
            fleet.teardown()
        except Exception:  # noqa: BLE001 - keep tearing the others down
            log.exception("teardown of fleet %s failed", getattr(fleet, "job_id", "?"))
        unregister(fleet)


def _on_signal(signum: int, frame) -> None:
    log.warning("signal %d: tearing down %d gateway fleet(s)", signum, len(_fleets))
    teardown_all()
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous in (signal.SIG_DFL, None):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
