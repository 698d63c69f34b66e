"""The object-store interface every adapter implements (in the spirit of rclone's ``fs/types.go``).

A few required verbs every store implements, and optional capabilities that are *declared* in
:class:`Capabilities` and probed by callers, never assumed. The copy logic only ever talks to this
interface; no adapter knows any other.

Keys are ``/``-separated names relative to the store's root (a bucket, a container, a directory).
Every method raises subclasses of :class:`planner.errors.SkyplaneError`
(``NotFoundError``, ``AccessDeniedError``, ``ThrottledError``, ...), never SDK exceptions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Collection, Iterator

#: Keys a listing page holds at most (the contract's ``POST /store`` list limit; Azure's own page limit).
MAX_LIST_PAGE = 5000

from gateway.retry import with_retries
from planner.errors import BadOptionError


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing, a HEAD or a write's answer (its *receipt*) reports it."""

    key: str
    size: int
    etag: str | None = None
    mtime: float | None = None  # seconds since the epoch
    #: Content checksums the store reported for this object, in lowercase hex (CRC32C big-endian);
    #: None when it has none of that kind (a multipart S3 object has no MD5, a composed GCS object
    #: only a CRC32C). Only kinds in the store's ``capabilities.checksums`` are ever set.
    md5: str | None = None
    crc32c: str | None = None

    def to_dict(self) -> dict:
        """``{"key", "size", "etag", "mtime", "md5", "crc32c"}``, None where unknown (``ObjectInfo(**d)``
        again). Field by field: ``dataclasses.asdict`` deep-copies each value and cost ~10 us per
        object, paid for every listed object that crosses a process (listing pages, a job's handover)."""
        return {"key": self.key, "size": self.size, "etag": self.etag, "mtime": self.mtime, "md5": self.md5,
                "crc32c": self.crc32c}

    def checksums(self) -> dict[str, str]:
        """``{"md5": ..., "crc32c": ...}`` with the kinds this object has."""
        return {kind: value for kind, value in (("md5", self.md5), ("crc32c", self.crc32c)) if value}


@dataclass(frozen=True)
class PartInfo:
    """One uploaded part of a multipart upload, as ``complete_multipart`` needs it; as
    :meth:`ObjectStore.list_parts` reports it, also the content checksums the store gave of its bytes
    (lowercase hex, CRC32C big-endian; None where it gave none)."""

    part_number: int  # 1-based
    etag: str
    size: int = 0
    md5: str | None = None
    crc32c: str | None = None


@dataclass(frozen=True)
class CopySource:
    """What a server-side copy reads: ``key`` (of ``size`` bytes) in the store at ``store`` (a root
    URI), and, for stores that copy from a URL, ``url``: a presigned URL reading it (a secret for its
    lifetime: never shown in a repr)."""

    store: str
    key: str
    size: int
    url: str | None = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return self.store.split("://", 1)[0]


@dataclass(frozen=True)
class Capabilities:
    """What a store can do beyond the required verbs.

    ``multipart``: begin/upload_part/complete/abort work and parts may be uploaded in parallel.
    ``max_parts`` / ``min_part_size`` / ``max_part_size``: limits the chunker must respect.
    ``checksums``: content checksums the store may report in :attr:`ObjectInfo.md5` /
    :attr:`ObjectInfo.crc32c` and we can verify a copy against (``"md5"``, ``"crc32c"``). A
    declared kind can still be missing on one object; ``head`` reports every kind the object has,
    ``list`` may leave out what would cost an extra request (or, on S3, cannot be told apart).
    ``conditional_write``: ``read_versioned`` / ``write_if`` work (compare-and-swap of one object).
    ``single_request_max``: the largest object worth writing in one request; bigger ones go in parts
    (the threshold the store's own tools use by default; see :mod:`gateway.sizing`).

    Server-side copy (the bytes never pass through us; see :meth:`ObjectStore.copy_from`):
    ``copy_from`` names what this store can copy from: a scheme (``"s3"``: any bucket of that service
    its own credentials can read) and/or ``"url"`` (any URL the service can fetch, e.g. a presigned
    one). ``copy_parts``: a byte range can be copied into a multipart upload (:meth:`copy_part_from`);
    ``copy_max``: the largest object one :meth:`copy_from` copies (bigger ones need parts).
    ``presign``: :meth:`presign` can give a time-limited URL reading one object (if the credentials
    can sign). Declared here, then probed (:meth:`probe_copy_from`) before a job relies on it.

    ``part_checksums``: content checksums :meth:`ObjectStore.list_parts` reports of the parts of an
    open upload (``"md5"``, ``"crc32c"``); empty: the store cannot list them with a digest, and a
    resumed upload sends again every part its manifest does not record. A listed part can still lack
    a declared kind (then it is sent again too).
    """

    multipart: bool = False
    max_parts: int = 10_000
    min_part_size: int = 0
    max_part_size: int = 5 * 1024**3
    checksums: frozenset[str] = field(default_factory=frozenset)
    conditional_write: bool = False
    single_request_max: int = 64 * 1024**2
    copy_from: tuple[str, ...] = ()
    copy_parts: bool = False
    copy_max: int = 5 * 1024**4
    presign: bool = False
    part_checksums: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        # A tuple, so that the capabilities travel as JSON (a job document) and come back equal.
        object.__setattr__(self, "copy_from", tuple(sorted(self.copy_from)))


def capabilities_doc(caps: Capabilities) -> dict:
    """A store's capabilities as JSON (a job document, a store operation's answer);
    :func:`capabilities_from` reads it back."""
    doc = asdict(caps)
    doc["checksums"] = sorted(caps.checksums)
    doc["copy_from"] = list(caps.copy_from)
    doc["part_checksums"] = sorted(caps.part_checksums)
    return doc


def capabilities_from(doc: object) -> Capabilities:
    """The :class:`Capabilities` of :func:`capabilities_doc`; ``BadOptionError`` when malformed."""
    try:
        return Capabilities(**{**doc, "checksums": frozenset(doc.get("checksums", ())),
                               "copy_from": tuple(doc.get("copy_from", ())),
                               "part_checksums": frozenset(doc.get("part_checksums", ()))})
    except (TypeError, AttributeError) as exc:
        raise BadOptionError(f"the store capabilities handed over are malformed: {exc}",
                             hint="start the job with the same skyplane-provider version on the client and the fleet") \
            from None


class ObjectStore(ABC):
    """A bucket (or container, or directory) of one provider."""

    #: URI scheme, e.g. ``"s3"``.
    scheme: str = ""
    capabilities: Capabilities = Capabilities()
    #: When the credentials this store was opened with stop working (seconds since the epoch), if they
    #: do: a refusal of them from then on is a retryable ``CredentialsExpiredError``.
    expires_at: float | None = None

    @property
    @abstractmethod
    def root_uri(self) -> str:
        """The URI of the store's root, e.g. ``s3://bucket`` or ``file:///data``."""

    # ---- required verbs ------------------------------------------------------------------
    @abstractmethod
    def check(self) -> None:
        """Raise ``NotFoundError`` if the bucket/container/directory does not exist,
        ``AccessDeniedError`` / ``CredentialsError`` if we may not use it."""

    @abstractmethod
    def list_page(self, prefix: str = "", token: str | None = None,
                  limit: int = 1000) -> tuple[list[ObjectInfo], str | None]:
        """One page of the objects whose key starts with ``prefix``, in key (code point) order: at most
        ``limit`` (<= :data:`MAX_LIST_PAGE`) objects, and the token of the next page (None after the
        last). Tokens are stateless (the store's continuation token, or the last key listed), so a
        listing can go on from any page in another process."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key, one page after the other (each
        page retried as a call that nothing re-sends: gateway/retry.py)."""
        token: str | None = None
        while True:
            page, token = with_retries(lambda: self.list_page(prefix, token, MAX_LIST_PAGE),
                                       what=f"listing {self.root_uri}/{prefix}")
            yield from page
            if token is None:
                return

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """The object's metadata; ``NotFoundError`` if it does not exist."""

    @abstractmethod
    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes from ``offset`` (to the end when ``length`` is None)."""

    def read_into(self, key: str, offset: int, view: memoryview, *, whole: bool = False) -> int:
        """Fill ``view`` with the object's bytes from ``offset`` (fewer where the object ends); returns
        how many. Stores whose SDK can fill a caller's buffer override this; here it costs one copy
        of :meth:`read`'s answer. ``whole``: ``offset`` is 0 and ``view`` reaches past the object's
        expected end (a whole object read one byte past its size, so one that grew shows): an HTTP
        store then asks for the object, not a range, as its SDK's plain download does (a range costs
        the server its parsing and a 206: moto 2% more CPU per 1 KiB object), and stops reading where
        ``view`` ends."""
        data = self.read(key, offset, len(view))
        view[:len(data)] = data
        return len(data)

    @abstractmethod
    def write(self, key: str, data: bytes | bytearray) -> ObjectInfo:
        """Write a whole object atomically (never visible half-written); returns the receipt: what the
        store answered (``size`` always; ``etag``, ``md5``, ``crc32c`` where it reported them; no
        checksum is computed here just to fill it)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object; deleting a missing object is not an error."""

    def exists(self, key: str) -> bool:
        from planner.errors import NotFoundError

        try:
            self.head(key)
            return True
        except NotFoundError:
            return False

    def region(self) -> str | None:
        """The store's region tag (``aws:us-east-1``) when the API tells it, else None."""
        return None

    # ---- optional capability: multipart ----------------------------------------------------
    def begin_multipart(self, key: str) -> str:
        """Start a multipart upload of ``key``; returns the upload id."""
        raise BadOptionError(f"{self.scheme} store does not support multipart uploads")

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray) -> PartInfo:
        """Upload part ``part_number`` (1-based); parts may arrive in any order and in parallel."""
        raise BadOptionError(f"{self.scheme} store does not support multipart uploads")

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        """Assemble the parts (in part-number order) into the object; returns what the store reported
        of it (its size from a HEAD where the store's answer has none). The object becomes visible
        only now."""
        raise BadOptionError(f"{self.scheme} store does not support multipart uploads")

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Discard an upload and every part of it; no object becomes visible."""
        raise BadOptionError(f"{self.scheme} store does not support multipart uploads")

    def list_parts(self, key: str, upload_id: str, checksums_of: Collection[int] | None = None) -> list[PartInfo]:
        """The parts of an open upload the store holds, by part number, each with the checksums of
        :attr:`Capabilities.part_checksums` it has. ``checksums_of``: the part numbers whose checksums
        are wanted (None: every part's); the others may come without, so a store that reads a part
        to checksum it reads no more. ``NotFoundError`` when the upload is gone."""
        raise BadOptionError(f"{self.scheme} store cannot list the parts of an upload")

    def reap_orphans(self) -> None:
        """Remove what writers that died left half-written (a local directory's temp files of a killed
        gateway worker on this host). Nothing to do where the store drops unfinished writes itself."""

    def pending_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """``(key, upload_id)`` of every multipart upload of a key under ``prefix`` that was begun and
        neither completed nor aborted (what a killed transfer leaves behind), as far as the store can
        tell (Azure: keys with staged blocks and no committed blob). Stores without multipart report none."""
        return []

    # ---- optional capability: server-side copy ------------------------------------------------
    def presign(self, key: str, seconds: int) -> str:
        """A URL that reads ``key`` for ``seconds`` without further credentials."""
        raise BadOptionError(f"{self.scheme} store cannot presign URLs")

    def copy_from(self, source: CopySource, key: str, token: str | None = None) -> tuple[ObjectInfo | None, str | None]:
        """Copy ``source`` to ``key`` inside the store's service (atomically: the object appears when
        the copy is complete). Returns ``(receipt, None)`` when done, or ``(None, token)`` while the
        service is still copying: call again with the token (each call does a bounded share)."""
        raise BadOptionError(f"{self.scheme} store cannot copy server-side")

    def copy_part_from(self, source: CopySource, key: str, upload_id: str, part_number: int, offset: int,
                       length: int) -> PartInfo:
        """Copy ``length`` bytes of ``source`` from ``offset`` as part ``part_number`` of an upload."""
        raise BadOptionError(f"{self.scheme} store cannot copy parts server-side")

    def probe_copy_from(self, source: CopySource, *, parts: bool = False) -> None:
        """Check with one small real copy that this store can copy ``source`` server-side with its
        credentials: a whole copy (to a scratch key under ``.skyplane-probe/``, removed at once), or
        with ``parts`` one byte copied into an upload that is never completed. Raises the store's
        error when it cannot."""
        raise BadOptionError(f"{self.scheme} store cannot copy server-side")

    # ---- optional capability: conditional write ----------------------------------------------
    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The whole object and an opaque version token of exactly these bytes (for ``write_if``);
        ``NotFoundError`` if it does not exist."""
        raise BadOptionError(f"{self.scheme} store does not support conditional writes")

    def write_if(self, key: str, data: bytes, expected_version: str | None) -> str:
        """Write a whole object only if its version is still ``expected_version`` (``None``: only if
        the object does not exist); returns the new version token. Raises ``ConflictError`` when
        another writer got there first."""
        raise BadOptionError(f"{self.scheme} store does not support conditional writes")

    def close(self) -> None:
        """Release pooled connections."""
