"""Which settings are secrets, and the same settings with the secrets hidden, for reprs, errors and logs.

A request, a gateway spec or a fleet block carries store credentials, provisioner keys and passwords
next to harmless settings (hosts, regions, instance types). Their ``repr`` and our error messages
show the harmless part, so they stay useful, and never a secret. A setting is secret by its name
(as Airflow's secrets masker decides for connection extras): ``*secret*``, ``*password*``,
``*token*``, ``*private*``, ``*credential*``, ``*_key``, ``connection_string``, ``sas*``, EC2
``user_data``... Whole credentials documents are hidden by their callers, not by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: What a hidden value is shown as.
REDACTED = "<redacted>"

# ``key`` alone or as the last word (encryption_key, account_key, ssh_key); ``key_file`` and
# ``accept_unknown_host_keys`` are not secrets, ``aws_access_key_id`` names a key without being one.
_SECRET_NAME = re.compile(
    r"secret|passw|passphrase|token|private|credential|connection_string|(^|_)sas(_|$)|signature|"
    r"(^|_)p?key$|key_(data|material|pem)|service_account_info|keyfile_dict|user_data|authorization",
    re.IGNORECASE)


def is_secret_name(name: object) -> bool:
    """Whether a setting called ``name`` holds a secret."""
    return isinstance(name, str) and bool(_SECRET_NAME.search(name))


def redact(value: Any) -> Any:
    """A copy of ``value`` (nested mappings and lists) with every secret setting's value replaced by
    :data:`REDACTED`; ``None`` stays ``None`` (an unset secret is worth seeing)."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_name(k) and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def secret_values(value: Any) -> list[str]:
    """Every secret string in ``value`` (nested mappings and lists): what a log masker should hide.
    Everything under a secret name counts, e.g. each field of a ``service_account_info``."""
    found: list[str] = []

    def walk(v: Any, secret: bool) -> None:
        if isinstance(v, Mapping):
            for k, item in v.items():
                walk(item, secret or is_secret_name(k))
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item, secret)
        elif secret and isinstance(v, str) and v:
            found.append(v)

    walk(value, False)
    return found
