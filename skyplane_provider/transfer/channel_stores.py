"""The stores as a local job's client reaches them: through the job's first gateway (gateway/store_channel.py).

A client whose job's gateways run as processes of this host (``Provisioner.shares_environment``) and
whose first gateway was started ahead (coordinator/launcher.py) checks the stores, reads their
regions and the first listing page and probes server-side copies through that gateway, so that it
never imports a store SDK (0.2-0.5 CPU-s each, the larger part of a small job's client CPU): the
gateway imports them anyway, and does so while the client plans. The gateway runs each operation
with this client's credentials document and environment, so every check means what it meant in this
process, and a store's refusal comes back as the same ``SkyplaneError``. Local directories are
opened here (no SDK), and so is every store when no gateway was started ahead (a remote fleet, a dry
run, an API caller that started none), or when the channel breaks.
"""

from __future__ import annotations

import json

from gateway.control_client import StoreOps
from gateway.store_channel import StoreChannel
from gateway.stores import open_store
from gateway.stores.base import CopySource, ObjectStore, PartInfo
from skyplane_provider.coordinator.gateway_store import GatewayStore
from skyplane_provider.coordinator.launcher import store_channel
from skyplane_provider.provisioners.base import Provisioner

from .endpoints import Opener


class ChannelClient(StoreOps):
    """The store operations of ``POST /store``, run by the gateway at the other end of ``channel``
    with ``credentials``."""

    control_url = "the job's first gateway (store channel)"

    def __init__(self, channel: StoreChannel, credentials: dict) -> None:
        self._channel = channel
        self._credentials = credentials

    def _store(self, op: str, store: str, **fields) -> dict:
        return self._channel.request({"op": op, "store": store, **fields}, self._credentials)


class ChannelStore(GatewayStore):
    """``root_uri`` reached through ``client``: every verb the client's checks, listing and probes
    use, the region asked when first needed (a missing bucket fails its check, not this)."""

    def __init__(self, root_uri: str, client: ChannelClient) -> None:
        self._client = client
        super().__init__(root_uri, capabilities=client.capabilities(root_uri), region="", clients=lambda: [client])
        self._asked = False

    def __repr__(self) -> str:
        return f"ChannelStore({self.root_uri!r})"

    def region(self) -> str | None:
        if not self._asked:
            self._region = self._client.region(self.root_uri)
            self._asked = True
        return self._region

    def check(self) -> None:
        self._client.check(self.root_uri)

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray) -> PartInfo:
        return self._client.upload_part(self.root_uri, key, upload_id, part_number, bytes(data))

    def probe_copy_from(self, source: CopySource, *, parts: bool = False) -> None:
        self._client.probe_copy(self.root_uri, source, parts)


def opener_for(job_id: str, provisioner: Provisioner) -> Opener:
    """How the client of ``job_id`` opens its stores: through its first gateway where that gateway
    was started ahead and shares this process's environment, else here."""
    sock = store_channel(job_id) if provisioner.shares_environment else None
    if sock is None:
        return open_store
    channel = StoreChannel(sock)
    opened: dict[tuple[str, str], ChannelStore] = {}  # the checks open each store, then prepare() again

    def opener(root_uri: str, credentials: dict) -> ObjectStore:
        if root_uri.startswith("file:"):
            return open_store(root_uri, credentials)
        key = (root_uri, json.dumps(credentials, sort_keys=True, default=str))
        if key not in opened:
            opened[key] = ChannelStore(root_uri, ChannelClient(channel, credentials))
        return opened[key]

    return opener
