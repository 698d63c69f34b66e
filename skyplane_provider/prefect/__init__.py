"""Prefect 3 integration: the ``skyplane_transfer`` task, the ``skyplane_sync_flow`` flow, credential and
fleet blocks, and the ``teardown_fleets`` flow hook.

Importing this package needs Prefect (``pip install skyplane-provider[prefect]``); nothing else in
skyplane-provider imports it.
"""

from .blocks import SkyplaneCredentials, SkyplaneFleet
from .execution import teardown_fleets
from .flows import skyplane_sync_flow
from .tasks import skyplane_transfer

__all__ = ["SkyplaneCredentials", "SkyplaneFleet", "skyplane_sync_flow", "skyplane_transfer", "teardown_fleets"]
