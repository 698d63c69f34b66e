"""A job's bandwidth cap across the gateways of each region (``TransferRequest.bwlimit``).

The cap is per region: every region's gateways together let at most ``bwlimit`` bytes per second
leave them (gateway/bandwidth.py says what is counted). Each gateway starts with an equal share
(:func:`initial_share`, in its config); :class:`RegionCaps` then re-splits each region's cap every
second after what its gateways sent and how long their pacers held them back
(:class:`gateway.bandwidth.Sharer`), so a gateway that runs out of work hands its share to the busy
ones. A host of several workers splits its gateway's share over them itself (gateway/supervisor.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gateway.bandwidth import Sharer
from gateway.control_client import GatewayClient
from planner.errors import GatewayError
from skyplane_provider.provisioners.base import Fleet

log = logging.getLogger(__name__)

#: Seconds between re-splits (the supervisor splits over a host's workers at the same pace).
PERIOD = 1.0


def initial_share(bwlimit: float | None, gateways_in_region: int) -> float | None:
    """What one of a region's gateways may send until the first re-split: an equal share."""
    return None if bwlimit is None else bwlimit / max(1, gateways_in_region)


class RegionCaps:
    """Re-splits the cap of every region with more than one gateway, in a thread of its own, until
    :meth:`stop`.

    ``counters()`` returns each gateway's counters as last read from its ``GET /status`` by whoever
    reads its events: reading them here would release events that reader has not seen. Gateways
    without counters are left out of a split (their shares go to the others); gateways started in
    place of dead ones join at the next split."""

    def __init__(self, fleet: Fleet, bwlimit: float, *, counters: Callable[[], dict[str, dict]],
                 period: float = PERIOD) -> None:
        self.fleet, self.bwlimit, self.period, self.counters = fleet, bwlimit, period, counters
        self._sharers: dict[str, Sharer] = {}
        self._clients: dict[str, GatewayClient] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bwlimit", daemon=True)

    def start(self) -> "RegionCaps":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.period / 4):
            try:
                self.split()
            except Exception:  # a sharer must never end the transfer; the shares in force still hold
                log.exception("re-splitting the bandwidth cap failed; the shares stay as they are")

    def split(self) -> None:
        """One round: for each region, read its gateways' pacing counters and, once a period has
        passed since the region's last split, hand out the new shares."""
        known = self.counters()
        regions: dict[str, list] = {}
        for g in list(self.fleet.gateways):
            regions.setdefault(g.region, []).append(g)
        for region, gateways in regions.items():
            if len(gateways) < 2:
                continue  # a lone gateway keeps the whole cap (its host splits it over its workers)
            sharer = self._sharers.setdefault(region, Sharer(self.bwlimit, self.period))
            counters = {g.gateway_id: (int(c.get("paced_bytes", 0)), float(c.get("paced_held_seconds", 0.0)))
                        for g in gateways if (c := known.get(g.gateway_id))}
            handles = {g.gateway_id: g for g in gateways}
            for gid, share in (sharer.update(counters) or {}).items():
                client = self._clients.get(gid)
                if client is None:
                    client = self._clients[gid] = handles[gid].client()
                try:
                    client.set_bwlimit(share)
                except GatewayError as exc:
                    log.debug("gateway %s did not take its bandwidth share: %s", gid, exc)
