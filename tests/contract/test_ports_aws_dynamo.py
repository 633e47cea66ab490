"""The DynamoDB stores (aws_app, pynamodb) against a real ``moto_server`` on loopback.

They run the shared :class:`ManifestStoreContract` / :class:`ApiKeyStoreContract`, then what only
DynamoDB has: request counts per operation, "no Scan anywhere" over a whole workload, key-order
checks of the ``#`` separator, and error translation. moto is started once per module (per xdist
worker) and each test class gets a table of its own. Dummy credentials live in the models' Meta:
nothing is written to ``os.environ``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import botocore.client
import pytest

from aws_app.chalicelib.dynamo_store import (
    DynamoApiKeyStore,
    DynamoManifestStore,
    _global_sk,
    create_table,
)
from core.errors import Conflict, NotFound, Unavailable
from core.identity import ManifestKey
from core.manifest import Manifest
from core.ports import ApiKeyStore, ManifestQuery, ManifestStore
from infra.local.servers import RunningProcess, free_port, start_moto
from tests.contract.test_ports import (
    ApiKeyStoreContract,
    ManifestStoreContract,
    _api_key,
    _manifest,
    _uid,
)

REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    server = start_moto(tmp_path_factory.mktemp("moto"), serial=True)  # raises (never skips) if it cannot start
    try:
        yield server
    finally:
        server.stop()


def test_stock_moto_server_also_serves_the_store(tmp_path: Path) -> None:
    """The plain ``start_moto`` used elsewhere works too (single requests; no race guarantees)."""
    with start_moto(tmp_path) as server:
        name = f"pdcat-{uuid.uuid4().hex[:12]}"
        create_table(name, REGION, server.url)
        store = DynamoManifestStore(name, region=REGION, host=server.url)
        manifest = _manifest("c" + _uid(), tags=["x"])
        etag = store.create(manifest)
        stored = store.get(manifest.key)
        assert stored is not None and stored.etag == etag and stored.manifest == manifest


@pytest.fixture(scope="class")
def table(moto: RunningProcess) -> str:
    """A fresh table for each test class."""
    name = f"pdcat-{uuid.uuid4().hex[:12]}"
    create_table(name, REGION, moto.url)
    create_table(name, REGION, moto.url)  # idempotent
    return name


@pytest.fixture
def dynamo(moto: RunningProcess, table: str) -> Iterator[DynamoManifestStore]:
    store = DynamoManifestStore(table, region=REGION, host=moto.url)
    yield store
    store.close()


class TestDynamoManifestStore(ManifestStoreContract):
    # moto handles a few hundred requests/s; the races keep 8 threads, with fewer rounds/downloads.
    race_rounds = 2
    downloads_per_thread = 10
    pagination_total = 150  # 5 catalogs x 15 versions x 2 architectures: still ~22 pages of 7

    @pytest.fixture
    def store(self, dynamo: DynamoManifestStore) -> Iterator[ManifestStore]:
        yield dynamo


class TestDynamoApiKeyStore(ApiKeyStoreContract):
    @pytest.fixture
    def keys(self, moto: RunningProcess, table: str) -> Iterator[ApiKeyStore]:
        store = DynamoApiKeyStore(table, region=REGION, host=moto.url)
        yield store
        store.close()

    def test_requests_per_operation(self, moto: RunningProcess, table: str) -> None:
        store = DynamoApiKeyStore(table, region=REGION, host=moto.url)
        record = _api_key("k" + _uid())
        store.create(record)
        assert store.operations == Counter({"PutItem": 1})
        store.reset_calls()
        assert store.get(record.key_id) == record
        store.put(replace(record, revoked=True))
        assert any(r.key_id == record.key_id for r in store.list())
        assert store.operations == Counter({"GetItem": 1, "PutItem": 1, "Query": 1})


class TestDynamoSpecifics:
    def test_separator_order_is_key_order(self) -> None:
        # '#' sorts below every character allowed in catalog ids and versions.
        keys = [
            ManifestKey(c, v, a)
            for c in ("a", "a-b", "a.b", "a_b", "ab", "a0", "b")
            for v in ("1", "1+x", "1-x", "1.0", "1.10", "1.9", "1_0", "10", "A1", "a1", "Z-2")
            for a in ("arm64", "x86_64")
        ]
        assert sorted(keys) == sorted(keys, key=lambda k: _global_sk(k).encode())

    def test_requests_per_operation(self, dynamo: DynamoManifestStore) -> None:
        cid = "c" + _uid()
        manifest = _manifest(cid, tags=["one"])
        dynamo.reset_calls()

        def cost(action: Any) -> Counter[str]:
            dynamo.reset_calls()
            action()
            return dynamo.operations

        assert cost(lambda: dynamo.get(manifest.key)) == {"GetItem": 1}
        dynamo.reset_calls()
        etag = dynamo.create(manifest)
        assert dynamo.operations == {"TransactWriteItems": 1}  # manifest + its tag item, atomically
        assert cost(lambda: dynamo.create(_manifest(cid, "2.0"))) == {"PutItem": 1}  # no tags
        stored = dynamo.get(manifest.key)
        assert stored is not None and stored.etag == etag
        holder: dict[str, str] = {}
        # Tags change: one TransactWriteItems (the etag names the old tags, no read needed).
        assert cost(lambda: holder.update(e=dynamo.replace(replace(manifest, tags=["two"]), etag))) == {
            "TransactWriteItems": 1
        }
        # Tags unchanged: one conditional PutItem.
        assert cost(
            lambda: holder.update(e=dynamo.replace(replace(manifest, tags=["two"], description="d"), holder["e"]))
        ) == {"PutItem": 1}
        assert cost(lambda: dynamo.record_download(manifest.key, by="a", at="2030-01-01T00:00:00.000000Z")) == {
            "UpdateItem": 1
        }
        assert cost(lambda: dynamo.query(ManifestQuery(catalog_id=cid, limit=1))) == {"Query": 1}
        assert cost(lambda: dynamo.query(ManifestQuery(limit=5))) == {"Query": 1}
        assert cost(lambda: dynamo.query(ManifestQuery(architecture="arm64", limit=5))) == {"Query": 1}
        assert cost(lambda: dynamo.query(ManifestQuery(tag="two", limit=5))) == {"Query": 1, "BatchGetItem": 1}
        # A replace from another process (etag not seen here) reads once first.
        other = DynamoManifestStore(dynamo.table_name, region=REGION, host=dynamo.host)
        current = dynamo.get(manifest.key)
        assert current is not None
        other.replace(replace(current.manifest, tags=["three"]), current.etag)
        assert other.operations == {"GetItem": 1, "TransactWriteItems": 1}
        assert dynamo.calls == sum(dynamo.operations.values())

    def test_no_scan_over_a_whole_workload(self, dynamo: DynamoManifestStore, monkeypatch: Any) -> None:
        seen: Counter[str] = Counter()
        original = botocore.client.BaseClient._make_api_call

        def recording(self: Any, operation_name: str, api_params: Any) -> Any:
            seen[operation_name] += 1
            return original(self, operation_name, api_params)

        monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
        cid = "c" + _uid()
        tag = "t" + cid
        for i in range(12):
            dynamo.create(_manifest(cid, f"{i}.0", "arm64" if i % 2 else "x86_64", tags=[tag] if i % 3 else []))
        stored = dynamo.get(ManifestKey(cid, "1.0", "arm64"))
        assert stored is not None
        etag = dynamo.replace(replace(stored.manifest, tags=["x" + cid]), stored.etag)
        dynamo.record_download(stored.manifest.key, by="bob", at="2030-01-01T00:00:00.000000Z")
        with pytest.raises(Conflict):
            dynamo.delete(stored.manifest.key, etag=etag)
        dynamo.delete(ManifestKey(cid, "2.0", "x86_64"))
        for filters in (
            {},
            {"catalog_id": cid},
            {"tag": tag},
            {"architecture": "arm64"},
            {"tag": tag, "catalog_id": cid},
        ):
            list(dynamo.iter_all(cid)) if not filters else dynamo.query(ManifestQuery(limit=3, **filters))
        list(dynamo.iter_all())
        keys = DynamoApiKeyStore(dynamo.table_name, region=REGION, host=dynamo.host)
        keys.create(_api_key("k" + _uid()))
        keys.list()
        assert seen, "the recorder saw nothing"
        assert "Scan" not in seen, seen
        assert set(seen) <= {
            "GetItem",
            "PutItem",
            "UpdateItem",
            "DeleteItem",
            "Query",
            "TransactWriteItems",
            "BatchGetItem",
        }

    def test_tag_query_verifies_membership(self, dynamo: DynamoManifestStore) -> None:
        # A replace from a process that never saw the old tags still removes the tag items, and a
        # stray tag item (e.g. a trailing delete that failed) never surfaces a manifest.
        cid = "c" + _uid()
        manifest = _manifest(cid, tags=["a" + cid])
        etag = dynamo.create(manifest)
        stray = dynamo._models.tag(f"TAG#b{cid}", _global_sk(manifest.key), catalog_id=cid, arch="arm64")
        stray.save()
        assert dynamo.query(ManifestQuery(tag="b" + cid)) == []
        other = DynamoManifestStore(dynamo.table_name, region=REGION, host=dynamo.host)
        other.replace(replace(manifest, tags=[]), etag)
        assert dynamo.query(ManifestQuery(tag="a" + cid)) == []

    def test_record_download_of_missing_is_not_found_in_one_call(self, dynamo: DynamoManifestStore) -> None:
        dynamo.reset_calls()
        with pytest.raises(NotFound):
            dynamo.record_download(ManifestKey("c" + _uid(), "1", "arm64"), by="a", at="x")
        assert dynamo.operations == {"UpdateItem": 1}

    def test_unreachable_endpoint_is_unavailable(self) -> None:
        store = DynamoManifestStore("t", region=REGION, host=f"http://127.0.0.1:{free_port()}")
        with pytest.raises(Unavailable) as info:
            store.get(ManifestKey("a", "1", "arm64"))
        assert info.value.__cause__ is not None

    def test_missing_table_is_unavailable(self, moto: RunningProcess) -> None:
        store = DynamoManifestStore("no-such-" + _uid(), region=REGION, host=moto.url)
        with pytest.raises(Unavailable):
            store.create(Manifest(catalog_id="a", version="1", architecture="arm64"))
