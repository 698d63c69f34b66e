"""A local stand-in for the IAM Service Account Credentials API (v1): ``generateAccessToken``, the
call by which google-auth's impersonated credentials (the google provider's ``impersonation_chain``)
get a token of another service account. Tests only.

**This is a stand-in, not Google's API**, written from the public reference
(cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken):

- ``POST /v1/projects/-/serviceAccounts/{ACCOUNT}:generateAccessToken`` (the ``-`` wildcard is
  required), body ``{"scope": [...] (at least one), "delegates": [...], "lifetime": "3600s"}``
  (lifetime at most one hour, one hour when absent), answered ``{"accessToken", "expireTime"}``
  (RFC 3339, UTC);
- the caller must hold Token Creator on the first account of ``delegates``, each delegate on the
  next, the last on ``ACCOUNT`` (``403 PERMISSION_DENIED`` otherwise); delegates are written
  ``projects/-/serviceAccounts/EMAIL``; a bare email is taken too, as google-auth sends the
  google provider's chain as it is;
- errors are ``google.rpc.Status`` as JSON: ``{"error": {"code", "message", "status"}}``.

google-auth calls ``https://iamcredentials.<universe_domain>/...``, the universe domain being the
source credentials' (a key file's ``universe_domain``), and offers no other override the google
provider passes on. So the stand-in serves https with a certificate for ``iamcredentials.sky.test``
(``.test`` is reserved, RFC 2606) and gives ``sky.test:PORT`` as the universe domain; a test runs
its client where that name resolves to 127.0.0.1 (a private ``/etc/hosts``) and trusts
:attr:`ca_file`. Who the caller is, :class:`~skyplane_provider.testing.gcp_compute.GCPComputeStandIn`
tells from the bearer token (``caller``), as the accounts are its. Scopes are recorded, not checked.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from .standin_http import HTTPError, Request, Response, StandInServer

#: The stand-in's universe domain, without the port.
DOMAIN = "sky.test"
HOSTNAME = f"iamcredentials.{DOMAIN}"
_PREFIX = "projects/-/serviceAccounts/"
_LIFETIME = re.compile(r"(\d+)(\.\d{1,9})?s")
MAX_LIFETIME = 3600


def _status(code: int, status: str, message: str) -> HTTPError:
    return HTTPError(code, {"error": {"code": code, "message": message, "status": status}})


class IAMCredentialsStandIn:
    """``IAMCredentialsStandIn(caller, token_creators).start()`` -> the universe domain to give
    clients (``sky.test:PORT``).

    ``caller``: bearer token -> the account it stands for, or None. ``token_creators``: account ->
    the accounts granted ``roles/iam.serviceAccountTokenCreator`` on it; only these accounts exist.
    Every token issued is in :attr:`issued` (token -> account, scopes, delegates, expiry).
    """

    def __init__(self, caller: Callable[[str], str | None], token_creators: dict[str, Iterable[str]], *,
                 certificate_dir: Path | None = None) -> None:
        self._caller = caller
        self._creators = {account: set(holders) for account, holders in token_creators.items()}
        self.issued: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.server = StandInServer([
            ("POST", r"/v1/projects/(?P<project>[^/]+)/serviceAccounts/(?P<account>[^/:]+):generateAccessToken",
             self._generate_access_token),
        ], tls=True, certificate_dir=certificate_dir, hostnames=(HOSTNAME,))
        self.universe_domain = ""

    @property
    def ca_file(self) -> Path | None:
        """The certificate a client must trust (``REQUESTS_CA_BUNDLE``)."""
        return self.server.ca_file

    def start(self) -> str:
        port = self.server.start().rsplit(":", 1)[1]
        self.universe_domain = f"{DOMAIN}:{port}"
        return self.universe_domain

    def stop(self) -> None:
        self.server.stop()

    def _generate_access_token(self, req: Request, project: str, account: str) -> Response:
        if project != "-":
            raise _status(400, "INVALID_ARGUMENT", "The project in the resource name must be the wildcard '-'.")
        auth = req.headers.get("authorization", "")
        caller = self._caller(auth[7:]) if auth.startswith("Bearer ") else None
        if caller is None:
            raise _status(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected "
                                                  "OAuth 2 access token, login cookie or other valid credential.")
        body = req.body if isinstance(req.body, dict) else {}
        scope = body.get("scope") or []
        if not isinstance(scope, list) or not scope:
            raise _status(400, "INVALID_ARGUMENT", "Scope required.")
        lifetime = _LIFETIME.fullmatch(body.get("lifetime") or f"{MAX_LIFETIME}s")
        if lifetime is None or not 0 < int(lifetime[1]) <= MAX_LIFETIME:
            raise _status(400, "INVALID_ARGUMENT", f"The lifetime must be a duration of at most {MAX_LIFETIME}s, "
                                                   f"got {body.get('lifetime')!r}.")
        delegates = [d.removeprefix(_PREFIX) for d in body.get("delegates") or []]
        for name in (*delegates, account):
            if name not in self._creators:
                raise _status(404, "NOT_FOUND", f"Service account {_PREFIX}{name} does not exist.")
        for holder, on in zip((caller, *delegates), (*delegates, account)):
            if holder not in self._creators[on]:
                raise _status(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied "
                                                        f"on resource {_PREFIX}{on} (or it may not exist).")
        token = "ya29.standin-iam-" + secrets.token_urlsafe(16)
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + int(lifetime[1])))
        with self._lock:
            self.issued[token] = {"account": account, "scope": scope, "delegates": delegates, "expireTime": expire}
        return Response(200, {"accessToken": token, "expireTime": expire})
