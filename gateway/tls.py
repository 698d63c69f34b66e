"""A server's own TLS identity: a fresh self-signed certificate per job and server.

Used by a job's coordinator and, when it runs on another host than the client, by the gateways'
control APIs (config ``control_tls``). Clients pin exactly this certificate (it travels in the job's
handle or the gateway's handle), so no CA is involved and a stolen handle of one job is worth nothing
for another. The private key exists only in the server's memory and, for the instant the ``ssl``
module needs to load it, in a 0600 file.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path


#: A job's certificate outlives any job's result linger.
VALID_DAYS = 30


def self_signed(host: str) -> tuple[str, str]:
    """``(certificate PEM, private key PEM)`` for ``host`` (an IP address or a DNS name)."""
    # Here, not at the top: only a server that serves TLS makes one, and cryptography.x509 was about a
    # tenth of a second of every gateway's and client's start-up (they import this module for pinned_context).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"skyplane {host}")])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def server_context(cert: str, key: str, scratch: str | Path) -> ssl.SSLContext:
    """A server context for ``cert``/``key`` (PEM). ``ssl`` loads a key only from a file: it lives
    in ``scratch`` (a 0700 directory of the job's) as a 0600 file for the instant of loading."""
    paths = Path(scratch) / f".tls-cert-{os.getpid()}.pem", Path(scratch) / f".tls-key-{os.getpid()}.pem"
    try:
        for path, pem in zip(paths, (cert, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(paths[0]), str(paths[1]))
        return ctx
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def pinned_context(cert: str) -> ssl.SSLContext:
    """A client context that trusts exactly ``cert`` (self-signed by the server), whatever the host name."""
    ctx = ssl.create_default_context(cadata=cert)
    ctx.check_hostname = False
    return ctx
