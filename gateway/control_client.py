"""A small client of a gateway's control API (docs/gateway.md), used by the orchestrator.

Every failure (unreachable, timeout, refused token, 4xx/5xx answer, garbage) is a
:class:`GatewayError` whose message names the gateway's URL and, for an answer, its error text.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

from planner.errors import GatewayError


class GatewayClient:
    """``GatewayClient("http://127.0.0.1:PORT", token)``; thread-safe (one HTTP request per call)."""

    def __init__(self, control_url: str, token: str, *, timeout: float = 10.0) -> None:
        self.control_url = control_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never show the token
        return f"GatewayClient({self.control_url!r})"

    def health(self) -> dict:
        """``{"ok", "gateway_id", "region", "pid"}``."""
        return self._call("GET", "/health")

    def set_peers(self, peers: dict[str, list[dict]]) -> None:
        """Next-hop gateways by region: ``{region: [{"gateway_id", "host", "data_port"}]}``."""
        self._call("POST", "/peers", {"peers": peers})

    def submit(self, chunks: list[dict]) -> int:
        """Submit ChunkRequests; returns how many of the first ones were accepted (backpressure)."""
        answer = self._call("POST", "/chunks", {"chunks": chunks})
        accepted = answer.get("accepted")
        if not isinstance(accepted, int) or not 0 <= accepted <= len(chunks):
            raise GatewayError(f"gateway {self.control_url} gave a bad answer to POST /chunks: {answer!r}")
        return accepted

    def status(self, since: int = 0) -> dict:
        """``{"events", "next", "counters", "queued", "errors"}``: events with sequence >= ``since``."""
        return self._call("GET", f"/status?since={int(since)}")

    def shutdown(self) -> None:
        """Ask the gateway to stop (it answers first, then exits)."""
        self._call("POST", "/shutdown", {})

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.control_url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self._token}",
                                              "Content-Type": "application/json"})
        where = f"gateway {self.control_url} ({method} {path.split('?')[0]})"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc)
            if exc.code == 401:
                raise GatewayError(f"{where} refused the control token", hint="use the token from its config") from None
            raise GatewayError(f"{where} answered {exc.code}: {detail}") from None
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


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read())
        return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)
    except (ValueError, OSError):
        return exc.reason or "no detail"
