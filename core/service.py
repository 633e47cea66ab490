"""The catalog's use cases. Each takes the caller and plain values, decides RBAC first, then works
through the ports. No HTTP here: the router in ``core.api`` maps requests onto these methods.

Order of checks, everywhere: the claim (403, reveals nothing), then visibility (404, exactly as if
the manifest did not exist), then state (409 tainted / conflict, 410 revoked).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import Conflict, Forbidden, Gone, InvalidInput, NotFound, Unprocessable
from core.identity import (
    LATEST,
    ManifestKey,
    normalize_architecture,
    normalize_catalog_id,
    normalize_version,
)
from core.manifest import (
    PACK_FORMAT_PDPACK,
    STATUS_READY,
    Manifest,
    MinimumRequirements,
    PackSummary,
    UploadSession,
    now_iso,
    parse_description,
    parse_roles,
    parse_tags,
    parse_vm_type,
)
from core.pack import PackIndex, chunk_key, chunks_prefix, is_digest
from core.pdpack_meta import (
    PackMeta,
    catalog_folder,
    catalog_metadata,
    checksum_algorithm,
    go_normalize,
    meta_key,
    pack_file_key,
)
from core.ports import ApiKeyRecord, ApiKeyStore, BlobStore, ManifestQuery, ManifestStore
from core.rbac import Claim, Principal, can_see, require

__all__ = ["CatalogService", "ServiceSettings"]

log = logging.getLogger("pdcat.service")

_METADATA_FIELDS = ("description", "tags", "required_roles", "required_claims", "minimum_requirements", "vm_type")
IMPORT_FORMATS = ("pdcat", PACK_FORMAT_PDPACK)


@dataclass(frozen=True)
class ServiceSettings:
    url_expiry_seconds: int = 900
    url_page_size: int = 500
    max_api_key_days: int = 366


def _b64(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def _unb64(token: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None


def encode_cursor(key: ManifestKey) -> str:
    return _b64([key.catalog_id, key.version, key.architecture])


def decode_cursor(cursor: str) -> ManifestKey:
    data = _unb64(cursor)
    if not (isinstance(data, list) and len(data) == 3):
        raise InvalidInput("invalid cursor: pass back next_cursor exactly as received")
    try:
        return ManifestKey.parse(*data)
    except InvalidInput:
        raise InvalidInput("invalid cursor: pass back next_cursor exactly as received") from None


def _upload_id(key: ManifestKey, nonce: str) -> str:
    return _b64([key.catalog_id, key.version, key.architecture, nonce])


def _parse_upload_id(upload_id: str) -> ManifestKey:
    data = _unb64(upload_id)
    if not (isinstance(data, list) and len(data) == 4 and all(isinstance(x, str) for x in data)):
        raise NotFound("no such upload")
    try:
        return ManifestKey.parse(data[0], data[1], data[2])
    except InvalidInput:
        raise NotFound("no such upload") from None


def _expires_at(seconds: int) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_metadata(body: dict[str, Any]) -> dict[str, Any]:
    """The user-editable fields present in ``body``, validated. Accepts ``roles``/``claims`` aliases."""
    out: dict[str, Any] = {}
    if "description" in body:
        out["description"] = parse_description(body["description"])
    if "tags" in body:
        out["tags"] = parse_tags(body["tags"])
    for name in ("roles", "claims"):
        value = body.get(f"required_{name}", body.get(name))
        if value is not None:
            out[f"required_{name}"] = parse_roles(value)
    if "minimum_requirements" in body:
        out["minimum_requirements"] = MinimumRequirements.parse(body["minimum_requirements"])
    if "vm_type" in body:
        out["vm_type"] = parse_vm_type(body["vm_type"])
    return out


def _pack_fields(index: PackIndex) -> dict[str, Any]:
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


def _refuse_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    """A typo in a field name must fail loudly, not be ignored."""
    unknown = set(body) - allowed - set(_METADATA_FIELDS) - {"roles", "claims"}
    if unknown:
        raise InvalidInput(f"unknown or read-only field(s): {', '.join(sorted(unknown))}")


def _metadata_to_json(meta: dict[str, Any]) -> dict[str, Any]:
    out = dict(meta)
    if isinstance(out.get("minimum_requirements"), MinimumRequirements):
        mr = out["minimum_requirements"]
        out["minimum_requirements"] = {"cpu": mr.cpu, "memory_mb": mr.memory_mb, "disk_mb": mr.disk_mb}
    return out


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
        """One page of visible manifests. Invisible ones are skipped, so pages fill from later rows."""
        require(who, Claim.LIST)
        after = decode_cursor(cursor) if cursor else None
        items: list[Manifest] = []
        batch = max(limit, 100)
        exhausted = False
        while not exhausted and len(items) < limit:
            page = self.store.query(
                ManifestQuery(catalog_id=catalog_id, tag=tag, architecture=architecture, after=after, limit=batch)
            )
            consumed = 0
            for manifest in page:
                consumed += 1
                after = manifest.key
                if can_see(who, manifest.required_roles, manifest.required_claims):
                    items.append(manifest)
                    if len(items) == limit:
                        break
            exhausted = len(page) < batch and consumed == len(page)
        next_cursor = None if exhausted or not items else encode_cursor(items[-1].key)
        return items, next_cursor

    def versions(self, who: Principal, catalog_id: str, version: str | None = None) -> list[Manifest]:
        """Every visible manifest of a catalog id (optionally of one version, or ``latest``)."""
        require(who, Claim.LIST)
        visible = self._visible(who, catalog_id)
        if version is None:
            items = visible
        elif version == LATEST:
            items = self._latest_per_arch(visible)
        else:
            items = [m for m in visible if m.version == version]
        if not items:
            raise NotFound(f"nothing visible named {catalog_id}" + (f":{version}" if version else ""))
        return items

    def get(self, who: Principal, catalog_id: str, version: str, architecture: str) -> Manifest:
        require(who, Claim.LIST)
        return self._resolve(who, catalog_id, version, architecture)

    def _visible(self, who: Principal, catalog_id: str) -> list[Manifest]:
        return [m for m in self.store.iter_all(catalog_id) if can_see(who, m.required_roles, m.required_claims)]

    @staticmethod
    def _latest_per_arch(manifests: Iterable[Manifest]) -> list[Manifest]:
        best: dict[str, Manifest] = {}
        for m in manifests:
            if not m.usable:
                continue
            current = best.get(m.architecture)
            if current is None or (m.pushed_at or "", m.version) > (current.pushed_at or "", current.version):
                best[m.architecture] = m
        return sorted(best.values(), key=lambda m: m.architecture)

    def _resolve(self, who: Principal, catalog_id: str, version: str, architecture: str) -> Manifest:
        """Find one visible manifest; ``latest`` resolves to the newest usable version for the arch."""
        catalog_id = normalize_catalog_id(catalog_id)
        version = normalize_version(version, allow_latest=True)
        architecture = normalize_architecture(architecture)
        if version == LATEST:
            found = [m for m in self._latest_per_arch(self._visible(who, catalog_id)) if m.architecture == architecture]
            if not found:
                raise NotFound(f"{catalog_id}:latest ({architecture}) not found: no usable version")
            return found[0]
        stored = self.store.get(ManifestKey(catalog_id, version, architecture))
        if stored is None or not can_see(who, stored.manifest.required_roles, stored.manifest.required_claims):
            raise NotFound(f"{catalog_id}:{version} ({architecture}) not found")
        return stored.manifest

    def _load(self, who: Principal, key: ManifestKey) -> tuple[Manifest, str]:
        stored = self.store.get(key)
        if stored is None or not can_see(who, stored.manifest.required_roles, stored.manifest.required_claims):
            raise NotFound(f"{key} not found")
        return stored.manifest, stored.etag

    # ---- state changes --------------------------------------------------------------------
    def _change(self, who: Principal, key: ManifestKey, claim: Claim, change: Any) -> Manifest:
        """Load, apply a pure change, write back conditionally; retry a few times on a lost race."""
        require(who, claim)
        for _ in range(5):
            manifest, etag = self._load(who, key)
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
        _refuse_unknown(body, set())
        meta = parse_metadata(body)
        return self._change(who, key, Claim.UPDATE, lambda m: m.touched(**meta))

    # ---- delete and purge -----------------------------------------------------------------
    def delete(
        self,
        who: Principal,
        catalog_id: str,
        version: str | None = None,
        architecture: str | None = None,
        *,
        purge: bool = False,
    ) -> list[Manifest]:
        require(who, Claim.DELETE)
        catalog_id = normalize_catalog_id(catalog_id)
        if version is not None:
            version = normalize_version(version)
        if architecture is not None:
            architecture = normalize_architecture(architecture)
        victims = [
            m
            for m in self._visible(who, catalog_id)
            if (version is None or m.version == version) and (architecture is None or m.architecture == architecture)
        ]
        if not victims:
            what = catalog_id + (f":{version}" if version else "") + (f" ({architecture})" if architecture else "")
            raise NotFound(f"{what} not found")
        for m in victims:
            self.store.delete(m.key)
            log.info("deleted manifest", extra={"manifest": str(m.key), "by": who.subject})
        if purge:
            self._purge(catalog_id, victims)
        return victims

    def _purge(self, catalog_id: str, deleted: list[Manifest]) -> None:
        """Remove the deleted versions' indexes and every chunk no remaining manifest references;
        for imported original-format packs, their ``.pdpack`` and ``.meta`` unless another manifest
        still names them (two versions differing only in case share one file name)."""
        for m in deleted:
            self.blobs.delete(info.key for info in self.blobs.list(m.key.prefix + "/"))
        legacy = {k for m in deleted if m.pack.is_pdpack for k in (m.pack.key, m.pack.meta_key) if k}
        live: set[str] = set()
        named: set[str] = set()
        for m in self.store.iter_all(catalog_id):
            live |= self._referenced_digests(m)
            if m.pack.is_pdpack:
                named |= {m.pack.key, m.pack.meta_key}
        if legacy - named:
            self.blobs.delete(sorted(legacy - named))
        prefix = chunks_prefix(catalog_id)
        self.blobs.delete(info.key for info in self.blobs.list(prefix) if info.key[len(prefix) :] not in live)

    def _referenced_digests(self, m: Manifest) -> set[str]:
        keys = []
        if m.is_ready and not m.pack.is_pdpack:
            keys.append(f"{m.key.prefix}/index.json")
        if m.upload is not None:
            keys.append(m.upload.index_key)
        digests: set[str] = set()
        for key in keys:
            try:
                doc = json.loads(self.blobs.get_bytes(key))
            except NotFound:
                continue
            index = doc.get("index", doc)
            digests |= set(PackIndex.parse(index).unique_digests())
        return digests

    # ---- push -----------------------------------------------------------------------------
    def _existing_chunks(self, catalog_id: str) -> dict[str, int]:
        prefix = chunks_prefix(catalog_id)
        return {info.key[len(prefix) :]: info.size for info in self.blobs.list(prefix)}

    def _put_urls(self, catalog_id: str, digests: Iterable[str]) -> dict[str, str]:
        expiry = self.settings.url_expiry_seconds
        return {d: self.blobs.presign(chunk_key(catalog_id, d), "PUT", expiry) for d in digests}

    def _get_urls(self, catalog_id: str, digests: Iterable[str]) -> dict[str, str]:
        expiry = self.settings.url_expiry_seconds
        return {d: self.blobs.presign(chunk_key(catalog_id, d), "GET", expiry) for d in digests}

    def push_begin(self, who: Principal, key: ManifestKey, body: dict[str, Any]) -> dict[str, Any]:
        """Open (or take over) an upload session and say which chunks the client must send."""
        require(who, Claim.PUSH)
        _refuse_unknown(body, {"index", "force"})
        if "index" not in body:
            raise InvalidInput("push needs the pack 'index'")
        index = PackIndex.parse(body["index"])
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise InvalidInput("force must be true or false")
        meta = parse_metadata(body)
        nonce = secrets.token_urlsafe(12)
        upload_id = _upload_id(key, nonce)
        index_key = f"{key.prefix}/uploads/{nonce}.json"
        session = UploadSession(upload_id, now_iso(), who.subject, index_key, index.size, force)

        stored = self.store.get(key)
        if stored is None:
            manifest = self._new_manifest(key, who, size=index.size, upload=session, **meta)
            self._write_pending(index_key, index, meta)
            try:
                self.store.create(manifest)
            except Conflict:
                self.blobs.delete([index_key])
                raise Conflict(f"{key} is being pushed by someone else right now") from None
        else:
            current = stored.manifest
            resuming = current.upload is not None and current.upload.started_by == who.subject
            if not resuming and not can_see(who, current.required_roles, current.required_claims):
                raise Conflict(f"{key} already exists")
            if current.revoked:
                raise Gone(f"{key} was revoked; a revoked version cannot be pushed again")
            if current.is_ready and not force:
                raise Conflict(f"{key} already exists; push with force to replace it")
            if current.upload is not None and current.upload.started_by != who.subject and not force:
                # Resuming is for the pusher; taking over someone else's push must be explicit.
                raise Conflict(f"{key} is being pushed by someone else right now; push with force to take over")
            self._write_pending(index_key, index, meta)
            changes: dict[str, Any] = {"upload": session}
            if not current.is_ready:
                changes.update(meta, size=index.size)
            try:
                self.store.replace(current.touched(**changes), stored.etag)
            except Conflict:
                self.blobs.delete([index_key])
                raise Conflict(f"{key} is being pushed by someone else right now") from None
            if current.upload is not None:
                self.blobs.delete([current.upload.index_key])

        existing = self._existing_chunks(key.catalog_id)
        needed = index.unique_digests()
        missing = [d for d in needed if d not in existing]
        page = missing[: self.settings.url_page_size]
        log.info(
            "push started",
            extra={"manifest": str(key), "by": who.subject, "chunks": len(needed), "missing": len(missing)},
        )
        return {
            "upload_id": upload_id,
            "catalog_id": key.catalog_id,
            "version": key.version,
            "architecture": key.architecture,
            "chunk_count": len(needed),
            "missing": [{"digest": d, "size": needed[d]} for d in missing],
            "reused_bytes": sum(size for d, size in needed.items() if d in existing),
            "urls": self._put_urls(key.catalog_id, page),
            "put_headers": dict(self.blobs.put_headers),
            "expires_at": _expires_at(self.settings.url_expiry_seconds),
        }

    def _new_manifest(self, key: ManifestKey, who: Principal, **fields: Any) -> Manifest:
        return Manifest(
            catalog_id=key.catalog_id,
            version=key.version,
            architecture=key.architecture,
            created_by=who.subject,
            storage_name=self.blobs.name,
            storage_prefix=key.prefix,
            **fields,
        )

    def _write_pending(self, index_key: str, index: PackIndex, meta: dict[str, Any]) -> None:
        doc = {"index": index.to_json(), "metadata": _metadata_to_json(meta)}
        self.blobs.put_bytes(index_key, json.dumps(doc, separators=(",", ":")).encode())

    def _session(self, who: Principal, upload_id: str) -> tuple[Manifest, str, UploadSession]:
        require(who, Claim.PUSH)
        key = _parse_upload_id(upload_id)
        stored = self.store.get(key)
        if stored is None or stored.manifest.upload is None or stored.manifest.upload.upload_id != upload_id:
            raise NotFound("no such upload (it was committed, aborted or replaced by a newer push)")
        # The pusher keeps their session even if the roles they pushed with hide the manifest from them.
        own = stored.manifest.upload.started_by == who.subject
        if not own and not can_see(who, stored.manifest.required_roles, stored.manifest.required_claims):
            raise NotFound("no such upload (it was committed, aborted or replaced by a newer push)")
        return stored.manifest, stored.etag, stored.manifest.upload

    def _pending(self, session: UploadSession) -> tuple[PackIndex, dict[str, Any]]:
        doc = json.loads(self.blobs.get_bytes(session.index_key))
        return PackIndex.parse(doc["index"]), parse_metadata(doc.get("metadata") or {})

    def _stored_index(self, catalog_id: str, index: PackIndex, reported: dict[str, Any] | None = None) -> PackIndex:
        """The index with every chunk's stored size, once each chunk is known to be in storage.

        ``reported`` are the sizes the uploader sent; a mismatch means a chunk was overwritten.
        """
        existing = self._existing_chunks(catalog_id)
        missing = [d for d in index.unique_digests() if d not in existing]
        if missing:
            raise Conflict(
                f"{len(missing)} chunk(s) are not in storage yet (e.g. {missing[0][:12]}); upload them and commit again"
            )
        wrong = [d for d, size in (reported or {}).items() if d in existing and existing[d] != size]
        if wrong:
            raise Conflict(f"{len(wrong)} stored chunk(s) have an unexpected size (e.g. {wrong[0][:12]}); push again")
        return index.with_stored_sizes({d: existing[d] for d in index.unique_digests()})

    def upload_urls(self, who: Principal, upload_id: str, digests: object) -> dict[str, Any]:
        """Fresh PUT URLs for chunks of this upload (the next page, or after the first ones expired)."""
        manifest, _, session = self._session(who, upload_id)
        wanted = self._digest_list(digests)
        index, _ = self._pending(session)
        known = index.unique_digests()
        unknown = [d for d in wanted if d not in known]
        if unknown:
            raise InvalidInput(f"{len(unknown)} digest(s) are not part of this upload, e.g. {unknown[0][:12]}")
        return {
            "urls": self._put_urls(manifest.catalog_id, wanted),
            "put_headers": dict(self.blobs.put_headers),
            "expires_at": _expires_at(self.settings.url_expiry_seconds),
        }

    def _digest_list(self, digests: object) -> list[str]:
        if not isinstance(digests, list) or not all(is_digest(d) for d in digests):
            raise InvalidInput("digests must be a list of sha256 hex digests")
        if len(digests) > self.settings.url_page_size:
            raise InvalidInput(f"ask for at most {self.settings.url_page_size} URLs at a time")
        return list(dict.fromkeys(digests))

    def commit(self, who: Principal, upload_id: str, body: dict[str, Any]) -> Manifest:
        """Check every chunk is stored with the right size, write the index, flip to ready."""
        manifest, etag, session = self._session(who, upload_id)
        index, meta = self._pending(session)
        reported = body.get("stored_sizes", {})
        if not isinstance(reported, dict):
            raise InvalidInput("stored_sizes must map digests to sizes")
        final = self._stored_index(manifest.catalog_id, index, reported)
        self.blobs.put_bytes(f"{manifest.key.prefix}/index.json", final.canonical_bytes())
        at = now_iso()
        ready = replace(
            manifest,
            **meta,
            **_pack_fields(final),
            status=STATUS_READY,
            upload=None,
            pushed_at=at,
            updated_at=at,
        )
        try:
            self.store.replace(ready, etag)
        except Conflict:
            raise Conflict(f"{manifest.key} changed while committing; push again") from None
        self.blobs.delete([session.index_key])
        log.info("push committed", extra={"manifest": str(manifest.key), "by": who.subject, "digest": final.digest})
        return ready

    def abort(self, who: Principal, upload_id: str) -> None:
        manifest, etag, session = self._session(who, upload_id)
        if manifest.is_ready or manifest.revoked:  # a revoked identity stays burned
            self.store.replace(manifest.touched(upload=None), etag)
        else:
            self.store.delete(manifest.key, etag)
        self.blobs.delete([session.index_key])

    # ---- pull -----------------------------------------------------------------------------
    def pull(self, who: Principal, catalog_id: str, version: str, architecture: str) -> dict[str, Any]:
        """Resolve, check state, count the download, and hand out the index and the first URLs."""
        require(who, Claim.PULL)
        manifest = self._resolve(who, catalog_id, version, architecture)
        manifest.ensure_pullable()
        index = None if manifest.pack.is_pdpack else self._index(manifest)
        at = now_iso()
        self.store.record_download(manifest.key, who.subject, at)
        manifest = replace(
            manifest,
            download_count=manifest.download_count + 1,
            last_downloaded_at=at,
            last_downloaded_by=who.subject,
        )
        log.info("pull", extra={"manifest": str(manifest.key), "by": who.subject})
        if index is None:
            return {
                "manifest": manifest.to_public(),
                "pack": self._pdpack_download(manifest),
                "expires_at": _expires_at(self.settings.url_expiry_seconds),
            }
        digests = list(index.unique_digests())
        return {
            "manifest": manifest.to_public(),
            "index": index.to_json(),
            "urls": self._get_urls(manifest.catalog_id, digests[: self.settings.url_page_size]),
            "expires_at": _expires_at(self.settings.url_expiry_seconds),
        }

    def pull_urls(self, who: Principal, key: ManifestKey, digests: object) -> dict[str, Any]:
        """More (or fresh) GET URLs for a pull in progress. Does not count as another download.

        An original-format pack is one object: its answer is a fresh ``pack`` URL, and asking for
        chunk digests is an error (it has none).
        """
        require(who, Claim.PULL)
        manifest, _ = self._load(who, key)
        manifest.ensure_pullable()
        if manifest.pack.is_pdpack:
            if digests is not None:
                raise InvalidInput(f"{key} is a single original-format pack: ask without digests for a fresh pack URL")
            return {
                "pack": self._pdpack_download(manifest),
                "expires_at": _expires_at(self.settings.url_expiry_seconds),
            }
        wanted = self._digest_list(digests)
        known = self._index(manifest).unique_digests()
        if any(d not in known for d in wanted):
            raise InvalidInput("some digests are not part of this version")
        return {
            "urls": self._get_urls(manifest.catalog_id, wanted),
            "expires_at": _expires_at(self.settings.url_expiry_seconds),
        }

    def _index(self, manifest: Manifest) -> PackIndex:
        return PackIndex.from_bytes(self.blobs.get_bytes(f"{manifest.key.prefix}/index.json"))

    def _pdpack_download(self, manifest: Manifest) -> dict[str, Any]:
        """What a client needs to fetch and check an original-format pack: one short-lived GET URL."""
        pack = manifest.pack
        return {
            "format": PACK_FORMAT_PDPACK,
            "url": self.blobs.presign(pack.key, "GET", self.settings.url_expiry_seconds),
            "size": pack.pack_size,
            "checksum": pack.compressed_checksum,
            "checksum_algorithm": checksum_algorithm(pack.compressed_checksum),
            "compressed": pack.is_compressed,
        }

    # ---- import ---------------------------------------------------------------------------
    def import_pack(self, who: Principal, body: dict[str, Any]) -> Manifest:
        """Register a pack that already sits in this catalog's storage.

        ``format`` ``"pdcat"`` (the default): a pdcat index and its chunks (a version deleted without
        purge, or copied between catalogs). ``"pdpack"``: a pack the original product pushed, as
        ``<catalog_id>/<name>.pdpack`` plus its ``.meta``, registered without moving a byte.
        """
        require(who, Claim.IMPORT)
        _refuse_unknown(body, {"catalog_id", "version", "architecture", "format"})
        fmt = body.get("format", "pdcat")
        if fmt not in IMPORT_FORMATS:
            raise InvalidInput(
                "format must be 'pdcat' (a pdcat index and chunks in storage) or 'pdpack' (the original "
                "product's .pdpack and .meta)"
            )
        key = ManifestKey.parse(body.get("catalog_id"), body.get("version"), body.get("architecture"))
        meta = parse_metadata(body)
        if fmt == PACK_FORMAT_PDPACK:
            return self._import_pdpack(who, key, meta)
        try:
            index = PackIndex.from_bytes(self.blobs.get_bytes(f"{key.prefix}/index.json"))
        except NotFound:
            raise NotFound(f"no pack index in storage at {key.prefix}/index.json") from None
        final = self._stored_index(key.catalog_id, index)
        manifest = self._new_manifest(key, who, status=STATUS_READY, pushed_at=now_iso(), **_pack_fields(final), **meta)
        self.store.create(manifest)
        return manifest

    def _import_pdpack(self, who: Principal, key: ManifestKey, overrides: dict[str, Any]) -> Manifest:
        """Read the ``.meta``, find the ``.pdpack`` and its exact size (one listing), record both keys.

        Metadata comes from the ``.meta`` unless the request gives it. The ``.meta``'s sizes are not
        trusted for the stored size (some versions of the original write MiB): the listing is.
        """
        if self.store.get(key) is not None:
            raise Conflict(f"{key} already exists")
        mkey = meta_key(key.catalog_id, key.architecture, key.version)
        try:
            raw = self.blobs.get_bytes(mkey)
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
                f"the .meta at {mkey} describes {meta.catalog_id[:64]}:{meta.version[:64]} ({meta.architecture}), "
                f"not {key}"
            )
        if checksum_algorithm(meta.checksum) is None:
            raise InvalidInput(
                f".meta field 'compressed_checksum' ({meta.checksum[:80]!r}) is not a hex MD5, SHA-1 or SHA-256: "
                "a pull could not verify the pack"
            )
        pkey = pack_file_key(meta, key.catalog_id, key.architecture, key.version)
        first = next(iter(self.blobs.list(pkey)), None)  # key order: the exact key comes first
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
            self._new_manifest(
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
        self.store.create(manifest)
        log.info("pdpack imported", extra={"manifest": str(key), "by": who.subject, "pack": pkey})
        return manifest

    # ---- API keys -------------------------------------------------------------------------
    def create_api_key(self, who: Principal, body: dict[str, Any]) -> tuple[ApiKeyRecord, str]:
        """A key never carries more than its creator holds (a SUPER_USER may grant anything)."""
        from core.auth import hash_secret, new_api_key

        require(who, Claim.MANAGE_API_KEYS)
        roles = parse_roles(body.get("roles", []))
        claims = parse_roles(body.get("claims", []))
        if not who.is_super_user:
            extra_roles = set(roles) - who.effective_roles
            extra_claims = set(claims) - who.effective_claims
            if extra_roles or extra_claims:
                raise Forbidden(
                    f"an API key cannot carry more than its creator: {', '.join(sorted(extra_roles | extra_claims))}"
                )
        subject = body.get("subject", who.subject)
        if not isinstance(subject, str) or not 0 < len(subject) <= 128:
            raise InvalidInput("subject must be a string of 1-128 characters")
        days = body.get("expires_in_days", 90)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= self.settings.max_api_key_days:
            raise InvalidInput(f"expires_in_days must be an integer from 1 to {self.settings.max_api_key_days}")
        description = parse_description(body.get("description", ""))
        key_id, secret, full_key = new_api_key()
        expires = (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record = ApiKeyRecord(
            key_id=key_id,
            secret_hash=hash_secret(secret),
            subject=subject,
            roles=roles,
            claims=claims,
            created_by=who.subject,
            created_at=now_iso(),
            expires_at=expires,
            description=description,
        )
        self.api_keys.create(record)
        log.info("api key created", extra={"key_id": key_id, "by": who.subject})
        return record, full_key

    def list_api_keys(self, who: Principal) -> list[ApiKeyRecord]:
        require(who, Claim.MANAGE_API_KEYS)
        return sorted(self.api_keys.list(), key=lambda r: r.created_at)

    def revoke_api_key(self, who: Principal, key_id: str) -> ApiKeyRecord:
        require(who, Claim.MANAGE_API_KEYS)
        record = self.api_keys.get(key_id)
        if record is None:
            raise NotFound("no such API key")
        if record.revoked:
            return record
        revoked = replace(record, revoked=True, revoked_at=now_iso(), revoked_by=who.subject)
        self.api_keys.put(revoked)
        return revoked
