"""One checked SSH connection to a gateway host, and local port forwards through it.

Host keys are verified against the user's known_hosts: an unknown key is refused unless the user
opted in, a changed key is always refused. Every TCP connection the provisioners open goes through
:func:`open_socket`, which refuses any address outside an allow-list when one is set (the AWS
provisioner sets it in address-map mode, so that fake instance addresses are never contacted).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from planner.errors import BadOptionError, ProvisionError
from skyplane_provider.redaction import redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SSHHost:
    """A host to run gateways on.

    ``host``/``port``: where sshd listens (as the orchestrator reaches it). ``data_host``: the host's
    address gateways bind their data port to, ``advertise_host``: the address peers use for it
    (default ``data_host``, which defaults to ``host``). ``python``: an interpreter on the host that
    provides skyplane-provider's dependencies (see docs/provisioners.md). ``remote_dir``: where the
    venv and job files go on this host (default: the provisioner's ``remote_dir``).
    """

    host: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    data_host: str | None = None
    advertise_host: str | None = None
    python: str = "python3"
    remote_dir: str | None = None

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def bind_address(self) -> str:
        return self.data_host or self.host

    @property
    def peer_address(self) -> str:
        return self.advertise_host or self.bind_address

    @classmethod
    def from_setting(cls, value: "SSHHost | dict | str", defaults: dict | None = None) -> "SSHHost":
        """Accept an ``SSHHost``, a dict of its fields, or ``"user@host:port"``; ``defaults`` fill
        the fields a dict or string leaves out."""
        if isinstance(value, SSHHost):
            return value
        if not isinstance(value, dict):
            user, _, rest = str(value).rpartition("@")
            if ":" in user:  # user:password@host; never echo it back
                raise BadOptionError("an ssh host setting carries a password (user:password@host)",
                                     hint="the ssh provisioner logs in with keys only: give key_file")
            host, _, port = rest.partition(":")
            value = {"host": host, "port": port or 22, **({"user": user} if user else {})}
        value = {**(defaults or {}), **value}
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown or not value.get("host"):
            raise BadOptionError(f"bad ssh host setting {redact(value)!r}",
                                 hint=f"use the keys {sorted(cls.__dataclass_fields__)}; 'host' is required")
        if value.get("key_file"):
            value["key_file"] = str(Path(value["key_file"]).expanduser())
        return cls(**{**value, "port": int(value.get("port", 22))})


@dataclass(frozen=True)
class ConnectPolicy:
    """How to reach hosts: host-key checking, timeouts, and an optional allow-list of (host, port).

    ``retry_seconds``: keep retrying a refused or timed-out TCP connect this long (fresh VMs take a
    while to start sshd); host-key and login failures are never retried.
    """

    known_hosts: str | None = None
    accept_unknown_host_keys: bool = False
    timeout: float = 10.0
    retry_seconds: float = 0.0
    allowed: frozenset[tuple[str, int]] | None = None


def open_socket(host: str, port: int, *, timeout: float, allowed: frozenset[tuple[str, int]] | None,
                retry_seconds: float = 0.0) -> socket.socket:
    """The only way provisioners open TCP connections: refuses anything outside ``allowed``."""
    if allowed is not None and (host, port) not in allowed:
        raise ProvisionError(f"refusing to connect to {host}:{port}: it is not in the address allow-list",
                             hint="add the host to address_map")
    deadline = time.monotonic() + retry_seconds
    while True:
        try:
            return socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            if time.monotonic() + 2 > deadline:
                raise ProvisionError(f"cannot reach ssh host {host}:{port}: {exc}",
                                     hint="check the address and port, and that sshd runs there") from exc
            time.sleep(2)


def fingerprint(key: paramiko.PKey) -> str:
    """``ssh-ed25519 SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


class _UnknownHostKey(Exception):
    pass


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        raise _UnknownHostKey(f"{hostname} {fingerprint(key)}")


class _AcceptUnknown(paramiko.MissingHostKeyPolicy):
    """Trust on first use for this connection only: the user's known_hosts is never modified."""

    def missing_host_key(self, client, hostname, key):
        log.warning("accepting unknown host key %s for %s", fingerprint(key), hostname)
        client.get_host_keys().add(hostname, key.get_name(), key)


class SSHSession:
    """An authenticated connection to one host: run commands, write files, forward ports."""

    def __init__(self, host: SSHHost, policy: ConnectPolicy) -> None:
        self.host = host
        self.policy = policy
        self._client = paramiko.SSHClient()
        self._forwards: list[LocalForward] = []
        if policy.known_hosts:
            if not Path(policy.known_hosts).exists():
                raise ProvisionError(f"known_hosts file {policy.known_hosts} does not exist",
                                     hint="create it with ssh-keyscan, or pass accept_unknown_host_keys=True")
            self._client.load_host_keys(policy.known_hosts)
        self._client.set_missing_host_key_policy(
            _AcceptUnknown() if policy.accept_unknown_host_keys else _RejectUnknown())
        sock = open_socket(host.host, host.port, timeout=policy.timeout, allowed=policy.allowed,
                           retry_seconds=policy.retry_seconds)
        try:
            self._client.connect(
                host.host, port=host.port, username=host.user, key_filename=host.key_file, sock=sock,
                look_for_keys=False, allow_agent=False, timeout=policy.timeout,
                banner_timeout=policy.timeout, auth_timeout=policy.timeout)
        except paramiko.BadHostKeyException as exc:
            sock.close()
            raise ProvisionError(
                f"host key of {host.label} does NOT match the one in {policy.known_hosts} "
                f"(got {fingerprint(exc.key)}); refusing to connect",
                hint="if the host was re-installed, remove its old line (ssh-keygen -R) and add the new key; "
                     "otherwise someone may be intercepting the connection") from None
        except _UnknownHostKey as exc:
            sock.close()
            raise ProvisionError(f"host key of {host.label} is not in known_hosts ({exc})",
                                 hint="add it to the known_hosts file you pass (ssh-keyscan), or set "
                                      "accept_unknown_host_keys=True to trust it for this job") from None
        except paramiko.AuthenticationException as exc:
            sock.close()
            raise ProvisionError(f"ssh login to {host.label} with key {host.key_file} was refused: {exc}",
                                 hint="check the user and that the key's public half is in authorized_keys") from None
        except (paramiko.SSHException, OSError) as exc:
            sock.close()
            raise ProvisionError(f"ssh connection to {host.label} failed: {exc}",
                                 hint="check that an SSH server listens there") from None
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
        return self._sftp

    def home(self) -> str:
        """The login user's home directory on the host."""
        return self.sftp.normalize(".")

    def run(self, command: str, *, timeout: float = 60.0, check: bool = True) -> tuple[int, str, str]:
        """Run ``command`` with ``sh -c``; returns (exit code, stdout, stderr)."""
        try:
            _, out, err = self._client.exec_command(f"sh -c {shlex.quote(command)}", timeout=timeout)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            rc = out.channel.recv_exit_status()
        except (paramiko.SSHException, OSError) as exc:
            raise ProvisionError(f"command on {self.host.label} failed: {exc}") from exc
        if check and rc != 0:
            raise ProvisionError(f"command on {self.host.label} exited with {rc}: {stderr.strip()[-2000:]}")
        return rc, stdout, stderr

    def put_bytes(self, data: bytes, path: str, mode: int = 0o600) -> None:
        """Write ``data`` to ``path``; the mode is set before any byte is written."""
        with self.sftp.open(path, "wb") as f:
            f.chmod(mode)
            f.write(data)

    def put_file(self, local: Path, path: str) -> None:
        """Copy ``local`` to ``path`` through a temporary name, so that another job on the host never
        sees a half-written file there."""
        part = f"{path}.{os.getpid()}-{threading.get_ident()}.part"
        self.sftp.put(str(local), part)
        self.sftp.posix_rename(part, path)

    def read_bytes(self, path: str) -> bytes:
        with self.sftp.open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
        except OSError:
            return False
        return True

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        """``mkdir -p`` over SFTP; directories it creates get ``mode``."""
        parts = path.rstrip("/").split("/")
        for i in range(2, len(parts) + 1):
            sub = "/".join(parts[:i])
            if not self.exists(sub):
                try:
                    self.sftp.mkdir(sub, mode)
                except OSError:
                    if not self.exists(sub):  # else another job on this host made it meanwhile
                        raise

    def forward(self, remote_host: str, remote_port: int) -> "LocalForward":
        """A loopback port on this machine that reaches ``remote_host:remote_port`` as seen from the host."""
        fwd = LocalForward(self._client.get_transport(), remote_host, remote_port, self.host.label)
        self._forwards.append(fwd)
        return fwd

    @property
    def active(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def close(self) -> None:
        for fwd in self._forwards:
            fwd.close()
        self._forwards.clear()
        if self._sftp is not None:
            self._sftp.close()
        self._client.close()


class LocalForward:
    """Listens on 127.0.0.1:<port> and carries each connection over a direct-tcpip channel."""

    def __init__(self, transport: paramiko.Transport, remote_host: str, remote_port: int, label: str) -> None:
        self._transport = transport
        self._target = (remote_host, remote_port)
        self._label = label
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(32)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, name=f"fwd-{self.port}", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._server], [], [], 0.2)
            if not ready or self._stop.is_set():
                continue
            try:
                conn, peer = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(conn, peer), daemon=True).start()

    def _pump(self, conn: socket.socket, peer: tuple) -> None:
        try:
            chan = self._transport.open_channel("direct-tcpip", self._target, peer, timeout=10)
        except (paramiko.SSHException, OSError) as exc:
            log.warning("tunnel to %s:%s via %s failed: %s", *self._target, self._label, exc)
            conn.close()
            return
        with self._lock:
            self._conns.add(conn)
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn, chan], [], [], 0.5)
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        break
                    chan.sendall(data)
                if chan in ready:
                    data = chan.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            chan.close()
            conn.close()
            with self._lock:
                self._conns.discard(conn)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
