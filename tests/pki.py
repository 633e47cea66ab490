"""Certificates made in a test: a CA of the test's own (trustme) and a server certificate it signed,
written as the PEM files ``pdcat serve --tls-cert/--tls-key`` and ``pdcat login --cacert`` take."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["Pki", "write_pki"]


@dataclass(frozen=True)
class Pki:
    ca: Path  # what clients trust
    cert: Path  # the server's certificate, then its chain
    key: Path  # its private key, 0600


def write_pki(folder: Path, *names: str, key_type: trustme.KeyType = trustme.KeyType.ECDSA) -> Pki:
    """A new CA and a certificate for ``names`` (host names, IP addresses) that it signed, in ``folder``."""
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert(*names, key_type=key_type)
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    ca.cert_pem.write_to_path(str(pki.ca))
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(pki.cert), append=i > 0)
    leaf.private_key_pem.write_to_path(str(pki.key))
    os.chmod(pki.key, 0o600)
    return pki
