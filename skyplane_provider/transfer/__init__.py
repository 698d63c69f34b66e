"""The engine-neutral Transfer API used by the CLI, Airflow and Prefect.

    from skyplane_provider.transfer import copy
    stats = copy("s3://raw/events/", ["gs://lake/events/", "az://acct/lake/events/"])
"""

from .request import TransferRequest
from .dryrun import DryRun
from .runner import Transfer, copy, sync
from .stats import Progress, TransferStats

__all__ = ["DryRun", "Progress", "Transfer", "TransferRequest", "TransferStats", "copy", "sync"]
