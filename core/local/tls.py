"""The embedded server's TLS certificate: one the operator gives, or a self-signed one made on request.

Everything here runs before the port is bound, so a mistake (a key that is not the certificate's, an
unreadable or encrypted file) stops ``pdcat serve`` with a sentence saying what to do, never later
in the middle of a client's handshake. The context is checked by a handshake with itself, in memory:
OpenSSL accepts an RSA certificate with an EC key (a context may hold one pair of each type) and
only a handshake shows that no pair is complete.

A self-signed certificate lives in ``<data>/tls/`` (key 0600) and is reused while it names every host
it must and has 30 days left; otherwise a new one is made and the server says so, because every
client that trusted the old one must trust the new one. It is not a CA (``cA:FALSE``, no
``keyCertSign``): a client that trusts it trusts this server and nothing it could sign. It is written
by a child process (``python -m core.local.tls``): the ``cryptography`` bindings that make it are
~20 MiB resident that the server otherwise never maps (``core/local/lean.py``), while reading a
certificate (its names, expiry and fingerprint) needs only the standard library.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidInput

__all__ = [
    "MIN_VERSION",
    "SELF_SIGNED_DAYS",
    "ServerCertificate",
    "fingerprint",
    "given_certificate",
    "self_signed_certificate",
    "server_context",
]

MIN_VERSION = ssl.TLSVersion.TLSv1_2
SELF_SIGNED_DAYS = 825
"""The longest validity Apple's platforms accept for any TLS server certificate."""
RENEW_DAYS = 30
"""A self-signed certificate with less left than this is replaced at the next start."""
_CERT, _KEY = "cert.pem", "key.pem"


@dataclass(frozen=True)
class ServerCertificate:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the DER certificate, colon-separated hex (as ``openssl x509 -fingerprint``)
    self_signed: bool = False
    made: str = ""  # self-signed: "reused", "made" (the first one) or "replaced" (clients must trust it anew)


def _encrypted_key(*_: object) -> bytes:
    raise InvalidInput("the TLS key is encrypted: give pdcat serve an unencrypted one (openssl pkey -in KEY -out NEW)")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server's context: TLS 1.2 at least, HTTP/1.1 by ALPN, no renegotiation."""
    if b"-----BEGIN CERTIFICATE-----" not in _read(cert, "certificate"):
        raise InvalidInput(f"the TLS certificate {cert} is not a PEM certificate (-----BEGIN CERTIFICATE-----)")
    if b"PRIVATE KEY-----" not in _read(key, "key"):
        raise InvalidInput(f"the TLS key {key} is not a PEM private key (-----BEGIN ... PRIVATE KEY-----)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key, password=_encrypted_key)
    except ssl.SSLError as exc:
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise InvalidInput(f"the TLS key {key} is not the private key of the certificate {cert}") from None
        raise InvalidInput(f"the TLS certificate {cert} and key {key} cannot be used together ({exc})") from None
    if _presented(context) is None:
        raise InvalidInput(f"the TLS key {key} is not the private key of the certificate {cert}")
    return context


def _presented(server: ssl.SSLContext, trusted: Path | None = None) -> dict[str, Any] | None:
    """What a client sees of ``server``'s certificate in a handshake (in memory, no socket); None if no
    handshake completes. The certificate's fields (names, expiry) only for a client that trusts it
    (``trusted``: its own file, for a self-signed one); the standard library decodes nothing else."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    if trusted is None:
        client.verify_mode = ssl.CERT_NONE
    else:
        client.load_verify_locations(cafile=str(trusted))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    ends = [client.wrap_bio(c_in, c_out), server.wrap_bio(s_in, s_out, server_side=True)]
    done = [False, False]
    for _ in range(10):
        for i, end in enumerate(ends):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except ssl.SSLError:
                    return None
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done):
            return ends[0].getpeercert() or {}
    return None


def fingerprint(cert: Path) -> str:
    """SHA-256 of the (first) certificate in a PEM file, as teammates compare it."""
    pem = cert.read_text("ascii", errors="replace")
    start = pem.find("-----BEGIN CERTIFICATE-----")
    end = pem.find("-----END CERTIFICATE-----", start)
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem[start : end + len("-----END CERTIFICATE-----")]))
    return ":".join(f"{b:02X}" for b in digest.digest())


def given_certificate(cert: Path, key: Path) -> tuple[ServerCertificate, ssl.SSLContext]:
    cert, key = cert.expanduser().absolute(), key.expanduser().absolute()
    context = server_context(cert, key)
    return ServerCertificate(cert, key, fingerprint(cert)), context


# ---- self-signed --------------------------------------------------------------------------------
def _normalised(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name.strip().strip("[]")))
    except ValueError:
        return name.strip().lower().rstrip(".")


def _usable(names: Iterable[str]) -> list[str]:
    """Host names and addresses a certificate can carry (ASCII names; no wildcard bind address)."""
    kept: dict[str, None] = {}
    for name in names:
        value = _normalised(name)
        if value and value not in ("0.0.0.0", "::") and value.isascii() and " " not in value:
            kept[value] = None
    return list(kept)


def _covers(info: dict[str, Any], names: list[str]) -> bool:
    """Whether a certificate (as a client saw it) names every one of ``names`` and has RENEW_DAYS left."""
    not_after = info.get("notAfter")
    if not isinstance(not_after, str) or ssl.cert_time_to_seconds(not_after) < time.time() + RENEW_DAYS * 86400:
        return False
    alt = info.get("subjectAltName", ())
    present = {_normalised(str(value)) for _, value in alt} if isinstance(alt, tuple) else set()
    return set(names) <= present


def self_signed_certificate(folder: Path, names: Iterable[str]) -> tuple[ServerCertificate, ssl.SSLContext]:
    """The self-signed certificate of ``folder`` (``<data>/tls``) for ``names``: reused, or made now."""
    wanted = _usable(names)
    cert, key = folder / _CERT, folder / _KEY
    if key.exists() and cert.exists():
        os.chmod(key, 0o600)
        try:
            context = server_context(cert, key)
            seen = _presented(context, trusted=cert)
        except (InvalidInput, ssl.SSLError):
            seen = None  # a pair left half-replaced: make a new one
        if seen is not None and _covers(seen, wanted):
            return ServerCertificate(cert, key, fingerprint(cert), True, "reused"), context
    made = "replaced" if cert.exists() else "made"
    done = subprocess.run(
        [sys.executable, "-m", "core.local.tls", str(folder), *wanted], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise InvalidInput(f"could not make a self-signed certificate in {folder}: {done.stderr.strip()[-300:]}")
    context = server_context(cert, key)
    return ServerCertificate(cert, key, fingerprint(cert), True, made), context


def _make(folder: Path, names: list[str]) -> None:
    """Write a new key and self-signed certificate for ``names`` (the child process's work)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pdcat serve on {names[0]}"[:64])])
    now = datetime.datetime.now(datetime.UTC)
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign"),
        False,
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, encipher_only=False, decipher_only=False, **usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    pkcs8 = serialization.PrivateFormat.PKCS8
    key_pem = key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    _replace(folder / _KEY, key_pem, 0o600)
    _replace(folder / _CERT, certificate.public_bytes(serialization.Encoding.PEM), 0o600)  # as all in <data>


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole, with ``mode`` from its first byte, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


if __name__ == "__main__":  # python -m core.local.tls FOLDER NAME...
    _make(Path(sys.argv[1]), sys.argv[2:])
