"""The client of a gateway's control API (docs/gateway.md, "Control API version 2"), used by the
orchestrator (the coordinator).

A store that refuses or fails an operation of ``POST /store`` (422) is re-raised as the same
:class:`SkyplaneError` subclass (``NotFoundError``, ``AccessDeniedError``, ``ThrottledError``...),
with the store's message. Every other failure (unreachable, timeout, refused token, another 4xx or
5xx, garbage) is a :class:`GatewayError` whose message names the gateway's URL and the answer's text.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request

import planner.errors
from planner.errors import GatewayError, SkyplaneError

from .events import error_type
from .stores.base import Capabilities, CopySource, ObjectInfo, PartInfo, capabilities_from
from .tls import pinned_context

#: Seconds a store operation may take (a listing page of 5,000 keys on a slow store) before the call fails.
STORE_TIMEOUT = 120.0


class StoreOps:
    """A gateway's store operations (gateway/store_api.py), run with the gateway's credentials; a
    subclass carries them (``_store``) and names the gateway in errors (``control_url``)."""

    control_url: str

    def _store(self, op: str, store: str, **fields) -> dict:
        raise NotImplementedError

    def list_page(self, store: str, prefix: str = "", token: str | None = None,
                  limit: int = 1000) -> tuple[list[ObjectInfo], str | None]:
        """One listing page of ``store`` (a root URI): up to ``limit`` (<= 5,000) objects in key order,
        and the token of the next page (None after the last)."""
        answer = self._store("list", store, prefix=prefix, token=token, limit=limit)
        return [self._info(o) for o in answer.get("objects", ())], answer.get("token")

    def head(self, store: str, key: str) -> ObjectInfo:
        return self._info(self._store("head", store, key=key).get("object"))

    def begin_multipart(self, store: str, key: str) -> str:
        upload_id = self._store("begin_multipart", store, key=key).get("upload_id")
        if not isinstance(upload_id, str) or not upload_id:
            raise GatewayError(f"gateway {self.control_url} gave no upload id for {store}/{key}")
        return upload_id

    def complete_multipart(self, store: str, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        """Assemble the parts; returns what the store reported of the object (its receipt)."""
        doc = [{"part_number": p.part_number, "etag": p.etag, "size": p.size} for p in parts]
        return self._info(self._store("complete_multipart", store, key=key, upload_id=upload_id,
                                      parts=doc).get("object"))

    def abort_multipart(self, store: str, key: str, upload_id: str) -> None:
        self._store("abort_multipart", store, key=key, upload_id=upload_id)

    def list_parts(self, store: str, key: str, upload_id: str, checksums_of: list[int] | None = None) -> list[PartInfo]:
        """The parts of an open upload the store holds, with the checksums it gave of each (of
        ``checksums_of`` at least; None: of every part)."""
        docs = self._store("list_parts", store, key=key, upload_id=upload_id, checksums_of=checksums_of).get("parts")
        try:
            return [PartInfo(**d) for d in docs]
        except TypeError:
            raise GatewayError(f"gateway {self.control_url} answered {docs!r}, not a list of parts") from None

    def pending_uploads(self, store: str, prefix: str = "") -> list[tuple[str, str]]:
        """``(key, upload_id)`` of the unfinished multipart uploads under ``prefix``."""
        return [(k, u) for k, u in self._store("pending_uploads", store, prefix=prefix).get("uploads", ())]

    def delete(self, store: str, key: str) -> None:
        self._store("delete", store, key=key)

    def write(self, store: str, key: str, data: bytes) -> ObjectInfo:
        """Write a small object (at most 16 MiB: a manifest, a report); returns its receipt."""
        return self._info(self._store("write", store, key=key,
                                      data=base64.b64encode(data).decode()).get("object"))

    def presign(self, store: str, key: str, seconds: int) -> str:
        """A URL reading ``key`` for ``seconds`` (a secret while it lives: never log it)."""
        url = self._store("presign", store, key=key, seconds=seconds).get("url")
        if not isinstance(url, str) or not url:
            raise GatewayError(f"gateway {self.control_url} gave no presigned URL for {store}/{key}")
        return url

    def copy(self, store: str, key: str, source: CopySource, token: str | None = None) -> tuple[ObjectInfo | None,
                                                                                               str | None]:
        """Copy ``source`` to ``key`` of ``store`` server-side: ``(receipt, None)`` when done, ``(None,
        token)`` while the store is still copying (call again with the token)."""
        answer = self._store("copy", store, key=key, source=_source_doc(source), token=token)
        if "object" in answer:
            return self._info(answer["object"]), None
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise GatewayError(f"gateway {self.control_url} gave neither an object nor a token for a copy")
        return None, token

    def copy_part(self, store: str, key: str, upload_id: str, part: int, source: CopySource, offset: int,
                  length: int) -> PartInfo:
        """Copy ``length`` bytes of ``source`` from ``offset`` as part ``part`` of an upload, server-side."""
        return self._part(self._store("copy_part", store, key=key, upload_id=upload_id, part=part,
                                      source=_source_doc(source), offset=offset, length=length).get("part"))

    def check(self, store: str) -> None:
        """The store answers (its bucket or container exists and the credentials are taken)."""
        self._store("check", store)

    def region(self, store: str) -> str | None:
        """The store's region as its API tells it (None where it does not: Azure)."""
        region = self._store("region", store).get("region")
        if region is not None and not isinstance(region, str):
            raise GatewayError(f"gateway {self.control_url} answered {region!r}, not a region")
        return region

    def capabilities(self, store: str) -> Capabilities:
        """What the store can do (opening it: no request)."""
        return capabilities_from(self._store("capabilities", store).get("capabilities"))

    def upload_part(self, store: str, key: str, upload_id: str, part: int, data: bytes) -> PartInfo:
        """Write a small part (a probe's byte) of an open upload."""
        return self._part(self._store("upload_part", store, key=key, upload_id=upload_id, part=part,
                                      data=base64.b64encode(data).decode()).get("part"))

    def probe_copy(self, store: str, source: CopySource, parts: bool = False) -> None:
        """Whether ``store`` copies ``source`` server-side (whole, or in parts): raises the store's refusal."""
        self._store("probe_copy", store, source=_source_doc(source), parts=parts)

    def _part(self, doc: object) -> PartInfo:
        try:
            return PartInfo(**doc)
        except TypeError:
            raise GatewayError(f"gateway {self.control_url} answered {doc!r}, not a part") from None

    def _info(self, doc: object) -> ObjectInfo:
        try:
            return ObjectInfo(**doc)
        except TypeError:
            raise GatewayError(f"gateway {self.control_url} answered {doc!r}, not an object's info") from None


class GatewayClient(StoreOps):
    """``GatewayClient("http://127.0.0.1:PORT", token)``; thread-safe (one HTTP request per call).
    ``cert``: the gateway's control certificate (PEM) when it serves over TLS (config ``control_tls``,
    an ``https://`` URL); only that certificate is trusted."""

    def __init__(self, control_url: str, token: str, *, timeout: float = 10.0, cert: str | None = None) -> None:
        self.control_url = control_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._tls = pinned_context(cert) if cert else None

    def __repr__(self) -> str:  # never show the token
        return f"GatewayClient({self.control_url!r})"

    def health(self) -> dict:
        """``{"ok", "gateway_id", "region", "pid"}``."""
        return self._call("GET", "/health")

    def set_peers(self, peers: dict[str, list[dict]]) -> None:
        """Next-hop gateways by region: ``{region: [{"gateway_id", "host", "data_port"}]}``."""
        self._call("POST", "/peers", {"peers": peers})

    def submit(self, batch: dict) -> int:
        """Submit a batch ``{"src", "dests", "chunks"}``; returns how many of its first chunks were
        accepted (backpressure: submit the rest later)."""
        answer = self._call("POST", "/chunks", batch)
        accepted = answer.get("accepted")
        if not isinstance(accepted, int) or not 0 <= accepted <= len(batch.get("chunks", ())):
            raise GatewayError(f"gateway {self.control_url} gave a bad answer to POST /chunks: {answer!r}")
        return accepted

    def status(self, since: int = 0, wait: float = 0.0) -> dict:
        """``{"events", "next", "counters", "queued", "errors"}``: events with sequence >= ``since``.
        ``wait`` > 0: a long poll; the gateway answers once it has such an event, or after ``wait``
        seconds (at most ``gateway.events.MAX_WAIT``) with none."""
        if wait <= 0:
            return self._call("GET", f"/status?since={int(since)}")
        return self._call("GET", f"/status?since={int(since)}&wait={wait:g}", timeout=self.timeout + wait)

    def push_credentials(self, entries: dict[str, dict]) -> list[str]:
        """Hand the gateway renewed entries of its credentials document; returns their keys."""
        return list(self._call("POST", "/credentials", {"credentials": entries}).get("replaced", ()))

    def set_bwlimit(self, bytes_per_second: float | None) -> None:
        """This gateway's share of the job's bandwidth cap (None: no cap); see gateway/bandwidth.py."""
        self._call("POST", "/bwlimit", {"bytes_per_second": bytes_per_second})

    def shutdown(self) -> None:
        """Ask the gateway to stop (it answers first, then exits)."""
        self._call("POST", "/shutdown", {})

    # ---- POST /store, for StoreOps ----------------------------------------------------------------
    def _store(self, op: str, store: str, **fields) -> dict:
        return self._call("POST", "/store", {"op": op, "store": store, **fields}, timeout=STORE_TIMEOUT)

    # ---- HTTP -------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None = None, *, timeout: float | None = None) -> dict:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()  # a batch: per object
        req = urllib.request.Request(self.control_url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self._token}",
                                              "Content-Type": "application/json"})
        where = f"gateway {self.control_url} ({method} {path.split('?')[0]})"
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout, context=self._tls) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            doc = _error_doc(exc)
            if exc.code == 401:
                raise GatewayError(f"{where} refused the control token", hint="use the token from its config") from None
            if exc.code == 422:
                raise store_error(doc) from None
            raise GatewayError(f"{where} answered {exc.code}: {doc.get('error', exc.reason or 'no detail')}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GatewayError(f"cannot reach {where}: {reason}",
                               hint="is the gateway running? see its log") from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise GatewayError(f"{where} did not answer JSON") from None
        if not isinstance(doc, dict):
            raise GatewayError(f"{where} answered {doc!r}, not a JSON object")
        return doc


def _source_doc(source: CopySource) -> dict:
    return {"store": source.store, "key": source.key, "size": source.size, "url": source.url}


def _error_doc(exc: urllib.error.HTTPError) -> dict:
    try:
        doc = json.loads(exc.read())
    except (ValueError, OSError):
        return {}
    return doc if isinstance(doc, dict) else {"error": str(doc)}


def store_error_doc(exc: SkyplaneError) -> dict:
    """A store's error as the gateway answers it, on ``POST /store`` (422) and on the store channel
    alike: :func:`store_error` reads it back as the same class, with its hint and retry fields."""
    return {"error": str(exc), "message": exc.message, "hint": exc.hint, "error_type": error_type(exc),
            "retryable": exc.retryable, "retried": exc.retried, "retry_after": exc.retry_after}


def store_error(doc: dict) -> SkyplaneError:
    """The error a store raised in the gateway (:func:`store_error_doc`), as the same class: ``message``
    and ``hint`` apart, or only ``error`` (its message with its hint), with its retry fields."""
    cls = getattr(planner.errors, str(doc.get("error_type")), None)
    if not (isinstance(cls, type) and issubclass(cls, SkyplaneError)):
        cls = planner.errors.StoreError
    if isinstance(doc.get("message"), str):
        hint = doc.get("hint")
        error = cls(doc["message"], hint=hint if isinstance(hint, str) else None)
    else:
        error = cls(str(doc.get("error", "the store refused the operation")))
    if isinstance(doc.get("retryable"), bool) and doc["retryable"] != error.retryable:
        error.retryable = doc["retryable"]
    if isinstance(doc.get("retried"), bool):
        error.retried = doc["retried"]
    if isinstance(doc.get("retry_after"), (int, float)) and not isinstance(doc["retry_after"], bool):
        error.retry_after = float(doc["retry_after"])
    return error
