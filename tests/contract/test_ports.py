"""The port contract: one suite that every ManifestStore / ApiKeyStore / BlobStore adapter passes.

Each ``*Contract`` class is a shared suite (the s3transfer idea): it is not collected by itself (no
``Test`` prefix); an adapter subclasses it as ``Test<Adapter>...`` and overrides the fixture that
builds the store. The fixture may hand out a store shared with other tests (one table or bucket per
session): every test works under random catalog ids / key prefixes and only asserts about its own
records. Class attributes (``threads``, ``many_objects``…) let a slow emulator scale the load down.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from core.errors import Conflict, NotFound, PayloadTooLarge
from core.identity import ManifestKey
from core.local.file_blobs import FileBlobStore
from core.local.sqlite_store import SqliteApiKeyStore, SqliteDatabase, SqliteManifestStore
from core.manifest import Manifest, MinimumRequirements, PackSummary, UploadSession, now_iso
from core.ports import ApiKeyRecord, ApiKeyStore, BlobInfo, BlobStore, ManifestQuery, ManifestStore

# ---- helpers ------------------------------------------------------------------------------------


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _manifest(catalog_id: str, version: str = "1.0", architecture: str = "arm64", **kw: Any) -> Manifest:
    tags = sorted(kw.pop("tags", []))
    return Manifest(catalog_id=catalog_id, version=version, architecture=architecture, tags=tags, **kw)


def _race(n: int, action: Callable[[int], object]) -> list[object]:
    """Run ``action(i)`` on ``n`` threads released together; each result or raised exception."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = action(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    return results


def _pages(store: ManifestStore, limit: int, **filters: Any) -> Iterator[list[Manifest]]:
    after: ManifestKey | None = None
    while True:
        page = store.query(ManifestQuery(after=after, limit=limit, **filters))
        assert len(page) <= limit
        if page:
            yield page
        if len(page) < limit:
            return
        after = page[-1].key


def _all_keys(store: ManifestStore, **filters: Any) -> list[ManifestKey]:
    return [m.key for page in _pages(store, 100, **filters) for m in page]


# ---- ManifestStore ------------------------------------------------------------------------------


class ManifestStoreContract:
    """Override ``store``; it must be a working store (empty, or shared with other tests)."""

    threads = 8
    race_rounds = 3
    downloads_per_thread = 25
    pagination_total = 250

    @pytest.fixture
    def store(self) -> Iterator[ManifestStore]:
        raise NotImplementedError("subclasses provide the store")

    @pytest.fixture
    def cid(self) -> str:
        """A catalog id of this test only."""
        return "c" + _uid()

    # -- single records --
    def test_get_missing_returns_none(self, store: ManifestStore, cid: str) -> None:
        assert store.get(ManifestKey(cid, "1.0", "arm64")) is None

    def test_create_then_get_returns_equal_manifest_and_etag(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid, tags=["base", "macos"], description="hello")
        etag = store.create(manifest)
        assert isinstance(etag, str) and etag
        stored = store.get(manifest.key)
        assert stored is not None
        assert stored.manifest == manifest
        assert stored.etag == etag

    def test_every_field_round_trips(self, store: ManifestStore, cid: str) -> None:
        at = now_iso()
        manifest = _manifest(
            cid,
            "2.1+build.7",
            "x86_64",
            description='ünïcode ✓ "quotes" and\nnewlines',
            tags=["a", "b:c"],
            vm_type="macvm",
            size=2**40 + 3,
            stored_size=12345,
            pack=PackSummary(digest="d" * 64, chunk_size=1 << 25, chunk_count=7, file_count=3),
            storage_name="local",
            storage_prefix=f"catalogs/{cid}/2.1+build.7/x86_64",
            required_roles=["ADMIN"],
            required_claims=["PULL_CATALOG_MANIFEST"],
            minimum_requirements=MinimumRequirements(cpu=4, memory_mb=8192, disk_mb=65536),
            tainted=True,
            tainted_by="alice",
            tainted_at=at,
            created_by="bob",
            download_count=5,
            last_downloaded_at=at,
            last_downloaded_by="carol",
            status="ready",
            upload=UploadSession(
                upload_id="u1", started_at=at, started_by="bob", index_key="k/index.json", size=9, force=True
            ),
        )
        store.create(manifest)
        stored = store.get(manifest.key)
        assert stored is not None and stored.manifest == manifest

    def test_create_twice_conflicts_and_keeps_the_first(self, store: ManifestStore, cid: str) -> None:
        first = _manifest(cid, description="first")
        etag = store.create(first)
        with pytest.raises(Conflict):
            store.create(_manifest(cid, description="second"))
        stored = store.get(first.key)
        assert stored is not None and stored.manifest == first and stored.etag == etag

    def test_keys_are_case_sensitive_for_versions(self, store: ManifestStore, cid: str) -> None:
        store.create(_manifest(cid, "V1"))
        store.create(_manifest(cid, "v1"))
        assert {k.version for k in _all_keys(store, catalog_id=cid)} == {"V1", "v1"}

    def test_racing_creates_of_one_key_exactly_one_wins(self, store: ManifestStore, cid: str) -> None:
        for round_ in range(self.race_rounds):
            version = f"r{round_}"

            def create(i: int, version: str = version) -> str:
                return store.create(_manifest(cid, version, description=str(i)))

            results = _race(self.threads, create)
            winners = [r for r in results if isinstance(r, str)]
            assert len(winners) == 1, results
            assert all(isinstance(r, Conflict) for r in results if not isinstance(r, str)), results
            stored = store.get(ManifestKey(cid, version, "arm64"))
            assert stored is not None and stored.etag == winners[0]
            assert results.index(winners[0]) == int(stored.manifest.description)

    def test_replace_with_current_etag(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid, tags=["old"])
        etag = store.create(manifest)
        updated = replace(manifest, description="new", tags=["new"])
        new_etag = store.replace(updated, etag)
        assert new_etag != etag
        stored = store.get(manifest.key)
        assert stored is not None and stored.manifest == updated and stored.etag == new_etag

    def test_replace_with_stale_etag_conflicts(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid)
        stale = store.create(manifest)
        current = store.replace(replace(manifest, description="one"), stale)
        with pytest.raises(Conflict):
            store.replace(replace(manifest, description="two"), stale)
        stored = store.get(manifest.key)
        assert stored is not None and stored.manifest.description == "one" and stored.etag == current

    def test_replace_after_delete_conflicts(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid)
        etag = store.create(manifest)
        store.delete(manifest.key)
        with pytest.raises(Conflict):
            store.replace(replace(manifest, description="zombie"), etag)
        assert store.get(manifest.key) is None

    def test_racing_replaces_exactly_one_wins(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid)
        etag = store.create(manifest)
        results = _race(self.threads, lambda i: store.replace(replace(manifest, description=str(i)), etag))
        winners = [i for i, r in enumerate(results) if isinstance(r, str)]
        assert len(winners) == 1, results
        stored = store.get(manifest.key)
        assert stored is not None and stored.manifest.description == str(winners[0])

    def test_delete(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid)
        store.create(manifest)
        store.delete(manifest.key)
        assert store.get(manifest.key) is None
        store.delete(manifest.key)  # missing: not an error
        store.delete(manifest.key, etag="no-such-etag")  # missing with an etag: not an error either

    def test_delete_with_etag(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid)
        stale = store.create(manifest)
        current = store.replace(replace(manifest, description="changed"), stale)
        with pytest.raises(Conflict):
            store.delete(manifest.key, etag=stale)
        assert store.get(manifest.key) is not None
        store.delete(manifest.key, etag=current)
        assert store.get(manifest.key) is None

    def test_recreate_after_delete(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid, tags=["t" + cid])
        store.create(manifest)
        store.delete(manifest.key)
        store.create(replace(manifest, description="again"))
        assert [m.description for m in store.query(ManifestQuery(tag="t" + cid))] == ["again"]

    # -- queries --
    @pytest.fixture
    def populated(self, store: ManifestStore, cid: str) -> dict[str, Any]:
        other = cid + "-other"
        tag = "t" + cid
        manifests = [
            _manifest(cid, "1.0", "arm64", tags=[tag, "base"]),
            _manifest(cid, "1.0", "x86_64", tags=[tag]),
            _manifest(cid, "2.0", "arm64", tags=["base"]),
            _manifest(cid, "2.0", "x86_64"),
            _manifest(other, "1.0", "arm64", tags=[tag]),
            _manifest(other, "3.0", "x86_64", tags=[tag, "base"]),
        ]
        for manifest in manifests:
            store.create(manifest)
        return {"cid": cid, "other": other, "tag": tag, "mine": {m.key for m in manifests}}

    def test_query_by_catalog_id(self, store: ManifestStore, populated: dict[str, Any]) -> None:
        cid = populated["cid"]
        got = store.query(ManifestQuery(catalog_id=cid))
        assert [m.key for m in got] == [
            ManifestKey(cid, "1.0", "arm64"),
            ManifestKey(cid, "1.0", "x86_64"),
            ManifestKey(cid, "2.0", "arm64"),
            ManifestKey(cid, "2.0", "x86_64"),
        ]
        assert store.query(ManifestQuery(catalog_id=cid + "-none")) == []

    def test_query_by_tag(self, store: ManifestStore, populated: dict[str, Any]) -> None:
        cid, other, tag = populated["cid"], populated["other"], populated["tag"]
        assert _all_keys(store, tag=tag) == [
            ManifestKey(cid, "1.0", "arm64"),
            ManifestKey(cid, "1.0", "x86_64"),
            ManifestKey(other, "1.0", "arm64"),
            ManifestKey(other, "3.0", "x86_64"),
        ]
        assert _all_keys(store, tag=tag + "-none") == []

    def test_query_tag_follows_replace_and_delete(self, store: ManifestStore, populated: dict[str, Any]) -> None:
        cid, tag = populated["cid"], populated["tag"]
        key = ManifestKey(cid, "1.0", "arm64")
        stored = store.get(key)
        assert stored is not None
        store.replace(replace(stored.manifest, tags=["base"]), stored.etag)
        assert key not in _all_keys(store, tag=tag)
        untagged = store.get(ManifestKey(cid, "2.0", "x86_64"))
        assert untagged is not None
        store.replace(replace(untagged.manifest, tags=[tag]), untagged.etag)
        assert untagged.manifest.key in _all_keys(store, tag=tag)
        store.delete(ManifestKey(cid, "1.0", "x86_64"))
        assert ManifestKey(cid, "1.0", "x86_64") not in _all_keys(store, tag=tag)

    def test_query_by_architecture(self, store: ManifestStore, populated: dict[str, Any]) -> None:
        mine = populated["mine"]
        x86 = [k for k in _all_keys(store, architecture="x86_64") if k in mine]
        assert x86 == sorted(k for k in mine if k.architecture == "x86_64")
        arm = [k for k in _all_keys(store, architecture="arm64") if k in mine]
        assert arm == sorted(k for k in mine if k.architecture == "arm64")

    def test_query_combined_filters(self, store: ManifestStore, populated: dict[str, Any]) -> None:
        cid, other, tag = populated["cid"], populated["other"], populated["tag"]
        assert [m.key for m in store.query(ManifestQuery(catalog_id=cid, tag="base", architecture="arm64"))] == [
            ManifestKey(cid, "1.0", "arm64"),
            ManifestKey(cid, "2.0", "arm64"),
        ]
        assert [m.key for m in store.query(ManifestQuery(catalog_id=other, tag=tag, architecture="x86_64"))] == [
            ManifestKey(other, "3.0", "x86_64")
        ]
        after = ManifestKey(cid, "1.0", "arm64")
        assert [m.key for m in store.query(ManifestQuery(catalog_id=cid, tag="base", after=after))] == [
            ManifestKey(cid, "2.0", "arm64")
        ]

    def test_query_limit(self, store: ManifestStore, populated: dict[str, Any]) -> None:
        cid = populated["cid"]
        assert [m.key for m in store.query(ManifestQuery(catalog_id=cid, limit=3))] == [
            ManifestKey(cid, "1.0", "arm64"),
            ManifestKey(cid, "1.0", "x86_64"),
            ManifestKey(cid, "2.0", "arm64"),
        ]
        assert store.query(ManifestQuery(catalog_id=cid, limit=0)) == []

    def test_keyset_pagination_yields_every_key_once_in_order(self, store: ManifestStore, cid: str) -> None:
        # Catalog ids that share prefixes, and versions whose text order differs from their
        # "natural" order ("1.10" < "1.9"; upper case before lower case) exercise the tuple order.
        catalogs = [f"{cid}", f"{cid}-a", f"{cid}.b", f"{cid}a", f"{cid}_z"]
        per_catalog = self.pagination_total // (len(catalogs) * 2)
        specials = ["A1", "a1", "1.10", "1.9", "1+x", "Z-2", "1.0_rc"]
        versions = (specials + [f"{i}.{i % 7}" for i in range(per_catalog)])[:per_catalog]
        expected = sorted(ManifestKey(c, v, a) for c in catalogs for v in versions for a in ("arm64", "x86_64"))
        assert len(expected) == self.pagination_total
        for key in expected:
            store.create(_manifest(key.catalog_id, key.version, key.architecture))
        seen: list[ManifestKey] = []
        for page in _pages(store, 7):
            seen.extend(m.key for m in page)
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        mine = set(expected)
        assert [k for k in seen if k in mine] == expected
        # The same within one catalog, with the filter applied by the store.
        one = [m.key for page in _pages(store, 7, catalog_id=catalogs[1]) for m in page]
        assert one == [k for k in expected if k.catalog_id == catalogs[1]]

    def test_pagination_is_stable_under_concurrent_inserts(self, store: ManifestStore, cid: str) -> None:
        for i in range(10, 30):
            store.create(_manifest(cid, f"v{i}"))
        seen: list[ManifestKey] = []
        after: ManifestKey | None = None
        inserted_before: list[ManifestKey] = []
        inserted_after: list[ManifestKey] = []
        page_no = 0
        while True:
            page = store.query(ManifestQuery(catalog_id=cid, after=after, limit=5))
            seen.extend(m.key for m in page)
            if len(page) < 5:
                break
            after = page[-1].key
            page_no += 1
            # One key behind the cursor (must not appear), one ahead of it (must appear).
            behind = _manifest(cid, f"v0{page_no}")
            ahead = _manifest(cid, f"v9{page_no}")
            store.create(behind)
            store.create(ahead)
            inserted_before.append(behind.key)
            inserted_after.append(ahead.key)
        assert len(set(seen)) == len(seen), "a key was returned twice"
        assert seen == sorted(seen)
        assert set(inserted_after) <= set(seen)
        assert not set(inserted_before) & set(seen)
        assert {k.version for k in seen} >= {f"v{i}" for i in range(10, 30)}

    # -- counters --
    def test_record_download_is_atomic(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid, status="ready")
        etag = store.create(manifest)
        per_thread = self.downloads_per_thread

        def download(i: int) -> None:
            for n in range(per_thread):
                store.record_download(manifest.key, by=f"user{i}", at=f"2030-01-01T00:00:{n:02d}.000000Z")

        results = _race(self.threads, download)
        assert not [r for r in results if isinstance(r, Exception)], results
        stored = store.get(manifest.key)
        assert stored is not None
        assert stored.manifest.download_count == self.threads * per_thread
        assert stored.manifest.last_downloaded_by in {f"user{i}" for i in range(self.threads)}
        assert stored.manifest.last_downloaded_at is not None
        assert stored.etag != etag
        assert replace(stored.manifest, download_count=0, last_downloaded_at=None, last_downloaded_by=None) == manifest

    def test_record_download_invalidates_the_etag(self, store: ManifestStore, cid: str) -> None:
        manifest = _manifest(cid)
        etag = store.create(manifest)
        store.record_download(manifest.key, by="alice", at="2030-01-01T00:00:00.000000Z")
        with pytest.raises(Conflict):
            store.replace(replace(manifest, description="stale"), etag)
        stored = store.get(manifest.key)
        assert stored is not None
        assert stored.manifest.download_count == 1
        assert stored.manifest.last_downloaded_by == "alice"
        assert stored.manifest.last_downloaded_at == "2030-01-01T00:00:00.000000Z"

    def test_record_download_of_missing_manifest_is_not_found(self, store: ManifestStore, cid: str) -> None:
        with pytest.raises(NotFound):
            store.record_download(ManifestKey(cid, "1.0", "arm64"), by="alice", at=now_iso())

    # -- iteration --
    def test_iter_all(self, store: ManifestStore, cid: str) -> None:
        count = 510  # more than one internal page of 500
        for i in range(count):
            store.create(_manifest(cid, f"{i:04d}"))
        store.create(_manifest(cid + "-x", "1.0"))
        keys = [m.key for m in store.iter_all(cid)]
        assert keys == [ManifestKey(cid, f"{i:04d}", "arm64") for i in range(count)]
        everything = [m.key for m in store.iter_all()]
        assert len(set(everything)) == len(everything)
        assert {k for k in everything if k.catalog_id.startswith(cid)} == {
            *keys,
            ManifestKey(cid + "-x", "1.0", "arm64"),
        }


class TestSqliteManifestStore(ManifestStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Any) -> Iterator[ManifestStore]:
        store = SqliteManifestStore(SqliteDatabase(tmp_path / "db.sqlite"))
        yield store
        store.close()


# ---- ApiKeyStore --------------------------------------------------------------------------------


def _api_key(key_id: str, **kw: Any) -> ApiKeyRecord:
    values: dict[str, Any] = {
        "key_id": key_id,
        "secret_hash": "h" * 64,
        "subject": "ci-bot",
        "roles": ["PUBLISHER"],
        "claims": ["PULL_CATALOG_MANIFEST"],
        "created_by": "admin",
        "created_at": now_iso(),
    }
    values.update(kw)
    return ApiKeyRecord(**values)


class ApiKeyStoreContract:
    @pytest.fixture
    def keys(self) -> Iterator[ApiKeyStore]:
        raise NotImplementedError("subclasses provide the store")

    def test_create_then_get(self, keys: ApiKeyStore) -> None:
        record = _api_key("k" + _uid(), expires_at="2099-01-01T00:00:00.000000Z", description="ci")
        keys.create(record)
        assert keys.get(record.key_id) == record

    def test_get_missing_returns_none(self, keys: ApiKeyStore) -> None:
        assert keys.get("k" + _uid()) is None

    def test_create_duplicate_conflicts(self, keys: ApiKeyStore) -> None:
        record = _api_key("k" + _uid())
        keys.create(record)
        with pytest.raises(Conflict):
            keys.create(replace(record, subject="someone-else"))
        assert keys.get(record.key_id) == record

    def test_put_overwrites(self, keys: ApiKeyStore) -> None:
        record = _api_key("k" + _uid())
        keys.create(record)
        revoked = replace(record, revoked=True, revoked_at=now_iso(), revoked_by="admin")
        keys.put(revoked)
        assert keys.get(record.key_id) == revoked

    def test_list(self, keys: ApiKeyStore) -> None:
        records = [_api_key("k" + _uid()) for _ in range(3)]
        for record in records:
            keys.create(record)
        listed = {r.key_id: r for r in keys.list()}
        for record in records:
            assert listed[record.key_id] == record


class TestSqliteApiKeyStore(ApiKeyStoreContract):
    @pytest.fixture
    def keys(self, tmp_path: Any) -> Iterator[ApiKeyStore]:
        store = SqliteApiKeyStore(SqliteDatabase(tmp_path / "db.sqlite"))
        yield store
        store.close()


# ---- BlobStore ----------------------------------------------------------------------------------


class BlobStoreContract:
    """Override ``blobs``; override ``secrets`` with every credential that must never leak in a URL."""

    many_objects = 2500  # more than two pages of 1,000 keys

    @staticmethod
    def listing_order(key: str) -> Any:
        """How the store orders a listing: plain byte order, as S3 documents it."""
        return key

    @pytest.fixture
    def blobs(self) -> Iterator[BlobStore]:
        raise NotImplementedError("subclasses provide the store")

    @pytest.fixture
    def secrets(self) -> list[str]:
        return []

    @pytest.fixture
    def base(self) -> str:
        """A prefix of this test only."""
        return f"catalogs/c{_uid()}"

    def test_presign_is_scoped_and_leaks_no_secret(self, blobs: BlobStore, secrets: list[str], base: str) -> None:
        key = f"{base}/chunks/{'ab' * 32}"
        get_url = blobs.presign(key, "GET", 300)
        put_url = blobs.presign(key, "PUT", 300)
        other_url = blobs.presign(f"{base}/chunks/{'cd' * 32}", "GET", 300)
        for url in (get_url, put_url):
            assert url.startswith(("http://", "https://"))
            assert key in url
            for secret in secrets:
                assert secret not in url
        assert len({get_url, put_url, other_url}) == 3

    def test_put_get_round_trip(self, blobs: BlobStore, base: str) -> None:
        data = bytes(range(256)) * 17 + b"\x00" * 100
        blobs.put_bytes(f"{base}/1.0/arm64/index.json", data)
        assert blobs.get_bytes(f"{base}/1.0/arm64/index.json") == data
        blobs.put_bytes(f"{base}/empty", b"")
        assert blobs.get_bytes(f"{base}/empty") == b""

    def test_put_overwrites(self, blobs: BlobStore, base: str) -> None:
        blobs.put_bytes(f"{base}/x", b"one")
        blobs.put_bytes(f"{base}/x", b"two!")
        assert blobs.get_bytes(f"{base}/x") == b"two!"
        assert list(blobs.list(f"{base}/")) == [BlobInfo(f"{base}/x", 4)]

    def test_get_missing_is_not_found(self, blobs: BlobStore, base: str) -> None:
        with pytest.raises(NotFound):
            blobs.get_bytes(f"{base}/missing")

    def test_list_with_sizes_in_key_order(self, blobs: BlobStore, base: str) -> None:
        objects = {
            f"{base}/chunks/{'0' * 64}": b"a",
            f"{base}/chunks/{'f' * 64}": b"abc",
            f"{base}/1.0/arm64/index.json": b"{}",
            f"{base}/1.0.1/arm64/index.json": b"{ }",
            f"{base}/1.0/x86_64/index.json": b"",
            f"{base}/V2/arm64/index.json": b"XY",
        }
        for key, data in objects.items():
            blobs.put_bytes(key, data)
        listed = list(blobs.list(f"{base}/"))
        assert listed == [BlobInfo(k, len(objects[k])) for k in sorted(objects, key=self.listing_order)]

    def test_list_prefix_isolation(self, blobs: BlobStore, base: str) -> None:
        blobs.put_bytes(f"{base}a/x", b"1")
        blobs.put_bytes(f"{base}ab/x", b"22")
        blobs.put_bytes(f"{base}a/chunks/abc", b"333")
        blobs.put_bytes(f"{base}a/chunks/abd", b"4444")
        blobs.put_bytes(f"{base}a/chunks/b", b"5")
        assert [b.key for b in blobs.list(f"{base}a/")] == [
            f"{base}a/chunks/abc",
            f"{base}a/chunks/abd",
            f"{base}a/chunks/b",
            f"{base}a/x",
        ]
        # A partial key is a plain string prefix, as in S3.
        assert [b.key for b in blobs.list(f"{base}a/chunks/ab")] == [
            f"{base}a/chunks/abc",
            f"{base}a/chunks/abd",
        ]
        assert [b.key for b in blobs.list(f"{base}a")] == [
            f"{base}a/chunks/abc",
            f"{base}a/chunks/abd",
            f"{base}a/chunks/b",
            f"{base}a/x",
            f"{base}ab/x",
        ]

    def test_list_missing_prefix_is_empty(self, blobs: BlobStore, base: str) -> None:
        assert list(blobs.list(f"{base}/nothing/")) == []
        assert list(blobs.list(f"{base}/noth")) == []

    def test_delete_is_idempotent(self, blobs: BlobStore, base: str) -> None:
        blobs.put_bytes(f"{base}/a", b"1")
        blobs.put_bytes(f"{base}/b/c", b"2")
        blobs.put_bytes(f"{base}/keep", b"3")
        blobs.delete([f"{base}/a", f"{base}/b/c", f"{base}/missing"])
        blobs.delete([f"{base}/a", f"{base}/b/c"])
        blobs.delete([])
        assert [b.key for b in blobs.list(f"{base}/")] == [f"{base}/keep"]
        with pytest.raises(NotFound):
            blobs.get_bytes(f"{base}/a")

    def test_list_many_objects(self, blobs: BlobStore, base: str) -> None:
        keys = sorted(f"{base}/chunks/{i:064x}" for i in range(self.many_objects))
        for key in keys:
            blobs.put_bytes(key, b"x")
        listed = list(blobs.list(f"{base}/chunks/"))
        assert [b.key for b in listed] == keys
        assert {b.size for b in listed} == {1}
        blobs.delete(keys)
        assert list(blobs.list(f"{base}/")) == []

    # ---- write-once chunks and bounded reads (storage protocol v2, docs/adr-002-storage-protocol-v2.md)
    def test_head_reports_size_and_age(self, blobs: BlobStore, base: str) -> None:
        import time

        assert blobs.head(f"{base}/missing") is None
        before = time.time()
        blobs.put_bytes(f"{base}/h", b"12345")
        info = blobs.head(f"{base}/h")
        assert info is not None and info == BlobInfo(f"{base}/h", 5)
        assert info.modified is not None and abs(info.modified - before) < 120
        listed = list(blobs.list(f"{base}/"))
        assert listed[0].modified is not None and abs(listed[0].modified - before) < 120

    def test_put_if_absent_never_replaces(self, blobs: BlobStore, base: str) -> None:
        key = f"{base}/chunks/{'ab' * 32}"
        assert blobs.put_if_absent(key, b"first") is True
        assert blobs.put_if_absent(key, b"second, longer") is False
        assert blobs.get_bytes(key) == b"first"
        assert list(blobs.list(f"{base}/chunks/")) == [BlobInfo(key, 5)]

    def test_put_if_absent_races_have_one_winner(self, blobs: BlobStore, base: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        key = f"{base}/chunks/{'cd' * 32}"
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: blobs.put_if_absent(key, b"writer-%d" % i), range(8)))
        assert results.count(True) == 1
        winner = results.index(True)
        assert blobs.get_bytes(key) == b"writer-%d" % winner

    def test_taken_is_immune_to_a_later_put_and_promotes_write_once(self, blobs: BlobStore, base: str) -> None:
        staged, final = f"{base}/staging/x/{'ef' * 32}", f"{base}/chunks/{'ef' * 32}"
        blobs.put_bytes(staged, b"checked bytes")
        with blobs.taken(staged, max_bytes=100) as taken:
            assert taken.data == b"checked bytes"
            blobs.put_bytes(staged, b"swapped after the check")  # a client PUTs to its URL again
            assert taken.put_if_absent(final) is True
            assert taken.put_if_absent(final) is False
        assert blobs.get_bytes(final) == b"checked bytes"  # what was checked, never what came later
        blobs.put_bytes(f"{base}/other", b"y")
        with blobs.taken(f"{base}/other", max_bytes=10) as taken:
            assert taken.put_if_absent(final) is False  # an existing object is never replaced
        assert blobs.get_bytes(final) == b"checked bytes"
        assert blobs.head(f"{base}/other") is None  # taken objects are gone afterwards
        with pytest.raises(NotFound):
            blobs.taken(f"{base}/missing", max_bytes=10).__enter__()
        blobs.put_bytes(f"{base}/big", b"x" * 11)
        with pytest.raises(PayloadTooLarge):
            blobs.taken(f"{base}/big", max_bytes=10).__enter__()
        blobs.put_bytes(f"{base}/prefix/inner", b"z")  # a key that is only a prefix of others
        with pytest.raises(NotFound):
            blobs.taken(f"{base}/prefix", max_bytes=10).__enter__()
        assert blobs.get_bytes(f"{base}/prefix/inner") == b"z"  # and the keys under it are untouched

    def test_get_bytes_refuses_more_than_max(self, blobs: BlobStore, base: str) -> None:
        blobs.put_bytes(f"{base}/big", b"x" * 5000)
        assert blobs.get_bytes(f"{base}/big", max_bytes=5000) == b"x" * 5000
        with pytest.raises(PayloadTooLarge):
            blobs.get_bytes(f"{base}/big", max_bytes=4999)
        with pytest.raises(NotFound):
            blobs.get_bytes(f"{base}/nothing", max_bytes=10)


class PresignedUrlContract:
    """What storage itself must enforce on a presigned URL, checked by using the URL for real.

    Subclasses provide ``blobs`` (an adapter whose URLs a live server answers) and ``put_headers``.
    Run on the embedded server's file store, SeaweedFS (S3) and Azurite: moto checks none of this.
    """

    @pytest.fixture
    def blobs(self) -> Iterator[BlobStore]:
        raise NotImplementedError("subclasses provide the store")

    @pytest.fixture
    def base(self) -> str:
        return f"catalogs/u{_uid()}"

    def _put(self, blobs: BlobStore, url: str, data: bytes) -> int:
        import httpx

        return httpx.put(url, content=data, headers=dict(blobs.put_headers), timeout=30).status_code

    def test_put_url_writes_and_get_url_reads(self, blobs: BlobStore, base: str) -> None:
        import httpx

        key = f"{base}/staging/x"
        assert self._put(blobs, blobs.presign(key, "PUT", 300), b"payload") in (200, 201)
        assert blobs.get_bytes(key) == b"payload"
        got = httpx.get(blobs.presign(key, "GET", 300), timeout=30)
        assert got.status_code == 200 and got.content == b"payload"

    def test_get_url_cannot_put_or_delete(self, blobs: BlobStore, base: str) -> None:
        import httpx

        key = f"{base}/chunks/{'ef' * 32}"
        blobs.put_bytes(key, b"original")
        url = blobs.presign(key, "GET", 300)
        assert self._put(blobs, url, b"overwrite") in (400, 401, 403, 405)
        assert httpx.delete(url, timeout=30).status_code in (400, 401, 403, 405)
        assert blobs.get_bytes(key) == b"original"

    def test_put_url_cannot_read(self, blobs: BlobStore, base: str) -> None:
        import httpx

        key = f"{base}/chunks/{'12' * 32}"
        blobs.put_bytes(key, b"secret bytes")
        got = httpx.get(blobs.presign(key, "PUT", 300), timeout=30)
        assert got.status_code in (400, 401, 403, 405)
        assert b"secret bytes" not in got.content

    def test_url_is_scoped_to_its_key(self, blobs: BlobStore, base: str) -> None:
        import httpx

        blobs.put_bytes(f"{base}/a", b"A")
        blobs.put_bytes(f"{base}/b", b"B")
        url = blobs.presign(f"{base}/a", "GET", 300)
        other = url.replace(f"{base}/a", f"{base}/b")
        got = httpx.get(other, timeout=30)
        assert got.status_code in (400, 401, 403) and got.content != b"B"

    def test_expired_url_is_refused(self, blobs: BlobStore, base: str) -> None:
        import time

        import httpx

        key = f"{base}/e"
        blobs.put_bytes(key, b"E")
        url = blobs.presign(key, "GET", 1)
        put_url = blobs.presign(f"{base}/e2", "PUT", 1)
        time.sleep(2.5)
        assert httpx.get(url, timeout=30).status_code in (400, 401, 403)
        assert self._put(blobs, put_url, b"late") in (400, 401, 403)
        assert blobs.head(f"{base}/e2") is None


_SIGNING_KEY = b"contract-test-signing-key-0123456789"


class TestFileBlobStore(BlobStoreContract):
    @pytest.fixture
    def blobs(self, tmp_path: Any) -> Iterator[BlobStore]:
        store = FileBlobStore(tmp_path / "blobs", "http://127.0.0.1:8080", _SIGNING_KEY)
        yield store
        store.close()

    @pytest.fixture
    def secrets(self) -> list[str]:
        return [_SIGNING_KEY.decode(), _SIGNING_KEY.hex()]

    # -- file-specific: put_if_absent is a temp file link(2)-ed into place
    def test_put_if_absent_leaves_no_temp_file(self, blobs: BlobStore, base: str) -> None:
        import os

        assert isinstance(blobs, FileBlobStore)
        key = f"{base}/chunks/{'01' * 32}"
        assert blobs.put_if_absent(key, b"one") is True
        assert blobs.put_if_absent(key, b"two") is False
        assert os.listdir(blobs.root / "tmp") == []
        assert os.stat(blobs.root / "objects" / base / "chunks" / ("01" * 32)).st_nlink == 1

    def test_put_if_absent_over_a_prefix_conflicts(self, blobs: BlobStore, base: str) -> None:
        import os

        assert isinstance(blobs, FileBlobStore)
        blobs.put_bytes(f"{base}/dir/x", b"x")
        with pytest.raises(Conflict):
            blobs.put_if_absent(f"{base}/dir", b"y")  # a prefix of another key, not an object
        with pytest.raises(Conflict):
            blobs.put_if_absent(f"{base}/dir/x/y", b"y")  # below an object
        assert blobs.head(f"{base}/dir") is None
        assert os.listdir(blobs.root / "tmp") == []

    def test_put_if_absent_respects_the_size_limit(self, tmp_path: Any) -> None:
        store = FileBlobStore(tmp_path / "small", "http://127.0.0.1:8080", _SIGNING_KEY, max_object_size=4)
        with pytest.raises(PayloadTooLarge):
            store.put_if_absent("catalogs/c/chunks/x", b"12345")
        assert store.head("catalogs/c/chunks/x") is None
        assert store.put_if_absent("catalogs/c/chunks/x", b"1234") is True

    def test_put_if_absent_keeps_the_case_encoding(self, blobs: BlobStore, base: str) -> None:
        assert blobs.put_if_absent(f"{base}/V1/index.json", b"upper") is True
        assert blobs.put_if_absent(f"{base}/v1/index.json", b"lower") is True
        assert blobs.get_bytes(f"{base}/V1/index.json") == b"upper"
        assert [b.key for b in blobs.list(f"{base}/")] == [f"{base}/V1/index.json", f"{base}/v1/index.json"]

    def test_get_bytes_checks_the_size_before_reading(self, blobs: BlobStore, base: str) -> None:
        assert isinstance(blobs, FileBlobStore)
        blobs.put_bytes(f"{base}/big", b"x" * 100)
        reads: list[int] = []
        original = FileBlobStore.open_for_read

        def spy(self: FileBlobStore, key: str) -> Any:
            handle, size = original(self, key)
            real_read = handle.read

            def read(n: int = -1) -> bytes:
                reads.append(n)
                return real_read(n)

            handle.read = read  # type: ignore[method-assign]
            return handle, size

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(FileBlobStore, "open_for_read", spy)
            with pytest.raises(PayloadTooLarge):
                blobs.get_bytes(f"{base}/big", max_bytes=99)
            assert reads == []
            assert blobs.get_bytes(f"{base}/big", max_bytes=100) == b"x" * 100
            assert reads and all(0 <= n <= 101 for n in reads)
