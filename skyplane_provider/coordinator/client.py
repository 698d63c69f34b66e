"""A client of a job's coordinator (:mod:`.server`), with async twins for an asyncio loop.

    client = CoordinatorClient(url, token)
    client.job()                 # {"job_id", "state", "progress", ...}
    client.push_credentials({"s3://raw": entry})   # renewed credentials, relayed to the gateways
    stats = client.result()      # None while running; the stats; or raises the job's SkyplaneError
    await client.job_async()     # the same from a triggerer's event loop

Every failure to talk to the coordinator is a :class:`CoordinatorError` (:class:`JobEndedError` for
credentials pushed to a job that has ended); a failed job's error comes back as the same
``SkyplaneError`` subclass it had in the coordinator.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import urllib.parse

import planner.errors as errors
from gateway.tls import pinned_context
from planner.errors import CoordinatorError, JobEndedError, SkyplaneError, TransferError

from .state import FINAL

# httpx (the async calls' transport) logs every request at INFO: a line per poll in Airflow triggerer logs.
logging.getLogger("httpx").setLevel(logging.WARNING)


class CoordinatorClient:
    """``CoordinatorClient("http://127.0.0.1:PORT", token, cert=None)``. ``cert``: the coordinator's
    certificate (PEM) when it speaks TLS; only that certificate is trusted. Thread-safe: each call
    has its own connection.

    The calls speak through ``http.client``, the async ones through httpx (imported when first used):
    httpx imports its command line's rich, click and pygments where they are installed (Prefect and
    Airflow install them), ~0.2 CPU-s of every ``skyplane-provider`` start."""

    def __init__(self, url: str, token: str, *, cert: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._verify: ssl.SSLContext | bool = pinned_context(cert) if cert else True
        self._timeout = timeout

    def __repr__(self) -> str:  # never show the token
        return f"CoordinatorClient({self.url!r})"

    # -- calls ---------------------------------------------------------------------------------------
    def job(self, wait: float = 0.0) -> dict:
        """``{"job_id", "state", "progress", "error"?, "error_type"?}``; with ``wait``, once the job has
        ended or after that many seconds (the server holds the answer at most 5 s)."""
        return self._call("GET", f"/job?wait={wait:g}" if wait else "/job")

    def result(self, last: bool = False) -> dict | None:
        """The stats of a succeeded job; None while it runs; raises the error of a failed or cancelled one.
        ``last``: this client is the job's only reader (its coordinator then exits at once)."""
        return _outcome(self._call("GET", "/job/result?last=1" if last else "/job/result", running_ok=True))

    def cancel(self) -> None:
        self._call("POST", "/job/cancel")

    def health(self) -> dict:
        return self._call("GET", "/health")

    def push_credentials(self, entries: dict[str, dict]) -> int:
        """Hand the job renewed entries of its credentials document (``{key: entry}``); the
        coordinator passes them on to its gateways. Returns how many gateways took them."""
        return int(self._call("POST", "/job/credentials", body={"credentials": entries})["gateways"])

    async def job_async(self) -> dict:
        return await self._call_async("GET", "/job")

    async def result_async(self) -> dict | None:
        return _outcome(await self._call_async("GET", "/job/result", running_ok=True))

    async def cancel_async(self) -> None:
        await self._call_async("POST", "/job/cancel")

    async def health_async(self) -> dict:
        return await self._call_async("GET", "/health")

    async def push_credentials_async(self, entries: dict[str, dict]) -> int:
        doc = await self._call_async("POST", "/job/credentials", body={"credentials": entries})
        return int(doc["gateways"])

    # -- transport -----------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, running_ok: bool = False, body: dict | None = None) -> dict | None:
        where = urllib.parse.urlsplit(self.url)
        if where.scheme == "https":
            context = self._verify if isinstance(self._verify, ssl.SSLContext) else ssl.create_default_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                where.hostname, where.port, timeout=self._timeout, context=context)
        else:
            conn = http.client.HTTPConnection(where.hostname, where.port, timeout=self._timeout)
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, where.path + path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(method, path, exc) from None
        finally:
            conn.close()
        return self._answer(method, path, response.status, raw, running_ok)

    async def _call_async(self, method: str, path: str, *, running_ok: bool = False,
                          body: dict | None = None) -> dict | None:
        import httpx

        try:
            async with httpx.AsyncClient(verify=self._verify, timeout=self._timeout, headers=self._headers) as c:
                response = await c.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(method, path, exc) from None
        return self._answer(method, path, response.status_code, response.content, running_ok)

    def _unreachable(self, method: str, path: str, exc: Exception) -> CoordinatorError:
        return CoordinatorError(f"cannot reach the coordinator at {self.url} ({method} {path}): {exc}",
                                hint="if the job's coordinator is gone, resume the job with "
                                     "`skyplane-provider resume JOB_ID`")

    def _answer(self, method: str, path: str, status: int, raw: bytes, running_ok: bool) -> dict | None:
        where = f"the coordinator at {self.url} ({method} {path})"
        if status == 409 and running_ok:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise CoordinatorError(f"{where} did not answer JSON (status {status})") from None
        if status == 401:
            raise CoordinatorError(f"{where} refused the token", hint="use the job handle's token")
        if status != 200 or not isinstance(doc, dict):
            detail = doc.get("error", doc) if isinstance(doc, dict) else doc
            if status == 409 and isinstance(doc, dict) and doc.get("state") in FINAL:
                raise JobEndedError(f"{where} answered 409: {detail}")
            raise CoordinatorError(f"{where} answered {status}: {detail}")
        return doc


def _outcome(doc: dict | None) -> dict | None:
    if doc is None or "error_type" not in doc:
        return doc
    raise job_error(doc)


def job_error(doc: dict) -> SkyplaneError:
    """The ``SkyplaneError`` of a failed job's ``{"error", "error_type", "failed_objects"}``."""
    cls = getattr(errors, str(doc.get("error_type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, SkyplaneError)):
        cls = TransferError
    exc = cls.__new__(cls)
    Exception.__init__(exc, doc.get("error") or "the transfer failed")  # the message already holds its hint
    exc.hint = None
    exc.failed_objects = list(doc.get("failed_objects") or [])
    return exc
