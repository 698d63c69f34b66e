"""A destination store as the coordinator of a remote fleet reaches it: through ``POST /store`` on a
gateway of the store's region (docs/coordinator.md, "Who holds what").

The coordinator of an ``ssh``, ``aws``, ``gcp`` or ``azure`` job runs on the source region's gateway
host, which holds only the source's credentials. Every operation it does on a destination (begin,
complete and abort multipart uploads, HEAD, list for the sync diff, delete for a mirror, server-side
copies) is run by a gateway of the destination's region, which holds that store's credentials because
its own writes need them. The store's capabilities and region are what the client read when it
checked the store (``prepare()``), handed over in the job document.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Collection, TypeVar

from gateway.control_client import GatewayClient
from gateway.stores.base import (Capabilities, CopySource, ObjectInfo, ObjectStore, PartInfo,  # noqa: F401
                                 capabilities_doc, capabilities_from)
from gateway.stores.uri import parse_uri
from planner.errors import BadOptionError, GatewayError

log = logging.getLogger(__name__)

T = TypeVar("T")


class GatewayStore(ObjectStore):
    """``root_uri`` reached through the control APIs of ``clients()`` (the living gateways of its
    region, in order). A gateway that cannot be reached is skipped for the next; a store's refusal
    is raised as the store's own ``SkyplaneError`` (the control client re-raises it), never retried
    on another gateway."""

    def __init__(self, root_uri: str, *, capabilities: Capabilities, region: str,
                 clients: Callable[[], list[GatewayClient]]) -> None:
        uri = parse_uri(root_uri)
        self._root = uri.root_uri if uri.scheme != "file" else root_uri
        self.scheme = uri.scheme
        self.capabilities = capabilities
        self._region = region
        self._clients = clients
        self._first = 0  # the gateway that answered last: asked first next time
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GatewayStore({self._root!r}, region={self._region!r})"

    @property
    def root_uri(self) -> str:
        return self._root

    def region(self) -> str | None:
        return self._region

    def _call(self, what: str, call: Callable[[GatewayClient], T]) -> T:
        clients = self._clients()
        if not clients:
            raise GatewayError(f"no gateway of {self._region} is left to {what} in {self._root}",
                               hint="the destination's gateways hold its credentials; resume the job once the "
                                    "fleet is back")
        start = self._first % len(clients)
        errors = []
        for i in range(len(clients)):
            n = (start + i) % len(clients)
            try:
                answer = call(clients[n])
            except GatewayError as exc:  # unreachable or broken: another gateway of the region may answer
                log.warning("%s in %s through %s failed, trying the next gateway: %s", what, self._root,
                            clients[n], exc)
                errors.append(exc)
                continue
            with self._lock:
                self._first = n
            return answer
        raise GatewayError(f"no gateway of {self._region} could {what} in {self._root}: {errors[-1].message}",
                           hint="the destination's gateways hold its credentials and the coordinator holds "
                                "none; see their logs on their hosts, then resume the job")

    # ---- what the coordinator does on a destination ---------------------------------------------
    def check(self) -> None:
        self._call("list", lambda c: c.list_page(self._root, "", None, 1))

    def list_page(self, prefix: str = "", token: str | None = None,
                  limit: int = 1000) -> tuple[list[ObjectInfo], str | None]:
        return self._call("list", lambda c: c.list_page(self._root, prefix, token, limit))

    def head(self, key: str) -> ObjectInfo:
        return self._call(f"HEAD {key}", lambda c: c.head(self._root, key))

    def write(self, key: str, data: bytes | bytearray) -> ObjectInfo:
        return self._call(f"write {key}", lambda c: c.write(self._root, key, bytes(data)))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda c: c.delete(self._root, key))

    def begin_multipart(self, key: str) -> str:
        return self._call(f"begin the upload of {key}", lambda c: c.begin_multipart(self._root, key))

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        return self._call(f"complete the upload of {key}",
                          lambda c: c.complete_multipart(self._root, key, upload_id, parts))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._call(f"abort the upload of {key}", lambda c: c.abort_multipart(self._root, key, upload_id))

    def list_parts(self, key: str, upload_id: str, checksums_of: Collection[int] | None = None) -> list[PartInfo]:
        wanted = None if checksums_of is None else sorted(checksums_of)
        return self._call(f"list the parts of the upload of {key}",
                          lambda c: c.list_parts(self._root, key, upload_id, wanted))

    def pending_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        return self._call("list unfinished uploads", lambda c: c.pending_uploads(self._root, prefix))

    def presign(self, key: str, seconds: int) -> str:
        return self._call(f"presign {key}", lambda c: c.presign(self._root, key, seconds))

    def copy_from(self, source: CopySource, key: str, token: str | None = None) -> tuple[ObjectInfo | None, str | None]:
        return self._call(f"copy {source.key} to {key}", lambda c: c.copy(self._root, key, source, token))

    def copy_part_from(self, source: CopySource, key: str, upload_id: str, part_number: int, offset: int,
                       length: int) -> PartInfo:
        return self._call(f"copy part {part_number} of {source.key} to {key}",
                          lambda c: c.copy_part(self._root, key, upload_id, part_number, source, offset, length))

    # ---- what only the gateways do --------------------------------------------------------------
    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        raise BadOptionError(f"the coordinator does not read {self._root}/{key}: it reaches the destination "
                             "through its gateways' store operations only")

    def probe_copy_from(self, source: CopySource, *, parts: bool = False) -> None:
        raise BadOptionError(f"the coordinator cannot probe server-side copies into {self._root}",
                             hint="the client probes them in prepare() and hands the result to the coordinator")
