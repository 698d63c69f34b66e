"""Credentials the client can ask for again: the entries of a transfer's credentials document, each
with whatever renews it (docs/credentials.md).

A :class:`CredentialSource` gives one entry (``key``: a store root URI or a scheme, as in the
credentials document) as of now. A static entry never changes; an AWS entry over botocore's
refreshing credentials returns new keys once the SDK has renewed them (botocore does so 15 minutes
before they expire). :class:`CredentialKeeper` asks every source at an interval and pushes the entries
that changed, so that gateways hold renewed credentials before the old ones expire.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

#: The fields of an ``s3`` entry that a source fills in from its credentials.
AWS_KEY_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


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
    the next tick."""

    def __init__(self, sources: Iterable[CredentialSource], push: Callable[[dict], None], *,
                 started_with: dict[str, dict], interval: float = 30.0) -> None:
        self._sources = list(sources)
        self._push = push
        self._held = {k: dict(v) for k, v in started_with.items()}
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> dict[str, dict]:
        """Push what changed; return it (empty when nothing did, or when the push failed)."""
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
