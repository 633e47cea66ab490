"""DynamoDB adapters (pynamodb) of the ``ManifestStore`` and ``ApiKeyStore`` ports: one table.

Single-table design (see ``docs/dynamodb-design.md``)::

    item            pk                  sk                      other attributes
    manifest        CAT#<catalog_id>    M#<version>#<arch>      record (JSON), etag, arch,
                                                                download_count, last_downloaded_*,
                                                                gpk="ALL", apk="ARCH#<arch>",
                                                                gsk="<catalog_id>#<version>#<arch>"
    tag membership  TAG#<tag>           <cid>#<version>#<arch>  catalog_id, arch (keys only)
    API key         KEYS                <key_id>                record (JSON)

    GSI by_key   (gpk, gsk)   every manifest in key order       (projection ALL)
    GSI by_arch  (apk, gsk)   manifests of one architecture     (projection ALL)

``#`` (0x23) sorts below every character allowed in catalog ids (``[a-z0-9._-]``) and versions
(``[A-Za-z0-9._+-]``, smallest ``+`` = 0x2B), so the byte order of ``<cid>#<version>#<arch>`` is the
tuple order of :class:`ManifestKey`: keyset pagination is a plain ``sk > after`` range condition.

No request path scans. Every write is conditional on the etag (a uuid4 that changes on each write,
download counts included); tag items are written in the same ``TransactWriteItems`` as their
manifest, and tag reads verify membership against the manifest itself, so a tag item left behind
never shows a manifest under a tag it no longer has. ``calls`` / ``operations`` count requests (one
per API call or page, retries excluded) through a botocore event hook on each client.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.connection import Connection
from pynamodb.exceptions import PynamoDBException, TableDoesNotExist, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from core.errors import Conflict, InvalidInput, NotFound, PdcatError, Unavailable
from core.identity import ManifestKey
from core.manifest import Manifest
from core.ports import ApiKeyRecord, ApiKeyStore, ManifestQuery, ManifestStore, Stored

__all__ = ["DynamoApiKeyStore", "DynamoManifestStore", "create_table"]

logger = logging.getLogger(__name__)

SEP = "#"
ALL = "ALL"
KEYS_PARTITION = "KEYS"
DUMMY_CREDENTIALS = ("testing", "testing")  # only ever used with an explicit ``host`` (moto)
MAX_TRANSACT_ITEMS = 100
_ETAG_CACHE_SIZE = 4096
_TX_CONFLICT_RETRIES = 8

_CONDITION_CODES = {"ConditionalCheckFailedException", "ConditionalCheckFailed"}
_RETRYABLE_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionInProgressException",
    "TransactionConflict",
    "TransactionConflictException",
}


# ---- keys --------------------------------------------------------------------------------------
def _cat_pk(catalog_id: str) -> str:
    return f"CAT{SEP}{catalog_id}"


def _manifest_sk(key: ManifestKey) -> str:
    return f"M{SEP}{key.version}{SEP}{key.architecture}"


def _global_sk(key: ManifestKey) -> str:
    return f"{key.catalog_id}{SEP}{key.version}{SEP}{key.architecture}"


def _tag_pk(tag: str) -> str:
    return f"TAG{SEP}{tag}"


def _arch_pk(architecture: str) -> str:
    return f"ARCH{SEP}{architecture}"


def _key_of_global_sk(value: str) -> ManifestKey:
    catalog_id, version, architecture = value.split(SEP)
    return ManifestKey(catalog_id, version, architecture)


def _new_etag() -> str:
    return uuid.uuid4().hex


# ---- models (module-level shapes; per-table subclasses come from _bind) -------------------------
class _ByKeyIndex(GlobalSecondaryIndex["_ManifestItem"]):  # type: ignore[no-untyped-call]
    class Meta:
        index_name = "by_key"
        projection = AllProjection()

    gpk = UnicodeAttribute(hash_key=True)
    gsk = UnicodeAttribute(range_key=True)


class _ByArchIndex(GlobalSecondaryIndex["_ManifestItem"]):  # type: ignore[no-untyped-call]
    class Meta:
        index_name = "by_arch"
        projection = AllProjection()

    apk = UnicodeAttribute(hash_key=True)
    gsk = UnicodeAttribute(range_key=True)


class _ManifestItem(Model):
    class Meta:
        table_name = "pdcat-unbound"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    record = UnicodeAttribute()
    etag = UnicodeAttribute()
    arch = UnicodeAttribute()
    download_count = NumberAttribute(default=0)
    last_downloaded_at = UnicodeAttribute(null=True)
    last_downloaded_by = UnicodeAttribute(null=True)
    gpk = UnicodeAttribute()
    gsk = UnicodeAttribute()
    apk = UnicodeAttribute()
    by_key = _ByKeyIndex()
    by_arch = _ByArchIndex()


class _TagItem(Model):
    class Meta:
        table_name = "pdcat-unbound"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    catalog_id = UnicodeAttribute()
    arch = UnicodeAttribute()


class _ApiKeyItem(Model):
    class Meta:
        table_name = "pdcat-unbound"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    record = UnicodeAttribute()


@dataclass(frozen=True)
class _Models:
    manifest: type[_ManifestItem]
    tag: type[_TagItem]
    api_key: type[_ApiKeyItem]
    connection: Connection


def _bind(table_name: str, region: str, host: str | None) -> _Models:
    """Model subclasses whose ``Meta`` names this table, region and endpoint (dummy keys for moto)."""
    if not table_name:
        raise ValueError("table_name must not be empty")
    creds = DUMMY_CREDENTIALS if host else (None, None)
    meta: dict[str, Any] = {
        "table_name": table_name,
        "region": region,
        "host": host,
        "billing_mode": "PAY_PER_REQUEST",
        "aws_access_key_id": creds[0],
        "aws_secret_access_key": creds[1],
        "connect_timeout_seconds": 5,
        "read_timeout_seconds": 30,
        "max_retry_attempts": 3,
        "max_pool_connections": 32,
    }

    def sub(base: type[Any]) -> Any:
        return type(base.__name__.lstrip("_"), (base,), {"Meta": type("Meta", (), dict(meta)), "__module__": __name__})

    connection = Connection(
        region=region,
        host=host,
        connect_timeout_seconds=5,
        read_timeout_seconds=30,
        max_retry_attempts=3,
        max_pool_connections=32,
        aws_access_key_id=creds[0],
        aws_secret_access_key=creds[1],
    )
    return _Models(sub(_ManifestItem), sub(_TagItem), sub(_ApiKeyItem), connection)


def create_table(table_name: str, region: str, host: str | None = None, wait: bool = True) -> None:
    """Create the table with both GSIs, on-demand billing. Idempotent."""
    models = _bind(table_name, region, host)
    with _translate():
        models.manifest.create_table(wait=wait, billing_mode="PAY_PER_REQUEST")


def delete_table(table_name: str, region: str, host: str | None = None) -> None:
    """Drop the table (tests and tear-down tools only)."""
    models = _bind(table_name, region, host)
    with _translate():
        try:
            models.manifest.delete_table()
        except TableDoesNotExist:
            return


# ---- errors ------------------------------------------------------------------------------------
def _code_of(exc: BaseException) -> str:
    """The DynamoDB error code behind a pynamodb or botocore exception ('' when none)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    if isinstance(exc, PynamoDBException):
        code = exc.cause_response_code
        if code:
            return str(code)
        if exc.cause is not None and exc.cause is not exc:
            return _code_of(exc.cause)
    return ""


def _reasons(exc: BaseException) -> list[str]:
    if isinstance(exc, TransactWriteError):
        return [r.code if r is not None else "None" for r in exc.cancellation_reasons]
    return []


def _is_transport_error(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, BotoCoreError):
            return True
        cause = exc.cause if isinstance(exc, PynamoDBException) else None
        if cause is None or cause is exc:
            return False
        exc = cause
    return False


class _TransactionRace(Unavailable):
    """Another transaction touched the same items at the same time (retried, then surfaced)."""


@contextmanager
def _translate(conflict: Callable[[], PdcatError] | None = None) -> Iterator[None]:
    """The one place where pynamodb / botocore errors become core errors.

    Failed conditions (plain or inside a cancelled transaction) raise ``conflict()`` (default
    :class:`Conflict`); throttling, transaction races, server and connection errors raise
    :class:`Unavailable`; anything else (validation: our bug) stays an ``Unavailable`` with the code
    logged, so no SDK type leaks. Everything is chained with ``from``.
    """
    try:
        yield
    except PdcatError:
        raise
    except (PynamoDBException, ClientError, BotoCoreError) as exc:
        code = _code_of(exc)
        reasons = _reasons(exc)
        if code in _CONDITION_CODES or (
            any(r in _CONDITION_CODES for r in reasons) and all(r in _CONDITION_CODES or r == "None" for r in reasons)
        ):
            raise (conflict or (lambda: Conflict("the record was changed by someone else")))() from exc
        if (reasons and any(r.startswith("TransactionConflict") for r in reasons)) or code in {
            "TransactionConflict",
            "TransactionConflictException",
            "TransactionInProgressException",
        }:
            raise _TransactionRace("a concurrent write got in the way; try again") from exc
        if isinstance(exc, TableDoesNotExist) or code == "ResourceNotFoundException":
            logger.error("dynamodb table missing: %s", exc)
            raise Unavailable("the catalog table does not exist") from exc
        if code in _RETRYABLE_CODES:
            logger.warning("dynamodb is throttling or failing: %s", code)
            raise Unavailable("the catalog database is busy; try again") from exc
        if _is_transport_error(exc):
            logger.warning("dynamodb unreachable: %s", exc)
            raise Unavailable("the catalog database is unreachable") from exc
        logger.error("dynamodb request failed (%s): %s", code or type(exc).__name__, exc)
        raise Unavailable("the catalog database failed") from exc


def _retry_races(action: Callable[[], Any]) -> Any:
    """Run ``action`` again when DynamoDB cancelled it only because of a concurrent transaction."""
    for attempt in range(_TX_CONFLICT_RETRIES):
        try:
            return action()
        except _TransactionRace:
            if attempt == _TX_CONFLICT_RETRIES - 1:
                raise
            time.sleep(0.005 * (2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover


# ---- request counting ----------------------------------------------------------------------------
class _CallCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooked: set[int] = set()
        self.operations: Counter[str] = Counter()

    def hook(self, client: Any) -> None:
        ident = id(client)
        if ident in self._hooked:
            return
        with self._lock:
            if ident not in self._hooked:
                # Emitted once per API call (each page is one), before botocore's retries.
                client.meta.events.register("provide-client-params.dynamodb", self._count)
                self._hooked.add(ident)

    def _count(self, model: Any = None, **_kwargs: Any) -> None:
        with self._lock:
            self.operations[str(getattr(model, "name", "unknown"))] += 1

    def reset(self) -> None:
        with self._lock:
            self.operations.clear()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.operations.values())


class _DynamoBase:
    def __init__(self, table_name: str, *, region: str, host: str | None = None) -> None:
        self.table_name = table_name
        self.region = region
        self.host = host
        self._models = _bind(table_name, region, host)
        self._counter = _CallCounter()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table_name={self.table_name!r}, host={self.host!r})"

    @property
    def calls(self) -> int:
        """DynamoDB requests sent so far (one per call or page; retries not counted)."""
        return self._counter.total

    @property
    def operations(self) -> Counter[str]:
        """Requests by DynamoDB operation name (``GetItem``, ``Query``, ...)."""
        return Counter(self._counter.operations)

    def reset_calls(self) -> None:
        self._counter.reset()

    def _hook(self) -> None:
        m = self._models
        for client in (
            m.manifest._get_connection().connection.client,
            m.tag._get_connection().connection.client,
            m.api_key._get_connection().connection.client,
            m.connection.client,
        ):
            self._counter.hook(client)

    @contextmanager
    def _request(self, conflict: Callable[[], PdcatError] | None = None) -> Iterator[None]:
        with _translate(conflict):
            self._hook()
            yield

    def close(self) -> None:
        """Nothing to release: botocore pools close with the process."""


# ---- manifests -----------------------------------------------------------------------------------
def _record_json(manifest: Manifest) -> str:
    record = manifest.to_record()
    for name in ("download_count", "last_downloaded_at", "last_downloaded_by"):
        record.pop(name, None)
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def _manifest_of(item: _ManifestItem) -> Manifest:
    record = json.loads(item.record)
    record["download_count"] = int(item.download_count or 0)
    record["last_downloaded_at"] = item.last_downloaded_at
    record["last_downloaded_by"] = item.last_downloaded_by
    return Manifest.from_record(record)


def _after_bound(after: ManifestKey | None, catalog_id: str | None) -> str | None:
    """The exclusive lower bound ``<cid>#<version>#<arch>`` of a page, or None for the start."""
    if after is None:
        return None
    if catalog_id is not None and after.catalog_id < catalog_id:
        return None
    return _global_sk(after)


class DynamoManifestStore(_DynamoBase, ManifestStore):
    """Manifests in DynamoDB; see the module docstring for the item layout."""

    def __init__(self, table_name: str, *, region: str, host: str | None = None) -> None:
        super().__init__(table_name, region=region, host=host)
        # (key, etag) -> tags of that exact version of the record: lets replace/delete remove old
        # tag items in one TransactWrite without reading first. An etag names one immutable
        # content, so an entry can never be wrong, only missing (then we read once).
        self._tags_by_etag: OrderedDict[tuple[ManifestKey, str], tuple[str, ...]] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- etag -> tags cache --
    def _remember(self, key: ManifestKey, etag: str, tags: Iterable[str]) -> None:
        with self._cache_lock:
            self._tags_by_etag[(key, etag)] = tuple(tags)
            self._tags_by_etag.move_to_end((key, etag))
            while len(self._tags_by_etag) > _ETAG_CACHE_SIZE:
                self._tags_by_etag.popitem(last=False)

    def _known_tags(self, key: ManifestKey, etag: str) -> tuple[str, ...] | None:
        with self._cache_lock:
            return self._tags_by_etag.get((key, etag))

    # -- items --
    def _item(self, manifest: Manifest, etag: str) -> _ManifestItem:
        key = manifest.key
        return self._models.manifest(
            _cat_pk(key.catalog_id),
            _manifest_sk(key),
            record=_record_json(manifest),
            etag=etag,
            arch=key.architecture,
            download_count=manifest.download_count,
            last_downloaded_at=manifest.last_downloaded_at,
            last_downloaded_by=manifest.last_downloaded_by,
            gpk=ALL,
            gsk=_global_sk(key),
            apk=_arch_pk(key.architecture),
        )

    def _tag_item(self, key: ManifestKey, tag: str) -> _TagItem:
        return self._models.tag(_tag_pk(tag), _global_sk(key), catalog_id=key.catalog_id, arch=key.architecture)

    def _read(self, key: ManifestKey) -> _ManifestItem | None:
        with self._request():
            try:
                item: _ManifestItem = self._models.manifest.get(
                    _cat_pk(key.catalog_id), _manifest_sk(key), consistent_read=True
                )
            except self._models.manifest.DoesNotExist:
                return None
        return item

    # -- the port --
    def get(self, key: ManifestKey) -> Stored | None:
        item = self._read(key)
        if item is None:
            return None
        manifest = _manifest_of(item)
        self._remember(key, item.etag, manifest.tags)
        return Stored(manifest, item.etag)

    def create(self, manifest: Manifest) -> str:
        etag = _new_etag()
        item = self._item(manifest, etag)
        model = self._models.manifest
        key = manifest.key
        exists = lambda: Conflict(f"{key} already exists")  # noqa: E731
        if len(manifest.tags) + 1 > MAX_TRANSACT_ITEMS:
            raise InvalidInput(f"at most {MAX_TRANSACT_ITEMS - 1} tags are allowed")
        if not manifest.tags:
            with self._request(exists):
                item.save(condition=model.pk.does_not_exist())
        else:

            def write() -> None:
                with self._request(exists), TransactWrite(connection=self._models.connection) as tx:
                    tx.save(item, condition=model.pk.does_not_exist())
                    for tag in manifest.tags:
                        tx.save(self._tag_item(key, tag))

            _retry_races(write)
        self._remember(key, etag, manifest.tags)
        return etag

    def replace(self, manifest: Manifest, etag: str) -> str:
        key = manifest.key
        old_tags = self._known_tags(key, etag)
        if old_tags is None:
            current = self._read(key)
            if current is None:
                raise Conflict(f"{key} no longer exists")
            if current.etag != etag:
                raise Conflict(f"{key} was changed by someone else; reload and retry")
            old_tags = tuple(_manifest_of(current).tags)
        new_etag = _new_etag()
        item = self._item(manifest, new_etag)
        model = self._models.manifest
        added = [t for t in manifest.tags if t not in old_tags]
        removed = [t for t in old_tags if t not in manifest.tags]
        changed = lambda: Conflict(f"{key} was changed by someone else, or deleted; reload and retry")  # noqa: E731
        condition = model.etag == etag
        if not added and not removed:
            with self._request(changed):
                item.save(condition=condition)
        else:
            # Additions must land with the manifest (a tag query must find it); removals may
            # trail in a second transaction if they do not fit (reads verify membership anyway).
            room = MAX_TRANSACT_ITEMS - 1 - len(added)
            now, later = removed[:room], removed[room:]

            def write() -> None:
                with self._request(changed), TransactWrite(connection=self._models.connection) as tx:
                    tx.save(item, condition=condition)
                    for tag in added:
                        tx.save(self._tag_item(key, tag))
                    for tag in now:
                        tx.delete(self._tag_item(key, tag))

            _retry_races(write)
            if later:
                self._delete_tag_items(key, later)
        self._remember(key, new_etag, manifest.tags)
        return new_etag

    def _delete_tag_items(self, key: ManifestKey, tags: builtins.list[str]) -> None:
        for start in range(0, len(tags), MAX_TRANSACT_ITEMS):
            chunk = tags[start : start + MAX_TRANSACT_ITEMS]

            def write(chunk: builtins.list[str] = chunk) -> None:
                with self._request(), TransactWrite(connection=self._models.connection) as tx:
                    for tag in chunk:
                        tx.delete(self._tag_item(key, tag))

            _retry_races(write)

    def delete(self, key: ManifestKey, etag: str | None = None) -> None:
        for _ in range(_TX_CONFLICT_RETRIES):
            tags = self._known_tags(key, etag) if etag is not None else None
            expected = etag
            if tags is None:
                current = self._read(key)
                if current is None:
                    return
                if etag is not None and current.etag != etag:
                    raise Conflict(f"{key} was changed by someone else; reload and retry")
                expected = current.etag
                tags = tuple(_manifest_of(current).tags)
            assert expected is not None
            try:
                self._delete_once(key, expected, tags)
                return
            except Conflict:
                # The etag no longer matches: gone (fine), or changed (a conflict when the caller
                # named an etag; otherwise read again and delete what is there now).
                if etag is not None:
                    if self._read(key) is None:
                        return
                    raise
        raise Unavailable(f"{key} keeps changing; try again")

    def _delete_once(self, key: ManifestKey, etag: str, tags: tuple[str, ...]) -> None:
        model = self._models.manifest
        target = model(_cat_pk(key.catalog_id), _manifest_sk(key))
        condition = model.etag == etag
        if not tags:
            with self._request():
                target.delete(condition=condition)
            return
        first, rest = builtins.list(tags[: MAX_TRANSACT_ITEMS - 1]), builtins.list(tags[MAX_TRANSACT_ITEMS - 1 :])

        def write() -> None:
            with self._request(), TransactWrite(connection=self._models.connection) as tx:
                tx.delete(target, condition=condition)
                for tag in first:
                    tx.delete(self._tag_item(key, tag))

        _retry_races(write)
        if rest:
            self._delete_tag_items(key, rest)

    def record_download(self, key: ManifestKey, by: str, at: str) -> None:
        model = self._models.manifest
        target = model(_cat_pk(key.catalog_id), _manifest_sk(key))
        new_etag = _new_etag()
        missing = lambda: NotFound(f"{key} does not exist")  # noqa: E731
        with self._request(missing):
            # One UpdateItem: DynamoDB adds atomically, so concurrent downloads never lose a count.
            target.update(
                actions=[
                    model.download_count.add(1),
                    model.last_downloaded_at.set(at),
                    model.last_downloaded_by.set(by),
                    model.etag.set(new_etag),
                ],
                condition=model.pk.exists(),
            )
        self._remember(key, new_etag, json.loads(target.record).get("tags") or [])

    def query(self, query: ManifestQuery) -> builtins.list[Manifest]:
        if query.limit < 0:
            raise InvalidInput("limit must not be negative")
        if query.limit == 0:
            return []
        if query.catalog_id is not None and query.after is not None and query.after.catalog_id > query.catalog_id:
            return []
        if query.tag is not None:
            return self._query_tag(query)
        model = self._models.manifest
        after = _after_bound(query.after, query.catalog_id)
        results: Iterable[_ManifestItem]
        with self._request():
            if query.catalog_id is not None:
                range_condition = model.sk > (
                    f"M{SEP}{query.after.version}{SEP}{query.after.architecture}"
                    if after is not None and query.after is not None
                    else f"M{SEP}"
                )
                arch_filter = model.arch == query.architecture if query.architecture is not None else None
                results = model.query(
                    _cat_pk(query.catalog_id),
                    range_condition,
                    filter_condition=arch_filter,
                    consistent_read=True,
                    limit=query.limit,
                    page_size=query.limit,
                )
            elif query.architecture is not None:
                results = model.by_arch.query(
                    _arch_pk(query.architecture),
                    model.gsk > after if after is not None else None,
                    limit=query.limit,
                    page_size=query.limit,
                )
            else:
                results = model.by_key.query(
                    ALL,
                    model.gsk > after if after is not None else None,
                    limit=query.limit,
                    page_size=query.limit,
                )
            return [_manifest_of(item) for item in results]

    def _query_tag(self, query: ManifestQuery) -> builtins.list[Manifest]:
        """Tag partition (keys, consistent) page by page, then the manifests by BatchGetItem."""
        assert query.tag is not None
        tag_model = self._models.tag
        after = _after_bound(query.after, query.catalog_id)
        range_condition: Condition | None
        if query.catalog_id is not None:
            low = after if after is not None else f"{query.catalog_id}{SEP}"
            range_condition = tag_model.sk.between(low, f"{query.catalog_id}{chr(ord(SEP) + 1)}")
        else:
            range_condition = tag_model.sk > after if after is not None else None
        arch_filter = tag_model.arch == query.architecture if query.architecture is not None else None
        found: builtins.list[Manifest] = []
        last_evaluated: dict[str, Any] | None = None
        while len(found) < query.limit:
            want = query.limit - len(found)
            with self._request():
                page = tag_model.query(
                    _tag_pk(query.tag),
                    range_condition,
                    filter_condition=arch_filter,
                    consistent_read=True,
                    limit=want + 1,
                    page_size=want + 1,
                    last_evaluated_key=last_evaluated,
                )
                keys = [_key_of_global_sk(t.sk) for t in page if t.sk != after]
                last_evaluated = page.last_evaluated_key
            keys = keys[:want]
            found.extend(self._batch_get(keys, query.tag))
            if last_evaluated is None:
                break
        return found[: query.limit]

    def _batch_get(self, keys: builtins.list[ManifestKey], tag: str) -> builtins.list[Manifest]:
        if not keys:
            return []
        model = self._models.manifest
        by_key: dict[ManifestKey, Manifest] = {}
        with self._request():
            for item in model.batch_get([(_cat_pk(k.catalog_id), _manifest_sk(k)) for k in keys], consistent_read=True):
                manifest = _manifest_of(item)
                by_key[manifest.key] = manifest
        # A tag item can outlive a removal for a moment (or across a failed trailing write):
        # the manifest itself has the last word.
        return [by_key[k] for k in keys if k in by_key and tag in by_key[k].tags]


# ---- API keys ------------------------------------------------------------------------------------
def _api_key_from_json(text: str) -> ApiKeyRecord:
    data = json.loads(text)
    known = {f.name for f in fields(ApiKeyRecord)}
    values = {k: v for k, v in data.items() if k in known}
    values["roles"] = builtins.list(data.get("roles") or [])
    values["claims"] = builtins.list(data.get("claims") or [])
    return ApiKeyRecord(**values)


class DynamoApiKeyStore(_DynamoBase, ApiKeyStore):
    """API keys in one fixed partition (``pk=KEYS``, ``sk=<key_id>``): get is one GetItem, list
    is one consistent Query per 1 MB page. Keys are few, so one partition is plenty."""

    def _item(self, record: ApiKeyRecord) -> _ApiKeyItem:
        return self._models.api_key(
            KEYS_PARTITION, record.key_id, record=json.dumps(asdict(record), separators=(",", ":"), sort_keys=True)
        )

    def create(self, record: ApiKeyRecord) -> None:
        if not record.key_id:
            raise InvalidInput("an API key needs an id")
        model = self._models.api_key
        with self._request(lambda: Conflict(f"API key {record.key_id!r} already exists")):
            self._item(record).save(condition=model.pk.does_not_exist())

    def get(self, key_id: str) -> ApiKeyRecord | None:
        if not key_id:
            return None
        model = self._models.api_key
        with self._request():
            try:
                item: _ApiKeyItem = model.get(KEYS_PARTITION, key_id, consistent_read=True)
            except model.DoesNotExist:
                return None
        return _api_key_from_json(item.record)

    def put(self, record: ApiKeyRecord) -> None:
        if not record.key_id:
            raise InvalidInput("an API key needs an id")
        with self._request():
            self._item(record).save()

    def list(self) -> builtins.list[ApiKeyRecord]:
        model = self._models.api_key
        with self._request():
            return [_api_key_from_json(item.record) for item in model.query(KEYS_PARTITION, consistent_read=True)]
