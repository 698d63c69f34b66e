"""This exact installation of skyplane-provider as a wheel, to ship to gateway hosts.

Remote gateways must run the same code as the orchestrator that plans for them, including local
edits in a development checkout. So the wheel is packed from the files Python imports right now
(the three top-level packages) plus the installed distribution's metadata, not built from a source
tree: that works for editable and regular installs alike and needs neither a build backend nor a
package index. The version gets a local label with the content hash (``0.1.0+<hash>``), so two
different trees never share a wheel, a remote venv or a cache entry.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from planner.errors import ProvisionError

DIST_NAME = "skyplane-provider"
#: The project's top-level packages (fixed by the house rules); a gateway host needs all three.
PACKAGES = ("planner", "gateway", "skyplane_provider")
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed, so equal content packs to equal bytes


@dataclass(frozen=True)
class PackagedWheel:
    """A wheel file on the orchestrator's disk and what identifies its content."""

    path: Path
    version: str  # e.g. "0.1.0+3f2a9c01d4e5b6a7"
    content_hash: str  # 16 hex chars

    @property
    def filename(self) -> str:
        return self.path.name


def _package_files() -> list[tuple[str, Path]]:
    """(path inside the wheel, file on disk) for every file of the top-level packages."""
    files = []
    for top in PACKAGES:
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            raise ProvisionError(f"cannot locate package {top!r} to ship to gateway hosts",
                                 hint="install skyplane-provider (pip install -e . in a checkout)")
        root = Path(list(spec.submodule_search_locations)[0])
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if (path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc"
                    and not any(p.startswith(".") for p in rel.parts)):
                files.append((f"{top}/{rel.as_posix()}", path))
    return files


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def package_wheel(cache_dir: Path) -> PackagedWheel:
    """Pack (or reuse from ``cache_dir``) the wheel of the running installation."""
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ProvisionError(f"{DIST_NAME} is not installed, so it cannot be shipped to gateway hosts",
                             hint="pip install skyplane-provider (or pip install -e . in a checkout)") from exc
    # An editable install run from its checkout may resolve to the .egg-info there (PKG-INFO).
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    if not metadata.startswith("Metadata-Version"):
        raise ProvisionError(f"the installed {DIST_NAME} has no readable metadata",
                             hint="reinstall it (pip install -e . in a checkout)")
    entry_points = dist.read_text("entry_points.txt") or ""
    contents = [(name, path.read_bytes()) for name, path in _package_files()]

    h = hashlib.sha256()
    for name, data in [("METADATA", metadata.encode()), ("entry_points.txt", entry_points.encode()), *contents]:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    content_hash = h.hexdigest()[:16]
    version = f"{dist.version.split('+')[0]}+{content_hash}"
    stem = f"{DIST_NAME.replace('-', '_')}-{version}"
    path = cache_dir / f"{stem}-py3-none-any.whl"
    wheel = PackagedWheel(path=path, version=version, content_hash=content_hash)
    if path.exists():
        return wheel

    dist_info = f"{stem}.dist-info"
    meta_lines = [f"Version: {version}" if line.startswith("Version:") else line
                  for line in metadata.splitlines()]
    contents += [
        (f"{dist_info}/METADATA", ("\n".join(meta_lines) + "\n").encode()),
        (f"{dist_info}/entry_points.txt", entry_points.encode()),
        (f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: skyplane-provider\n"
                               b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    record = [_record_line(name, data) for name, data in contents] + [f"{dist_info}/RECORD,,"]
    contents.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in contents:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return wheel
