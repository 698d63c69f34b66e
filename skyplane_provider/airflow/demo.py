"""``make demo``: the nightly example DAG, run by Airflow, moving ~100 MiB between emulated clouds.

1. starts moto (S3), fake-gcs-server (GCS) and Azurite (Azure Blob) on loopback ports;
2. creates a source bucket and two destinations and writes yesterday's partition (a few objects, one of
   them larger than the chunk size);
3. sets up a throwaway Airflow home (``airflow db migrate``) and runs ``dags_examples/nightly_sync_dag.py``
   with ``dag.test()`` in a child process: the operator reads the example connections (pointing at the
   emulators), plans the route, starts local gateway processes, streams, verifies and tears them down;
4. prints the plan and the stats the task returned as its XCom, checks every destination object's
   sha256 against the source, and stops everything it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skyplane_provider.airflow.examples import example_env, prepare_airflow_home
from skyplane_provider.testing.example_data import seed_emulators, yesterday
from skyplane_provider.testing.emulators import start_all
from skyplane_provider.testing.samples import MiB, digests, put_objects, sample_objects, sha256s
from skyplane_provider.transfer.stats import human_bytes

NIGHTLY = Path(__file__).resolve().parents[2] / "dags_examples" / "nightly_sync_dag.py"


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="skyplane-demo-") as tmp:
        tmp_path = Path(tmp)
        step(started, "starting moto, fake-gcs-server and Azurite")
        emulators = start_all(log_dir=tmp_path / "emulators")
        try:
            os.environ.update(emulators.env, SKYPLANE_HOME=str(tmp_path / "skyplane"))
            os.environ.update(example_env(tmp_path / "airflow"))  # connections and bucket roots in the emulators
            src = f"{os.environ['SKYPLANE_EXAMPLE_S3']}/events/dt={yesterday()}/"
            objects = sample_objects(n_small=6, small_bytes=4 * MiB, big_bytes=72 * MiB)
            seed_emulators([])  # the buckets
            put_objects(src, objects)
            step(started, f"wrote {len(objects)} objects ({human_bytes(sum(map(len, objects.values())))}) to {src}")
            step(started, "migrating a throwaway Airflow database")
            prepare_airflow_home(dict(os.environ), [NIGHTLY])
            step(started, "running the nightly DAG with dag.test() (local gateways)")
            log_file = tmp_path / "dag-test.log"
            with open(log_file, "w") as log:
                proc = subprocess.run([sys.executable, str(NIGHTLY)], stdout=log, stderr=subprocess.STDOUT)
            output = log_file.read_text()
            stats = next((json.loads(line.split(" ", 2)[2]) for line in output.splitlines()
                          if line.startswith("XCOM sync_partition ")), None)
            if proc.returncode != 0 or stats is None:
                print("\n".join(output.splitlines()[-60:]))
                print(f"demo FAILED: the DAG run did not succeed (exit {proc.returncode})")
                return 1
            show(stats)
            expected = sha256s(objects)
            for dst in stats["dsts"]:
                ok = digests(dst) == expected
                verdict = "OK  " if ok else "BAD "
                print(f"  {verdict}{dst}: {len(expected)} objects, sha256 {'match' if ok else 'MISMATCH'}")
                if not ok:
                    return 1
        finally:
            emulators.stop()
        step(started, "stopped the emulators; the gateways were torn down by the task")
    print(f"demo OK in {time.monotonic() - started:.0f} s")
    return 0


def show(stats: dict) -> None:
    plan = stats["plan"]
    print(f"\nplan ({plan['solver']}): {plan['src']} -> {', '.join(plan['dsts'])}; gateways "
          + ", ".join(f"{r} x{n}" for r, n in plan["gateways"].items()))
    for edge in plan["edges"]:
        print(f"  {edge['src']} -> {edge['dst']}: {edge['gbps']} Gbit/s predicted, {edge['connections']} connections")
    print(f"  predicted {plan['throughput_gbps']} Gbit/s, ${plan['cost_per_gb']}/GB\n")
    print("stats (the task's XCom):")
    print(json.dumps({k: v for k, v in stats.items() if k != "plan"}, indent=2))
    print(f"\nmoved {stats['objects']} objects, {human_bytes(stats['bytes'])} ({human_bytes(stats['bytes_on_wire'])} "
          f"on the wire) in {stats['seconds']:.1f} s, verified: {stats['verified']}")


def step(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:5.1f} s] {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
