"""A fleet the client provisioned, driven by a coordinator on one of its hosts (docs/coordinator.md).

For remote fleets (``ssh``) the client starts the gateways, because it alone holds the SSH access,
then starts the job's coordinator on the source region's first gateway host and hands it the fleet:
:func:`fleet_document` in the client, :class:`HandedProvisioner` / :class:`HandedFleet` in the
coordinator. The coordinator reaches each gateway's control API over TLS on its host's address
(pinned certificate, bearer token), and tears the fleet down with ``POST /shutdown``: it cannot log in
to the hosts. Their files (gateway directories, logs) are reaped by the client when it is still there
at the job's end, else by ``skyplane-provider deprovision``.
"""

from __future__ import annotations

import logging
import threading

from planner.errors import ProvisionError, SkyplaneError

from .base import Fleet, GatewayHandle, GatewaySpec, Provisioner

log = logging.getLogger(__name__)

#: Seconds one ``POST /shutdown`` may take before the gateway is left to its dead-man timer.
SHUTDOWN_TIMEOUT = 5.0


def fleet_document(fleet: Fleet) -> list[dict]:
    """The gateways of a fleet as a coordinator on one of its hosts reaches them: each handle with its
    control URL on its host's address (``extra["host_control_url"]``) instead of the client's tunnel."""
    out = []
    for g in fleet.gateways:
        url = g.extra.get("host_control_url")
        if not url or not g.control_cert:
            raise ProvisionError(f"gateway {g.gateway_id} serves its control API only through the client's tunnel",
                                 hint="start the fleet with its control APIs on TLS (control_tls) to hand it over")
        out.append({"gateway_id": g.gateway_id, "region": g.region, "control_url": url,
                    "control_token": g.control_token, "control_cert": g.control_cert,
                    "data_host": g.data_host, "data_port": g.data_port, "pid": g.pid})
    return out


class HandedFleet(Fleet):
    """The gateways in a job document's ``fleet``; torn down through their control APIs."""

    def __init__(self, job_id: str, gateways: list[dict]) -> None:
        self.job_id = job_id
        self.gateways = [GatewayHandle(**g) for g in gateways]
        self._done = False

    def logs(self, gateway_id: str, tail: int = 200) -> str:
        return ""  # on the gateway's host, which only the client can log in to (gw-*/gateway.log there)

    def alive(self, gateway_id: str) -> bool:
        handle = next((g for g in self.gateways if g.gateway_id == gateway_id), None)
        if handle is None or self._done:
            return False
        try:
            return bool(handle.client(timeout=2.0).health().get("ok"))
        except SkyplaneError:
            return False

    def teardown(self) -> None:
        """``POST /shutdown`` to every gateway; one that does not answer stops by its dead-man timer
        (``coordinator_timeout`` without a control request), and ``deprovision`` reaps its host."""
        if self._done:
            return
        self._done = True
        for g in self.gateways:
            try:
                g.client(timeout=SHUTDOWN_TIMEOUT).shutdown()
            except SkyplaneError as exc:
                log.warning("gateway %s did not take POST /shutdown (%s): it stops by its dead-man timer",
                            g.gateway_id, exc)


class HandedProvisioner(Provisioner):
    """What the coordinator's pipeline provisions from: the fleet it was handed, whatever the specs
    (the client made them from the same plan, with the job's secrets)."""

    def __init__(self, name: str, fleet: HandedFleet, hourly_prices: dict[str, float] | None = None) -> None:
        self.name = name
        self.fleet = fleet
        self._prices = dict(hourly_prices or {})

    def provision(self, job_id: str, specs: list[GatewaySpec], stop: threading.Event | None = None) -> Fleet:
        wanted = sorted(s.gateway_id for s in specs)
        have = sorted(g.gateway_id for g in self.fleet.gateways)
        if wanted != have:
            raise ProvisionError(f"the fleet handed to job {job_id}'s coordinator has gateways {have}, "
                                 f"its plan needs {wanted}")
        return self.fleet

    def hourly_price(self, region: str) -> float:
        return self._prices.get(region, 0.0)
