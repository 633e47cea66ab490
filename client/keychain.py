"""The operating system's keychain (macOS Keychain, Windows Credential Manager, the Secret Service on
Linux), through the ``keyring`` library: where a login's token or API key is kept, so that
``credentials.json`` holds nothing an attacker who reads it could use.

``keyring`` is imported here only, and only when a secret is stored, read or deleted: finding the
platform's backend costs tens of milliseconds that ``pdcat --help`` and ``pdcat ls`` with a token in
the environment never pay. A stored secret records the backend class that holds it, so reading it back
loads that one class instead of probing every backend the platform might have.

Any failure of a keychain (none on this machine, locked, refusing, dropping what it was given) is an
:class:`Unusable` with a short reason: the caller falls back to the file or says to log in again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

__all__ = ["Place", "Unusable", "backend_label", "delete", "enabled", "read", "store"]


class Unusable(Exception):
    """The keychain cannot do what was asked; ``reason`` says why in a few words, never a secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Place:
    """Where one secret is kept: which backend class holds it, under which service and account."""

    backend: str  # e.g. "keyring.backends.macOS.Keyring"
    service: str
    account: str


def enabled() -> bool:
    """``PDCAT_KEYRING=0`` (or false, no, off) keeps secrets in the file: for machines whose keychain
    prompts or hangs, and for throwaway setups whose secrets should not outlive their folder."""
    return os.environ.get("PDCAT_KEYRING", "").strip().lower() not in ("0", "false", "no", "off")


def backend_label(backend: str) -> str:
    """A short name for a backend class path, shown to users: ``keyring.backends.macOS.Keyring`` -> macOS."""
    module = backend.rpartition(".")[0]
    return module.rpartition(".")[2] or backend


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Every failure of a keychain as :class:`Unusable`. Backends raise keyring's errors, but also their
    own platform's (D-Bus, Security framework, Win32), which keyring does not wrap: all of them mean the
    same thing to pdcat, so any ``Exception`` is caught here, at the one boundary, and named by type."""
    try:
        yield
    except Unusable:
        raise
    except Exception as exc:
        from keyring.errors import InitError, KeyringLocked, NoKeyringError

        if isinstance(exc, NoKeyringError):
            reason = "no keychain on this machine"
        elif isinstance(exc, KeyringLocked):
            reason = "the keychain is locked"
        elif isinstance(exc, InitError):
            reason = "the keychain could not be opened"
        elif isinstance(exc, ImportError):
            reason = "its keychain backend cannot be loaded"
        else:
            reason = f"the keychain failed to {action} ({type(exc).__name__})"
        raise Unusable(reason) from exc


def store(service: str, account: str, secret: str) -> Place:
    """Put ``secret`` in this machine's keychain (the backend keyring picks: ``PYTHON_KEYRING_BACKEND``,
    its config file, else the best the platform has) and read it back: a backend that drops secrets
    (keyring's null backend) is as unusable as none."""
    with _translated("store the secret"):
        import keyring.core

        keyring.core.init_backend()  # chosen afresh: the environment may name another backend than last time
        chosen = keyring.core.get_keyring()
        backend = f"{type(chosen).__module__}.{type(chosen).__qualname__}"
        chosen.set_password(service, account, secret)
        place = Place(backend, service, account)
        try:
            if chosen.get_password(service, account) != secret:
                raise Unusable(f"the keychain ({backend_label(backend)}) did not keep the secret")
        except BaseException:  # a secret that cannot be read back is not left behind
            with suppress(Exception):
                chosen.delete_password(service, account)
            raise
    return place


def read(place: Place) -> str | None:
    """The secret kept at ``place``, or None when it is no longer there."""
    with _translated("read the secret"):
        import keyring.core

        return keyring.core.load_keyring(place.backend).get_password(place.service, place.account)


def delete(place: Place) -> None:
    """Remove the secret kept at ``place``; one already gone is not an error."""
    with _translated("delete the secret"):
        import keyring.core
        from keyring.errors import PasswordDeleteError

        chosen = keyring.core.load_keyring(place.backend)
        try:
            chosen.delete_password(place.service, place.account)
        except PasswordDeleteError:  # what backends raise for a missing secret, and for a refusal
            if chosen.get_password(place.service, place.account) is not None:
                raise
