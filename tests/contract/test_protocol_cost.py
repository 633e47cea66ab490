"""What a push and a pull cost in storage and store requests does not depend on the catalog's history
(docs/adr-002-storage-protocol-v2.md, "Cost independent of the catalog").

Service level, in process: ``CatalogService`` over counting proxies of its two ports, over the
embedded adapters (SQLite + ``FileBlobStore``) and the AWS adapters (DynamoDB on a moto server,
``S3BlobStore`` on SeaweedFS, as ``tests/conftest.py``'s ``LocalInfra`` runs them).
The client's presigned PUTs and GETs are stood in for by writes and reads on the *uncounted* adapter:
the catalog does not pay for them.

Version 1 of a catalog is pushed and pulled and its requests counted per phase and method; 19 more
versions (other content, more than 1,000 chunks in all) fill the catalog; version 21, with as many
chunks as version 1 (all new too), must cost exactly the same requests. The tolerance is 0: every
request of these paths is decided by the digests named and the session's own objects, none by what
else the catalog holds, so any difference is a request that scales with history.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import secrets
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from core.identity import ManifestKey
from core.local.file_blobs import FileBlobStore
from core.local.sqlite_store import SqliteApiKeyStore, SqliteDatabase, SqliteManifestStore
from core.manifest import Manifest
from core.ports import ApiKeyStore, BlobInfo, BlobStore, HttpMethod, ManifestQuery, ManifestStore, Stored
from core.rbac import Principal
from core.service import CatalogService
from core.storage_layout import chunks_prefix, staging_chunk_key, staging_index_key
from core.wire import CHUNK_PAGE, VERIFY_PAGE
from infra.local.servers import REPO, RunningProcess, start_moto
from tests.contract.helpers import build_pack, declaration, index_bytes

ARCH = "x86_64"
KIB4 = 4096
V1_CHUNKS = 70  # > 2 verify pages, and a partial one
HISTORY_VERSIONS = range(2, 21)
HISTORY_CHUNKS = 80  # per version, 26 of them shared: 70 + 19 x 54 = 1,096 chunks before version 21
TOLERANCE = 0
_ZSTD = zstandard.ZstdCompressor(level=3)
PUSHER = Principal.of("pusher", ["PUBLISHER"])
PULLER = Principal.of("puller", ["USER"])


# ---- counting proxies ----------------------------------------------------------------------------------


class _Counts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    def add(self, method: str, n: int = 1) -> None:
        with self._lock:
            self.calls[method] += n

    def take(self) -> Counter[str]:
        """The calls since the last take, and start counting afresh."""
        with self._lock:
            calls, self.calls = self.calls, Counter()
        return calls


class CountingBlobStore(BlobStore):
    """Forwards every call and counts it per method; ``list`` counts one call per 1,000 keys yielded
    (as S3, Azure and the file store page), and remembers every prefix listed."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.put_headers = inner.put_headers
        self.counts = _Counts()
        self.listed: list[str] = []
        self.read: list[str] = []

    def presign(self, key: str, method: HttpMethod, expires_in: int) -> str:
        self.counts.add(f"presign_{method}")  # no request: signing is local, counted to see it scale
        return self.inner.presign(key, method, expires_in)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        self.listed.append(prefix)
        self.counts.add("list")
        for n, info in enumerate(self.inner.list(prefix), start=1):
            if n % 1000 == 1 and n > 1:
                self.counts.add("list")
            yield info

    def head(self, key: str) -> BlobInfo | None:
        self.counts.add("head")
        return self.inner.head(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.counts.add("put_bytes")
        self.inner.put_bytes(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.counts.add("put_if_absent")
        return self.inner.put_if_absent(key, data)

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        self.counts.add("get_bytes")
        self.read.append(key)
        return self.inner.get_bytes(key, max_bytes=max_bytes)

    def delete(self, keys: Iterable[str]) -> None:
        self.counts.add("delete")
        self.inner.delete(keys)

    def close(self) -> None:
        self.inner.close()


class CountingManifestStore(ManifestStore):
    """Forwards every call and counts it per method; ``iter_all`` counts one call per 500 manifests
    (the page the base class asks for)."""

    def __init__(self, inner: ManifestStore) -> None:
        self.inner = inner
        self.counts = _Counts()

    def get(self, key: ManifestKey) -> Stored | None:
        self.counts.add("get")
        return self.inner.get(key)

    def create(self, manifest: Manifest) -> str:
        self.counts.add("create")
        return self.inner.create(manifest)

    def replace(self, manifest: Manifest, etag: str) -> str:
        self.counts.add("replace")
        return self.inner.replace(manifest, etag)

    def delete(self, key: ManifestKey, etag: str | None = None) -> None:
        self.counts.add("delete")
        self.inner.delete(key, etag)

    def query(self, query: ManifestQuery) -> builtins.list[Manifest]:
        self.counts.add("query")
        return self.inner.query(query)

    def record_download(self, key: ManifestKey, by: str, at: str) -> None:
        self.counts.add("record_download")
        self.inner.record_download(key, by, at)

    def iter_all(self, catalog_id: str | None = None) -> Iterator[Manifest]:
        self.counts.add("iter_all")
        for n, manifest in enumerate(self.inner.iter_all(catalog_id), start=1):
            if n % 500 == 1 and n > 1:
                self.counts.add("iter_all")
            yield manifest

    def close(self) -> None:
        self.inner.close()


# ---- the adapters ----------------------------------------------------------------------------------------


@dataclass
class Adapters:
    store: ManifestStore
    blobs: BlobStore
    api_keys: ApiKeyStore
    # DynamoDB requests by operation, as the adapter itself counts them (None elsewhere)
    dynamo_operations: Callable[[], Counter[str]] | None = None


def _embedded(tmp: Path) -> Adapters:
    db = SqliteDatabase(tmp / "catalog.sqlite")
    blobs = FileBlobStore(tmp / "blobs", "http://127.0.0.1:9", secrets.token_bytes(32))
    return Adapters(SqliteManifestStore(db), blobs, SqliteApiKeyStore(db))


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    from infra.local.seaweed import start_seaweed

    server = start_seaweed(
        tmp_path_factory.mktemp("seaweed-cost"), access_key_id="testing", secret_access_key="testing"
    )  # raises if it cannot start
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    server = start_moto(tmp_path_factory.mktemp("moto-cost"), serial=True)  # raises if it cannot start
    try:
        yield server
    finally:
        server.stop()


def _aws(moto: RunningProcess, tmp: Path, seaweed: RunningProcess | None = None) -> Adapters:
    """DynamoDB on moto and S3 on SeaweedFS; without ``seaweed`` the blobs are files (the DynamoDB
    half alone)."""
    sys.path.insert(0, str(REPO / "aws_app"))
    import boto3
    from chalicelib.dynamo_store import DynamoApiKeyStore, DynamoManifestStore, create_table
    from chalicelib.s3_blobs import S3BlobStore

    name = f"pdcat-cost-{uuid.uuid4().hex[:12]}"
    create_table(name, region="us-east-1", host=moto.url)
    store = DynamoManifestStore(name, region="us-east-1", host=moto.url)
    blobs: BlobStore
    if seaweed is not None:
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        s3_blobs = S3BlobStore(name, region="us-east-1", endpoint_url=seaweed.url, session=session)
        s3_blobs.create_bucket()
        blobs = s3_blobs
    else:
        blobs = FileBlobStore(tmp / "blobs", "http://127.0.0.1:9", secrets.token_bytes(32))
    return Adapters(store, blobs, DynamoApiKeyStore(name, region="us-east-1", host=moto.url), lambda: store.operations)


@pytest.fixture(params=["embedded", "aws", "dynamodb-files"])
def adapters(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Adapters:
    """``embedded``: SQLite + files. ``aws``: DynamoDB on moto + S3 on SeaweedFS. ``dynamodb-files``: DynamoDB with the
    file blob store, so the store's half of the AWS adapters is measured on its own as well."""
    if request.param == "embedded":
        return _embedded(tmp_path)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    seaweed = request.getfixturevalue("seaweed") if request.param == "aws" else None
    return _aws(request.getfixturevalue("moto"), tmp_path, seaweed)


# ---- driving the service as the client would -------------------------------------------------------------


def _block(version: int, i: int) -> bytes:
    return hashlib.sha256(f"cost-{version}-{i}".encode()).digest() * (KIB4 // 32)


def _nonce(upload_id: str) -> str:
    data = json.loads(base64.urlsafe_b64decode(upload_id + "=" * (-len(upload_id) % 4)))
    nonce: str = data[3]
    return nonce


Costs = dict[str, Counter[str]]  # phase -> method -> calls


class Harness:
    def __init__(self, adapters: Adapters, cid: str) -> None:
        self.adapters = adapters
        self.raw = adapters.blobs  # the uncounted adapter: what clients reach through presigned URLs
        self.blobs = CountingBlobStore(adapters.blobs)
        self.store = CountingManifestStore(adapters.store)
        self.cid = cid
        self.service = self.fresh_service()

    def fresh_service(self) -> CatalogService:
        """A new service over the same stores: a cold process (a new Lambda), no in-memory cache."""
        return CatalogService(self.store, self.blobs, self.adapters.api_keys)

    def _phase(self, costs: Costs, phase: str, action: Callable[[], Any]) -> Any:
        self.blobs.counts.take()
        self.store.counts.take()
        before = self.adapters.dynamo_operations() if self.adapters.dynamo_operations else Counter()
        result = action()
        calls = Counter({f"blobs.{k}": v for k, v in self.blobs.counts.take().items()})
        calls.update({f"store.{k}": v for k, v in self.store.counts.take().items()})
        if self.adapters.dynamo_operations:
            after = self.adapters.dynamo_operations()
            calls.update({f"dynamodb.{k}": after[k] - before[k] for k in after if after[k] - before[k]})
        costs.setdefault(phase, Counter()).update(calls)
        return result

    def push(self, version: str, blocks: list[bytes]) -> Costs:
        """Begin, ask about the chunks a page at a time, put the missing ones in staging, verify a
        page at a time, declare and put the index, commit: the requests of each phase."""
        pack = build_pack({"disk.hdd": b"".join(blocks)})
        key = ManifestKey.parse(self.cid, version, ARCH)
        svc, costs = self.service, {}
        begun = self._phase(costs, "begin", lambda: svc.push_begin(PUSHER, key, declaration(pack)))
        upload_id = begun["upload_id"]
        nonce = _nonce(upload_id)
        digests = pack.digests
        uploaded: list[str] = []
        for start in range(0, len(digests), CHUNK_PAGE):
            page = digests[start : start + CHUNK_PAGE]
            answer = self._phase(costs, "chunks", lambda page=page: svc.upload_chunks(PUSHER, upload_id, page))
            for digest in answer["urls"]:
                self.raw.put_bytes(staging_chunk_key(nonce, digest), _ZSTD.compress(pack.chunks[digest]))
            uploaded += list(answer["urls"])
        for start in range(0, len(uploaded), VERIFY_PAGE):
            page = uploaded[start : start + VERIFY_PAGE]
            verdict = self._phase(costs, "verify", lambda page=page: svc.verify_chunks(PUSHER, upload_id, page))
            assert verdict["verified"] == page, verdict
        data = index_bytes(pack)
        declared = {"index_digest": hashlib.sha256(data).hexdigest(), "index_size": len(data)}
        self._phase(costs, "index", lambda: svc.declare_index(PUSHER, upload_id, declared))
        self.raw.put_bytes(staging_index_key(nonce), data)
        manifest = self._phase(costs, "commit", lambda: svc.commit(PUSHER, upload_id, {}))
        assert manifest.is_ready
        return costs

    def pull(self, version: str, service: CatalogService | None = None) -> Costs:
        """Pull, read the index as the client does (uncounted), ask for every chunk's URL by pages."""
        svc, costs = service or self.service, {}
        key = ManifestKey.parse(self.cid, version, ARCH)
        answer = self._phase(costs, "pull", lambda: svc.pull(PULLER, self.cid, version, ARCH))
        assert answer["format"] == "chunks"
        index = json.loads(self.raw.get_bytes(f"catalogs/{self.cid}/{version}/{ARCH}/index.json"))
        digests = sorted({c["digest"] for f in index["files"] for c in f["chunks"]})
        for start in range(0, len(digests), CHUNK_PAGE):
            page = digests[start : start + CHUNK_PAGE]
            urls = self._phase(costs, "pull_urls", lambda page=page: svc.pull_urls(PULLER, key, page))
            assert set(urls["urls"]) == set(page)
        return costs


def _flat(costs: Costs) -> Counter[str]:
    total: Counter[str] = Counter()
    for calls in costs.values():
        total.update(calls)
    return total


def _assert_same(first: Costs, later: Costs, what: str) -> None:
    assert set(first) == set(later), (what, sorted(first), sorted(later))
    for phase in first:
        methods = set(first[phase]) | set(later[phase])
        diff = {
            m: (first[phase][m], later[phase][m]) for m in methods if abs(first[phase][m] - later[phase][m]) > TOLERANCE
        }
        assert not diff, f"{what}, phase {phase}: (version 1, version 21) per method differ: {diff}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_push_and_pull_cost_the_same_on_a_catalog_with_history(adapters: Adapters) -> None:
    h = Harness(adapters, f"cost-{uuid.uuid4().hex[:10]}")
    v1_blocks = [_block(1, i) for i in range(V1_CHUNKS)]
    push_v1 = h.push("1", v1_blocks)
    pull_v1 = h.pull("1")

    stored = {hashlib.sha256(b).hexdigest() for b in v1_blocks}
    shared = HISTORY_CHUNKS // 3
    previous_new = v1_blocks
    for version in HISTORY_VERSIONS:  # other content: a third shared with the version before, the rest new
        new = [_block(version, 1000 + i) for i in range(HISTORY_CHUNKS - shared)]
        blocks = previous_new[:shared] + new
        h.push(str(version), blocks)
        previous_new = new
        stored |= {hashlib.sha256(b).hexdigest() for b in blocks}
    assert len(stored) > 1000, len(stored)

    push_v21 = h.push("21", [_block(21, i) for i in range(V1_CHUNKS)])  # as many chunks, all new
    pull_v21 = h.pull("21")
    pull_v1_again = h.pull("1", h.fresh_service())

    summary = {"push v1": dict(_flat(push_v1)), "push v21": dict(_flat(push_v21)), "pull v1": dict(_flat(pull_v1))}
    print(f"\n{adapters.store!r}: {json.dumps(summary, sort_keys=True)}")
    _assert_same(push_v1, push_v21, "push")
    _assert_same(pull_v1, pull_v21, "pull")
    _assert_same(pull_v1, pull_v1_again, "pull of version 1 again, by a cold service")

    # the costs are those of the digests named, plus constants (ADR 002)
    flat = _flat(push_v1)
    assert flat["blobs.head"] == V1_CHUNKS  # one HEAD per digest asked about
    assert flat["blobs.put_if_absent"] == V1_CHUNKS  # one conditional create per verified chunk
    assert flat["blobs.presign_PUT"] == V1_CHUNKS + 1  # every chunk and the index
    # one query page (500 versions) decides whether this pusher may be told what is stored: it must
    # see every version of the catalog id (docs/SECURITY.md); never a listing of storage
    assert flat["store.iter_all"] == 1 and flat["store.query"] == 0
    assert _flat(pull_v1)["blobs.presign_GET"] == V1_CHUNKS + 1
    assert _flat(pull_v1)["store.iter_all"] == _flat(pull_v1)["store.query"] == 0

    # nothing on these paths lists the catalog's chunks (or anything of the catalog's)
    assert h.blobs.listed, "commit lists its session's marks"
    assert all(p.startswith("staging/") and "/marks/" in p for p in h.blobs.listed), h.blobs.listed
    assert not any("chunks/" in p or p.startswith("catalogs/") for p in h.blobs.listed), h.blobs.listed

    # negative control: the history is real, and a path that listed it would have shown up above
    h.blobs.counts.take()
    listed = {info.key.rsplit("/", 1)[1] for info in h.blobs.list(chunks_prefix(h.cid))}
    assert listed == stored | {hashlib.sha256(_block(21, i)).hexdigest() for i in range(V1_CHUNKS)}
    assert h.blobs.counts.take()["list"] == 2  # > 1,000 keys: two pages
