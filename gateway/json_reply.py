"""The JSON answer of the project's two HTTP APIs: a gateway's control API (control.py) and a job's
coordinator (skyplane_provider/coordinator/server.py). Standard library only: both servers import it
at start-up."""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler


def reply_json(handler: BaseHTTPRequestHandler, status: HTTPStatus, doc: dict) -> None:
    """Send ``doc`` as the whole response to ``handler``'s request (headers only for a HEAD). Compact:
    a gateway's status holds an entry per object. A 401 names the scheme the APIs take (Bearer)."""
    data = json.dumps(doc, separators=(",", ":")).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    if status == HTTPStatus.UNAUTHORIZED:
        handler.send_header("WWW-Authenticate", "Bearer")
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)
