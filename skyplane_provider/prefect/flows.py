"""``skyplane_sync_flow``: the nightly cross-cloud sync, one source to several destinations.

    from skyplane_provider.prefect import skyplane_sync_flow

    skyplane_sync_flow.serve(name="nightly-events", cron="0 2 * * *", parameters={
        "src": "s3://raw/events/", "dsts": ["gs://lake/events/", "az://euwest/lake/events/"],
        "dst_regions": [None, "azure:westeurope"], "max_cost_per_gb": 0.12,
        "src_credentials": "aws-credentials/prod",
        "dst_credentials": ["gcp-credentials/lake", "skyplane-credentials/eu"]})

Only objects missing or different at a destination move. With a cost ceiling the planner picks the
fastest route under it (``solver`` defaults to ``ilp`` then, else ``direct``). Cancelling or crashing
the flow run tears the fleet down (``teardown_fleets`` hooks).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from .execution import teardown_fleets
from .tasks import skyplane_transfer


@flow(name="skyplane-sync", on_cancellation=[teardown_fleets], on_crashed=[teardown_fleets])
def skyplane_sync_flow(
    src: str,
    dsts: list[str],
    max_cost_per_gb: float | None = None,
    solver: str | None = None,
    src_region: str | None = None,
    dst_regions: list[str | None] | None = None,
    src_credentials: Any = None,
    dst_credentials: Any = None,
    credentials: Any = None,
    fleet: Any = None,
    compress: bool = True,
    encrypt: bool = True,
    chunk_size: int | str = "32MiB",
    artifact_key: str = "skyplane-sync",
) -> dict[str, Any]:
    """Sync ``src`` to every destination in ``dsts`` (multicast), optionally under a cost ceiling in
    USD per GB; returns the transfer's stats.

    Pass credentials as saved blocks (``"aws-credentials/prod"``) or block objects, not as dicts of
    secrets: flow parameters are stored with the flow run.
    """
    return skyplane_transfer(
        src, dsts, sync=True, solver=solver or ("ilp" if max_cost_per_gb is not None else "direct"),
        max_cost_per_gb=max_cost_per_gb, src_region=src_region, dst_regions=dst_regions,
        src_credentials=src_credentials, dst_credentials=dst_credentials, credentials=credentials, fleet=fleet,
        compress=compress, encrypt=encrypt, chunk_size=chunk_size, artifact_key=artifact_key)
