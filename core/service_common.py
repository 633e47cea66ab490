"""What the catalog's use-case modules share: the settings, the ports they work through
(:class:`ServiceContext`), visibility and lookup, and the parsing of request fields.

``core.service.CatalogService`` is the one facade the router calls; the use cases live beside it by
concern (``core.push``, ``core.pull``, ``core.index_import``, ``core.legacy_import``,
``core.api_keys``). None of them imports another's internals except through this module.

Visibility, everywhere: a caller who cannot see a manifest gets exactly what it would get if the
manifest did not exist (404), and tombstones are invisible to every read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import InvalidInput, NotFound
from core.gc import GcSettings
from core.identity import (
    LATEST,
    ManifestKey,
    normalize_architecture,
    normalize_catalog_id,
    normalize_version,
)
from core.manifest import (
    Manifest,
    MinimumRequirements,
    PackSummary,
    parse_description,
    parse_roles,
    parse_tags,
    parse_vm_type,
)
from core.pack import PackIndex, is_digest
from core.ports import BlobStore, ManifestStore
from core.rbac import Principal, can_see

__all__ = [
    "METADATA_FIELDS",
    "ServiceContext",
    "ServiceSettings",
    "b64",
    "decode_cursor",
    "digest_list",
    "encode_cursor",
    "expires_at",
    "latest_per_arch",
    "metadata_to_json",
    "pack_fields",
    "parse_metadata",
    "refuse_unknown",
    "sees",
    "unb64",
    "visible_to",
]

METADATA_FIELDS = ("description", "tags", "required_roles", "required_claims", "minimum_requirements", "vm_type")


@dataclass(frozen=True)
class ServiceSettings:
    url_expiry_seconds: int = 900
    max_api_key_days: int = 366
    gc: GcSettings = field(default_factory=GcSettings)


# ---- visibility -----------------------------------------------------------------------------


def sees(who: Principal, manifest: Manifest) -> bool:
    """The manifest's access rules admit this caller (tombstones keep theirs)."""
    return can_see(who, manifest.required_roles, manifest.required_claims)


def visible_to(who: Principal, manifest: Manifest) -> bool:
    """Tombstones are invisible to everyone; otherwise the manifest's roles and claims decide."""
    return not manifest.is_deleted and can_see(who, manifest.required_roles, manifest.required_claims)


def latest_per_arch(manifests: Iterable[Manifest]) -> list[Manifest]:
    """The newest usable version of each architecture (by push time, then version text)."""
    best: dict[str, Manifest] = {}
    for m in manifests:
        if not m.usable:
            continue
        current = best.get(m.architecture)
        if current is None or (m.pushed_at or "", m.version) > (current.pushed_at or "", current.version):
            best[m.architecture] = m
    return sorted(best.values(), key=lambda m: m.architecture)


@dataclass(frozen=True)
class ServiceContext:
    """The ports and settings every use case works through, and the lookups they share."""

    store: ManifestStore
    blobs: BlobStore
    settings: ServiceSettings

    def visible(self, who: Principal, catalog_id: str) -> list[Manifest]:
        return [m for m in self.store.iter_all(catalog_id) if visible_to(who, m)]

    def resolve(self, who: Principal, catalog_id: str, version: str, architecture: str) -> Manifest:
        """Find one visible manifest; ``latest`` resolves to the newest usable version for the arch."""
        catalog_id = normalize_catalog_id(catalog_id)
        version = normalize_version(version, allow_latest=True)
        architecture = normalize_architecture(architecture)
        if version == LATEST:
            found = [m for m in latest_per_arch(self.visible(who, catalog_id)) if m.architecture == architecture]
            if not found:
                raise NotFound(f"{catalog_id}:latest ({architecture}) not found: no usable version")
            return found[0]
        stored = self.store.get(ManifestKey(catalog_id, version, architecture))
        if stored is None or not visible_to(who, stored.manifest):
            raise NotFound(f"{catalog_id}:{version} ({architecture}) not found")
        return stored.manifest

    def load(self, who: Principal, key: ManifestKey) -> tuple[Manifest, str]:
        stored = self.store.get(key)
        if stored is None or not visible_to(who, stored.manifest):
            raise NotFound(f"{key} not found")
        return stored.manifest, stored.etag

    def new_manifest(self, key: ManifestKey, who: Principal, **fields: Any) -> Manifest:
        return Manifest(
            catalog_id=key.catalog_id,
            version=key.version,
            architecture=key.architecture,
            created_by=who.subject,
            storage_name=self.blobs.name,
            storage_prefix=key.prefix,
            **fields,
        )


# ---- opaque tokens (cursors, upload ids) -----------------------------------------------------


def b64(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def unb64(token: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None


def encode_cursor(key: ManifestKey) -> str:
    return b64([key.catalog_id, key.version, key.architecture])


def decode_cursor(cursor: str) -> ManifestKey:
    data = unb64(cursor)
    if not (isinstance(data, list) and len(data) == 3):
        raise InvalidInput("invalid cursor: pass back next_cursor exactly as received")
    try:
        return ManifestKey.parse(*data)
    except InvalidInput:
        raise InvalidInput("invalid cursor: pass back next_cursor exactly as received") from None


def expires_at(seconds: int) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- request fields -------------------------------------------------------------------------


def digest_list(digests: object, limit: int) -> list[str]:
    if not isinstance(digests, list) or not all(is_digest(d) for d in digests):
        raise InvalidInput("digests must be a list of sha256 hex digests")
    if not digests:
        raise InvalidInput("digests must not be empty")
    if len(digests) > limit:
        raise InvalidInput(f"ask about at most {limit} digests at a time")
    return list(dict.fromkeys(digests))


def parse_metadata(body: dict[str, Any]) -> dict[str, Any]:
    """The user-editable fields present in ``body``, validated. Accepts ``roles``/``claims`` aliases."""
    out: dict[str, Any] = {}
    if "description" in body:
        out["description"] = parse_description(body["description"])
    if "tags" in body:
        out["tags"] = parse_tags(body["tags"])
    for name in ("roles", "claims"):
        if f"required_{name}" in body and name in body:
            raise InvalidInput(f"give required_{name} or its alias {name}, not both")
        value = body.get(f"required_{name}", body.get(name))
        if value is not None:
            out[f"required_{name}"] = parse_roles(value)
    if "minimum_requirements" in body:
        out["minimum_requirements"] = MinimumRequirements.parse(body["minimum_requirements"])
    if "vm_type" in body:
        out["vm_type"] = parse_vm_type(body["vm_type"])
    return out


def refuse_unknown(body: dict[str, Any], allowed: set[str], *, metadata: bool = True) -> None:
    """A typo in a field name must fail loudly, not be ignored. ``metadata``: the manifest's editable
    fields are allowed too."""
    unknown = set(body) - allowed - (set(METADATA_FIELDS) | {"roles", "claims"} if metadata else set())
    if unknown:
        raise InvalidInput(f"unknown or read-only field(s): {', '.join(sorted(unknown))}")


def metadata_to_json(meta: dict[str, Any]) -> dict[str, Any]:
    out = dict(meta)
    if isinstance(out.get("minimum_requirements"), MinimumRequirements):
        mr = out["minimum_requirements"]
        out["minimum_requirements"] = {"cpu": mr.cpu, "memory_mb": mr.memory_mb, "disk_mb": mr.disk_mb}
    return out


def pack_fields(index: PackIndex) -> dict[str, Any]:
    """What a manifest records about a committed pack."""
    return {
        "size": index.size,
        "stored_size": index.stored_size,
        "pack": PackSummary(
            digest=index.digest,
            format=index.format,
            chunk_size=index.chunk_size,
            chunk_count=len(index.unique_digests()),
            file_count=len(index.files),
        ),
    }
