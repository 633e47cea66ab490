"""Registering what already sits in storage (``POST /catalog/import``): where a new registration may
go (:func:`free_identity`, :func:`create_over`) and the import of a pdcat index and its chunks (a
version deleted without purge, or copied between catalogs). The original product's ``.pdpack`` is
imported by ``core.legacy_import`` through the same slot rules.

An identity held by a version hidden from the caller answers as a free one would (a *decoy* slot):
nothing is read from it and nothing is stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from core.errors import Conflict, Gone, NotFound
from core.fanout import parallel
from core.identity import ManifestKey
from core.manifest import STATUS_READY, Manifest, now_iso
from core.pack import PackIndex
from core.ports import Stored
from core.rbac import Principal
from core.service_common import ServiceContext, pack_fields, sees
from core.storage_layout import index_key, stored_key
from core.wire import MAX_INDEX_BYTES

__all__ = ["Slot", "create_over", "free_identity", "import_index"]

log = logging.getLogger("pdcat.service")


@dataclass(frozen=True)
class Slot:
    """Where a new registration goes: a free key, over a visible tombstone, or nowhere (decoy)."""

    tombstone: Stored | None = None
    decoy: bool = False


def free_identity(ctx: ServiceContext, who: Principal, key: ManifestKey) -> Slot:
    """Whether ``key`` may be registered anew: free, or a tombstone the caller can see and that
    was not revoked (kept, to be replaced conditionally). Taken by a version hidden from the
    caller: a decoy slot, so the answer is the one a free identity gets (nothing is stored)."""
    stored = ctx.store.get(key)
    if stored is None:
        return Slot()
    m = stored.manifest
    if not sees(who, m):
        log.warning("import to a hidden identity", extra={"manifest": str(key), "by": who.subject})
        return Slot(decoy=True)
    if not m.is_deleted:
        raise Conflict(f"{key} already exists")
    if m.revoked:
        raise Gone(f"{key} was revoked; a revoked version cannot be registered again")
    return Slot(tombstone=stored)


def create_over(ctx: ServiceContext, manifest: Manifest, slot: Slot) -> None:
    """Store ``manifest`` in ``slot``: created, or over the tombstone (whose access rules it keeps
    unless it names its own); a decoy slot stores nothing."""
    if slot.decoy:
        return
    if slot.tombstone is None:
        try:
            ctx.store.create(manifest)
        except Conflict:
            raise Conflict(f"{manifest.key} already exists") from None
        return
    keep = slot.tombstone.manifest
    try:
        ctx.store.replace(
            replace(manifest, required_roles=keep.required_roles, required_claims=keep.required_claims)
            if not (manifest.required_roles or manifest.required_claims)
            else manifest,
            slot.tombstone.etag,
        )
    except Conflict:
        raise Conflict(f"{manifest.key} already exists") from None


def import_index(ctx: ServiceContext, who: Principal, key: ManifestKey, meta: dict[str, Any]) -> Manifest:
    """Register the pdcat index at the version's index key; every chunk it names must be verified."""
    slot = free_identity(ctx, who, key)
    try:
        if slot.decoy:  # the hidden version's data is not this caller's to read: as if none were there
            raise NotFound(index_key(key.prefix))
        index = PackIndex.from_bytes(ctx.blobs.get_bytes(index_key(key.prefix), max_bytes=MAX_INDEX_BYTES))
    except NotFound:
        raise NotFound(f"no pack index in storage at {index_key(key.prefix)}") from None
    final = index.with_stored_sizes(_verified_sizes(ctx, key.catalog_id, index))
    manifest = ctx.new_manifest(key, who, status=STATUS_READY, pushed_at=now_iso(), **pack_fields(final), **meta)
    create_over(ctx, manifest, slot)
    return manifest


def _verified_sizes(ctx: ServiceContext, catalog_id: str, index: PackIndex) -> dict[str, int]:
    """Stored size of every chunk of ``index``, one HEAD each (never a listing of the catalog);
    only the server writes ``chunks/``, so presence means verified."""
    digests = list(index.unique_digests())
    heads = parallel(
        lambda d: ctx.blobs.head(stored_key(catalog_id, d, index.block_size)), digests, workers=ctx.blobs.concurrency
    )
    missing = [d for d, info in zip(digests, heads, strict=True) if info is None]
    if missing:
        raise Conflict(f"{len(missing)} chunk(s) of this index are not in storage (e.g. {missing[0][:12]})")
    return {d: info.size for d, info in zip(digests, heads, strict=True) if info is not None}
