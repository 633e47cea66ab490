"""The manifest aggregate: everything the catalog knows about one pushed VM version.

A manifest is plain data plus the state rules (taint, untaint, revoke, upload sessions). It carries
no storage credential, ever: only the storage *name* and the key prefix of its pack.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from core.errors import Conflict, Gone, InvalidInput, Tainted
from core.identity import (
    ManifestKey,
    normalize_architecture,
    normalize_catalog_id,
    normalize_role,
    normalize_tag,
    normalize_version,
)

__all__ = [
    "MAX_DESCRIPTION",
    "MAX_LIST_FIELD",
    "PACK_FORMAT_PDPACK",
    "STATUS_DELETED",
    "STATUS_READY",
    "STATUS_UPLOADING",
    "Manifest",
    "MinimumRequirements",
    "PackSummary",
    "UploadSession",
    "normalize_list",
    "now_iso",
    "parse_description",
    "parse_identity",
    "parse_roles",
    "parse_tags",
    "parse_vm_type",
    "whole_number",
]

MAX_DESCRIPTION = 4096
MAX_LIST_FIELD = 64
VM_TYPES = ("pvm", "macvm")
STATUS_UPLOADING = "uploading"
STATUS_READY = "ready"
# A deleted version: kept as a tombstone with its roles, claims and revoked state, invisible to every
# read, so a hidden identity cannot be re-pushed by someone who could not see it and a revoked one
# stays burned (docs/adr-002-storage-protocol-v2.md). It references no data: gc reclaims its chunks.
STATUS_DELETED = "deleted"
PACK_FORMAT_PDPACK = "pdpack"


def now_iso() -> str:
    """UTC timestamps as fixed-width ISO-8601 strings, so they also sort as text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalize_list(values: object, normalize: Any, what: str) -> list[str]:
    """Validate a list of tags/roles/claims: de-duplicated, sorted, bounded."""
    if not isinstance(values, list):
        raise InvalidInput(f"{what} must be a list of strings")
    if len(values) > MAX_LIST_FIELD:
        raise InvalidInput(f"at most {MAX_LIST_FIELD} {what} are allowed")
    return sorted({normalize(v) for v in values})


def whole_number(value: object) -> int | None:
    """``value`` as an int if JSON gave a whole number (``3`` or ``3.0``: JSON Schema's integer); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _int(value: object, what: str, *, minimum: int = 0, maximum: int = 2**62) -> int:
    number = whole_number(value)
    if number is None:
        raise InvalidInput(f"{what} must be an integer")
    value = number
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{what} must be between {minimum} and {maximum}")
    return value


@dataclass(frozen=True)
class MinimumRequirements:
    cpu: int = 0
    memory_mb: int = 0
    disk_mb: int = 0

    @classmethod
    def parse(cls, data: object) -> MinimumRequirements:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidInput("minimum_requirements must be an object with cpu, memory_mb, disk_mb")
        unknown = set(data) - {"cpu", "memory_mb", "disk_mb"}
        if unknown:
            raise InvalidInput(f"unknown minimum_requirements field(s): {', '.join(sorted(unknown))}")
        return cls(
            cpu=_int(data.get("cpu", 0), "minimum_requirements.cpu", maximum=4096),
            memory_mb=_int(data.get("memory_mb", 0), "minimum_requirements.memory_mb", maximum=2**40),
            disk_mb=_int(data.get("disk_mb", 0), "minimum_requirements.disk_mb", maximum=2**40),
        )


@dataclass(frozen=True)
class PackSummary:
    """What the catalog records about a committed pack.

    Two kinds. pdcat's own chunked pack: ``format`` is its index format version (an int), the index
    sits in storage and ``digest`` is its sha256. A pack in the original product's format, registered
    by ``POST /catalog/import`` (``format`` is ``"pdpack"``): one tar/tar.gz object at ``key`` with its
    ``.meta`` at ``meta_key``, ``pack_size`` bytes, checked on pull against ``compressed_checksum``
    (hex MD5 in the original). Keys are object names in the catalog's own storage, never a URL.
    """

    digest: str = ""
    format: int | str = 1
    chunk_size: int = 0
    chunk_count: int = 0
    file_count: int = 0
    key: str = ""
    meta_key: str = ""
    pack_size: int = 0
    compressed_checksum: str = ""
    is_compressed: bool = False

    @property
    def is_pdpack(self) -> bool:
        return self.format == PACK_FORMAT_PDPACK

    def to_public(self) -> dict[str, Any]:
        """Only the fields that mean something for this kind of pack."""
        data = asdict(self)
        drop = _NATIVE_ONLY if self.is_pdpack else _PDPACK_ONLY
        return {k: v for k, v in data.items() if k not in drop}


_PDPACK_ONLY = frozenset({"key", "meta_key", "pack_size", "compressed_checksum", "is_compressed"})
_NATIVE_ONLY = frozenset({"digest", "chunk_size", "chunk_count"})


@dataclass(frozen=True)
class UploadSession:
    """A push in progress. Stored inside the manifest so that one conditional write decides races."""

    upload_id: str
    started_at: str
    started_by: str
    index_key: str
    size: int
    force: bool = False


@dataclass(frozen=True)
class Manifest:
    catalog_id: str
    version: str
    architecture: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    description: str = ""
    tags: list[str] = field(default_factory=list)
    vm_type: str = "pvm"
    size: int = 0
    stored_size: int = 0
    pack: PackSummary = field(default_factory=PackSummary)
    storage_name: str = ""
    storage_prefix: str = ""
    required_roles: list[str] = field(default_factory=list)
    required_claims: list[str] = field(default_factory=list)
    minimum_requirements: MinimumRequirements = field(default_factory=MinimumRequirements)
    tainted: bool = False
    tainted_by: str | None = None
    tainted_at: str | None = None
    untainted_by: str | None = None
    untainted_at: str | None = None
    revoked: bool = False
    revoked_by: str | None = None
    revoked_at: str | None = None
    created_at: str = field(default_factory=now_iso)
    created_by: str = ""
    updated_at: str = field(default_factory=now_iso)
    pushed_at: str | None = None
    download_count: int = 0
    last_downloaded_at: str | None = None
    last_downloaded_by: str | None = None
    status: str = STATUS_UPLOADING
    upload: UploadSession | None = None
    deleted_at: str | None = None
    deleted_by: str | None = None

    # ---- identity -------------------------------------------------------------------------
    @property
    def key(self) -> ManifestKey:
        return ManifestKey(self.catalog_id, self.version, self.architecture)

    @property
    def is_ready(self) -> bool:
        return self.status == STATUS_READY

    @property
    def is_deleted(self) -> bool:
        return self.status == STATUS_DELETED

    def tombstone(self, by: str) -> Manifest:
        """What deleting leaves: identity, access rules and revoked state; no pack, no session."""
        at = now_iso()
        return replace(
            self,
            status=STATUS_DELETED,
            upload=None,
            pack=PackSummary(),
            size=0,
            stored_size=0,
            tainted=False,
            deleted_at=at,
            deleted_by=by,
            updated_at=at,
        )

    @property
    def usable(self) -> bool:
        """Usable means pullable: committed, not tainted, not revoked."""
        return self.is_ready and not self.tainted and not self.revoked

    # ---- state rules ----------------------------------------------------------------------
    def ensure_pullable(self) -> None:
        if self.revoked:
            raise Gone(f"{self.key} was revoked by {self.revoked_by} at {self.revoked_at}")
        if self.tainted:
            raise Tainted(f"{self.key} is tainted (by {self.tainted_by} at {self.tainted_at}); untaint it first")
        if not self.is_ready:
            raise Conflict(f"{self.key} is still being uploaded")

    def taint(self, by: str) -> Manifest:
        self._ensure_not_revoked()
        if self.tainted:
            raise Conflict(f"{self.key} is already tainted")
        at = now_iso()
        return replace(self, tainted=True, tainted_by=by, tainted_at=at, updated_at=at)

    def untaint(self, by: str) -> Manifest:
        self._ensure_not_revoked()
        if not self.tainted:
            raise Conflict(f"{self.key} is not tainted")
        at = now_iso()
        return replace(self, tainted=False, untainted_by=by, untainted_at=at, updated_at=at)

    def revoke(self, by: str) -> Manifest:
        self._ensure_not_revoked()
        at = now_iso()
        return replace(self, revoked=True, revoked_by=by, revoked_at=at, updated_at=at)

    def _ensure_not_revoked(self) -> None:
        if self.revoked:
            raise Gone(f"{self.key} was revoked by {self.revoked_by} at {self.revoked_at}; revoke is permanent")

    def touched(self, **changes: Any) -> Manifest:
        return replace(self, updated_at=now_iso(), **changes)

    # ---- serialisation --------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """Everything, for stores. Still contains no secret."""
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["pack"] = PackSummary(**(data.get("pack") or {}))
        values["minimum_requirements"] = MinimumRequirements(**(data.get("minimum_requirements") or {}))
        upload = data.get("upload")
        values["upload"] = UploadSession(**upload) if upload else None
        values["tags"] = list(data.get("tags") or [])
        values["required_roles"] = list(data.get("required_roles") or [])
        values["required_claims"] = list(data.get("required_claims") or [])
        return cls(**values)

    def to_public(self) -> dict[str, Any]:
        """The manifest as the API shows it: the same shape in lists and single GETs."""
        data = self.to_record()
        upload = data.pop("upload")
        data["upload_in_progress"] = upload is not None
        data["storage"] = {"name": data.pop("storage_name"), "prefix": data.pop("storage_prefix")}
        data["pack"] = self.pack.to_public()
        data["usable"] = self.usable
        return data


def parse_identity(catalog_id: object, version: object, architecture: object) -> ManifestKey:
    return ManifestKey(
        normalize_catalog_id(catalog_id), normalize_version(version), normalize_architecture(architecture)
    )


def parse_tags(values: object) -> list[str]:
    return normalize_list(values, normalize_tag, "tags")


def parse_roles(values: object) -> list[str]:
    return normalize_list(values, normalize_role, "roles")


def parse_description(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput("description must be a string")
    if len(value) > MAX_DESCRIPTION:
        raise InvalidInput(f"description is longer than {MAX_DESCRIPTION} characters")
    return value


def parse_vm_type(value: object) -> str:
    if value not in VM_TYPES:
        raise InvalidInput("vm_type must be 'pvm' or 'macvm'")
    return str(value)
