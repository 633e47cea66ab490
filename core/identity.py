"""Identity of a manifest: ``(catalog_id, version, architecture)``, normalised and validated.

These rules are the first line of defence against path traversal: every storage key is built from
values that passed through here, and none of them can contain ``/`` or start with ``.``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidInput

__all__ = [
    "ARCHITECTURES",
    "LATEST",
    "RESERVED_CATALOG_IDS",
    "ManifestKey",
    "normalize_architecture",
    "normalize_catalog_id",
    "normalize_claim",
    "normalize_role",
    "normalize_tag",
    "normalize_version",
    "parse_reference",
]

LATEST = "latest"
ARCHITECTURES = ("x86_64", "arm64")
_ARCH_ALIASES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "x64": "x86_64",
    "arm64": "arm64",
    "aarch64": "arm64",
    "arm": "arm64",
}
_CATALOG_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_TAG = re.compile(r"[a-z0-9][a-z0-9._:+-]{0,63}")
_ROLE = re.compile(r"[A-Z0-9][A-Z0-9_.:-]{0,127}")


def _text(value: object, what: str) -> str:
    """The raw text of an identity part, refused unless it is ASCII.

    The check comes before any ``strip``/``lower``/``upper``: Unicode case mapping folds some
    non-ASCII letters into ASCII ones (the Kelvin sign U+212A lower-cases to ``k``, the dotless i
    U+0131 and the long s U+017F upper-case to ``I`` and ``S``), so a folded id, tag or role could name
    another one while looking different. Every backend refuses such a value alike, with a 400.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    if not value.isascii():
        raise InvalidInput(f"invalid {what} {value[:64]!r}: only ASCII letters, digits and punctuation are allowed")
    return value.strip()


RESERVED_CATALOG_IDS = frozenset({"import"})


def normalize_catalog_id(value: object) -> str:
    """Catalog ids are case-insensitive: stored lower-case."""
    text = _text(value, "catalog id").lower()
    if not _CATALOG_ID.fullmatch(text):
        raise InvalidInput(
            f"invalid catalog id {text[:64]!r}: use 1-128 of a-z 0-9 . _ -, starting with a letter or digit"
        )
    if text in RESERVED_CATALOG_IDS:
        raise InvalidInput(f"{text!r} is reserved (POST /catalog/{text} is a route of its own): pick another id")
    return text


def normalize_version(value: object, *, allow_latest: bool = False) -> str:
    text = _text(value, "version")
    if not _VERSION.fullmatch(text):
        raise InvalidInput(
            f"invalid version {text[:64]!r}: use 1-128 of A-Z a-z 0-9 . _ + -, starting with a letter or digit"
        )
    if text.lower() == LATEST:
        if not allow_latest:
            raise InvalidInput("'latest' is an alias for the newest version and cannot be pushed")
        return LATEST
    return text


def normalize_architecture(value: object) -> str:
    text = _text(value, "architecture").lower()
    try:
        return _ARCH_ALIASES[text]
    except KeyError:
        raise InvalidInput(
            f"invalid architecture {text[:32]!r}: expected x86_64 (amd64) or arm64 (aarch64, arm)"
        ) from None


def normalize_tag(value: object) -> str:
    text = _text(value, "tag").lower()
    if not _TAG.fullmatch(text):
        raise InvalidInput(f"invalid tag {text[:64]!r}: use 1-64 of a-z 0-9 . _ : + -")
    return text


def normalize_role(value: object) -> str:
    """Roles and claims are upper-case words, compared case-insensitively."""
    text = _text(value, "role").upper()
    if not _ROLE.fullmatch(text):
        raise InvalidInput(f"invalid role or claim {text[:64]!r}: use 1-128 of A-Z 0-9 _ . : -")
    return text


normalize_claim = normalize_role


@dataclass(frozen=True, order=True)
class ManifestKey:
    """The identity of one manifest. Always built from normalised parts."""

    catalog_id: str
    version: str
    architecture: str

    @classmethod
    def parse(cls, catalog_id: object, version: object, architecture: object) -> ManifestKey:
        return cls(
            normalize_catalog_id(catalog_id),
            normalize_version(version),
            normalize_architecture(architecture),
        )

    @property
    def prefix(self) -> str:
        """Storage prefix of this version's pack (index and pending uploads live below it)."""
        return f"catalogs/{self.catalog_id}/{self.version}/{self.architecture}"

    def __str__(self) -> str:
        return f"{self.catalog_id}:{self.version} ({self.architecture})"


def parse_reference(ref: str) -> tuple[str, str]:
    """Split ``ID[:VERSION]`` as typed on the command line; the version defaults to ``latest``."""
    catalog_id, _, version = ref.partition(":")
    return normalize_catalog_id(catalog_id), normalize_version(version or LATEST, allow_latest=True)
