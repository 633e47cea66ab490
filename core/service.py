"""The catalog's use cases. Each takes the caller and plain values, decides RBAC first, then works
through the ports. No HTTP here: the router in ``core.api`` maps requests onto these methods.

Order of checks, everywhere: the claim (403, reveals nothing), then visibility (404, exactly as if
the manifest did not exist), then state (409 tainted / conflict, 410 revoked).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from core.chunk_check import promote_staged, recheck_stored
from core.errors import Conflict, Forbidden, Gone, InvalidInput, NotFound, PayloadTooLarge, Unavailable, Unprocessable
from core.gc import GcSettings, collect, lease_active
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
    whole_number,
)
from core.marks import Confirmed, read_marks, write_confirmed, write_intent
from core.pack import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, PackIndex, is_digest
from core.pdpack_meta import (
    PackMeta,
    catalog_folder,
    catalog_metadata,
    checksum_algorithm,
    go_normalize,
    meta_key,
    pack_file_key,
)
from core.ports import ApiKeyRecord, ApiKeyStore, BlobStore, ManifestQuery, ManifestStore, Stored
from core.rbac import SERVICE_ACCOUNT_PREFIX, Claim, Principal, can_see, require
from core.storage_layout import (
    chunk_key,
    index_key,
    is_nonce,
    nonce_of_staging_key,
    staging_chunk_key,
    staging_index_key,
    staging_meta_key,
)
from core.wire import (
    CHUNK_PAGE,
    MAX_INDEX_BYTES,
    REPORT_PAGE,
    VERIFY_PAGE,
    ChunksAnswer,
    GcAnswer,
    PackAnswer,
    PullAnswer,
    PushAnswer,
    ReportAnswer,
    VerifyAnswer,
)

__all__ = ["CatalogService", "ServiceSettings"]

log = logging.getLogger("pdcat.service")

_METADATA_FIELDS = ("description", "tags", "required_roles", "required_claims", "minimum_requirements", "vm_type")
IMPORT_FORMATS = ("pdcat", PACK_FORMAT_PDPACK)


T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ServiceSettings:
    url_expiry_seconds: int = 900
    max_api_key_days: int = 366
    gc: GcSettings = field(default_factory=GcSettings)


@dataclass(frozen=True)
class _Declared:
    """What a pusher declared about its index when it began; the uploaded index must match it."""

    digest: str
    size: int
    chunk_size: int


def _declared_index(body: dict[str, Any]) -> _Declared:
    digest = body.get("index_digest")
    size, chunk_size = whole_number(body.get("index_size")), whole_number(body.get("chunk_size"))
    if not is_digest(digest):
        raise InvalidInput("index_digest must be the sha256 (64 lower-case hex characters) of the index")
    if size is None or not 0 < size <= MAX_INDEX_BYTES:
        raise InvalidInput(f"index_size must be an integer from 1 to {MAX_INDEX_BYTES}")
    if chunk_size is None or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % MIN_CHUNK_SIZE:
        raise InvalidInput(
            f"chunk_size must be a multiple of {MIN_CHUNK_SIZE} between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
        )
    return _Declared(str(digest), size, chunk_size)


@dataclass(frozen=True)
class _OpenSession:
    manifest: Manifest
    etag: str
    session: UploadSession
    nonce: str
    declared: _Declared
    metadata: dict[str, Any]
    dedup: bool = True  # may the pusher learn which chunks are stored already (see _may_dedup)
    decoy: bool = False  # a push to a hidden identity: works like a session, never commits


def _open_session(stored: Stored, session: UploadSession, nonce: str, doc: dict[str, Any]) -> _OpenSession:
    declared = _Declared(str(doc["index_digest"]), int(doc["index_size"]), int(doc["chunk_size"]))
    return _OpenSession(
        stored.manifest,
        stored.etag,
        session,
        nonce,
        declared,
        doc.get("metadata") or {},
        dedup=bool(doc.get("dedup", True)),
        decoy=bool(doc.get("decoy", False)),
    )


@dataclass(frozen=True)
class _Slot:
    """Where a new registration goes: a free key, over a visible tombstone, or nowhere (decoy)."""

    tombstone: Stored | None = None
    decoy: bool = False


def _sees(who: Principal, manifest: Manifest) -> bool:
    """The manifest's access rules admit this caller (tombstones keep theirs)."""
    return can_see(who, manifest.required_roles, manifest.required_claims)


def _own_session(who: Principal, manifest: Manifest) -> bool:
    """The pusher keeps their session even if the roles they pushed with hide the manifest from them."""
    return manifest.upload is not None and manifest.upload.started_by == who.subject


def _digest_list(digests: object, limit: int) -> list[str]:
    if not isinstance(digests, list) or not all(is_digest(d) for d in digests):
        raise InvalidInput("digests must be a list of sha256 hex digests")
    if not digests:
        raise InvalidInput("digests must not be empty")
    if len(digests) > limit:
        raise InvalidInput(f"ask about at most {limit} digests at a time")
    return list(dict.fromkeys(digests))


def _parallel(work: Callable[[T], R], items: list[T], *, workers: int = 16) -> list[R]:
    """One storage request per item, several in flight: a page costs its slowest request, not the sum."""
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(work, items))


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


def _upload_nonce(upload_id: str) -> str | None:
    data = _unb64(upload_id)
    if isinstance(data, list) and len(data) == 4 and isinstance(data[3], str) and is_nonce(data[3]):
        return data[3]
    return None


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


_SERVICE_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _api_key_subject(who: Principal, body: dict[str, Any]) -> str:
    """Who a new key acts as: its creator, or a service account of the creator's, named
    ``svc:<creator>/<name>``. Token subjects may not start with ``svc:`` (core.auth), and the
    creator is part of the name, so no user and no other creator can ever claim it."""
    if "subject" in body:
        raise InvalidInput(
            "an API key acts as its creator; for a robot, give service_account NAME instead of subject "
            f"(it acts as {SERVICE_ACCOUNT_PREFIX}<you>/NAME)"
        )
    name = body.get("service_account")
    if name is None:
        return who.subject
    if not isinstance(name, str) or not _SERVICE_ACCOUNT.fullmatch(name):
        raise InvalidInput(
            "service_account must be 1-64 characters of A-Z a-z 0-9 . _ - (starting with a letter or digit)"
        )
    return f"{SERVICE_ACCOUNT_PREFIX}{who.subject}/{name}"


def _visible_to(who: Principal, manifest: Manifest) -> bool:
    """Tombstones are invisible to everyone; otherwise the manifest's roles and claims decide."""
    return not manifest.is_deleted and can_see(who, manifest.required_roles, manifest.required_claims)


def _refuse_unknown(body: dict[str, Any], allowed: set[str], *, metadata: bool = True) -> None:
    """A typo in a field name must fail loudly, not be ignored. ``metadata``: the manifest's editable
    fields are allowed too."""
    unknown = set(body) - allowed - (set(_METADATA_FIELDS) | {"roles", "claims"} if metadata else set())
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
        self._index_cache: dict[tuple[str, str], frozenset[str]] = {}
        self._index_cache_lock = threading.Lock()

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
                if _visible_to(who, manifest):
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
        return [m for m in self.store.iter_all(catalog_id) if _visible_to(who, m)]

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
        if stored is None or not _visible_to(who, stored.manifest):
            raise NotFound(f"{catalog_id}:{version} ({architecture}) not found")
        return stored.manifest

    def _load(self, who: Principal, key: ManifestKey) -> tuple[Manifest, str]:
        stored = self.store.get(key)
        if stored is None or not _visible_to(who, stored.manifest):
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
            for m in self._visible(who, catalog_id)
            if (version is None or m.version == version) and (architecture is None or m.architecture == architecture)
        ]
        deleted: list[Manifest] = []
        for m in victims:
            stored = self.store.get(m.key)
            if stored is None or not _visible_to(who, stored.manifest):
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
        _refuse_unknown(body, {"dry_run", "cursor", "grace_seconds"}, metadata=False)
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

    # ---- push (storage protocol v2: docs/adr-002-storage-protocol-v2.md) ----------------------
    def push_begin(self, who: Principal, key: ManifestKey, body: dict[str, Any]) -> PushAnswer:
        """Open (or take over) an upload session; the client puts its index at ``index_url``."""
        require(who, Claim.PUSH)
        if "index" in body:
            raise InvalidInput(
                "this catalog speaks storage protocol v2: declare index_digest, index_size and chunk_size, "
                "then upload the index to index_url (update pdcat)"
            )
        _refuse_unknown(body, {"index_digest", "index_size", "chunk_size", "force"})
        declared = _declared_index(body)
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise InvalidInput("force must be true or false")
        meta = parse_metadata(body)
        nonce = secrets.token_urlsafe(12)
        upload_id = _upload_id(key, nonce)
        session = UploadSession(upload_id, now_iso(), who.subject, staging_index_key(nonce), 0, force)

        stored = self.store.get(key)
        if stored is not None and not _own_session(who, stored.manifest) and not _sees(who, stored.manifest):
            # Hidden from this caller: answer exactly as for a free identity. The decoy session works
            # like a real one (index, chunks, verify) but never commits: its commit answers the 409 of a
            # lost race, so what the caller learns costs a whole upload and proves nothing.
            self._write_session_meta(nonce, key, declared, meta, owner=who.subject, decoy=True, dedup=False)
            log.warning("push to a hidden identity: decoy session", extra={"manifest": str(key), "by": who.subject})
            return self._push_answer(key, upload_id, nonce)
        if stored is None:
            manifest = self._new_manifest(key, who, upload=session, **meta)
            try:
                self.store.create(manifest)
            except Conflict:
                raise Conflict(f"{key} is being pushed by someone else right now") from None
        else:
            current = stored.manifest
            if current.revoked:
                raise Gone(f"{key} was revoked; a revoked version cannot be pushed again")
            if current.is_ready and not force:
                raise Conflict(f"{key} already exists; push with force to replace it")
            if current.upload is not None and current.upload.started_by != who.subject and not force:
                # Resuming is for the pusher; taking over someone else's push must be explicit.
                raise Conflict(f"{key} is being pushed by someone else right now; push with force to take over")
            if current.is_deleted:
                # A tombstone stays one (invisible, its access rules kept) until the commit: an aborted
                # or abandoned push over it must not lose it.
                replacement = current.touched(upload=session)
            else:
                changes: dict[str, Any] = {"upload": session}
                if not current.is_ready:
                    changes.update(meta)
                replacement = current.touched(**changes)
            try:
                self.store.replace(replacement, stored.etag)
            except Conflict:
                raise Conflict(f"{key} is being pushed by someone else right now") from None
        # Written once the session exists, so a refused push leaves nothing behind; until it lands, the
        # session's requests answer 404 and gc judges the staging area by its age alone.
        dedup = self._may_dedup(who, key.catalog_id)
        self._write_session_meta(nonce, key, declared, meta, owner=who.subject, dedup=dedup)
        log.info("push started", extra={"manifest": str(key), "by": who.subject, "chunk_size": declared.chunk_size})
        return self._push_answer(key, upload_id, nonce)

    def _push_answer(self, key: ManifestKey, upload_id: str, nonce: str) -> PushAnswer:
        return {
            "upload_id": upload_id,
            "catalog_id": key.catalog_id,
            "version": key.version,
            "architecture": key.architecture,
            "index_url": self.blobs.presign(staging_index_key(nonce), "PUT", self.settings.url_expiry_seconds),
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

    def _may_dedup(self, who: Principal, catalog_id: str) -> bool:
        """Whether this pusher may learn which chunks the catalog id already holds: only if it can see
        every version of it, tombstones included (a hidden version's content must not be probed by
        asking which digests are stored). One store query per 500 versions, never a storage listing."""
        return all(_sees(who, m) for m in self.store.iter_all(catalog_id))

    def _write_session_meta(
        self,
        nonce: str,
        key: ManifestKey,
        declared: _Declared,
        meta: dict[str, Any],
        *,
        owner: str,
        dedup: bool,
        decoy: bool = False,
    ) -> None:
        doc = {
            "owner": owner,
            "dedup": dedup,
            "decoy": decoy,
            "catalog_id": key.catalog_id,
            "version": key.version,
            "architecture": key.architecture,
            "index_digest": declared.digest,
            "index_size": declared.size,
            "chunk_size": declared.chunk_size,
            "metadata": _metadata_to_json(meta),
        }
        self.blobs.put_bytes(staging_meta_key(nonce), json.dumps(doc, separators=(",", ":")).encode())

    def _session(self, who: Principal, upload_id: str) -> _OpenSession:
        require(who, Claim.PUSH)
        key = _parse_upload_id(upload_id)
        stored = self.store.get(key)
        if stored is None or stored.manifest.upload is None or stored.manifest.upload.upload_id != upload_id:
            if stored is not None and not _sees(who, stored.manifest):
                return self._decoy_session(who, key, upload_id, stored)
            raise NotFound("no such upload (it was committed, aborted or replaced by a newer push)")
        # A session belongs to whoever began it: another publisher takes a push over only by beginning
        # its own (with force), never by using this one. The pusher keeps it even if the roles they
        # pushed with hide the manifest from them.
        if stored.manifest.upload.started_by != who.subject:
            raise NotFound("no such upload (it was committed, aborted or replaced by a newer push)")
        session = stored.manifest.upload
        nonce = nonce_of_staging_key(session.index_key)
        if nonce is None:  # a session opened by protocol v1, before an upgrade: it cannot be finished
            raise NotFound("no such upload (it was opened by an older catalog; push again)")
        try:
            doc = json.loads(self.blobs.get_bytes(staging_meta_key(nonce), max_bytes=1 << 20))
        except NotFound:
            raise NotFound("no such upload (its staging area was collected; push again)") from None
        return _open_session(stored, session, nonce, doc)

    def _decoy_session(self, who: Principal, key: ManifestKey, upload_id: str, stored: Stored) -> _OpenSession:
        """The session a push to a hidden identity was given (see ``push_begin``); 404 otherwise."""
        nonce = _upload_nonce(upload_id)
        doc = None
        if nonce is not None:
            with contextlib.suppress(NotFound, PayloadTooLarge, ValueError):
                doc = json.loads(self.blobs.get_bytes(staging_meta_key(nonce), max_bytes=1 << 20))
        if nonce is None or not isinstance(doc, dict) or not doc.get("decoy") or doc.get("owner") != who.subject:
            raise NotFound("no such upload (it was committed, aborted or replaced by a newer push)")
        session = UploadSession(upload_id, "", who.subject, staging_index_key(nonce), 0)
        return _open_session(stored, session, nonce, doc)

    def _refuse_during_gc(self, open_session: _OpenSession, digests: list[str]) -> None:
        """Name the digests first, then look at the lease: a sweep either sees this mark or blocks us."""
        write_intent(self.blobs, open_session.nonce, digests)
        if lease_active(self.blobs, open_session.manifest.catalog_id):
            raise Unavailable("garbage collection is sweeping this catalog; retry in a minute")

    def upload_chunks(self, who: Principal, upload_id: str, digests: object) -> ChunksAnswer:
        """Which of these chunks are already verified; staging PUT URLs for the rest."""
        open_session = self._session(who, upload_id)
        wanted = _digest_list(digests, CHUNK_PAGE)
        self._refuse_during_gc(open_session, wanted)
        catalog_id = open_session.manifest.catalog_id
        stored: dict[str, Confirmed] = {}
        if open_session.dedup:
            heads = _parallel(lambda d: self.blobs.head(chunk_key(catalog_id, d)), wanted)
            stored = {d: Confirmed(info.size) for d, info in zip(wanted, heads, strict=True) if info is not None}
            write_confirmed(self.blobs, open_session.nonce, stored)
        expiry = self.settings.url_expiry_seconds
        return {
            "stored": list(stored),
            "urls": {
                d: self.blobs.presign(staging_chunk_key(open_session.nonce, d), "PUT", expiry)
                for d in wanted
                if d not in stored
            },
            "put_headers": dict(self.blobs.put_headers),
            "expires_at": _expires_at(expiry),
        }

    def verify_chunks(self, who: Principal, upload_id: str, digests: object) -> VerifyAnswer:
        """Read, decompress and hash each staged chunk; promote the good ones, write-once."""
        open_session = self._session(who, upload_id)
        wanted = _digest_list(digests, VERIFY_PAGE)
        self._refuse_during_gc(open_session, wanted)
        catalog_id, nonce = open_session.manifest.catalog_id, open_session.nonce
        limit = open_session.declared.chunk_size
        verdicts = _parallel(lambda d: promote_staged(self.blobs, catalog_id, nonce, d, limit), wanted, workers=4)
        write_confirmed(self.blobs, nonce, {v.digest: v.confirmed for v in verdicts if v.confirmed is not None})
        answer: VerifyAnswer = {"verified": [], "missing": [], "corrupt": []}
        for verdict in verdicts:
            answer[verdict.outcome].append(verdict.digest)
        return answer

    def _staged_index(self, open_session: _OpenSession) -> PackIndex:
        """The index the client put in staging, checked against what it declared when it began."""
        declared = open_session.declared
        try:
            data = self.blobs.get_bytes(open_session.session.index_key, max_bytes=declared.size)
        except NotFound:
            raise Conflict("the index has not been uploaded to index_url yet") from None
        except PayloadTooLarge:
            raise Conflict("the uploaded index is larger than declared; push again") from None
        if len(data) != declared.size or hashlib.sha256(data).hexdigest() != declared.digest:
            raise Conflict("the uploaded index does not match the declared index_digest and index_size; push again")
        index = PackIndex.from_bytes(data)
        if index.chunk_size != declared.chunk_size:
            raise InvalidInput("the index's chunk_size differs from the declared chunk_size")
        return index

    def commit(self, who: Principal, upload_id: str, body: dict[str, Any]) -> Manifest:
        """Refuse until every chunk of the index is verified; then write the index, flip to ready."""
        _refuse_unknown(body, set(), metadata=False)
        open_session = self._session(who, upload_id)
        manifest, etag = open_session.manifest, open_session.etag
        index = self._staged_index(open_session)
        confirmed = read_marks(self.blobs, open_session.nonce).confirmed
        needed = index.unique_digests()
        missing = [d for d in needed if d not in confirmed]
        if missing:
            raise Conflict(
                f"{len(missing)} chunk(s) are not verified yet (e.g. {missing[0][:12]}); "
                "upload and verify them, then commit again"
            )
        wrong = [d for d, size in needed.items() if confirmed[d].raw_size not in (None, size)]
        if wrong:
            raise Conflict(f"{len(wrong)} chunk(s) do not have the size the index gives them (e.g. {wrong[0][:12]})")
        if open_session.decoy:
            raise Conflict(f"{manifest.key} changed while committing; push again")
        final = index.with_stored_sizes({d: confirmed[d].stored_size for d in needed})
        self.blobs.put_bytes(index_key(manifest.key.prefix), final.canonical_bytes())
        at = now_iso()
        base = manifest
        if manifest.is_deleted:  # a new version over a tombstone: a fresh manifest, the access rules kept
            base = replace(
                self._new_manifest(manifest.key, who),
                required_roles=manifest.required_roles,
                required_claims=manifest.required_claims,
            )
        ready = replace(
            base,
            **parse_metadata(open_session.metadata),
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
        # The staging area stays until gc: a sweep that listed this session must still find its marks.
        log.info("push committed", extra={"manifest": str(manifest.key), "by": who.subject, "digest": final.digest})
        return ready

    def abort(self, who: Principal, upload_id: str) -> None:
        open_session = self._session(who, upload_id)
        if open_session.decoy:
            self.blobs.delete([staging_meta_key(open_session.nonce)])
            return
        manifest, etag = open_session.manifest, open_session.etag
        if manifest.is_ready or manifest.revoked or manifest.is_deleted:  # a revoked identity stays burned
            self.store.replace(manifest.touched(upload=None), etag)
        else:
            self.store.delete(manifest.key, etag)

    # ---- pull -----------------------------------------------------------------------------
    def pull(self, who: Principal, catalog_id: str, version: str, architecture: str) -> PullAnswer:
        """Resolve, check state, count the download, and hand out where the index is."""
        require(who, Claim.PULL)
        manifest = self._resolve(who, catalog_id, version, architecture)
        manifest.ensure_pullable()
        at = now_iso()
        self.store.record_download(manifest.key, who.subject, at)
        manifest = replace(
            manifest,
            download_count=manifest.download_count + 1,
            last_downloaded_at=at,
            last_downloaded_by=who.subject,
        )
        log.info("pull", extra={"manifest": str(manifest.key), "by": who.subject})
        expiry = self.settings.url_expiry_seconds
        if manifest.pack.is_pdpack:
            return {
                "format": "pdpack",
                "manifest": manifest.to_public(),
                "pack": self._pdpack_download(manifest),
                "expires_at": _expires_at(expiry),
            }
        return {
            "format": "chunks",
            "manifest": manifest.to_public(),
            "index_url": self.blobs.presign(index_key(manifest.key.prefix), "GET", expiry),
            "expires_at": _expires_at(expiry),
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
        wanted = _digest_list(digests, CHUNK_PAGE)
        known = self._index_digests(manifest)
        if any(d not in known for d in wanted):
            raise InvalidInput("some digests are not part of this version")
        expiry = self.settings.url_expiry_seconds
        return {
            "urls": {d: self.blobs.presign(chunk_key(manifest.catalog_id, d), "GET", expiry) for d in wanted},
            "expires_at": _expires_at(expiry),
        }

    def report_corrupt(self, who: Principal, key: ManifestKey, digests: object) -> ReportAnswer:
        """A puller found these chunks corrupt. Re-verify each; quarantine only what really is."""
        require(who, Claim.PULL)
        manifest, _ = self._load(who, key)
        manifest.ensure_pullable()  # as a pull: 409 still uploading or tainted, 410 revoked
        if manifest.pack.is_pdpack:
            raise InvalidInput(f"{key} is a single original-format pack: it has no chunks to report")
        wanted = _digest_list(digests, REPORT_PAGE)
        known = self._index_digests(manifest)
        if any(d not in known for d in wanted):
            raise InvalidInput("some digests are not part of this version")
        limit = manifest.pack.chunk_size or MAX_CHUNK_SIZE
        results = _parallel(lambda d: recheck_stored(self.blobs, manifest.catalog_id, d, limit), wanted, workers=4)
        answer: ReportAnswer = {"quarantined": [], "intact": []}
        for digest, quarantined in zip(wanted, results, strict=True):
            answer["quarantined" if quarantined else "intact"].append(digest)
        if answer["quarantined"]:
            count = len(answer["quarantined"])
            log.warning("chunks quarantined", extra={"manifest": str(key), "by": who.subject, "count": count})
        return answer

    def _index(self, manifest: Manifest) -> PackIndex:
        data = self.blobs.get_bytes(index_key(manifest.key.prefix), max_bytes=MAX_INDEX_BYTES)
        return PackIndex.from_bytes(data)

    def _index_digests(self, manifest: Manifest) -> frozenset[str]:
        """The chunk digests of a committed version; a few recent ones are kept in memory, keyed by
        pack digest (content-addressed, so a cached answer can never be stale)."""
        cache_key = (str(manifest.key), manifest.pack.digest or "")
        with self._index_cache_lock:
            cached = self._index_cache.get(cache_key)
        if cached is None:
            cached = frozenset(self._index(manifest).unique_digests())
            with self._index_cache_lock:
                self._index_cache[cache_key] = cached
                while len(self._index_cache) > 8:
                    self._index_cache.pop(next(iter(self._index_cache)))
        return cached

    def _pdpack_download(self, manifest: Manifest) -> PackAnswer:
        """What a client needs to fetch and check an original-format pack: one short-lived GET URL."""
        pack = manifest.pack
        return {
            "format": "pdpack",
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
        slot = self._free_identity(who, key)
        try:
            if slot.decoy:  # the hidden version's data is not this caller's to read: as if none were there
                raise NotFound(index_key(key.prefix))
            index = PackIndex.from_bytes(self.blobs.get_bytes(index_key(key.prefix), max_bytes=MAX_INDEX_BYTES))
        except NotFound:
            raise NotFound(f"no pack index in storage at {index_key(key.prefix)}") from None
        final = index.with_stored_sizes(self._verified_sizes(key.catalog_id, index))
        manifest = self._new_manifest(key, who, status=STATUS_READY, pushed_at=now_iso(), **_pack_fields(final), **meta)
        self._create_over(manifest, slot)
        return manifest

    def _free_identity(self, who: Principal, key: ManifestKey) -> _Slot:
        """Whether ``key`` may be registered anew: free, or a tombstone the caller can see and that
        was not revoked (kept, to be replaced conditionally). Taken by a version hidden from the
        caller: a decoy slot, so the answer is the one a free identity gets (nothing is stored)."""
        stored = self.store.get(key)
        if stored is None:
            return _Slot()
        m = stored.manifest
        if not _sees(who, m):
            log.warning("import to a hidden identity", extra={"manifest": str(key), "by": who.subject})
            return _Slot(decoy=True)
        if not m.is_deleted:
            raise Conflict(f"{key} already exists")
        if m.revoked:
            raise Gone(f"{key} was revoked; a revoked version cannot be registered again")
        return _Slot(tombstone=stored)

    def _create_over(self, manifest: Manifest, slot: _Slot) -> None:
        if slot.decoy:
            return
        if slot.tombstone is None:
            try:
                self.store.create(manifest)
            except Conflict:
                raise Conflict(f"{manifest.key} already exists") from None
            return
        keep = slot.tombstone.manifest
        try:
            self.store.replace(
                replace(manifest, required_roles=keep.required_roles, required_claims=keep.required_claims)
                if not (manifest.required_roles or manifest.required_claims)
                else manifest,
                slot.tombstone.etag,
            )
        except Conflict:
            raise Conflict(f"{manifest.key} already exists") from None

    def _verified_sizes(self, catalog_id: str, index: PackIndex) -> dict[str, int]:
        """Stored size of every chunk of ``index``, one HEAD each (never a listing of the catalog);
        only the server writes ``chunks/``, so presence means verified."""
        digests = list(index.unique_digests())
        heads = _parallel(lambda d: self.blobs.head(chunk_key(catalog_id, d)), digests)
        missing = [d for d, info in zip(digests, heads, strict=True) if info is None]
        if missing:
            raise Conflict(f"{len(missing)} chunk(s) of this index are not in storage (e.g. {missing[0][:12]})")
        return {d: info.size for d, info in zip(digests, heads, strict=True) if info is not None}

    def _import_pdpack(self, who: Principal, key: ManifestKey, overrides: dict[str, Any]) -> Manifest:
        """Read the ``.meta``, find the ``.pdpack`` and its exact size (one listing), record both keys.

        Metadata comes from the ``.meta`` unless the request gives it. The ``.meta``'s sizes are not
        trusted for the stored size (some versions of the original write MiB): the listing is.
        """
        slot = self._free_identity(who, key)
        mkey = meta_key(key.catalog_id, key.architecture, key.version)
        try:
            if slot.decoy:  # the hidden version's files are not this caller's to read: as if none were there
                raise NotFound(mkey)
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
        self._create_over(manifest, slot)
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
        subject = _api_key_subject(who, body)
        unknown = set(body) - {"roles", "claims", "service_account", "expires_in_days", "description"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        days = body.get("expires_in_days", 90)
        days = whole_number(days)
        if days is None or not 1 <= days <= self.settings.max_api_key_days:
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
