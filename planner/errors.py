"""The one exception hierarchy of skyplane-provider.

It lives in the bottom layer (``planner`` imports nothing else of ours) so that the planner, the
gateway and the control plane all raise the same classes; ``skyplane_provider.errors`` re-exports it.
Every message says what went wrong *and* what the user can do about it.
"""

from __future__ import annotations

__all__ = [
    "SkyplaneError",
    "BadInputError",
    "BadURIError",
    "UnknownRegionError",
    "BadOptionError",
    "CostLimitError",
    "DeleteLimitError",
    "CredentialsError",
    "CredentialsExpiredError",
    "StoreError",
    "NotFoundError",
    "ConflictError",
    "AccessDeniedError",
    "ThrottledError",
    "StoreUnavailableError",
    "PlanError",
    "InfeasiblePlanError",
    "GatewayError",
    "ProtocolError",
    "ChecksumError",
    "ProvisionError",
    "TransferError",
    "VerificationError",
    "CoordinatorError",
]


class SkyplaneError(Exception):
    """Root of every error skyplane-provider raises on purpose.

    ``retryable`` tells retry loops whether trying the same call again may succeed.
    """

    retryable: bool = False
    #: True on a retryable error raised after the store's own SDK retried the call (botocore, google
    #: api-core, azure-core): the retries of that call are spent, no loop above retries it again
    #: (gateway/retry.py; docs/reliability.md "One retry budget").
    retried: bool = False
    #: Seconds the store asked to wait before trying again (its ``Retry-After``), when it said so.
    retry_after: float | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        #: The message without its hint (for callers that give a hint of their own).
        self.message = message
        super().__init__(f"{message} ({hint})" if hint else message)


class BadInputError(SkyplaneError):
    """The caller passed something we cannot act on (checked before any gateway starts)."""


class BadURIError(BadInputError):
    """A URI is malformed, has an unknown scheme, or escapes its root."""


class UnknownRegionError(BadInputError):
    """A region tag is not in the grid."""


class BadOptionError(BadInputError):
    """An option has an invalid value or conflicts with another option."""


class CostLimitError(BadOptionError):
    """The job's predicted total cost (egress + VMs + store requests) is over its ``max_cost_usd``;
    refused before any gateway starts."""


class DeleteLimitError(BadOptionError):
    """A mirror (``sync`` with ``delete``) would delete more destination objects than its
    ``max_delete``; refused before anything is copied or deleted."""


class CredentialsError(SkyplaneError):
    """Credentials for a store or a provisioner are missing or rejected."""


class CredentialsExpiredError(CredentialsError):
    """Temporary credentials ran out (an STS session, a SAS token, an access token).

    ``retryable``: the client that started the job renews them and pushes the new ones to the
    gateways (docs/credentials.md), so the same call may succeed once they arrive.
    """

    retryable = True


class StoreError(SkyplaneError):
    """An object store refused or failed a request."""


class NotFoundError(StoreError):
    """A bucket, container, prefix or object does not exist."""


class ConflictError(StoreError):
    """A conditional write lost a race: the object changed (or appeared) since it was read.

    Not ``retryable``: the same call fails again; read the object anew, then write.
    """


class AccessDeniedError(StoreError):
    """The store refused access with the given credentials."""


class ThrottledError(StoreError):
    """The store asked us to slow down (503 SlowDown, 429)."""

    retryable = True


class StoreUnavailableError(StoreError):
    """The store could not be reached, or the connection dropped."""

    retryable = True


class PlanError(SkyplaneError):
    """The planner could not produce a plan."""


class InfeasiblePlanError(PlanError):
    """No plan meets the requested throughput or cost target."""


class GatewayError(SkyplaneError):
    """A gateway failed, or refused a request."""


class ProtocolError(GatewayError):
    """A peer sent a frame or handshake that is malformed, forged or of another job."""


class ChecksumError(ProtocolError):
    """A chunk's bytes do not match the checksum of the original data."""

    retryable = True


class ProvisionError(SkyplaneError):
    """Starting, reaching or tearing down a gateway fleet failed."""


class TransferError(SkyplaneError):
    """A transfer could not complete."""


class VerificationError(TransferError):
    """An object at the destination does not match its source."""


class CoordinatorError(TransferError):
    """A job's coordinator cannot be reached, refused a request, or is gone."""


class JobEndedError(CoordinatorError):
    """The coordinator refused a request meant for a running job (renewed credentials) because the
    job has ended: nothing is wrong, there is nothing left to hand it."""
