"""Credentials the client can ask for again: the entries of a transfer's credentials document, each
with whatever renews it (docs/credentials.md).

A :class:`CredentialSource` gives one entry (``key``: a store root URI or a scheme, as in the
credentials document) as of now. A static entry never changes; an AWS entry over botocore's
refreshing credentials returns new keys once the SDK has renewed them (botocore does so 15 minutes
before they expire); a GCS or Azure entry over google-auth credentials or an azure-core
``TokenCredential`` returns an access token, a new one once the old has less than 10 minutes left.
:class:`CredentialKeeper` asks every source at an interval and pushes the entries that changed, so
that gateways hold renewed credentials before the old ones expire.
"""

from __future__ import annotations

import functools
import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from planner.errors import CredentialsError, JobEndedError

log = logging.getLogger(__name__)

#: The fields of an ``s3`` entry that a source fills in from its credentials.
AWS_KEY_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
#: An access token with less left than this is renewed (docs/credentials.md): the keeper asks every
#: 30 s, so the gateways hold the new one minutes before the old one stops working.
RENEW_BEFORE = timedelta(minutes=10)


class CredentialSource:
    """One entry of the credentials document, as it stands now (a static entry)."""

    def __init__(self, key: str, entry: dict[str, Any]) -> None:
        self.key = key
        self._entry = dict(entry)

    def current(self) -> dict[str, Any]:
        return dict(self._entry)

    def __repr__(self) -> str:  # the entry holds secrets
        return f"{type(self).__name__}({self.key!r})"


class AwsSessionSource(CredentialSource):
    """An ``s3`` entry whose keys come from botocore credentials: ``RefreshableCredentials`` (an assumed
    role, SSO, web identity, a provider hook's session) renew themselves when asked near their expiry.
    ``base`` holds the entry's other fields (``region_name``, ``endpoint_url``)."""

    def __init__(self, key: str, credentials: Any, base: dict[str, Any]) -> None:
        super().__init__(key, {k: v for k, v in base.items() if k not in AWS_KEY_FIELDS})
        self._credentials = credentials

    def current(self) -> dict[str, Any]:
        frozen = self._credentials.get_frozen_credentials()
        entry = {**self._entry, "aws_access_key_id": frozen.access_key, "aws_secret_access_key": frozen.secret_key}
        if frozen.token:
            entry["aws_session_token"] = frozen.token
        return entry


class GoogleAuthSource(CredentialSource):
    """A ``gs`` entry holding an OAuth 2.0 access token of google-auth ``credentials`` (a service
    account, an impersonated one, workload identity federation: what the google provider's hook or
    a Prefect ``GcpCredentials`` block resolves). The base credentials stay here; the entry carries
    the token and its ``expiration``, refreshed with ``credentials.refresh()`` once less than
    :data:`RENEW_BEFORE` is left. ``base`` holds the entry's other fields (``project``, ``endpoint``)."""

    def __init__(self, key: str, credentials: Any, base: dict[str, Any]) -> None:
        super().__init__(key, base)
        self._credentials = credentials
        self._lock = threading.Lock()  # the keeper's thread and the task's may ask at once

    def current(self) -> dict[str, Any]:
        import google.auth.transport.requests

        with self._lock:
            creds = self._credentials
            if not creds.token or _left(creds.expiry) < RENEW_BEFORE:
                creds.refresh(google.auth.transport.requests.Request())
            return token_entry(self.key, self._entry, creds.token, creds.expiry)


class AzureTokenSource(CredentialSource):
    """An ``az`` entry holding an Entra ID access token for Blob Storage from an azure-core
    ``TokenCredential`` (a service principal, managed or workload identity: what the microsoft-azure
    provider's ``WasbHook`` resolves). azure-identity caches the token and fetches a new one near its
    expiry; this asks it again once less than :data:`RENEW_BEFORE` is left. ``base`` holds
    ``account_url``."""

    def __init__(self, key: str, credential: Any, base: dict[str, Any]) -> None:
        super().__init__(key, base)
        self._credential = credential
        self._token: Any = None
        self._lock = threading.Lock()

    def current(self) -> dict[str, Any]:
        from gateway.stores.azure import STORAGE_SCOPE

        with self._lock:
            expires = None if self._token is None else datetime.fromtimestamp(self._token.expires_on, timezone.utc)
            if self._token is None or _left(expires) < RENEW_BEFORE:
                self._token = self._credential.get_token(STORAGE_SCOPE)
                expires = datetime.fromtimestamp(self._token.expires_on, timezone.utc)
            return token_entry(self.key, self._entry, self._token.token, expires)


def token_entry(key: str, base: dict[str, Any], token: str | None, expiry: datetime | None) -> dict[str, Any]:
    """``base`` with ``access_token`` and ``expiration``; a missing or expired token is refused here,
    on the client, before any gateway starts."""
    if not token:
        raise CredentialsError(f"the credentials for {key} gave no access token",
                               hint="check the connection with a task of its cloud's provider")
    entry = {**base, "access_token": token}
    if expiry is not None:
        when = _utc(expiry)
        if when <= datetime.now(timezone.utc):
            raise CredentialsError(f"the access token for {key} expired at {when:%Y-%m-%d %H:%M:%S} UTC",
                                   hint="check the clock of this host, and the connection's credentials")
        entry["expiration"] = when.isoformat()
    return entry


def _utc(moment: datetime) -> datetime:
    """google-auth gives naive UTC datetimes."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _left(expiry: datetime | None) -> timedelta:
    """How long a token that expires at ``expiry`` (None: never said) still works."""
    return timedelta.max if expiry is None else _utc(expiry) - datetime.now(timezone.utc)


def assume_role(key: str, base: dict[str, Any], role_arn: str, *, session_name: str,
                extra_args: dict[str, Any] | None = None, sts_endpoint: str | None = None) -> AwsSessionSource:
    """The temporary credentials of ``role_arn``, asked from STS with ``base``'s keys (or, without keys,
    the SDK's default chain) by botocore's own fetcher, which asks again before they expire.
    Nothing is asked until the first :meth:`~AwsSessionSource.current`."""
    import botocore.session
    from botocore.credentials import AssumeRoleCredentialFetcher, Credentials, DeferredRefreshableCredentials

    session = botocore.session.Session()
    if base.get("aws_access_key_id"):
        source = Credentials(base["aws_access_key_id"], base.get("aws_secret_access_key"), base.get("aws_session_token"))
    else:
        source = session.get_credentials()
    fetcher = AssumeRoleCredentialFetcher(
        functools.partial(session.create_client, region_name=base.get("region_name") or "us-east-1",
                          endpoint_url=sts_endpoint),
        source, role_arn, extra_args={"RoleSessionName": session_name, **(extra_args or {})})
    return AwsSessionSource(key, DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role"), base)


def document(sources: Iterable[CredentialSource]) -> dict[str, dict[str, Any]]:
    """The credentials document as of now."""
    return {s.key: s.current() for s in sources}


class CredentialKeeper:
    """Pushes renewed entries while a job runs: every ``interval`` seconds (:meth:`tick`) it asks each
    source for its entry and calls ``push({key: entry})`` with those that differ from what the job holds
    (``started_with``, then what was pushed). A source or a push that fails is logged and tried again at
    the next tick. A push refused because the job has ended (:class:`JobEndedError`: its watcher had not
    seen the end yet) is no failure: the keeper stops (``ended``) and pushes nothing more."""

    def __init__(self, sources: Iterable[CredentialSource], push: Callable[[dict], None], *,
                 started_with: dict[str, dict], interval: float = 30.0) -> None:
        self._sources = list(sources)
        self._push = push
        self._held = {k: dict(v) for k, v in started_with.items()}
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ended = False

    def tick(self) -> dict[str, dict]:
        """Push what changed; return it (empty when nothing did, when the push failed or the job ended)."""
        if self.ended:
            return {}
        changed = {}
        for source in self._sources:
            try:
                entry = source.current()
            except Exception as exc:  # noqa: BLE001 - the SDKs raise many classes; the next tick retries
                log.warning("cannot renew the credentials for %s: %s", source.key, exc)
                continue
            if entry != self._held.get(source.key):
                changed[source.key] = entry
        if not changed:
            return {}
        try:
            self._push(changed)
        except JobEndedError as exc:
            log.debug("renewed credentials for %s not handed on: %s", ", ".join(sorted(changed)), exc)
            self.ended = True
            self._stop.set()
            return {}
        except Exception as exc:  # noqa: BLE001 - the coordinator may be briefly unreachable
            log.warning("could not hand renewed credentials for %s to the job: %s", ", ".join(sorted(changed)), exc)
            return {}
        self._held.update(changed)
        log.info("renewed credentials for %s handed to the job", ", ".join(sorted(changed)))
        return changed

    def start(self) -> "CredentialKeeper":
        self._thread = threading.Thread(target=self._run, name="skyplane-credentials", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()
