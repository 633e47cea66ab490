"""Importing a pack the original product pushed: ``<catalog_id>/<name>.pdpack`` plus its ``.meta``,
registered where it lies, without moving a byte (``POST /catalog/import`` with ``format: "pdpack"``).

The ``.meta`` is read from storage and checked against the identity asked for; the ``.pdpack``'s size
comes from a listing (some versions of the original write MiB in the ``.meta``). A pull then gets one
presigned URL and the checksum to verify (``core.pull``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from core.errors import InvalidInput, NotFound, Unprocessable
from core.identity import ManifestKey
from core.index_import import create_over, free_identity
from core.manifest import PACK_FORMAT_PDPACK, STATUS_READY, Manifest, PackSummary, now_iso
from core.pdpack_meta import (
    PackMeta,
    catalog_folder,
    catalog_metadata,
    checksum_algorithm,
    go_normalize,
    meta_key,
    pack_file_key,
)
from core.rbac import Principal
from core.service_common import ServiceContext

__all__ = ["import_pdpack"]

log = logging.getLogger("pdcat.service")


def import_pdpack(ctx: ServiceContext, who: Principal, key: ManifestKey, overrides: dict[str, Any]) -> Manifest:
    """Read the ``.meta``, find the ``.pdpack`` and its exact size (one listing), record both keys.

    Metadata comes from the ``.meta`` unless the request gives it. The ``.meta``'s sizes are not
    trusted for the stored size (some versions of the original write MiB): the listing is.
    """
    slot = free_identity(ctx, who, key)
    mkey = meta_key(key.catalog_id, key.architecture, key.version)
    try:
        if slot.decoy:  # the hidden version's files are not this caller's to read: as if none were there
            raise NotFound(mkey)
        raw = ctx.blobs.get_bytes(mkey)
    except NotFound:
        raise NotFound(f"no .meta in storage at {mkey} (the original keeps it next to the .pdpack)") from None
    try:
        meta = PackMeta.from_json(raw)
    except InvalidInput as exc:
        raise InvalidInput(f"{mkey}: {exc.message}") from exc
    if (
        go_normalize(meta.catalog_id) != catalog_folder(key.catalog_id)
        or go_normalize(meta.version) != go_normalize(key.version)
        or meta.architecture != key.architecture
    ):
        raise Unprocessable(
            f"the .meta at {mkey} describes {meta.catalog_id[:64]}:{meta.version[:64]} ({meta.architecture}), not {key}"
        )
    if checksum_algorithm(meta.checksum) is None:
        raise InvalidInput(
            f".meta field 'compressed_checksum' ({meta.checksum[:80]!r}) is not a hex MD5, SHA-1 or SHA-256: "
            "a pull could not verify the pack"
        )
    pkey = pack_file_key(meta, key.catalog_id, key.architecture, key.version)
    first = next(iter(ctx.blobs.list(pkey)), None)  # key order: the exact key comes first
    if first is None or first.key != pkey:
        raise NotFound(f"no pack in storage at {pkey} (its .meta is at {mkey})")
    if meta.pack_size and meta.pack_size != first.size:
        log.warning(
            "the .meta's pack_size differs from the stored pack; the stored size is recorded",
            extra={"manifest": str(key), "meta_pack_size": meta.pack_size, "stored": first.size},
        )
    try:
        fields = {**catalog_metadata(meta, skip=overrides.keys()), **overrides}
    except InvalidInput as exc:
        raise InvalidInput(f"{mkey}: {exc.message}") from exc
    summary = PackSummary(
        format=PACK_FORMAT_PDPACK,
        file_count=sum(1 for item in meta.contents if not item.is_dir),
        key=pkey,
        meta_key=mkey,
        pack_size=first.size,
        compressed_checksum=meta.checksum.strip().lower(),
        is_compressed=meta.is_compressed,
    )
    manifest = replace(
        ctx.new_manifest(
            key,
            who,
            status=STATUS_READY,
            pushed_at=now_iso(),
            size=meta.size,
            stored_size=first.size,
            pack=summary,
            **fields,
        ),
        storage_prefix=catalog_folder(key.catalog_id),
    )
    create_over(ctx, manifest, slot)
    log.info("pdpack imported", extra={"manifest": str(key), "by": who.subject, "pack": pkey})
    return manifest
