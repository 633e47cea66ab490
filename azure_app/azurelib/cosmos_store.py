"""Cosmos DB (NoSQL API) adapters of the ``ManifestStore`` and ``ApiKeyStore`` ports: one container.

Document design (see ``docs/cosmos-design.md``); the partition key path is ``/pk``::

    document   pk            id                  other properties
    manifest   <catalog_id>  <version>:<arch>    type="manifest", sk="<catalog_id>#<version>#<arch>",
                                                 m (the manifest record without its download fields),
                                                 download_count, last_downloaded_at, last_downloaded_by
    API key    _apikeys      <key_id>            type="apikey", record (only the secret's hash)

Request paths use point operations (read / create / replace / patch / delete: one request each) and
single-partition queries (``catalog_id`` given). Only the global listing (no catalog id: by tag, by
architecture or unfiltered) is a cross-partition query. Every listing is ``TOP n ... WHERE c.sk >
@after ORDER BY c.sk``: ``#`` sorts below every character allowed in catalog ids and versions, so
the text order of ``sk`` is the tuple order of :class:`ManifestKey` and keyset pages never move.

Optimistic concurrency uses Cosmos's own ``_etag``: create fails with 409 on an existing id, state
changes are ``replace_item`` with ``If-Match`` (412 on a stale etag), and the download counter is a
patch (``incr`` + ``set``) that the server applies atomically and that changes the etag too. Nothing
depends on transactional batch or TTL (the emulator has neither).

The SDK is imported lazily: importing this module costs nothing; :func:`connect` pays for it.
``calls`` / ``operations`` / ``requests`` count the HTTP requests each store sends (a per-call
``raw_request_hook``, so SDK-level retries count too), classified by operation and partition scope.
"""

from __future__ import annotations

import builtins
import functools
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, PdcatError, Unavailable
from core.identity import ManifestKey
from core.manifest import Manifest
from core.ports import ApiKeyRecord, ApiKeyStore, ManifestQuery, ManifestStore, Stored

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.cosmos import ContainerProxy

__all__ = [
    "API_KEYS_PARTITION",
    "INDEXING_POLICY",
    "PARTITION_KEY_PATH",
    "CosmosApiKeyStore",
    "CosmosManifestStore",
    "Request",
    "connect",
]

logger = logging.getLogger(__name__)

PARTITION_KEY_PATH = "/pk"
API_KEYS_PARTITION = "_apikeys"  # catalog ids start with [a-z0-9]: no catalog can share this partition
MANIFEST_TYPE = "manifest"
API_KEY_TYPE = "apikey"
SEP = "#"
MAX_PAGE = 1000
_DOWNLOAD_FIELDS = ("download_count", "last_downloaded_at", "last_downloaded_by")
_FORBIDDEN_ID_CHARS = frozenset("/\\?#")
_OWNER_RESOURCE_MISSING = 1003  # Cosmos sub-status: the database or container itself does not exist

# Index only what queries filter or sort on; the manifest body is stored, not indexed (cheaper writes).
INDEXING_POLICY: dict[str, Any] = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [
        {"path": "/pk/?"},
        {"path": "/type/?"},
        {"path": "/sk/?"},
        {"path": "/m/architecture/?"},
        {"path": "/m/tags/[]/?"},
    ],
    "excludedPaths": [{"path": "/*"}],
}


# ---- keys --------------------------------------------------------------------------------------
def _doc_id(key: ManifestKey) -> str:
    """Unique within the catalog's partition; ``:`` appears in no version, so it cannot be ambiguous."""
    return f"{key.version}:{key.architecture}"


def _sort_key(key: ManifestKey) -> str:
    return f"{key.catalog_id}{SEP}{key.version}{SEP}{key.architecture}"


# ---- the SDK, imported on first use -------------------------------------------------------------
@functools.cache
def _sdk() -> SimpleNamespace:
    from azure.core import MatchConditions
    from azure.core.exceptions import AzureError
    from azure.cosmos import CosmosClient, PartitionKey
    from azure.cosmos.exceptions import CosmosClientTimeoutError, CosmosHttpResponseError

    return SimpleNamespace(
        AzureError=AzureError,
        CosmosClient=CosmosClient,
        CosmosClientTimeoutError=CosmosClientTimeoutError,
        CosmosHttpResponseError=CosmosHttpResponseError,
        IfNotModified=MatchConditions.IfNotModified,
        PartitionKey=PartitionKey,
    )


# ---- errors ------------------------------------------------------------------------------------
class _Missing(NotFound):
    """404 on a document (callers decide: None, not an error, Conflict or NotFound)."""


class _Exists(Conflict):
    """409: a create met an existing id."""


class _Changed(Conflict):
    """412: the etag named by a conditional write is no longer current."""


def _core_error(exc: BaseException) -> PdcatError | None:
    """The core error for an SDK exception, or None when ``exc`` is not the SDK's (a bug: re-raised)."""
    sdk = _sdk()
    if isinstance(exc, sdk.CosmosHttpResponseError):
        status = int(exc.status_code or 0)
        sub_status = int(getattr(exc, "sub_status", None) or 0)
        if status == 404:
            if sub_status == _OWNER_RESOURCE_MISSING:
                logger.error("cosmos container or database missing (404/%s)", sub_status)
                return Unavailable("the catalog container does not exist")
            return _Missing("the record does not exist")
        if status == 409:
            return _Exists("the record already exists")
        if status == 412:
            return _Changed("the record was changed by someone else")
        if status == 413:
            return PayloadTooLarge("the record is too large for the catalog database")
        if status in (401, 403):
            logger.error("cosmos refused our credentials (%s/%s)", status, sub_status)
            return Unavailable("the catalog database refused the service's credentials")
        if status == 429:
            logger.warning("cosmos is throttling (429/%s)", sub_status)
            return Unavailable("the catalog database is busy; try again")
        if status == 400:
            logger.error("cosmos rejected a request (400/%s): %s", sub_status, _first_line(exc))
            return PdcatError("the catalog database rejected a request")
        logger.warning("cosmos request failed (%s/%s)", status, sub_status)
        return Unavailable("the catalog database failed; try again")
    if isinstance(exc, sdk.CosmosClientTimeoutError):
        logger.warning("cosmos request timed out")
        return Unavailable("the catalog database timed out; try again")
    if isinstance(exc, sdk.AzureError):  # ServiceRequestError, ServiceResponseError: the transport
        logger.warning("cosmos unreachable: %s", type(exc).__name__)
        return Unavailable("the catalog database is unreachable")
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


@contextmanager
def _translate(*, missing_is_unavailable: bool = False) -> Iterator[None]:
    """The one place where azure-core / azure-cosmos errors become core errors, chained with ``from``.

    404 on a document raises :class:`_Missing` (a ``NotFound``) for the caller to interpret, unless
    ``missing_is_unavailable`` (a query or read of the container itself: then the container is gone).
    """
    try:
        yield
    except PdcatError:
        raise
    except Exception as exc:
        error = _core_error(exc)
        if error is None:
            raise
        if missing_is_unavailable and isinstance(error, _Missing):
            logger.error("cosmos container or database missing (404)")
            error = Unavailable("the catalog container does not exist")
        raise error from exc


# ---- connecting --------------------------------------------------------------------------------
def connect(
    endpoint: str,
    database: str,
    container: str,
    *,
    key: str | None = None,
    credential: TokenCredential | None = None,
    verify_tls: bool = True,
    create: bool = False,
) -> ContainerProxy:
    """A container client: account ``key`` or an Entra ID ``credential`` (managed identity), not both.

    ``create`` creates the database and the container (partition key ``/pk``, :data:`INDEXING_POLICY`)
    if missing, for tests, the demo and first deployments; otherwise the container is read once, so
    a wrong name fails here (``Unavailable``) instead of looking like an empty catalog, and the
    first point read costs one request. ``verify_tls=False`` only for the local emulator, whose
    certificate is self-signed: it applies to this client, nothing global. Endpoint discovery is off
    (one region; the emulator answers with addresses it cannot serve).
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidInput("the Cosmos DB endpoint must be an https:// URL")
    if (key is None) == (credential is None):
        raise InvalidInput("connect to Cosmos DB with either an account key or a credential")
    if not database or not container:
        raise InvalidInput("the Cosmos DB database and container names must not be empty")
    sdk = _sdk()
    auth: Any = key if key is not None else credential
    with _translate(missing_is_unavailable=True):
        client = sdk.CosmosClient(
            endpoint,
            credential=auth,
            connection_verify=verify_tls,
            enable_endpoint_discovery=False,
            user_agent_suffix="pdcat",
        )
        if create:
            db = client.create_database_if_not_exists(database)
            proxy: ContainerProxy = db.create_container_if_not_exists(
                container,
                partition_key=sdk.PartitionKey(path=PARTITION_KEY_PATH),
                indexing_policy=INDEXING_POLICY,
            )
        else:
            proxy = client.get_database_client(database).get_container_client(container)
            proxy.read()
    return proxy


# ---- request counting ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One HTTP request a store sent: its operation and whether it named a partition."""

    operation: str
    cross_partition: bool = False


def _header(headers: Any, name: str) -> str:
    value = headers.get(name)
    return str(value).lower() if value is not None else ""


def _classify(method: str, url: str, headers: Any) -> Request:
    """Name a Cosmos REST request (``read``, ``create``, ``query``...) from its method, path and headers."""
    segments = [s for s in urlsplit(url).path.split("/") if s]
    method = method.upper()
    cross = _header(headers, "x-ms-documentdb-query-enablecrosspartition") == "true"
    if "docs" in segments:
        on_item = segments[-1] != "docs"
        if on_item:
            return Request({"GET": "read", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}.get(method, method))
        if method == "POST":
            if _header(headers, "x-ms-cosmos-is-query-plan-request") == "true":
                return Request("query_plan", cross)
            if _header(headers, "x-ms-documentdb-isquery") == "true":
                return Request("query", cross)
            if _header(headers, "x-ms-documentdb-is-upsert") == "true":
                return Request("upsert")
            return Request("create")
        return Request("read_feed", cross)
    if segments and segments[-1] == "pkranges":
        return Request("partition_key_ranges")
    return Request("metadata")


class _RequestLog:
    """A ``raw_request_hook``: azure-core calls it once per HTTP request the SDK sends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []

    def __call__(self, pipeline_request: Any) -> None:
        request = pipeline_request.http_request
        entry = _classify(request.method, request.url, request.headers)
        with self._lock:
            self._requests.append(entry)

    def snapshot(self) -> builtins.list[Request]:
        with self._lock:
            return builtins.list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()


class _CosmosBase:
    def __init__(self, container: ContainerProxy) -> None:
        self._container = container
        self._log = _RequestLog()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(container={self._container.id!r})"

    @property
    def requests(self) -> builtins.list[Request]:
        """Every request sent so far, in order."""
        return self._log.snapshot()

    @property
    def operations(self) -> Counter[str]:
        """Requests by operation (``read``, ``create``, ``replace``, ``patch``, ``delete``, ``query``...)."""
        return Counter(r.operation for r in self._log.snapshot())

    @property
    def calls(self) -> int:
        return len(self._log.snapshot())

    def reset_calls(self) -> None:
        self._log.reset()

    def _opts(self) -> dict[str, Any]:
        return {"raw_request_hook": self._log}

    def close(self) -> None:
        """Nothing to release: the container client belongs to whoever called :func:`connect`."""


# ---- manifests -----------------------------------------------------------------------------------
def _document(manifest: Manifest) -> dict[str, Any]:
    key = manifest.key
    record = manifest.to_record()
    for name in _DOWNLOAD_FIELDS:
        record.pop(name, None)
    return {
        "id": _doc_id(key),
        "pk": key.catalog_id,
        "type": MANIFEST_TYPE,
        "sk": _sort_key(key),
        "m": record,
        "download_count": manifest.download_count,
        "last_downloaded_at": manifest.last_downloaded_at,
        "last_downloaded_by": manifest.last_downloaded_by,
    }


def _manifest_of(doc: dict[str, Any]) -> Manifest:
    record = dict(doc["m"])
    record["download_count"] = int(doc.get("download_count") or 0)
    record["last_downloaded_at"] = doc.get("last_downloaded_at")
    record["last_downloaded_by"] = doc.get("last_downloaded_by")
    return Manifest.from_record(record)


def manifest_query_sql(query: ManifestQuery) -> tuple[str, builtins.list[dict[str, Any]]]:
    """The one SQL statement for a :class:`ManifestQuery`: every filter and the keyset bound in WHERE,
    ``TOP`` for the page size, ``ORDER BY c.sk`` (key order)."""
    where = ["c.type = @type"]
    params: builtins.list[dict[str, Any]] = [
        {"name": "@limit", "value": query.limit},
        {"name": "@type", "value": MANIFEST_TYPE},
    ]
    if query.catalog_id is not None:
        where.append("c.pk = @pk")
        params.append({"name": "@pk", "value": query.catalog_id})
    if query.tag is not None:
        where.append("ARRAY_CONTAINS(c.m.tags, @tag)")
        params.append({"name": "@tag", "value": query.tag})
    if query.architecture is not None:
        where.append("c.m.architecture = @arch")
        params.append({"name": "@arch", "value": query.architecture})
    if query.after is not None:
        where.append("c.sk > @after")
        params.append({"name": "@after", "value": _sort_key(query.after)})
    sql = (
        "SELECT TOP @limit c.m, c.download_count, c.last_downloaded_at, c.last_downloaded_by FROM c "
        f"WHERE {' AND '.join(where)} ORDER BY c.sk"
    )
    return sql, params


class CosmosManifestStore(_CosmosBase, ManifestStore):
    """Manifests in one Cosmos DB container, partitioned by catalog id; see the module docstring."""

    def get(self, key: ManifestKey) -> Stored | None:
        try:
            with _translate():
                doc = self._container.read_item(_doc_id(key), partition_key=key.catalog_id, **self._opts())
        except _Missing:
            return None
        return Stored(_manifest_of(doc), str(doc["_etag"]))

    def create(self, manifest: Manifest) -> str:
        key = manifest.key
        try:
            with _translate():
                doc = self._container.create_item(_document(manifest), no_response=False, **self._opts())
        except _Exists as exc:
            raise Conflict(f"{key} already exists") from exc
        return str(doc["_etag"])

    def replace(self, manifest: Manifest, etag: str) -> str:
        key = manifest.key
        try:
            with _translate():
                doc = self._container.replace_item(
                    _doc_id(key),
                    _document(manifest),
                    etag=etag,
                    match_condition=_sdk().IfNotModified,
                    no_response=False,
                    **self._opts(),
                )
        except _Changed as exc:
            raise Conflict(f"{key} was changed by someone else; reload and retry") from exc
        except _Missing as exc:
            raise Conflict(f"{key} no longer exists") from exc
        return str(doc["_etag"])

    def delete(self, key: ManifestKey, etag: str | None = None) -> None:
        condition: dict[str, Any] = {} if etag is None else {"etag": etag, "match_condition": _sdk().IfNotModified}
        try:
            with _translate():
                self._container.delete_item(_doc_id(key), partition_key=key.catalog_id, **condition, **self._opts())
        except _Missing:
            return  # already gone: deleting is idempotent
        except _Changed as exc:
            raise Conflict(f"{key} was changed by someone else; reload and retry") from exc

    def record_download(self, key: ManifestKey, by: str, at: str) -> None:
        operations: builtins.list[dict[str, Any]] = [
            {"op": "incr", "path": "/download_count", "value": 1},
            {"op": "set", "path": "/last_downloaded_at", "value": at},
            {"op": "set", "path": "/last_downloaded_by", "value": by},
        ]
        try:
            with _translate():
                # One patch: the server applies it atomically (and gives the document a new etag),
                # so concurrent downloads never lose a count and never need a read first.
                self._container.patch_item(
                    _doc_id(key),
                    partition_key=key.catalog_id,
                    patch_operations=operations,
                    no_response=True,
                    **self._opts(),
                )
        except _Missing as exc:
            raise NotFound(f"{key} does not exist") from exc

    def query(self, query: ManifestQuery) -> builtins.list[Manifest]:
        if query.limit < 0:
            raise InvalidInput("limit must not be negative")
        if query.limit == 0:
            return []
        if query.catalog_id is not None and query.after is not None and query.after.catalog_id > query.catalog_id:
            return []  # the cursor is past this catalog already
        sql, params = manifest_query_sql(query)
        scope: dict[str, Any] = (
            {"partition_key": query.catalog_id}
            if query.catalog_id is not None
            else {"enable_cross_partition_query": True}  # the global listing only
        )
        with _translate(missing_is_unavailable=True):
            docs = self._container.query_items(
                sql,
                parameters=params,
                max_item_count=min(query.limit, MAX_PAGE),
                **scope,
                **self._opts(),
            )
            return [_manifest_of(doc) for doc in docs]


# ---- API keys ------------------------------------------------------------------------------------
def _api_key_of(doc: dict[str, Any]) -> ApiKeyRecord:
    data = doc["record"]
    known = {f.name for f in fields(ApiKeyRecord)}
    values = {k: v for k, v in data.items() if k in known}
    values["roles"] = builtins.list(data.get("roles") or [])
    values["claims"] = builtins.list(data.get("claims") or [])
    return ApiKeyRecord(**values)


def _valid_key_id(key_id: str) -> bool:
    return bool(key_id) and len(key_id) <= 255 and not (_FORBIDDEN_ID_CHARS & set(key_id))


class CosmosApiKeyStore(_CosmosBase, ApiKeyStore):
    """API keys in the manifests' container, in one partition of their own (``pk=_apikeys``).

    get / create / put are one point operation each; list is one single-partition query. Keys are
    few, so one logical partition is plenty.
    """

    def _doc(self, record: ApiKeyRecord) -> dict[str, Any]:
        if not _valid_key_id(record.key_id):
            raise InvalidInput("an API key id must be 1-255 characters without / \\ ? #")
        return {"id": record.key_id, "pk": API_KEYS_PARTITION, "type": API_KEY_TYPE, "record": asdict(record)}

    def create(self, record: ApiKeyRecord) -> None:
        doc = self._doc(record)
        try:
            with _translate():
                self._container.create_item(doc, no_response=True, **self._opts())
        except _Exists as exc:
            raise Conflict(f"API key {record.key_id!r} already exists") from exc

    def get(self, key_id: str) -> ApiKeyRecord | None:
        if not _valid_key_id(key_id):
            return None
        try:
            with _translate():
                doc = self._container.read_item(key_id, partition_key=API_KEYS_PARTITION, **self._opts())
        except _Missing:
            return None
        return _api_key_of(doc)

    def put(self, record: ApiKeyRecord) -> None:
        doc = self._doc(record)
        with _translate():
            self._container.upsert_item(doc, no_response=True, **self._opts())

    def list(self) -> builtins.list[ApiKeyRecord]:
        with _translate(missing_is_unavailable=True):
            docs = self._container.query_items(
                "SELECT c.record FROM c WHERE c.pk = @pk AND c.type = @type",
                parameters=[{"name": "@pk", "value": API_KEYS_PARTITION}, {"name": "@type", "value": API_KEY_TYPE}],
                partition_key=API_KEYS_PARTITION,
                max_item_count=MAX_PAGE,
                **self._opts(),
            )
            return [_api_key_of(doc) for doc in docs]
