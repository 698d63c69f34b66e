"""One-off (Prefect): publish a model release from GCS to S3 and Azure, under a cost ceiling.

A multicast: the release is read once and every destination gets it through one gateway fleet. With
``solver="ilp"`` and ``max_cost_per_gb`` the planner picks the fastest route (relays and partitions
allowed) whose predicted egress per GB stays under the ceiling, and the task fails before any gateway
starts when none does. Where the gateways run is a ``SkyplaneFleet`` block (``local`` processes here;
``ssh`` hosts or ``aws`` instances in production), saved once and named by the ``fleet`` parameter.
Run it when a release is cut (``prefect deployment run 'publish-release/...' -p release=v43``), or once
against the emulators (``make emulators-up && source .emulators/env.sh``)::

    python dags_examples/prefect_multicast_publish.py
"""

from __future__ import annotations

import json
import os
import re

# Before Prefect reads its settings, for its temporary local server: no usage telemetry (offline, the
# heartbeat fails and logs an ERROR), and time to create its database on a first run on a busy
# machine (the default 20 s is not always enough). A flow run against a Prefect server needs neither.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402

from skyplane_provider.prefect import SkyplaneFleet, skyplane_transfer, teardown_fleets  # noqa: E402

# Bucket roots (the SKYPLANE_EXAMPLE_* variables let the demo and the tests use emulator buckets).
MODELS = os.environ.get("SKYPLANE_EXAMPLE_GCS", "gs://models-us-central1")
SERVING_S3 = os.environ.get("SKYPLANE_EXAMPLE_S3", "s3://serving-us-west-2")
SERVING_AZURE = os.environ.get("SKYPLANE_EXAMPLE_AZURE", "az://servingeastus/models")


@flow(name="publish-release", on_cancellation=[teardown_fleets], on_crashed=[teardown_fleets])
def publish_release(release: str = "v42", max_cost_per_gb: float = 0.25, fleet: str | None = None,
                    src_credentials: str | None = None, dst_credentials: list[str | None] | None = None) -> dict:
    """Copy ``releases/<release>/`` to both serving stores; ``fleet`` names a saved SkyplaneFleet block."""
    if not re.fullmatch(r"v\d+", release):
        raise ValueError(f"release must look like v42, not {release!r}")
    return skyplane_transfer(
        f"{MODELS}/releases/{release}/",
        [f"{SERVING_S3}/models/{release}/", f"{SERVING_AZURE}/{release}/"],
        dst_regions=[None, "azure:eastus"],
        solver="ilp",  # the fastest multicast route (relays, partitions) under the ceiling
        max_cost_per_gb=max_cost_per_gb,  # $/GB of egress
        fleet=fleet or SkyplaneFleet(provisioner="local"),
        src_credentials=src_credentials, dst_credentials=dst_credentials,
        artifact_key=f"publish-{release}")


if __name__ == "__main__":
    from skyplane_provider.testing.example_data import EMULATOR_ROOTS, on_emulators, seed_emulators

    if on_emulators(dict(os.environ)):  # the example buckets, created and seeded (engine-neutral helpers)
        for var, root in EMULATOR_ROOTS.items():
            os.environ.setdefault(var, root)
        MODELS, SERVING_S3, SERVING_AZURE = (os.environ[v] for v in ("SKYPLANE_EXAMPLE_GCS", "SKYPLANE_EXAMPLE_S3",
                                                                     "SKYPLANE_EXAMPLE_AZURE"))
        seed_emulators([f"{MODELS}/releases/v42/"])
    print("STATS " + json.dumps(publish_release()), flush=True)
