"""A directory as an object store.

Keys are ``/``-separated paths relative to the root directory. A key that would leave the root
(``..``, an absolute path, an empty segment, a symbolic link leading outside) raises
:class:`BadURIError` before anything is read or written.
A whole-object write goes to an unnamed file in the object's directory (``O_TMPFILE``) that a link
names once it is written, or, to replace an object (or where there is no ``O_TMPFILE``), to a temp
file under ``<root>/.skyplane-tmp/`` renamed into place: an object is never visible half-written.
Multipart parts live in ``.skyplane-tmp/<upload_id>/``: part N of S bytes at offset (N-1)*S of
that directory's file for parts of S bytes, so that parts 1, 2, ... of one size (a transfer's parts)
are already the object, which ``complete_multipart`` renames into place after appending what
follows them (a shorter last part); a marker file per part, written after its bytes, says it is
there. Listings never show the temp directory, and it is removed
whenever it falls empty, so a finished copy leaves nothing of ours behind. A temp file's name says
which process writes it (host, PID, the PID's start time): the temp files of a writer that died (a
killed gateway worker) are removed by the next store opened on that host, and by every
:meth:`LocalStore.pending_uploads`, which is what a transfer calls to find what earlier runs left.
ETags of objects are the MD5 of the bytes: a HEAD computes it, cached per file version in memory and
across runs (:mod:`gateway.stores.digest_cache`); a listing reads no file, so it reports an MD5 only
where that cache knows the file's version; a write and a multipart completion report none (nothing
hashes the bytes on their way). A multipart part's ETag names its file's version (inode, mtime,
size), which nothing checks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import socket
import stat
import tempfile
from typing import Collection, Iterator

from planner.errors import (AccessDeniedError, BadOptionError, BadURIError, NotFoundError, SkyplaneError,
                            StoreError, StoreUnavailableError)

from .base import Capabilities, ObjectInfo, ObjectStore, PartInfo
from .common import Digest, check_range, check_upload_id, new_upload_id, part_numbers, translated
from .digest_cache import shared_cache, version_of
from .local_walk import LINK, KeptWalks, walk

TMP_DIR = ".skyplane-tmp"
_BLOCK = 4 * 1024 * 1024
_INSIDE_CACHE_MAX = 100_000  # directories found inside the root


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would create
_HOST = socket.gethostname()


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


_tag: tuple[int, str] | None = None


def _writer_tag() -> str:
    """This process among the writers of a directory: a reused PID has another start time. Worked out
    once per process (reading /proc per write would cost a write two more system calls)."""
    global _tag
    pid = os.getpid()
    if _tag is None or _tag[0] != pid:
        _tag = (pid, f"{_HOST}~{pid}~{_start_time(pid)}~")
    return _tag[1]


def _orphaned(name: str) -> bool:
    """A temp file's name says it was written by a process of this host that is gone."""
    parts = name.split("~")
    if len(parts) != 4 or parts[0] != _HOST or not parts[1].isdigit() or not name.endswith(".tmp"):
        return False
    return _start_time(int(parts[1])) != parts[2]


class LocalStore(ObjectStore):
    """Objects as files below ``root``."""

    scheme = "file"
    capabilities = Capabilities(multipart=True, max_parts=10_000, min_part_size=0, max_part_size=5 * 1024**3,
                                checksums=frozenset({"md5"}),
                                # Parts are joined again on completion: only worth it for parallel writes
                                # of very big files.
                                single_request_max=256 * 1024**2,
                                # list_parts reads each part file for its CRC32C (a local read, hardware CRC)
                                part_checksums=frozenset({"crc32c"}))

    def __init__(self, root: str) -> None:
        if not os.path.isabs(root):
            raise BadURIError(f"local store root {root!r} is not an absolute path", hint="give an absolute path")
        self._root = os.path.normpath(root)
        self._root_slash = self._root if self._root.endswith("/") else self._root + "/"
        self._inside: set[str] = set()  # directories whose real path is inside the root (see _check_inside)
        self._no_tmpfile = not hasattr(os, "O_TMPFILE")  # see _anonymous
        self._walks = KeptWalks()  # listings left off at a page's end (see list_page)
        self.reap_orphans()

    @property
    def root_uri(self) -> str:
        return "file://" + self._root

    def region(self) -> str | None:
        return "local"

    # ---- required verbs --------------------------------------------------------------------
    def check(self) -> None:
        if not os.path.isdir(self._root):
            raise NotFoundError(f"directory {self._root} does not exist", hint="create it first")
        if not os.access(self._root, os.R_OK | os.X_OK):
            raise AccessDeniedError(f"cannot read directory {self._root}", hint="fix its permissions")

    def list_page(self, prefix: str = "", token: str | None = None,
                  limit: int = 1000) -> tuple[list[ObjectInfo], str | None]:
        """The token is the last key listed: the walk that listed it goes on (:mod:`.local_walk`), or,
        when none is kept, a walk from the token skips every directory that holds only keys up to it."""
        self._check_prefix(prefix)
        # Walk only below the deepest directory the prefix names, then filter by the full prefix.
        start_rel = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        if not os.path.isdir(os.path.join(self._root, start_rel) if start_rel else self._root):
            if not os.path.isdir(self._root):
                self.check()
            return [], None
        found: list[tuple[str, os.stat_result]] = []
        next_token = None
        keys = (token and self._walks.take(prefix, token)) or walk(self._root, start_rel, prefix, token or "",
                                                                   TMP_DIR)
        with self._errors(prefix):
            for key, kind in keys:
                try:
                    found.append((key, self._listed(key, kind)))
                except (NotFoundError, FileNotFoundError):
                    continue  # deleted while we listed, or not a file
                if len(found) == limit:
                    next_token = key
                    self._walks.keep(prefix, key, keys)
                    break
        # The digest cache is asked once per page: a query per key was a fifth of a listing's CPU.
        versions = [version_of(st) for _, st in found]
        md5s = shared_cache().get_many(versions)
        page = []
        for (key, st), version in zip(found, versions):
            md5 = md5s.get(version) if md5s else None  # none cached: a tree never hashed here
            page.append(ObjectInfo(key, st.st_size, md5, st.st_mtime, md5=md5))
        return page, next_token

    def _listed(self, key: str, kind: int) -> os.stat_result:
        """A listed file's status. A plain file's name came from its directory (no key to check) and
        its status costs one lstat; a link is checked as a key and followed."""
        st = os.stat(self._path(key)) if kind == LINK else os.lstat(self._root_slash + key)
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"{self._uri(key)} is not a file")
        return st

    def head(self, key: str) -> ObjectInfo:
        return self._info(key, with_md5=True)

    def _info(self, key: str, *, with_md5: bool) -> ObjectInfo:
        """The object's size and mtime, and its MD5: computed (a read of the file) only ``with_md5``,
        else only when the digest cache knows this version of the file (a listing reads no file)."""
        path = self._path(key)
        with self._errors(key):
            st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"{self._uri(key)} is a directory, not an object", hint="give the key of a file")
        md5 = self._md5(path, st) if with_md5 else shared_cache().get(version_of(st))
        return ObjectInfo(key, st.st_size, md5, st.st_mtime, md5=md5)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        with self._errors(key), os.fdopen(self._open_read(key), "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def read_into(self, key: str, offset: int, view: memoryview, *, whole: bool = False) -> int:
        check_range(offset, len(view))
        with self._errors(key):
            fd = self._open_read(key)
            try:
                got = 0
                while got < len(view) and (n := os.preadv(fd, [view[got:]], offset + got)):
                    got += n
                return got
            finally:
                os.close(fd)

    def write(self, key: str, data: bytes | bytearray) -> ObjectInfo:
        path = self._path(key, check_file=False)
        with self._errors(key):
            fd = self._anonymous(key, path[:path.rfind("/")] or "/")  # its directory (see _check_inside)
            if fd is not None:
                try:
                    _write_all(fd, data)
                    try:
                        # Appears whole or not at all, and only where nothing is: a link in the way
                        # is never followed (it fails the same way as a file there).
                        _link_fd(fd, path)
                    except FileExistsError:
                        self._check_inside(key, path)
                        self._publish_anonymous(fd, path)
                finally:
                    os.close(fd)
        if fd is not None:
            return ObjectInfo(key, len(data))
        path = self._path(key, for_write=True)
        fd, tmp = self._new_temp()
        with self._tidied(tmp), self._errors(key):
            _write_fd(fd, data)
            self._publish(tmp, path)
        # No MD5 here: a file system reports none, and computing one cost more than the write.
        return ObjectInfo(key, len(data))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.remove(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _translate(exc, self._uri(key)) from exc
        self._prune_dirs(os.path.dirname(path))

    # ---- multipart --------------------------------------------------------------------------
    def begin_multipart(self, key: str) -> str:
        self._path(key, for_write=True)  # reject a bad key now, not at completion
        upload_id = new_upload_id()
        self._in_tmp_dir(lambda tmp_dir: os.mkdir(os.path.join(tmp_dir, upload_id)))
        with self._errors(key):
            with open(os.path.join(self._upload_dir(upload_id), "key"), "w", encoding="utf-8") as f:
                f.write(key)
        return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray) -> PartInfo:
        if not 1 <= part_number <= self.capabilities.max_parts:
            raise BadOptionError(f"part number {part_number} is out of range",
                                 hint=f"use 1..{self.capabilities.max_parts}")
        directory = self._open_upload(key, upload_id)
        marker = os.path.join(directory, f"part-{part_number:05d}")
        tmp = marker + f".{new_upload_id()}.tmp"
        try:
            with self._errors(key):
                # The marker goes first: a part overwritten by a writer that dies meanwhile is then
                # missing, never half old and half new.
                _remove(marker)
                fd = os.open(os.path.join(directory, f"data-{len(data)}"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                             0o666)
                try:
                    _pwrite_all(fd, data, (part_number - 1) * len(data))
                finally:
                    os.close(fd)
                _write_fd(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666),
                          b"%d" % len(data))
                os.replace(tmp, marker)
                st = os.stat(marker)
        except BaseException:
            _remove(tmp)
            raise
        # Nothing checks a local part's ETag (complete_multipart goes by part number), and an MD5 of
        # each part was the costliest step of writing one (MD5 has no CPU support here, SHA-256
        # does): so it names the part's version, like a web server's ETag of a file.
        return PartInfo(part_number, _part_etag(st, len(data)), len(data))

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        numbers = part_numbers(parts, self._uri(key))
        directory = self._open_upload(key, upload_id)
        path = self._path(key, for_write=True)
        with self._errors(key):
            sizes = []
            for number in numbers:
                try:
                    sizes.append(_read_marker(os.path.join(directory, f"part-{number:05d}"))[0])
                except FileNotFoundError:
                    raise NotFoundError(f"part {number} of the upload of {self._uri(key)} is missing",
                                        hint="upload every part before completing") from None
            assembled = _assemble(directory, numbers, sizes)
            self._publish(assembled, path)  # created with a plain file's mode (0666 less the umask)
            st = os.stat(path)
        shutil.rmtree(directory, ignore_errors=True)
        self._tidy_tmp_dir()
        # No MD5: no byte of the parts passes through here.
        return ObjectInfo(key, st.st_size, None, st.st_mtime)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        check_upload_id(upload_id)
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)
        self._tidy_tmp_dir()

    def list_parts(self, key: str, upload_id: str, checksums_of: Collection[int] | None = None) -> list[PartInfo]:
        """The upload's parts, each of ``checksums_of`` read for its CRC32C (nothing recorded it when it
        was written)."""
        directory = self._open_upload(key, upload_id)
        wanted = None if checksums_of is None else set(checksums_of)
        parts = []
        with self._errors(key):
            for name in sorted(os.listdir(directory)):
                number = name.removeprefix("part-")
                if not (name.startswith("part-") and number.isdigit()):
                    continue  # the key file, a data file, a marker being written
                size, st = _read_marker(os.path.join(directory, name))
                crc = None
                if wanted is None or int(number) in wanted:
                    crc = _part_crc32c(directory, int(number), size)
                parts.append(PartInfo(int(number), _part_etag(st, size), size, crc32c=crc))
        return parts


    def pending_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """As the interface says; the temp files of writers that died go first (they belong to no upload)."""
        self._check_prefix(prefix)
        self.reap_orphans()
        try:
            upload_ids = sorted(os.listdir(os.path.join(self._root, TMP_DIR)))
        except FileNotFoundError:
            return []
        found = []
        for upload_id in upload_ids:
            try:
                with open(os.path.join(self._upload_dir(upload_id), "key"), encoding="utf-8") as f:
                    key = f.read()
            except OSError:
                continue  # a temp file of a whole-object write, or an upload completed meanwhile
            if key.startswith(prefix):
                found.append((key, upload_id))
        return found

    # ---- helpers ------------------------------------------------------------------------------
    def _uri(self, key: str) -> str:
        return "file://" + os.path.join(self._root, key)

    def _path(self, key: str, *, for_write: bool = False, check_file: bool = True) -> str:
        """The file of ``key``; raises BadURIError for any key that is not a plain relative path.
        ``check_file`` False: the caller checks the file itself for a link (see :meth:`_check_inside`)."""
        if not isinstance(key, str) or not key:
            raise BadURIError("empty object key", hint="give a key relative to the store root")
        segments = key.split("/")
        if key.startswith("/") or "\0" in key or "" in segments or "." in segments or ".." in segments:
            raise BadURIError(f"key {key!r} would escape or leave the store root {self._root}",
                              hint="keys are relative paths without '..', '.', empty segments or a leading '/'")
        if segments[0] == TMP_DIR:
            raise BadURIError(f"key {key!r} is inside the reserved directory {TMP_DIR}/", hint="choose another key")
        if for_write and not os.path.isdir(self._root):
            raise NotFoundError(f"directory {self._root} does not exist", hint="create it first")
        path = self._root_slash + key  # os.path.join(root, *segments), for the segments checked above
        self._check_inside(key, path, check_file=check_file)
        return path

    def _check_inside(self, key: str, path: str, *, check_file: bool = True) -> None:
        """A symbolic link below the root must not take a read or a write outside it.

        Resolving every component of every path (``os.path.realpath``: an lstat per component, in
        Python) cost ~30 us a call, several calls per object: a sixth of the CPU a 4 KiB object
        took end to end. So a directory found inside the root is remembered, and later keys in it
        cost one lstat of the file itself. A directory swapped for an outward link after its first
        check goes unnoticed; the uncached check had the same window between check and use."""
        parent = path[:path.rfind("/")] or "/"  # os.path.dirname of a path without "//" or a trailing "/"
        if parent not in self._inside:
            self._refuse_outside(key, os.path.realpath(parent))
            if len(self._inside) < _INSIDE_CACHE_MAX and os.path.isdir(parent):
                self._inside.add(parent)
        if check_file and os.path.islink(path):
            self._refuse_outside(key, os.path.realpath(path))

    def _open_read(self, key: str) -> int:
        """A descriptor of ``key``'s file for reading. Opened without following a link first (one
        system call instead of an lstat and an open): only a link is checked before it is followed."""
        path = self._path(key, check_file=False)
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        self._check_inside(key, path)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def _anonymous(self, key: str, directory: str) -> int | None:
        """An unnamed file open for writing in ``directory`` (made if missing, not the root), which a
        link names once written whole; None where the file system or the OS has none (O_TMPFILE).

        Why: a named temp file under ``.skyplane-tmp/`` and a rename cost a small object's write ~40 us
        of CPU (a random name, an exclusive create, a chmod, the temp directory removed when empty and
        made again by the next write); this costs ~7 us. A writer killed mid-write leaves nothing."""
        if self._no_tmpfile or _proc_fds() is None:
            return None
        try:
            return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, _FILE_MODE)
        except FileNotFoundError:
            if not os.path.isdir(self._root):
                raise NotFoundError(f"directory {self._root} does not exist", hint="create it first") from None
            os.makedirs(directory, exist_ok=True)
            return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, _FILE_MODE)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self._no_tmpfile = True
            return None

    def _publish_anonymous(self, fd: int, path: str) -> None:
        """Replace the object at ``path`` by the unnamed file ``fd``: named in the temp directory
        first (a link cannot replace), then renamed into place."""
        tag = _writer_tag()
        tmp = self._in_tmp_dir(lambda tmp_dir: _link_fd(fd, os.path.join(tmp_dir, f"{tag}{new_upload_id()}.tmp")))
        with self._tidied(tmp):
            self._publish(tmp, path)

    @contextlib.contextmanager
    def _tidied(self, tmp: str) -> Iterator[None]:
        """Around the publishing of the temp file ``tmp``: removed if that fails; the temp directory
        tidied either way."""
        try:
            yield
        except BaseException:
            _remove(tmp)
            raise
        finally:
            self._tidy_tmp_dir()

    def _refuse_outside(self, key: str, real: str) -> None:
        root = os.path.realpath(self._root)
        if os.path.commonpath([root, real]) != root:
            raise BadURIError(f"key {key!r} leads out of the store root {self._root} through a symbolic link",
                              hint="replace the link by the files, or copy from or to its target directly")

    def _check_prefix(self, prefix: str) -> None:
        segments = prefix.split("/")
        if prefix.startswith("/") or "\0" in prefix or ".." in segments or "." in segments[:-1]:
            raise BadURIError(f"prefix {prefix!r} would escape the store root {self._root}",
                              hint="give a prefix relative to the root, without '..'")

    def _new_temp(self) -> tuple[int, str]:
        """A new temp file (descriptor, path) with the mode a plain file would get here (mkstemp's
        is 0600: the objects would end up readable by their owner only)."""
        tag = _writer_tag()
        fd, tmp = self._in_tmp_dir(lambda tmp_dir: tempfile.mkstemp(dir=tmp_dir, prefix=tag, suffix=".tmp"))
        os.fchmod(fd, _FILE_MODE)
        return fd, tmp

    def _in_tmp_dir(self, create):
        """``create(tmp_dir)``, (re)making the temp dir first: another thread may remove it when
        it is empty (see :meth:`_tidy_tmp_dir`) between our makedirs and our create."""
        tmp_dir = os.path.join(self._root, TMP_DIR)
        attempts = 20
        for attempt in range(attempts):
            try:
                if attempt:  # the first try assumes the dir is there: one mkdir and one stat fewer per write
                    os.makedirs(tmp_dir, exist_ok=True)
                return create(tmp_dir)
            except (FileNotFoundError, FileExistsError) as exc:
                # FileExistsError too: makedirs raises it when the dir vanishes between its mkdir and isdir
                if not os.path.isdir(self._root):
                    raise NotFoundError(f"directory {self._root} does not exist", hint="create it first") from None
                if attempt == attempts - 1:
                    raise _translate(exc, self.root_uri) from exc
            except OSError as exc:
                raise _translate(exc, self.root_uri) from exc

    def reap_orphans(self) -> None:
        """Remove the temp files of whole-object writes whose writer died (SIGKILL, OOM) mid-write."""
        try:
            names = os.listdir(os.path.join(self._root, TMP_DIR))
        except OSError:
            return  # none (the usual case), or not ours to read
        for name in names:
            if _orphaned(name):
                _remove(os.path.join(self._root, TMP_DIR, name))
        self._tidy_tmp_dir()

    def _tidy_tmp_dir(self) -> None:
        """Leave no ``.skyplane-tmp`` behind in the user's directory once nothing is in flight."""
        try:
            os.rmdir(os.path.join(self._root, TMP_DIR))
        except OSError:
            pass  # not empty (other writes or uploads in flight) or already gone

    def _publish(self, tmp: str, path: str) -> None:
        # A rename within one file system is atomic: readers see the old object or the new one.
        # No fsync: visibility is the contract; the transfer verifies what it wrote afterwards.
        try:
            os.replace(tmp, path)
        except FileNotFoundError:  # the first object of its directory (makedirs first cost 2 syscalls a write)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(tmp, path)

    def _upload_dir(self, upload_id: str) -> str:
        return os.path.join(self._root, TMP_DIR, upload_id)

    def _open_upload(self, key: str, upload_id: str) -> str:
        check_upload_id(upload_id)
        directory = self._upload_dir(upload_id)
        try:
            with open(os.path.join(directory, "key"), encoding="utf-8") as f:
                owner = f.read()
        except FileNotFoundError:
            raise NotFoundError(f"no multipart upload {upload_id} in {self.root_uri}",
                                hint="it was completed or aborted; begin a new one") from None
        if owner != key:
            raise BadOptionError(f"multipart upload {upload_id} belongs to key {owner!r}, not {key!r}",
                                 hint="pass the key the upload was started with")
        return directory

    def _prune_dirs(self, directory: str) -> None:
        """Remove directories left empty by a delete, like "folders" vanish from a bucket."""
        inside = os.path.join(self._root, "")  # "/data/" (or "/" for the file-system root)
        while directory != self._root and directory.startswith(inside):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)

    def _md5(self, path: str, st: os.stat_result) -> str:
        cache = shared_cache()
        md5 = cache.get(version_of(st))
        if md5 is None:
            digest = hashlib.md5()
            with open(path, "rb") as f:
                while block := f.read(_BLOCK):
                    digest.update(block)
            md5 = digest.hexdigest()
            cache.put(version_of(st), md5)
        return md5

    def _errors(self, key: str) -> translated:
        # the URI is made only on an error: this is entered two or three times per object
        return translated(lambda exc: _translate(exc, self._uri(key)) if isinstance(exc, OSError) else None)


def _translate(exc: OSError, what: str) -> SkyplaneError:
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return NotFoundError(f"{what} does not exist", hint="check the path")
    if isinstance(exc, IsADirectoryError):
        return NotFoundError(f"{what} is a directory, not an object", hint="give the key of a file")
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"permission denied on {what}", hint="fix the file permissions")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreUnavailableError(f"no space left while writing {what}", hint="free some disk space")
    return StoreError(f"local file error on {what}: {exc.strerror or exc}")


def _part_crc32c(directory: str, number: int, size: int) -> str:
    """The CRC32C of part ``number`` (of ``size`` bytes) of the upload in ``directory``, where its
    data file holds it."""
    digest = Digest("crc32c")
    fd = os.open(os.path.join(directory, f"data-{size}"), os.O_RDONLY | os.O_CLOEXEC)
    try:
        offset, end = (number - 1) * size, number * size
        while offset < end and (block := os.pread(fd, min(_BLOCK, end - offset), offset)):
            digest.update(block)
            offset += len(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _part_etag(marker: os.stat_result, size: int) -> str:
    """A part's ETag: its version (its marker's inode and mtime, its size)."""
    return f"{marker.st_ino:x}-{marker.st_mtime_ns:x}-{size:x}"


def _read_marker(path: str) -> tuple[int, os.stat_result]:
    """A part's size, as its marker says, and the marker's stat (the part's version)."""
    with open(path, "rb") as f:
        return int(f.read()), os.fstat(f.fileno())


def _assemble(directory: str, numbers: list[int], sizes: list[int]) -> str:
    """The path of a file in ``directory`` holding the parts ``numbers`` (sorted, of ``sizes``) back
    to back. Parts numbered 1, 2, ... of one size are already in place in their data file, which
    becomes the object: only what follows them (a shorter last part) is copied, inside the kernel."""
    size = sizes[0]
    in_place = 0
    while in_place < len(numbers) and numbers[in_place] == in_place + 1 and sizes[in_place] == size:
        in_place += 1
    rest = list(zip(numbers[in_place:], sizes[in_place:]))
    if any(n == size for _, n in rest):  # a part after a gap lives in the base file: copy everything
        in_place, rest = 0, list(zip(numbers, sizes))
    if in_place:
        out_path = os.path.join(directory, f"data-{size}")
    else:
        out_path = os.path.join(directory, f"assembled-{new_upload_id()}")
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        os.ftruncate(out, in_place * size)  # a part uploaded again after the gap may lie beyond
        os.lseek(out, 0, os.SEEK_END)
        for number, n in rest:
            src = os.open(os.path.join(directory, f"data-{n}"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                offset, end = (number - 1) * n, number * n
                while offset < end:
                    sent = os.sendfile(out, src, offset, min(end - offset, _BLOCK * 16))
                    if not sent:
                        raise StoreError(f"part {number} in {directory} is shorter than its {n} bytes")
                    offset += sent
            finally:
                os.close(src)
    finally:
        os.close(out)
    return out_path


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    """Write all of ``data`` to ``fd`` at ``offset``."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_all(fd: int, data: bytes | bytearray) -> None:
    """Write all of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


#: ``(descriptor of /proc/self/fd or None,)`` once opened; forgotten in a forked child (see _proc_fds).
_procfd: tuple[int | None] | None = None


def _forget_proc_fds() -> None:
    global _procfd
    _procfd = None


os.register_at_fork(after_in_child=_forget_proc_fds)


def _proc_fds() -> int | None:
    """A descriptor of this process's ``/proc/self/fd`` (per process: a forked child opens its own, as
    the inherited one names its parent's descriptors), through which a link names an unnamed file;
    None without /proc. Python's ``os.link`` follows the source link (``linkat`` with
    ``AT_SYMLINK_FOLLOW``) only when given a directory descriptor."""
    global _procfd
    if _procfd is None:
        try:
            fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            fds = None
        _procfd = (fds,)
    return _procfd[0]


def _link_fd(fd: int, path: str) -> str:
    """Name the unnamed file ``fd`` ``path`` (which must not exist); returns ``path``."""
    os.link(str(fd), path, src_dir_fd=_proc_fds(), follow_symlinks=True)
    return path


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` and close it. Straight to the descriptor: a file object would
    cost an fstat, an isatty ioctl and an lseek more per write."""
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
