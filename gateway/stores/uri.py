"""Parsing of object URIs: ``s3://``, ``gs://``/``gcs://``, ``az://``/``azure://``, ``file://`` and plain paths."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from planner.errors import BadURIError

_ALIASES = {"s3": "s3", "gs": "gs", "gcs": "gs", "az": "az", "azure": "az", "file": "file"}
_BUCKET_RE = {
    "s3": re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$"),
}
_AZ_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_AZ_CONTAINER_RE = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9\-]{1,61}[a-z0-9]$|^\$root$")


@dataclass(frozen=True)
class StoreURI:
    """A parsed URI: which store (``scheme`` + ``bucket``) and which ``path`` inside it.

    ``bucket`` is the S3/GCS bucket, ``account/container`` for Azure, and ``""`` for local files,
    whose ``path`` is absolute. ``path`` is a key or a key prefix (it may be empty).
    """

    scheme: str
    bucket: str
    path: str

    @property
    def root_uri(self) -> str:
        return "file:///" if self.scheme == "file" else f"{self.scheme}://{self.bucket}"

    def __str__(self) -> str:
        if self.scheme == "file":
            return "file://" + self.path
        return f"{self.scheme}://{self.bucket}/{self.path}"

    def join(self, key: str) -> "StoreURI":
        """This URI with ``key`` appended below its path."""
        base = self.path if not self.path or self.path.endswith("/") else self.path + "/"
        return StoreURI(self.scheme, self.bucket, base + key.lstrip("/"))


def parse_uri(text: str) -> StoreURI:
    """Parse ``text`` into a :class:`StoreURI`; raise :class:`BadURIError` naming the bad part."""
    if not isinstance(text, str) or not text.strip():
        raise BadURIError("empty URI", hint="give e.g. s3://bucket/prefix, gs://bucket/prefix, az://account/container/prefix or /abs/path")
    text = text.strip()
    if text.startswith("/"):
        return _local(text, text)
    if "://" not in text:
        raise BadURIError(f"{text!r} is neither a URI nor an absolute path",
                          hint="use scheme://bucket/prefix or an absolute local path")
    raw_scheme, rest = text.split("://", 1)
    scheme = _ALIASES.get(raw_scheme.lower())
    if scheme is None:
        raise BadURIError(f"unknown scheme {raw_scheme!r} in {text!r}",
                          hint="supported: s3://, gs:// (gcs://), az:// (azure://), file://")
    if scheme == "file":
        if not rest.startswith("/"):
            raise BadURIError(f"file URI {text!r} must hold an absolute path", hint="write file:///abs/path")
        return _local(rest, text)
    if scheme == "az":
        parts = rest.split("/", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise BadURIError(f"Azure URI {text!r} needs an account and a container",
                              hint="write az://account/container/prefix")
        account, container = parts[0], parts[1]
        if not _AZ_ACCOUNT_RE.match(account):
            raise BadURIError(f"bad Azure storage account name {account!r} in {text!r}",
                              hint="3-24 lowercase letters and digits")
        if not _AZ_CONTAINER_RE.match(container):
            raise BadURIError(f"bad Azure container name {container!r} in {text!r}",
                              hint="3-63 lowercase letters, digits and single dashes")
        return StoreURI("az", f"{account}/{container}", _key(parts[2] if len(parts) > 2 else "", text))
    bucket, _, path = rest.partition("/")
    if not bucket:
        raise BadURIError(f"empty bucket name in {text!r}", hint=f"write {scheme}://bucket/prefix")
    if not _BUCKET_RE[scheme].match(bucket):
        raise BadURIError(f"bad bucket name {bucket!r} in {text!r}",
                          hint="3-63 lowercase letters, digits, dots and dashes")
    return StoreURI(scheme, bucket, _key(path, text))


def _key(path: str, text: str) -> str:
    if any(seg in (".", "..") for seg in path.split("/")):
        raise BadURIError(f"'.' or '..' segment in the key of {text!r}", hint="object keys must not contain relative segments")
    return path


def _local(path: str, text: str) -> StoreURI:
    if any(seg == ".." for seg in path.split("/")):
        raise BadURIError(f"'..' segment in local path {text!r}", hint="give the path without '..'")
    normal = posixpath.normpath(path)
    if path.endswith("/") and normal != "/":
        normal += "/"
    return StoreURI("file", "", normal)
