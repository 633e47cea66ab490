"""Packs through a storage provider: export a bundle as ``.pdpack`` + ``.meta``, import one the original
tools pushed. Keys and the ``.meta`` model are ``core.pdpack_meta``'s; docs/pdpack-format.md has both.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from client.pdpack.reader import UnpackStats, unpack_pack
from client.pdpack.writer import PackStats, rfc3339, write_pack
from core.errors import InvalidInput, NotFound
from core.identity import normalize_architecture, normalize_version
from core.manifest import MinimumRequirements, parse_description, parse_roles, parse_tags
from core.pdpack_meta import (
    ContentItem,
    MinimumSpec,
    PackMeta,
    catalog_folder,
    meta_key,
    pack_file_key,
    pack_key,
    pack_name,
)

__all__ = ["PackStorage", "export_pack", "import_pack", "import_pack_with_stats"]

log = logging.getLogger("pdcat.pdpack")


class PackStorage(Protocol):
    """The part of ``client.byo.providers.Storage`` the pack functions use (keys are ``/`` paths); any
    ``open_storage(...)`` result fits, and so does a small test double."""

    def put_file(self, key: str, path: Path) -> None: ...

    def open_read(self, key: str) -> BinaryIO: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


_META_FIELDS = {"description", "tags", "required_roles", "required_claims", "minimum_requirements", "vm_type"}


def export_pack(
    storage: PackStorage,
    bundle: Path,
    catalog_id: str,
    version: str,
    arch: str,
    meta_fields: Mapping[str, Any],
    *,
    compress: bool,
    level: str = "default",
    workdir: Path | None = None,
    sparse: bool = True,
    on_packed: Callable[[PackStats], None] | None = None,
) -> PackMeta:
    """Pack ``bundle``, upload it as ``pack_key(...)`` and then its ``.meta`` (last, so a ``.meta`` is
    only ever there for a complete pack). The pack is written to a hidden temp file in ``workdir``
    (default: next to the bundle), which needs room for one pack, and is always removed."""
    unknown = set(meta_fields) - _META_FIELDS
    if unknown:
        raise InvalidInput(f"unknown .meta field(s): {', '.join(sorted(unknown))}")
    bundle = Path(bundle)
    vm_type = str(meta_fields.get("vm_type") or bundle.suffix.lstrip(".").lower())
    if vm_type not in ("pvm", "macvm"):
        raise InvalidInput(f"{bundle.name} is not a .pvm or .macvm bundle (say which with vm_type)")
    name = pack_name(catalog_id, arch, version)
    folder = catalog_folder(catalog_id)
    pkey, mkey = pack_key(catalog_id, arch, version), meta_key(catalog_id, arch, version)
    minimum = meta_fields.get("minimum_requirements")
    spec = None
    if minimum is not None:
        parsed = MinimumRequirements.parse(minimum)
        spec = MinimumSpec(parsed.cpu, parsed.memory_mb, parsed.disk_mb)
    previous = _previous_meta(storage, mkey)
    tmp = (workdir or bundle.parent) / f".{name}.pdpack.pdcat-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as out:
            stats = write_pack(bundle, cast(BinaryIO, out), compress=compress, level=level, sparse=sparse)
        if on_packed is not None:
            on_packed(stats)
        storage.put_file(pkey, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    now = rfc3339(time.time_ns())
    where = "/" + folder
    meta = PackMeta(
        catalog_id=folder,
        version=normalize_version(version, allow_latest=True),
        architecture=normalize_architecture(arch),
        id=previous.id if previous and previous.id else secrets.token_hex(32),
        name=name,
        description=parse_description(meta_fields.get("description", "")),
        vm_type=vm_type,
        path=where,
        pack_path=f"{name}.pdpack",
        metadata_path=f"{name}.meta",
        size=stats.size,
        pack_size=stats.pack_size,
        is_compressed=stats.compressed,
        checksum=stats.checksum,
        required_roles=tuple(parse_roles(meta_fields.get("required_roles", []))),
        required_claims=tuple(parse_roles(meta_fields.get("required_claims", []))),
        tags=tuple(parse_tags(meta_fields.get("tags", []))),
        created_at=previous.created_at if previous and previous.created_at else now,
        updated_at=now,
        minimum_requirements=spec,
        contents=stats.contents,
        pack_contents=(
            ContentItem(name=f"{name}.meta", path=where, created_at=now, updated_at=now),
            ContentItem(name=f"{name}.pdpack", path=where, checksum=stats.checksum, created_at=now, updated_at=now),
        ),
    )
    try:
        storage.put_bytes(mkey, meta.to_json())
    except BaseException:
        with contextlib.suppress(Exception):
            storage.delete(pkey)
        raise
    return meta


def _previous_meta(storage: PackStorage, key: str) -> PackMeta | None:
    """A re-export keeps the original ``id`` and ``created_at``, as the original's push does."""
    if not storage.exists(key):
        return None
    try:
        return PackMeta.from_json(storage.get_bytes(key))
    except InvalidInput:
        log.warning("the .meta already at %s is not readable; it is replaced", key)
        return None


def import_pack(storage: PackStorage, catalog_id: str, version: str, arch: str, dest: Path) -> Path:
    """Pull a pack the original tools pushed and unpack it as the bundle folder ``dest``; returns ``dest``."""
    _meta, stats = import_pack_with_stats(storage, catalog_id, version, arch, dest)
    return stats.dest


def import_pack_with_stats(
    storage: PackStorage,
    catalog_id: str,
    version: str,
    arch: str,
    dest: Path,
    *,
    max_bytes: int | None = None,
) -> tuple[PackMeta | None, UnpackStats]:
    """``import_pack`` that also returns the ``.meta`` it found and what the unpack did.

    The ``.meta`` is read when there is one: its checksum is then verified, and its ``pack_path`` names
    the pack file in the same folder. A lone ``.pdpack`` is unpacked unverified (logged).
    """
    mkey = meta_key(catalog_id, arch, version)
    meta = PackMeta.from_json(storage.get_bytes(mkey)) if storage.exists(mkey) else None
    if meta is None:
        log.warning("no .meta at %s: the pack cannot be verified", mkey)
    pkey = pack_file_key(meta, catalog_id, arch, version)
    if not storage.exists(pkey):
        raise NotFound(f"no pack at {pkey} in this storage")
    with storage.open_read(pkey) as stream:
        stats = unpack_pack(
            stream, Path(dest), compressed=None, checksum=meta.checksum if meta else None, max_bytes=max_bytes
        )
    return meta, stats
