"""The botocore S3 client, for what the light client (gateway/stores/s3_api.py) does not do: the rare
verbs (presigning, server-side copies, listing parts, creating buckets) and every store whose settings
it would not honour faithfully (``s3.light_settings``). Imported only then: botocore costs a process
~115 ms to import and ~65 ms more to build its first client.

The clients are botocore's own, made without boto3: boto3 adds resources and the managed transfers
(s3transfer), which a store does not use, and importing them cost every S3 job's gateway ~25 ms of
CPU before its first request (10 imports each, load 6: 0.174 against 0.150 CPU-s per process).
Credentials, region and endpoint resolve as boto3's would (the same botocore chain).
"""

from __future__ import annotations

import datetime
import email.utils
import os
from typing import Any

import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.utils import parse_timestamp

from .common import CONNECT_TIMEOUT, POOL_SIZE, READ_TIMEOUT
from .s3 import SDK_ATTEMPTS, payload_signing

#: botocore's JSON data (the S3 service model, endpoints.json, retry rules) loaded once per process and
#: shared by every client's session: a session of its own loads and parses it again for each client,
#: 0.1 CPU-s apiece, and a job's coordinator, each gateway and every ``open_store`` make one
#: (0.013-0.047 CPU-s per client with it shared, measured in one process). The loader only reads files
#: and caches what it parsed, so sessions in several threads may share it.
_DATA_LOADER = botocore.loaders.create_loader()


def make_client(settings: dict[str, Any], *, attempts: int | None = None) -> Any:
    """One botocore S3 client for a credentials entry (see ``gateway.stores``); thread-safe, pooled.
    ``attempts``: the attempts of each call (default :func:`sdk_attempts`).

    Without an ``endpoint_url`` botocore still honours ``AWS_ENDPOINT_URL`` and its usual credential chain.
    """
    core = session(settings)
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=fast_timestamp)
    attempts = attempts or sdk_attempts(core)
    endpoint = settings.get("endpoint_url")
    effective = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        max_pool_connections=POOL_SIZE,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        # The one retry of an S3 call (docs/reliability.md "One retry budget"): 4 attempts in all
        # (botocore's ``max_attempts`` counts retries, one more attempt: ``total_max_attempts`` does not),
        # and adaptive mode's client-side rate limiter slows every request of this client once S3
        # answers SlowDown. Nothing above the store retries a throttled call again.
        retries={"total_max_attempts": attempts, "mode": "adaptive"},
        # Checksums only where S3 requires them: the transfer verifies every chunk end to end, and
        # the default CRC trailers are not understood by every S3-compatible server.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={
            # Emulators and on-premises servers on an IP address cannot use virtual-host addressing.
            "addressing_style": "path" if effective else "auto",
            "payload_signing_enabled": payload_signing(effective),
        },
    )
    return core.create_client("s3", endpoint_url=endpoint, config=config)


def session(settings: dict[str, Any]) -> botocore.session.Session:
    """A botocore session with a credentials entry's keys and region (as boto3.Session sets them),
    sharing :data:`_DATA_LOADER`: what a client is built from, and where the light client takes
    credentials, region and attempts from when they are not plain (``s3.light_settings``)."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _DATA_LOADER)
    keys = [settings.get(k) for k in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")]
    if any(keys):
        core.set_credentials(*keys)
    if settings.get("region_name") is not None:
        core.set_config_variable("region", settings["region_name"])
    return core


def sdk_attempts(core: botocore.session.Session) -> int:
    """Attempts botocore makes for one call: the user's own AWS setting where there is one
    (``AWS_MAX_ATTEMPTS``, or ``max_attempts`` in the profile of the AWS config file; both count the
    first attempt, as the AWS SDKs document them), else :data:`SDK_ATTEMPTS`. A job that should give
    up on a throttling store sooner, or hold on longer, sets it where its gateways run (local
    gateways inherit the orchestrator's environment). An explicit ``Config`` overrides the user's
    setting in botocore, so it is read here."""
    configured = core.get_config_variable("max_attempts")
    return max(1, int(configured)) if configured is not None else SDK_ATTEMPTS


def fast_timestamp(value: Any) -> datetime.datetime:
    """botocore's timestamp parser for the two forms S3 sends, without dateutil: ISO 8601 in listings
    (``2026-12-05T16:22:33.000Z``) and HTTP dates in headers (``Sat, 05 Dec 2026 16:22:33 GMT``);
    anything else goes to botocore's own. botocore's takes 100 us per value (dateutil): 9% of a
    gateway's CPU per small object read, 0.1 s per listing page of 1,000 keys; these take 0.1-8 us."""
    if isinstance(value, str):
        try:
            if value.endswith("GMT"):
                return email.utils.parsedate_to_datetime(value)
            if value[:4].isdigit():
                parsed = datetime.datetime.fromisoformat(value)
                if parsed.tzinfo is not None:
                    return parsed
        except (TypeError, ValueError):
            pass
    return parse_timestamp(value)


