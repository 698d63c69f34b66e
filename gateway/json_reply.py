"""The JSON answer of the project's two HTTP APIs: a gateway's control API (control.py) and a job's
coordinator (skyplane_provider/coordinator/server.py). Standard library only: both servers import it
at start-up."""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler


class Encoded(list):
    """A list of values already encoded (each a JSON text, bytes), which :func:`encode` puts in the answer
    as they are: a supervisor's events, passed on from its workers without being decoded."""


def encode(doc: dict) -> bytes:
    """``doc`` as compact JSON; a value of ``doc`` that is :class:`Encoded` is spliced in, not encoded."""
    spliced = [(key, value) for key, value in doc.items() if isinstance(value, Encoded)]
    if not spliced:
        return json.dumps(doc, separators=(",", ":")).encode()
    rest = json.dumps({k: v for k, v in doc.items() if not isinstance(v, Encoded)}, separators=(",", ":")).encode()
    parts = [json.dumps(key).encode() + b":[" + b",".join(value) + b"]" for key, value in spliced]
    if rest != b"{}":
        parts.append(rest[1:-1])
    return b"{" + b",".join(parts) + b"}"


def reply_json(handler: BaseHTTPRequestHandler, status: HTTPStatus, doc: dict) -> None:
    """Send ``doc`` as the whole response to ``handler``'s request (headers only for a HEAD). Compact:
    a gateway's status holds an entry per object. A 401 names the scheme the APIs take (Bearer)."""
    data = encode(doc)
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    if status == HTTPStatus.UNAUTHORIZED:
        handler.send_header("WWW-Authenticate", "Bearer")
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)
