"""The catalog's use cases, behind one facade: :class:`CatalogService`, the only object the router
(``core.api``) calls. Each method takes the caller and plain values, decides RBAC first, then works
through the ports. No HTTP here.

Order of checks, everywhere: the claim (403, reveals nothing), then visibility (404, exactly as if
the manifest did not exist), then state (409 tainted / conflict, 410 revoked). The router checks each
route's claim before calling in (``core.http.Router``); every method checks it again.

Reading, state changes, delete and garbage collection live here; the rest by concern:
``core.push`` and ``core.pull`` (storage protocol v2), ``core.index_import`` and
``core.legacy_import`` (registering what already sits in storage), ``core.api_keys``; what they share
is in ``core.service_common``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from core import api_keys as _api_keys
from core import pull as _pull
from core import push as _push
from core.errors import Conflict, InvalidInput, NotFound
from core.gc import collect
from core.identity import (
    LATEST,
    ManifestKey,
    normalize_architecture,
    normalize_catalog_id,
    normalize_version,
)
from core.index_import import import_index
from core.legacy_import import import_pdpack
from core.manifest import PACK_FORMAT_PDPACK, Manifest, parse_roles, parse_tags
from core.ports import ApiKeyRecord, ApiKeyStore, BlobStore, ManifestQuery, ManifestStore
from core.rbac import Claim, Principal, require
from core.service_common import (
    ServiceContext,
    ServiceSettings,
    decode_cursor,
    encode_cursor,
    latest_per_arch,
    parse_metadata,
    refuse_unknown,
    visible_to,
)
from core.storage_layout import index_key
from core.wire import ChunksAnswer, GcAnswer, IndexAnswer, PullAnswer, PushAnswer, ReportAnswer, VerifyAnswer

__all__ = ["IMPORT_FORMATS", "CatalogService", "ServiceSettings", "decode_cursor", "encode_cursor", "parse_metadata"]

log = logging.getLogger("pdcat.service")

IMPORT_FORMATS = ("pdcat", PACK_FORMAT_PDPACK)


class CatalogService:
    def __init__(
        self,
        store: ManifestStore,
        blobs: BlobStore,
        api_keys: ApiKeyStore,
        settings: ServiceSettings | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.api_keys = api_keys
        self.settings = settings or ServiceSettings()
        self._ctx = ServiceContext(store, blobs, self.settings)
        self._index_cache = _pull.IndexCache()

    # ---- reading --------------------------------------------------------------------------
    def list_manifests(
        self,
        who: Principal,
        *,
        catalog_id: str | None = None,
        tag: str | None = None,
        architecture: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[Manifest], str | None]:
        """One page of visible manifests. Invisible ones are skipped, so pages fill from later rows.

        A ``next_cursor`` is given only when at least one more visible manifest follows (one is read
        ahead): a cursor leading to an empty page would tell that hidden ones lie beyond.
        """
        require(who, Claim.LIST)
        after = decode_cursor(cursor) if cursor else None
        items: list[Manifest] = []
        batch = max(limit + 1, 100)
        exhausted = False
        while not exhausted and len(items) <= limit:
            page = self.store.query(
                ManifestQuery(catalog_id=catalog_id, tag=tag, architecture=architecture, after=after, limit=batch)
            )
            for manifest in page:
                after = manifest.key
                if visible_to(who, manifest):
                    items.append(manifest)
                    if len(items) > limit:
                        break
            exhausted = len(page) < batch
        if len(items) > limit:
            return items[:limit], encode_cursor(items[limit - 1].key)
        return items, None

    def versions(self, who: Principal, catalog_id: str, version: str | None = None) -> list[Manifest]:
        """Every visible manifest of a catalog id (optionally of one version, or ``latest``)."""
        require(who, Claim.LIST)
        visible = self._ctx.visible(who, catalog_id)
        if version is None:
            items = visible
        elif version == LATEST:
            items = latest_per_arch(visible)
        else:
            items = [m for m in visible if m.version == version]
        if not items:
            raise NotFound(f"nothing visible named {catalog_id}" + (f":{version}" if version else ""))
        return items

    def get(self, who: Principal, catalog_id: str, version: str, architecture: str) -> Manifest:
        require(who, Claim.LIST)
        return self._ctx.resolve(who, catalog_id, version, architecture)

    # ---- state changes --------------------------------------------------------------------
    def _change(self, who: Principal, key: ManifestKey, claim: Claim, change: Any) -> Manifest:
        """Load, apply a pure change, write back conditionally; retry a few times on a lost race."""
        require(who, claim)
        for _ in range(5):
            manifest, etag = self._ctx.load(who, key)
            updated: Manifest = change(manifest)
            try:
                self.store.replace(updated, etag)
            except Conflict:
                continue
            return updated
        raise Conflict(f"{key} is being changed by someone else; try again")

    def taint(self, who: Principal, key: ManifestKey) -> Manifest:
        return self._change(who, key, Claim.TAINT, lambda m: m.taint(who.subject))

    def untaint(self, who: Principal, key: ManifestKey) -> Manifest:
        return self._change(who, key, Claim.TAINT, lambda m: m.untaint(who.subject))

    def revoke(self, who: Principal, key: ManifestKey) -> Manifest:
        return self._change(who, key, Claim.REVOKE, lambda m: m.revoke(who.subject))

    def edit_list(self, who: Principal, key: ManifestKey, field_name: str, values: object, add: bool) -> Manifest:
        """Add (PATCH) or remove (DELETE) tags, required roles or required claims."""
        parsed = parse_tags(values) if field_name == "tags" else parse_roles(values)

        def change(m: Manifest) -> Manifest:
            current = set(getattr(m, field_name))
            new = current | set(parsed) if add else current - set(parsed)
            if len(new) > 64:
                raise InvalidInput(f"at most 64 {field_name} are allowed")
            return m.touched(**{field_name: sorted(new)})

        return self._change(who, key, Claim.UPDATE, change)

    def update_metadata(self, who: Principal, key: ManifestKey, body: dict[str, Any]) -> Manifest:
        refuse_unknown(body, set())
        meta = parse_metadata(body)
        return self._change(who, key, Claim.UPDATE, lambda m: m.touched(**meta))

    # ---- delete, purge and garbage collection --------------------------------------------
    def delete(
        self,
        who: Principal,
        catalog_id: str,
        version: str | None = None,
        architecture: str | None = None,
        *,
        purge: bool = False,
    ) -> list[Manifest]:
        """Leave a tombstone for each visible match; ``purge`` also reclaims the data at once."""
        require(who, Claim.DELETE)
        catalog_id = normalize_catalog_id(catalog_id)
        if version is not None:
            version = normalize_version(version)
        if architecture is not None:
            architecture = normalize_architecture(architecture)
        what = catalog_id + (f":{version}" if version else "") + (f" ({architecture})" if architecture else "")
        victims = [
            m
            for m in self._ctx.visible(who, catalog_id)
            if (version is None or m.version == version) and (architecture is None or m.architecture == architecture)
        ]
        deleted: list[Manifest] = []
        for m in victims:
            stored = self.store.get(m.key)
            if stored is None or not visible_to(who, stored.manifest):
                continue  # deleted by a concurrent call: that one answers for it
            try:
                self.store.replace(stored.manifest.tombstone(who.subject), stored.etag)
            except Conflict:
                continue
            deleted.append(stored.manifest)
            log.info("deleted manifest", extra={"manifest": str(m.key), "by": who.subject})
        if not deleted:
            raise NotFound(f"{what} not found")
        if purge:
            self._purge(catalog_id, deleted)
        return deleted

    def _purge(self, catalog_id: str, deleted: list[Manifest]) -> None:
        """Remove the deleted versions' indexes and run the collector over this one catalog id, with
        no grace period (every live session's chunks are protected by its marks); for imported
        original-format packs, their ``.pdpack`` and ``.meta`` unless another manifest names them."""
        self.blobs.delete(index_key(m.key.prefix) for m in deleted if not m.pack.is_pdpack)
        legacy = {k for m in deleted if m.pack.is_pdpack for k in (m.pack.key, m.pack.meta_key) if k}
        named = {
            k
            for m in self.store.iter_all(catalog_id)
            if m.pack.is_pdpack and not m.is_deleted
            for k in (m.pack.key, m.pack.meta_key)
        }
        if legacy - named:
            self.blobs.delete(sorted(legacy - named))
        collect(self.store, self.blobs, settings=replace(self.settings.gc, grace_seconds=0), only=catalog_id)

    def collect_garbage(self, who: Principal, body: dict[str, Any]) -> GcAnswer:
        """``pdcat gc``: one budgeted step of the mark-and-sweep; call again with ``next_cursor``."""
        require(who, Claim.DELETE)
        refuse_unknown(body, {"dry_run", "cursor", "grace_seconds"}, metadata=False)
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise InvalidInput("dry_run must be true or false")
        cursor = body.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidInput("cursor must be the next_cursor of the previous answer")
        settings = self.settings.gc
        grace = body.get("grace_seconds")
        if grace is not None:
            if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
                raise InvalidInput("grace_seconds must be a number of seconds, 0 or more")
            settings = replace(settings, grace_seconds=float(grace))
        report = collect(self.store, self.blobs, settings=settings, dry_run=dry_run, cursor=cursor)
        log.info("gc step", extra={"by": who.subject, **report.to_json()})
        result: GcAnswer = report.to_json()  # type: ignore[assignment]
        return result

    # ---- push (core.push) -----------------------------------------------------------------
    def push_begin(self, who: Principal, key: ManifestKey, body: dict[str, Any]) -> PushAnswer:
        """Open (or take over) an upload session: chunks first, then the index (``declare_index``)."""
        return _push.begin(self._ctx, who, key, body)

    def declare_index(self, who: Principal, upload_id: str, body: dict[str, Any]) -> IndexAnswer:
        """Record the index's digest and size once the chunks are in; answer where to PUT it."""
        return _push.declare_index(self._ctx, who, upload_id, body)

    def upload_chunks(self, who: Principal, upload_id: str, digests: object) -> ChunksAnswer:
        """Which of these chunks are already verified; staging PUT URLs for the rest."""
        return _push.upload_chunks(self._ctx, who, upload_id, digests)

    def verify_chunks(self, who: Principal, upload_id: str, digests: object) -> VerifyAnswer:
        """Read, decompress and hash each staged chunk; promote the good ones, write-once."""
        return _push.verify_chunks(self._ctx, who, upload_id, digests)

    def commit(self, who: Principal, upload_id: str, body: dict[str, Any]) -> Manifest:
        """Refuse until every chunk of the index is verified; then write the index, flip to ready."""
        return _push.commit(self._ctx, who, upload_id, body)

    def abort(self, who: Principal, upload_id: str) -> None:
        _push.abort(self._ctx, who, upload_id)

    # ---- pull (core.pull) -----------------------------------------------------------------
    def pull(self, who: Principal, catalog_id: str, version: str, architecture: str) -> PullAnswer:
        """Resolve, check state, count the download, and hand out where the index is."""
        return _pull.pull(self._ctx, who, catalog_id, version, architecture)

    def pull_urls(self, who: Principal, key: ManifestKey, digests: object) -> dict[str, Any]:
        """More (or fresh) GET URLs for a pull in progress. Does not count as another download."""
        return _pull.pull_urls(self._ctx, self._index_cache, who, key, digests)

    def report_corrupt(self, who: Principal, key: ManifestKey, digests: object) -> ReportAnswer:
        """A puller found these chunks corrupt. Re-verify each; quarantine only what really is."""
        return _pull.report_corrupt(self._ctx, self._index_cache, who, key, digests)

    # ---- import (core.index_import, core.legacy_import) ------------------------------------
    def import_pack(self, who: Principal, body: dict[str, Any]) -> Manifest:
        """Register a pack that already sits in this catalog's storage.

        ``format`` ``"pdcat"`` (the default): a pdcat index and its chunks (a version deleted without
        purge, or copied between catalogs). ``"pdpack"``: a pack the original product pushed, as
        ``<catalog_id>/<name>.pdpack`` plus its ``.meta``, registered without moving a byte.
        """
        require(who, Claim.IMPORT)
        refuse_unknown(body, {"catalog_id", "version", "architecture", "format"})
        fmt = body.get("format", "pdcat")
        if fmt not in IMPORT_FORMATS:
            raise InvalidInput(
                "format must be 'pdcat' (a pdcat index and chunks in storage) or 'pdpack' (the original "
                "product's .pdpack and .meta)"
            )
        key = ManifestKey.parse(body.get("catalog_id"), body.get("version"), body.get("architecture"))
        meta = parse_metadata(body)
        if fmt == PACK_FORMAT_PDPACK:
            return import_pdpack(self._ctx, who, key, meta)
        return import_index(self._ctx, who, key, meta)

    # ---- API keys (core.api_keys) ---------------------------------------------------------
    def create_api_key(self, who: Principal, body: dict[str, Any]) -> tuple[ApiKeyRecord, str]:
        """A key never carries more than its creator holds (a SUPER_USER may grant anything)."""
        return _api_keys.create_api_key(self.api_keys, who, body, max_days=self.settings.max_api_key_days)

    def list_api_keys(self, who: Principal) -> list[ApiKeyRecord]:
        return _api_keys.list_api_keys(self.api_keys, who)

    def revoke_api_key(self, who: Principal, key_id: str) -> ApiKeyRecord:
        return _api_keys.revoke_api_key(self.api_keys, who, key_id)
