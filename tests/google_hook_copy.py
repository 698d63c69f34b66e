"""Run by tests/test_airflow_hook.py in a subprocess whose PYTHONPATH holds the google provider
(installed beside the venv by scripts/setup.sh, not in it): ``SkyplaneHook`` resolves the
``google_cloud_platform`` connection ``side`` (from ``AIRFLOW_CONN_SIDE``) through the provider's
``GoogleBaseHook``, and a ``Transfer`` copies ``SRC`` to ``DST`` with what it gave.

Usage: ``python -m tests.google_hook_copy SRC DST [--also CONN_ID ...] [--loopback HOST ...]``.
Each HOST (a stand-in's name in a private ``/etc/hosts``) must resolve to 127.0.0.1 only: checked
first, before any request. Prints the ``gs`` entry of ``side``, those of the ``--also`` connections
and the file the provider was imported from, waits for a line on stdin (the caller arms its token
check meanwhile), copies with ``side``, and prints the copy's counts: each a line ``RESULT <json>``
among the log lines that Airflow also writes to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import sys

from gateway.stores.uri import parse_uri
from skyplane_provider.airflow.hooks import SkyplaneHook
from skyplane_provider.transfer import Transfer

RESULT = "RESULT "


def main(src: str, dst: str, also: list[str], loopback: list[str]) -> None:
    for host in loopback:
        try:
            addresses = {a[4][0] for a in socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)}
        except socket.gaierror as exc:
            sys.exit(f"{host} does not resolve ({exc}): refusing to run")
        if addresses != {"127.0.0.1"}:
            sys.exit(f"{host} resolves to {sorted(addresses)}, not 127.0.0.1 only: refusing to run")
    # Here, not at the top: the test that runs this imports RESULT without the provider on its path.
    import airflow.providers.google.common.hooks.base_google as base_google

    root = parse_uri(dst).root_uri
    hook = SkyplaneHook(dst_conn_id="side")
    entry = hook.credentials(src, [dst])[root]
    others = {conn_id: SkyplaneHook(dst_conn_id=conn_id).credentials(src, [dst])[root] for conn_id in also}
    print(RESULT + json.dumps({"entry": entry, "also": others, "provider": base_google.__file__}), flush=True)
    sys.stdin.readline()
    stats = Transfer(hook.make_request(src, [dst])).run()  # the same connection: the same token
    print(RESULT + json.dumps({"objects": stats.objects, "verified": stats.verified}), flush=True)
    # Spare interpreter teardown its collector passes over every object of Airflow's and the
    # provider's modules (gdb: finalize_modules -> _PyGC_CollectNoFail): the test waited 9-16 s
    # for this process to exit after the copy, 1-3 s with this (load ~11 on 2 cores; 2-4 CPU-s).
    gc.freeze()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--also", nargs="*", default=[])
    parser.add_argument("--loopback", nargs="*", default=[])
    main(**vars(parser.parse_args()))
