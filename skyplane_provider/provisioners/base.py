"""One interface for every way of running a gateway fleet (local processes, SSH hosts, AWS EC2).

The transfer runner only ever sees :class:`Provisioner` and :class:`Fleet`; which provisioner runs
the gateways is a setting. A fleet is always torn down: ``Fleet`` is a context manager, teardown is
idempotent, and provisioners register their fleets so SIGTERM / Ctrl-C handlers reach them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from gateway.control_client import GatewayClient
from planner.errors import ProvisionError
from skyplane_provider.redaction import redact


@dataclass(frozen=True)
class GatewaySpec:
    """One gateway to start.

    ``config`` is the daemon's configuration document (see docs/gateway.md, "Daemon config"):
    job id, program, secrets, credentials... The provisioner adds the bind address and ports,
    writes it to a 0600 file on the host and starts ``skyplane-gateway --config FILE``.
    """

    gateway_id: str
    region: str
    config: dict

    def __repr__(self) -> str:  # the config holds the job's secrets and store credentials
        return f"GatewaySpec(gateway_id={self.gateway_id!r}, region={self.region!r}, config={redact(self.config)!r})"


@dataclass(frozen=True)
class GatewayHandle:
    """A started gateway as the orchestrator and the other gateways reach it.

    ``control_url``: base URL of the control API, reachable from the orchestrator (possibly through
    a tunnel). ``data_host``/``data_port``: where *peer gateways* connect for data. ``control_cert``:
    the control API's certificate (PEM) when it serves over TLS (``https://``), which clients pin.
    """

    gateway_id: str
    region: str
    control_url: str
    control_token: str = field(repr=False)
    data_host: str
    data_port: int
    pid: int | None = None
    extra: dict = field(default_factory=dict)
    control_cert: str | None = field(default=None, repr=False)

    def client(self, timeout: float = 10.0) -> GatewayClient:
        """A client of this gateway's control API."""
        return GatewayClient(self.control_url, self.control_token, timeout=timeout, cert=self.control_cert)


def check_stop(stop: threading.Event | None) -> None:
    """Raise the ``ProvisionError`` of a fleet start that the job's cancel ended, once ``stop`` is set."""
    if stop is not None and stop.is_set():
        raise ProvisionError("the job was cancelled while its fleet started",
                             hint="what had started is torn down; start the job again to run it")


class Fleet(ABC):
    """The running gateways of one job.

    Optional capability: a fleet with ``can_replace`` starts a new gateway in place of a dead one
    (:meth:`replace`); the transfer then goes on where it would otherwise have lost a whole region.
    """

    job_id: str
    gateways: list[GatewayHandle]
    can_replace: bool = False

    def replace(self, gateway_id: str) -> GatewayHandle:
        """Start a new gateway with the region and program of the dead ``gateway_id`` (under a new id
        and control token), wait until it is healthy and add it to :attr:`gateways`."""
        raise ProvisionError(f"a {type(self).__name__} cannot replace gateways")

    @abstractmethod
    def logs(self, gateway_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines of a gateway's log (for error reports)."""

    @abstractmethod
    def alive(self, gateway_id: str) -> bool:
        """Whether the gateway's process/host is still up (health is asked over its control API)."""

    @abstractmethod
    def teardown(self) -> None:
        """Stop every gateway and remove every resource of this job. Idempotent, never raises
        for a gateway that is already gone."""

    def vm_seconds(self) -> float:
        """Billable gateway-seconds so far (0 for local processes)."""
        return 0.0

    def hand_over(self) -> None:
        """The job's coordinator, started on one of the fleet's hosts, drives the fleet from now on and
        tears it down (docs/coordinator.md): this process no longer does when it ends. Only fleets of
        provisioners with ``coordinator_on_fleet`` can be handed over."""
        raise ProvisionError(f"a {type(self).__name__} cannot be handed to a coordinator on its hosts")

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()


class Provisioner(ABC):
    """Starts fleets. ``name`` is what users pass as ``provisioner=``."""

    name: str = ""
    #: Every gateway of its fleets on this one host, peers on loopback addresses: hops never leave the
    #: host, so frames go without lz4 and encryption (the gateways' ``loopback_clear``).
    loopback_fleet: bool = False
    #: Every gateway on this one host, and the source's gateways write the destinations they reach
    #: straight themselves: no destination gateway, no hop (``Plan.on_one_host``).
    writes_at_source: bool = False
    #: Whether the gateways inherit this process's environment (SDK variables, ~/.aws, ~/.config/gcloud).
    #: Where they do not (other hosts), they can use only the job's credentials document, and the
    #: transfer's pre-flight checks the stores with that alone (skyplane_provider/transfer/preflight.py).
    shares_environment: bool = False

    @abstractmethod
    def provision(self, job_id: str, specs: list[GatewaySpec], stop: threading.Event | None = None) -> Fleet:
        """Start every gateway in ``specs`` and wait until each answers on its control API.
        On any failure, tear down what was started and raise ``ProvisionError`` naming the host/region.
        ``stop`` (the job's cancel) ends the start the same way once it is set: the ``local``
        provisioner looks at it while it waits for its gateways, the SSH and cloud ones between
        their steps (VMs launched, booted, package installed: a step that runs on the hosts runs to
        its end)."""

    def hourly_price(self, region: str) -> float:
        """USD per hour of one gateway in ``region`` (0 for local processes)."""
        return 0.0

    #: Whether the job's coordinator runs on a host of the fleet (docs/coordinator.md): the client then
    #: provisions the fleet first (it holds the access to the hosts) and hands it to
    #: :meth:`launch_coordinator`, which starts the coordinator on the host of the fleet's first
    #: gateway in the document's ``coordinator_region`` (the source region).
    coordinator_on_fleet: bool = False

    def reap_job(self, job_id: str, regions: list[str]) -> None:
        """Remove what the fleet of the ended job ``job_id`` left in ``regions`` (the plan's), for a
        client that no longer holds the fleet: a deferred Airflow task resumed on any worker. The
        cloud provisioners delete the job's VMs and their resources by tag, as ``deprovision --job``
        does; nothing by default (``local`` gateways are their coordinator's children; ``ssh`` hosts
        keep the gateways' directories, without secrets, until ``deprovision``)."""

    def launch_coordinator(self, job_id: str, document: dict, fleet: Fleet | None = None) -> dict:
        """Start the job's coordinator (docs/coordinator.md) with its job ``document``; return
        ``{"url", "cert"?}`` once its API listens. By default a detached process on this host."""
        from skyplane_provider.coordinator.launcher import launch_local

        return launch_local(job_id, document)
