"""``scripts/emulators start|stop|status|which``: the three store emulators for a human at a shell.

``start`` runs them detached (they outlive this command), records their PIDs in
``<dir>/state.json``, writes ``<dir>/env.sh`` to ``source`` in a shell so that the SDKs, the CLI and
the demo talk to them, and ``<dir>/credentials.json``, the same as a credentials document for
``--credentials`` (gateways on other hosts never see the shell's environment). ``stop`` stops exactly those PIDs (checking their start time, so a reused PID
is never hit). ``which`` prints the executable each emulator would run (setup checks them with it).
``<dir>`` is the repository's ``.emulators/`` unless ``--dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import sys
from pathlib import Path

from planner.errors import SkyplaneError
from skyplane_provider.testing.emulators import (EMULATORS, RunningEmulator, free_port, process_start_time,
                                                 start_all)

DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".emulators"
#: Also exported by env.sh, for Prefect's temporary local server: no usage telemetry (offline, it logs
#: an ERROR), and time to create its database on a first run on a busy machine (default 20 s).
PREFECT_LOCAL = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
PREFERRED_PORTS = {"s3": 5000, "gcs": 4443, "azure": 10000}  # the usual ones, when free


def _ports() -> dict[str, int]:
    return {name: port if _free(port) else free_port() for name, port in PREFERRED_PORTS.items()}


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _load(directory: Path) -> list[dict]:
    try:
        return json.loads((directory / "state.json").read_text())["emulators"]
    except (OSError, ValueError, KeyError):
        return []


def _alive(record: dict) -> bool:
    return process_start_time(record["pid"]) == record["start_time"]


def start(directory: Path) -> int:
    records = _load(directory)
    if records and all(_alive(r) for r in records):
        print(f"emulators already running; `source {directory / 'env.sh'}`")
        return 0
    stop(directory, quiet=True)
    started = start_all(log_dir=directory / "logs", ports=_ports(), detach=True)
    records = [{"name": r.name, "pid": r.pid, "start_time": process_start_time(r.pid), "url": r.url}
               for r in started.running.values()]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").write_text(json.dumps({"emulators": records}, indent=2) + "\n")
    env = {**started.env, **PREFECT_LOCAL}
    lines = ["# written by scripts/emulators start; undo with scripts/emulators stop"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    (directory / "env.sh").write_text("\n".join(lines) + "\n")
    credentials = directory / "credentials.json"
    credentials.write_text(json.dumps(started.credentials, indent=2) + "\n")
    credentials.chmod(0o600)
    for r in records:
        print(f"{r['name']:6} {r['url']}  (pid {r['pid']})")
    print(f"now run: source {directory / 'env.sh'}")
    print("then make buckets: skyplane-provider mb s3://NAME gs://NAME az://devstoreaccount1/NAME "
          "(Azurite's one account)")
    print(f"gateways on other hosts (ssh, aws, gcp, azure): --credentials {credentials}")
    return 0


def stop(directory: Path, quiet: bool = False) -> int:
    for record in _load(directory):
        if _alive(record):
            RunningEmulator(record["name"], record["pid"], record["url"], {}).stop()
            if not quiet:
                print(f"stopped {record['name']} (pid {record['pid']})")
    for name in ("state.json", "env.sh", "credentials.json"):
        (directory / name).unlink(missing_ok=True)
    return 0


def status(directory: Path) -> int:
    records = _load(directory)
    if not records:
        print("emulators are not running (scripts/emulators start)")
        return 3
    for r in records:
        print(f"{r['name']:6} {r['url']}  pid {r['pid']}  {'running' if _alive(r) else 'GONE'}")
    return 0 if all(_alive(r) for r in records) else 3


def which(directory: Path) -> int:
    """Print each emulator's executable; an error (status 1) names the first one missing."""
    for name, emulator in EMULATORS.items():
        print(f"{name:6} {emulator.binary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/emulators", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "which"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        return {"start": start, "stop": stop, "status": status, "which": which}[args.command](args.dir)
    except SkyplaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
