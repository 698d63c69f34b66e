"""Airflow's ``ObjectStoragePath`` as a source or destination: its URI in our form, and its connection.

An ``ObjectStoragePath`` carries its connection id (``s3://aws_raw@bucket/key`` or ``conn_id=``) and
names stores by fsspec protocol; a transfer takes ``s3://bucket/key``, ``gs://bucket/key``,
``az://account/container/key`` or a local path, with the connection id beside it:

==============================  =========================================================
ObjectStoragePath protocol      our URI
==============================  =========================================================
``s3``, ``s3a``                 ``s3://bucket/key``
``gs``, ``gcs``                 ``gs://bucket/key``
``az``, ``abfs``, ``abfss``     ``az://ACCOUNT/container/key``; ACCOUNT from the path's
                                ``account_name`` storage option, else from its ``wasb``
                                connection (login, or the host's account URL)
``file``, none                  the local path
==============================  =========================================================
"""

from __future__ import annotations

from typing import Any, Callable

from airflow.sdk import ObjectStoragePath

from planner.errors import BadURIError

_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az", "abfss": "az"}


def is_path(value: Any) -> bool:
    return isinstance(value, ObjectStoragePath)


def path_uri(path: ObjectStoragePath, account_of: Callable[[str], str | None] | None = None) -> str | None:
    """Our URI of ``path``. An Azure path whose account only its connection knows asks
    ``account_of(conn_id)``; without that callable (e.g. while a DAG is parsed) it gives None."""
    protocol = path.protocol or "file"
    if protocol == "file":
        return path.path
    scheme = _SCHEMES.get(protocol)
    if scheme is None:
        raise BadURIError(f"ObjectStoragePath {path} has protocol {protocol!r}, which a transfer cannot use",
                          hint=f"use one of {', '.join(sorted(_SCHEMES))} or file")
    if scheme != "az":
        return f"{scheme}://{path.bucket}/{path.key}"
    account = (path.storage_options or {}).get("account_name")
    if not account and path.conn_id and account_of is not None:
        account = account_of(path.conn_id)
    if not account:
        if account_of is None:
            return None
        raise BadURIError(f"ObjectStoragePath {path} does not say which storage account it is in",
                          hint="give its wasb connection a login (the account name) or a host "
                               "(https://ACCOUNT.blob.core.windows.net), or pass account_name=...")
    return f"az://{account}/{path.bucket}/{path.key}"

