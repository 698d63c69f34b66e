"""A lighter S3 GET for the gateway's reads: signed as botocore's SigV4 signer signs it, sent through
the botocore client's own urllib3 pool, without the client's per-call machinery.

Why: a gateway reading small objects spends most of its CPU in botocore's ``get_object`` around the
HTTP exchange itself (cProfile of 2,000 x 1 KiB GETs from moto, docs/benchmarks.md "Scale"): ten
event emissions, the endpoint ruleset, the REST-XML serializer, the response parser turning every
header into a modelled field, the retry handler. The request is the same either way: the URL
botocore's endpoint resolution gives the bucket (seen on the store's first read, which botocore
makes), the key encoded as
botocore's serializer encodes it, a ``Range`` header, signed with the client's own credentials and
signing region as botocore's ``S3SigV4Auth`` signs it (gateway/stores/s3_sign.py, checked against it
in tests), sent by the client's own HTTP session (its proxies, CA bundle, timeouts and pool).

Only the answers whose handling is plain are handled here: 200/206 (the body), 404, 416 and 403
AccessDenied (raised as the ``ClientError`` botocore would raise, so the store maps them as before).
Any other answer, or a connection error, is not retried here: the attempt counts as the first of the
call's budget, the call goes on through a botocore client holding the rest of that budget, and the
store's GETs go through botocore from then on (its retries, adaptive rate limiting, region
redirects and clock-skew corrections apply unchanged).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any, Callable

import urllib.parse

import botocore.exceptions as bex
from botocore.awsrequest import AWSPreparedRequest
from botocore.utils import percent_encode

from .s3_sign import GetSigner, canonical_host

#: Answers handled here; any other goes to botocore (see the module's docstring).
_OK = (200, 206)
_PLAIN_ERRORS = {404: None, 416: None, 403: "AccessDenied"}  # status -> the one code accepted (None: any)


@dataclass(frozen=True)
class BucketRoute:
    """Where a bucket's objects are (``base`` + the encoded key) and the region their requests are
    signed for, as botocore's endpoint resolution gave them."""

    base: str
    region: str


class DirectGet:
    """Signed GETs through a botocore S3 client's HTTP session; see the module's docstring.

    ``credentials``: the client's botocore credentials (refreshed as the client's are);
    ``rest``: builds the botocore client that makes a call's remaining attempts after a direct one
    that was not handled here."""

    def __init__(self, client: Any, credentials: Any, rest: Callable[[], Any]) -> None:
        self._client = client
        self._credentials = credentials
        # The client's own HTTP session: no public accessor, but the one place its proxies, CA bundle,
        # client certificate, timeouts and pool size are all applied as the client applies them.
        self._http = client._endpoint.http_session
        self._rest_factory = rest
        self._rest: Any = None
        self._signers: dict[BucketRoute, tuple[GetSigner, str]] = {}  # and the path before the key

    @classmethod
    def for_client(cls, client: Any, credentials: Any, attempts: int,
                   rest: Callable[[], Any]) -> "DirectGet | None":
        """A direct path for ``client``, or None where it would not help or could not be faithful:
        no credentials (unsigned requests), or a single attempt (nothing would be left for botocore
        after a direct attempt that fails)."""
        if credentials is None or attempts < 2 or getattr(client, "_endpoint", None) is None:
            return None
        return cls(client, credentials, rest)

    def learn(self, bucket: str, key: str, call: Callable[[], Any]) -> tuple[Any, BucketRoute | None]:
        """Run ``call`` (a botocore GetObject of ``key`` in ``bucket``) and return its result with the
        bucket's route as botocore sent it (after any region redirect): the URL up to the key and the
        signing region of its SigV4 ``Authorization``. The route is None for requests that are not
        plain SigV4 for service ``s3`` (S3 Express, Outposts and other ARNs stay on botocore)."""
        encoded = "/" + percent_encode(key, safe="/~")
        sent: list[tuple[str, str]] = []

        def capture(request: Any, **_: Any) -> None:
            url = request.url.split("?", 1)[0]
            if url.endswith(encoded):
                sent.append((url[:-len(encoded) + 1], _text(request.headers.get("Authorization"))))

        hook_id = f"skyplane-direct-{id(sent)}"
        self._client.meta.events.register("before-send.s3.GetObject", capture, unique_id=hook_id)
        try:
            result = call()
        finally:
            self._client.meta.events.unregister("before-send.s3.GetObject", unique_id=hook_id)
        if not sent:
            return result, None
        base, authorization = sent[-1]
        scope = authorization.partition("Credential=")[2].split(",", 1)[0].split("/")
        plain = (authorization.startswith("AWS4-HMAC-SHA256 ") and len(scope) == 5 and scope[3] == "s3"
                 and bucket in base)
        return result, BucketRoute(base, scope[2]) if plain else None

    def get(self, route: BucketRoute, key: str, byte_range: str) -> Any | None:
        """One signed GET of ``key`` with ``byte_range``: the response (an ``AWSResponse``, its body
        unread) when it is 200 or 206; raises botocore's ``ClientError`` for 404, 416 and 403
        AccessDenied; None for anything else, the attempt spent (the caller goes on with
        :meth:`rest_client`)."""
        signer, prefix = self._signer(route)
        encoded = percent_encode(key, safe="/~")
        frozen = self._credentials.get_frozen_credentials()
        headers = signer.headers(prefix + encoded, byte_range, frozen.access_key, frozen.secret_key, frozen.token)
        try:
            response = self._http.send(AWSPreparedRequest("GET", route.base + encoded, headers, None, True, {}))
        except (bex.HTTPClientError, bex.ConnectionError):
            return None  # cut off or not connected (timeouts, resets, TLS): botocore's attempts go on
        if response.status_code in _OK:
            return response
        content = response.content
        code, message = _error_fields(content, response.status_code)
        if response.status_code in _PLAIN_ERRORS and _PLAIN_ERRORS[response.status_code] in (None, code):
            raise bex.ClientError({"Error": {"Code": code, "Message": message},
                                   "ResponseMetadata": {"HTTPStatusCode": response.status_code,
                                                        "HTTPHeaders": dict(response.headers.items())}},
                                  "GetObject")
        return None

    def _signer(self, route: BucketRoute) -> tuple[GetSigner, str]:
        """The route's signer and the path of its base (the signed path is that and the encoded key)."""
        found = self._signers.get(route)
        if found is None:
            found = self._signers[route] = (GetSigner(canonical_host(route.base), route.region),
                                            urllib.parse.urlsplit(route.base).path)
        return found

    def rest_client(self) -> Any:
        """The botocore client holding a call's attempts after the direct one (built once)."""
        if self._rest is None:
            self._rest = self._rest_factory()
        return self._rest

    def close(self) -> None:
        if self._rest is not None:
            self._rest.close()


def _text(value: str | bytes | None) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value or ""


def _error_fields(content: bytes, status: int) -> tuple[str, str]:
    """S3's error document's ``Code`` and ``Message`` (the status as the code when it has none, as
    botocore does for bodiless answers)."""
    try:
        root = ElementTree.fromstring(content) if content else None
    except ElementTree.ParseError:
        root = None
    code = root.findtext("Code") if root is not None else None
    message = root.findtext("Message") if root is not None else None
    return code or str(status), message or ""
