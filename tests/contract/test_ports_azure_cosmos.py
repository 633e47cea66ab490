"""The Cosmos DB stores (azure_app, azure-cosmos) against the real emulator on loopback.

They run the shared :class:`ManifestStoreContract` / :class:`ApiKeyStoreContract`, then what only
Cosmos has: requests counted per operation (point reads are one request; get / replace /
record_download never query; catalog-scoped queries never fan out across partitions), keyset pages
of the cross-partition global listing that stay put while other partitions are written, the
documented document shape, and error translation (a stopped emulator is ``Unavailable`` with a
one-line message that carries no key). One emulator per module (per xdist worker); each test class
gets a database and container of its own.
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from azure_app.azurelib.cosmos_store import (
    API_KEYS_PARTITION,
    PARTITION_KEY_PATH,
    CosmosApiKeyStore,
    CosmosManifestStore,
    Request,
    _sort_key,
    connect,
    manifest_query_sql,
)
from core.errors import Conflict, InvalidInput, NotFound, PdcatError, Unavailable
from core.identity import ManifestKey
from core.ports import ApiKeyStore, ManifestQuery, ManifestStore
from infra.local.cosmos_emulator import COSMOS_EMULATOR_KEY, COSMOS_EMULATOR_VERIFY_TLS, start_cosmos
from infra.local.servers import RunningProcess, free_port
from tests.contract.test_ports import (
    ApiKeyStoreContract,
    ManifestStoreContract,
    _api_key,
    _manifest,
    _uid,
)

if TYPE_CHECKING:
    from azure.cosmos import ContainerProxy

# The emulator's certificate is self-signed; verification is off for these clients only.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

AT = "2030-01-01T00:00:00.000000Z"


def _connect(url: str, database: str, *, create: bool = True) -> ContainerProxy:
    return connect(
        url, database, "catalog", key=COSMOS_EMULATOR_KEY, verify_tls=COSMOS_EMULATOR_VERIFY_TLS, create=create
    )


@pytest.fixture(scope="module")
def cosmos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    server = start_cosmos(tmp_path_factory.mktemp("cosmos"))  # raises (never skips) if it cannot start
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="class")
def container(cosmos: RunningProcess) -> ContainerProxy:
    """A fresh database + container for each test class (created twice: ``create`` is idempotent)."""
    database = f"pdcat-{uuid.uuid4().hex[:12]}"
    _connect(cosmos.url, database)
    return _connect(cosmos.url, database)


@pytest.fixture
def cosmos_store(container: ContainerProxy) -> Iterator[CosmosManifestStore]:
    store = CosmosManifestStore(container)
    yield store
    store.close()


class TestCosmosManifestStore(ManifestStoreContract):
    @pytest.fixture
    def store(self, cosmos_store: CosmosManifestStore) -> Iterator[ManifestStore]:
        yield cosmos_store


class TestCosmosApiKeyStore(ApiKeyStoreContract):
    @pytest.fixture
    def keys(self, container: ContainerProxy) -> Iterator[ApiKeyStore]:
        store = CosmosApiKeyStore(container)
        yield store
        store.close()

    def test_requests_per_operation(self, container: ContainerProxy) -> None:
        store = CosmosApiKeyStore(container)
        record = _api_key("k" + _uid())
        store.create(record)
        assert store.operations == Counter({"create": 1})
        store.reset_calls()
        assert store.get(record.key_id) == record
        store.put(replace(record, revoked=True))
        assert any(r.key_id == record.key_id for r in store.list())
        assert store.operations == Counter({"read": 1, "upsert": 1, "query": 1})
        assert not any(r.cross_partition for r in store.requests)

    def test_keys_never_show_up_as_manifests(self, container: ContainerProxy) -> None:
        keys = CosmosApiKeyStore(container)
        keys.create(_api_key("k" + _uid()))
        manifests = CosmosManifestStore(container)
        assert all(m.catalog_id != API_KEYS_PARTITION for m in manifests.iter_all())
        assert manifests.query(ManifestQuery(catalog_id=API_KEYS_PARTITION)) == []

    def test_unusable_key_ids(self, container: ContainerProxy) -> None:
        store = CosmosApiKeyStore(container)
        with pytest.raises(InvalidInput):
            store.create(_api_key("a/b"))
        assert store.get("a#b") is None
        assert store.get("") is None


class TestCosmosSpecifics:
    def test_separator_order_is_key_order(self) -> None:
        # '#' sorts below every character allowed in catalog ids and versions.
        keys = [
            ManifestKey(c, v, a)
            for c in ("a", "a-b", "a.b", "a_b", "ab", "a0", "b")
            for v in ("1", "1+x", "1-x", "1.0", "1.10", "1.9", "1_0", "10", "A1", "a1", "Z-2")
            for a in ("arm64", "x86_64")
        ]
        assert sorted(keys) == sorted(keys, key=lambda k: _sort_key(k).encode())

    def test_partition_key_path(self, container: ContainerProxy) -> None:
        assert PARTITION_KEY_PATH == "/pk"
        assert container.read()["partitionKey"]["paths"] == [PARTITION_KEY_PATH]

    def test_document_shape(self, cosmos_store: CosmosManifestStore, container: ContainerProxy) -> None:
        manifest = _manifest("c" + _uid(), "1.0+b", "x86_64", tags=["t"])
        cosmos_store.create(manifest)
        cosmos_store.record_download(manifest.key, by="ann", at=AT)
        doc = container.read_item("1.0+b:x86_64", partition_key=manifest.catalog_id)
        assert doc["pk"] == manifest.catalog_id and doc["type"] == "manifest"
        assert doc["sk"] == f"{manifest.catalog_id}#1.0+b#x86_64"
        assert (doc["download_count"], doc["last_downloaded_by"], doc["last_downloaded_at"]) == (1, "ann", AT)
        assert doc["m"]["id"] == manifest.id and doc["m"]["tags"] == ["t"]
        assert not {"download_count", "last_downloaded_at", "last_downloaded_by"} & set(doc["m"])

    def test_requests_per_operation(self, cosmos_store: CosmosManifestStore) -> None:
        store = cosmos_store
        cid = "c" + _uid()
        manifest = _manifest(cid, tags=["one" + cid])

        def cost(action: Callable[[], Any]) -> list[Request]:
            store.reset_calls()
            action()
            return store.requests

        assert cost(lambda: store.get(manifest.key)) == [Request("read")]  # missing: still one request
        holder: dict[str, str] = {}
        assert cost(lambda: holder.update(e=store.create(manifest))) == [Request("create")]
        assert cost(lambda: store.get(manifest.key)) == [Request("read")]
        assert cost(lambda: holder.update(e=store.replace(replace(manifest, description="d"), holder["e"]))) == [
            Request("replace")
        ]
        assert cost(lambda: store.record_download(manifest.key, by="a", at=AT)) == [Request("patch")]
        store.reset_calls()
        with pytest.raises(Conflict):
            store.replace(manifest, holder["e"])  # the patch changed the etag
        assert store.requests == [Request("replace")]
        # Catalog-scoped queries stay in the catalog's partition, whatever else filters them.
        scoped: list[dict[str, Any]] = [
            {},
            {"tag": "one" + cid},
            {"architecture": "arm64"},
            {"tag": "x", "architecture": "x86_64"},
        ]
        for filters in scoped:
            assert cost(functools.partial(store.query, ManifestQuery(catalog_id=cid, limit=5, **filters))) == [
                Request("query", cross_partition=False)
            ]
        # The global listing is the one cross-partition query: still one request per page.
        for filters in scoped[:3]:
            assert cost(functools.partial(store.query, ManifestQuery(limit=5, **filters))) == [
                Request("query", cross_partition=True)
            ]
        current = store.get(manifest.key)
        assert current is not None
        assert cost(lambda: store.delete(manifest.key, etag=current.etag)) == [Request("delete")]
        assert cost(lambda: store.delete(manifest.key)) == [Request("delete")]  # missing: fine, one request
        assert store.calls == 1 and store.operations == Counter({"delete": 1})

    def test_request_paths_never_query(self, cosmos_store: CosmosManifestStore) -> None:
        store = cosmos_store
        cid = "c" + _uid()
        store.reset_calls()
        for i in range(5):
            manifest = _manifest(cid, f"{i}.0", tags=["t"])
            etag = store.create(manifest)
            stored = store.get(manifest.key)
            assert stored is not None and stored.etag == etag
            etag = store.replace(stored.manifest.taint("bob"), etag)
            store.record_download(manifest.key, by="ann", at=AT)
            with pytest.raises(Conflict):
                store.delete(manifest.key, etag=etag)
        with pytest.raises(NotFound):
            store.record_download(ManifestKey(cid, "9.9", "arm64"), by="ann", at=AT)
        assert store.operations == Counter({"create": 5, "read": 5, "replace": 5, "patch": 6, "delete": 5})

    def test_catalog_queries_are_single_partition_over_a_workload(self, cosmos_store: CosmosManifestStore) -> None:
        store = cosmos_store
        cid = "c" + _uid()
        for i in range(12):
            store.create(_manifest(cid, f"{i:02d}", "arm64" if i % 2 else "x86_64", tags=["t"] if i % 3 else []))
        store.reset_calls()
        assert len(list(store.iter_all(cid))) == 12
        filters: list[dict[str, Any]] = [{"tag": "t"}, {"architecture": "arm64"}]
        pages = [store.query(ManifestQuery(catalog_id=cid, limit=3, **f)) for f in filters]
        assert [len(p) for p in pages] == [3, 3]
        keyset = store.query(ManifestQuery(catalog_id=cid, after=ManifestKey(cid, "05", "arm64"), limit=100))
        assert [m.version for m in keyset] == [f"{i:02d}" for i in range(6, 12)]
        queries = store.requests
        assert queries and all(r == Request("query", cross_partition=False) for r in queries), queries

    def test_global_pages_are_stable_under_writes_in_other_partitions(self, cosmos_store: CosmosManifestStore) -> None:
        store = cosmos_store
        base = "g" + _uid()
        # Catalogs sharing a prefix; only this test's keys are compared (other tests share the container).
        catalogs = [f"{base}-{n}" for n in ("b", "d", "f")]
        tag = "t" + base
        for c in catalogs:
            for v in ("1.0", "2.0"):
                for arch in ("arm64", "x86_64"):
                    store.create(_manifest(c, v, arch, tags=[tag]))

        written = iter(range(1000))

        def walk(limit: int, **filters: Any) -> tuple[list[ManifestKey], list[ManifestKey], list[ManifestKey]]:
            seen: list[ManifestKey] = []
            behind: list[ManifestKey] = []
            ahead: list[ManifestKey] = []
            after: ManifestKey | None = None
            while True:
                page = store.query(ManifestQuery(after=after, limit=limit, **filters))
                seen.extend(m.key for m in page)
                if len(page) < limit:
                    return seen, behind, ahead
                after = page[-1].key
                if after.catalog_id.startswith(base):
                    # Writes between pages, in other partitions: one below every key of this test (so
                    # behind the cursor), one above every key (ahead of it), and a replace of a
                    # manifest already returned (it must not come back).
                    k = next(written)
                    old = _manifest(f"{base}-a{999 - k:03d}", "1.0", "arm64", tags=[tag])
                    new = _manifest(f"{base}-z{k:03d}", "1.0", "arm64", tags=[tag])
                    store.create(old)
                    store.create(new)
                    behind.append(old.key)
                    ahead.append(new.key)
                    done = store.get(seen[-1])
                    assert done is not None
                    store.replace(replace(done.manifest, description="touched"), done.etag)

        for filters in ({}, {"tag": tag}, {"architecture": "arm64"}):
            seen, behind, ahead = walk(4, **filters)
            mine = [k for k in seen if k.catalog_id.startswith(base)]
            assert seen == sorted(seen) and len(set(seen)) == len(seen), filters
            assert behind and not set(behind) & set(mine), filters
            assert set(ahead) <= set(mine), filters
            wanted = {k for k in mine if k.catalog_id in catalogs}
            expected = {
                ManifestKey(c, v, a)
                for c in catalogs
                for v in ("1.0", "2.0")
                for a in ("arm64", "x86_64")
                if a == filters.get("architecture", a)
            }
            assert wanted == expected, filters

    def test_query_parameters_never_reach_the_sql_text(self) -> None:
        hostile = "x' OR 1=1 --"
        sql, params = manifest_query_sql(
            ManifestQuery(catalog_id="c", tag=hostile, architecture="arm64", after=ManifestKey("c", "1", "arm64"))
        )
        assert hostile not in sql and "arm64" not in sql
        assert {p["name"] for p in params} == {"@limit", "@type", "@pk", "@tag", "@arch", "@after"}
        assert "ORDER BY c.sk" in sql and "c.sk > @after" in sql

    def test_record_download_of_missing_is_not_found_in_one_request(self, cosmos_store: CosmosManifestStore) -> None:
        cosmos_store.reset_calls()
        with pytest.raises(NotFound):
            cosmos_store.record_download(ManifestKey("c" + _uid(), "1", "arm64"), by="a", at=AT)
        assert cosmos_store.requests == [Request("patch")]

    def test_repr_names_the_container_only(self, cosmos_store: CosmosManifestStore) -> None:
        assert repr(cosmos_store) == "CosmosManifestStore(container='catalog')"
        assert COSMOS_EMULATOR_KEY not in repr(cosmos_store)

    def test_missing_container_is_unavailable(self, cosmos: RunningProcess) -> None:
        with pytest.raises(Unavailable, match="container does not exist"):
            _connect(cosmos.url, "no-such-" + _uid(), create=False)

    def test_connect_checks_its_arguments(self, cosmos: RunningProcess) -> None:
        with pytest.raises(InvalidInput):
            connect(cosmos.url, "d", "c")  # neither key nor credential
        with pytest.raises(InvalidInput):
            connect("127.0.0.1:1234", "d", "c", key=COSMOS_EMULATOR_KEY)
        with pytest.raises(InvalidInput):
            connect(cosmos.url, "", "c", key=COSMOS_EMULATOR_KEY)

    def test_unreachable_endpoint_is_unavailable(self) -> None:
        with pytest.raises(Unavailable) as info:
            _connect(f"https://127.0.0.1:{free_port()}", "d")
        _assert_clean(info.value)

    def test_stopped_emulator_is_unavailable(self, tmp_path: Path) -> None:
        server = start_cosmos(tmp_path)
        try:
            store = CosmosManifestStore(_connect(server.url, "d"))
            manifest = _manifest("c" + _uid())
            store.create(manifest)
        finally:
            server.stop()
        actions: list[Callable[[], object]] = [
            lambda: store.get(manifest.key),
            lambda: store.query(ManifestQuery(limit=5)),
        ]
        for action in actions:
            with pytest.raises(Unavailable) as info:
                action()
            _assert_clean(info.value)


def _assert_clean(error: PdcatError) -> None:
    """One line for a user: no SDK text, no URL, no key; the SDK's exception kept as the cause."""
    message = str(error)
    assert "\n" not in message and message == error.message
    assert COSMOS_EMULATOR_KEY not in message and "127.0.0.1" not in message and "https://" not in message
    assert error.__cause__ is not None and not isinstance(error.__cause__, PdcatError)
    assert type(error).__module__ == "core.errors"
