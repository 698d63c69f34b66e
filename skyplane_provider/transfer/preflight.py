"""Pre-flight: can the gateways use every store of the transfer with the credentials they will get?

Run by ``Transfer.prepare()`` before any gateway or VM starts: the source must answer and list, every
destination must answer and take a write. What "the credentials they will get" means depends on where
the gateways run (:attr:`Provisioner.shares_environment`):

- gateways that are this process's children (``local``) get the credentials document *and* this
  process's environment (``AWS_*``, ``~/.aws``, ``STORAGE_EMULATOR_HOST``...), so the stores are
  checked here, as they are;
- gateways on other hosts (``ssh``, ``aws``) get the document alone. The check then runs in a child
  process whose environment holds no SDK variable and whose home directory is empty: all such a gateway
  ever sees of this machine. A file named by the document (``service_account_file``) is read here
  and its content shipped instead, since the hosts do not have it.

The write probe leaves nothing behind: a multipart upload of a probe key under the destination
prefix is begun, takes a one-byte part and is aborted (S3: an upload never completed; GCS: a part
object deleted again; Azure: a staged block, deleted with the key's blob of staged blocks).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import planner.errors as errors
from gateway.retry import with_retries
from gateway.stores import open_store
from gateway.stores.uri import StoreURI
from planner.errors import CredentialsError, NotFoundError, SkyplaneError
from skyplane_provider.provisioners.base import Provisioner

from .endpoints import Opener

log = logging.getLogger(__name__)

#: Seconds the remote-credentials check may take (three SDK clients and a few requests per store).
CHILD_TIMEOUT = 120.0
PROBE_NAME = ".skyplane-preflight-"
DOCS = 'docs/provisioners.md, "Store credentials"'


def preflight(credentials: dict, provisioner: Provisioner, src: StoreURI, dsts: list[StoreURI], *,
              opener: Opener = open_store) -> dict:
    """Check the source (list) and every destination (write) with the credentials the provisioner's
    gateways will get, and return the credentials document to give them. Raises the store's
    ``SkyplaneError`` (``CredentialsError``, ``AccessDeniedError``, ``NotFoundError``...) naming it.
    ``opener``: how a store is opened where the gateways share this process's environment (through
    the job's first gateway: transfer/channel_stores.py)."""
    checks = [{"uri": src.root_uri, "prefix": src.path, "write": False}]
    checks += [{"uri": d.root_uri, "prefix": d.path, "write": True} for d in dsts]
    checks = [c for c in checks if not c["uri"].startswith("file:")]  # paths are checked where they are opened
    if provisioner.shares_environment:
        for check in checks:
            check_store(check, credentials, opener)
        return credentials
    document = portable(credentials)
    if checks:
        failures = _in_bare_environment(checks, document)
        if failures:
            raise _remote_error(failures[0], provisioner.name)
    return document


def check_store(check: dict[str, Any], credentials: dict,
                opener: Opener = open_store) -> None:
    """One store, opened by ``opener``: it answers, and its prefix lists (``write`` false) or a probe write works."""
    store = opener(check["uri"], credentials)
    what = check["uri"]
    try:
        with_retries(store.check, what=f"pre-flight check of {what}")
    except NotFoundError as exc:  # transfers never create buckets; say how to
        raise NotFoundError(f"{what} does not exist", hint=f"make it with `skyplane-provider mb {what}`, or check "
                            "the name and the account") from exc
    if not check["write"]:
        # One key is enough to learn that listing is allowed: a full page is up to five requests (S3's
        # 1,000 keys each), and on moto each of them sorts the whole bucket (~5 s at 100,000 keys).
        with_retries(lambda: store.list_page(check["prefix"], None, 1), what=f"pre-flight listing of {what}")
        return
    prefix = check["prefix"]
    key = (prefix if prefix.endswith("/") or not prefix else prefix.rpartition("/")[0] + "/").lstrip("/")
    key += PROBE_NAME + uuid.uuid4().hex
    try:
        upload_id = with_retries(lambda: store.begin_multipart(key), what=f"pre-flight write to {what}")
        try:
            with_retries(lambda: store.upload_part(key, upload_id, 1, b"\0"), what=f"pre-flight write to {what}")
        finally:
            with_retries(lambda: store.abort_multipart(key, upload_id), what=f"pre-flight clean-up in {what}")
    except SkyplaneError as exc:
        raise type(exc)(f"a test write to {what} failed, so the gateways could not write there either: "
                        f"{_message(exc)}", hint=exc.hint) from exc


def _message(exc: Exception) -> str:
    """The error's text without its hint (callers add a hint of their own)."""
    return exc.message if isinstance(exc, SkyplaneError) else str(exc)


def portable(credentials: dict) -> dict:
    """The document with every ``service_account_file`` read into ``service_account_info``: gateways
    on other hosts cannot open this host's files."""
    out = {}
    for name, entry in credentials.items():
        path = entry.get("service_account_file") if isinstance(entry, dict) else None
        if path:
            try:
                info = json.loads(Path(path).expanduser().read_text())
            except (OSError, ValueError) as exc:
                raise CredentialsError(f"cannot read the service account file {path} of credentials entry {name!r} "
                                       f"here: {exc}", hint="gateways on other hosts get the key's content, read "
                                       "on this host: put the file here, or give service_account_info") from exc
            entry = {k: v for k, v in entry.items() if k != "service_account_file"} | {"service_account_info": info}
        out[name] = entry
    return out


def _in_bare_environment(checks: list[dict], document: dict) -> list[dict]:
    """Run the checks in a child that sees nothing of this machine's credentials; its failures."""
    with tempfile.TemporaryDirectory(prefix="skyplane-preflight-") as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8",
               # no metadata servers (they are off this host) and no shared config files
               "AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "true", "AWS_CONFIG_FILE": os.devnull,
               "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "CLOUDSDK_CONFIG": home, "SKYPLANE_DIGEST_CACHE": "off"}
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        try:
            out = subprocess.run([sys.executable, "-m", __name__], input=json.dumps(
                {"checks": checks, "credentials": document}), env=env, capture_output=True, text=True,
                timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise errors.StoreUnavailableError(f"the pre-flight check of the stores took more than {CHILD_TIMEOUT:.0f} s",
                                               hint="check that the stores are reachable") from exc
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["failures"]
    except (IndexError, ValueError, KeyError):
        raise SkyplaneError(f"the pre-flight check of the stores failed: {out.stderr.strip()[-2000:]}") from None


def _remote_error(failure: dict, provisioner: str) -> SkyplaneError:
    cls = getattr(errors, failure["error_type"], SkyplaneError)
    if not (isinstance(cls, type) and issubclass(cls, SkyplaneError)):
        cls = SkyplaneError
    verb = "write to" if failure["write"] else "list"
    return cls(f"the {provisioner} gateways could not {verb} {failure['uri']} with the credentials they get "
               f"(the credentials document only, never this machine's environment): {failure['message']}",
               hint=f"give {failure['uri']} (or its scheme) a complete entry in the credentials document: "
                    f"--credentials FILE, an Airflow connection or a Prefect credentials block; see {DOCS}")


def main() -> int:
    """The child's side: read checks and a document on stdin, print the failures as one JSON line."""
    request = json.loads(sys.stdin.read())
    failures = []
    for check in request["checks"]:
        try:
            check_store(check, request["credentials"])
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it as ours
            failures.append({**check, "error_type": type(exc).__name__ if isinstance(exc, SkyplaneError)
                             else "SkyplaneError", "message": _message(exc)})
    print(json.dumps({"failures": failures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
