"""The Azure Blob :class:`~core.ports.BlobStore`: SAS URLs, paged listing, small objects, batch delete.

Two ways to sign, chosen by how the store is built:

* :meth:`AzureBlobStore.from_connection_string` — **account-key SAS**, signed by azure-storage-blob's
  ``generate_blob_sas``. The key stays in this object (never in ``name``, ``repr``, a URL or an error).
* :meth:`AzureBlobStore.from_credential` — **user-delegation SAS** for an app running with a managed
  identity (any ``TokenCredential``): the store asks the service for a user delegation key, caches it
  until shortly before it expires, and signs with it. No account key exists anywhere.

Every URL is scoped to one blob (``sr=b``) and one permission: GET → ``sp=r``, PUT → ``sp=cw``
(create, and write so that a retried or forced upload of the same content-addressed chunk may
overwrite). ``se`` is now + ``expires_in`` (rounded up to the second); an https endpoint also gets
``spr=https``. A PUT through such a URL must carry ``x-ms-blob-type: BlockBlob`` (Put Blob
requires it; Azure and Azurite answer 400 without it).

Why user-delegation SAS is signed here rather than by the SDK: azure-storage-blob 12.31 signs SAS
version 2026-10-06, whose user-delegation string-to-sign has two more lines (signed request headers
and query parameters) than Azurite 3.35 knows, so Azurite refuses every such URL. This module signs
``sv=2025-11-05`` (the newest version Azurite implements) with that version's string
(:func:`udk_string_to_sign`: the SDK's own string minus those two lines, which a test checks), so the
signing path production uses is the one the tests run against Azurite. Azure accepts older SAS
versions; that it accepts this one cannot be checked offline.

* Keys are checked with the storage-key rules every backend shares (:func:`core.storage_layout.validate_key`).
* The SDK is imported, and its client built, on first use: importing this module (a cold start of the
  function app) costs nothing, and a malformed connection string still fails at construction.
* Every ``azure.core`` error is translated in one place (:func:`_translate_errors`); messages name
  the operation and the service's error code only, never the key or the SDK's text.
* Chunks are write-once: :meth:`AzureBlobStore.put_if_absent` is one Put Blob with ``If-None-Match: *``
  (Azure and Azurite answer 409 ``BlobAlreadyExists`` when the blob exists). :meth:`~AzureBlobStore.head`
  is one Get Blob Properties; ``get_bytes(key, max_bytes)`` is one ranged Get Blob that never asks for
  more than ``max_bytes + 1`` bytes.
* ``calls`` counts API requests by operation (``ListBlobs``, ``PutBlob``, ``BlobBatch``...: one per call,
  page or batch; retries and presigns are not counted), so a test can check that listing 1,001 blobs
  costs 2 requests and deleting them 4.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from core.errors import InvalidInput, NotFound, PayloadTooLarge, PdcatError, Unavailable
from core.ports import BlobInfo, BlobStore, HttpMethod
from core.storage_layout import MAX_EXPIRES_IN, validate_key, validate_prefix

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["UDK_SAS_VERSION", "AzureBlobStore", "udk_string_to_sign"]

PAGE_SIZE = 1000  # one List Blobs request per 1,000 blobs (the service's own maximum is 5,000)
BATCH_SIZE = 256  # the Blob Batch maximum of sub-requests
UDK_SAS_VERSION = "2025-11-05"  # see the module docstring
_PERMISSIONS: dict[str, str] = {"GET": "r", "PUT": "cw"}
_SKEW = 300  # seconds: a delegation key starts this long ago, and is replaced this long before it must
_MAX_UDK_LIFETIME = 7 * 24 * 3600 - 60  # the service refuses keys that end more than 7 days ahead
MAX_UDK_EXPIRES_IN = _MAX_UDK_LIFETIME - 2 * _SKEW
_DENIED_CODES = frozenset(
    {
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "InsufficientAccountPermissions",
        "AccountIsDisabled",
    }
)
_DEV_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"
_DEV_ACCOUNT = "devstoreaccount1"
# Azurite's published well-known key, used only for `UseDevelopmentStorage=true`.
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _sdk(module: str) -> Any:
    """Import an azure module on first use (cold start); typed as ``Any`` here, like the S3 adapter."""
    return importlib.import_module(module)


# ---- pure helpers -------------------------------------------------------------------------------


class _Secret(str):
    """A string whose repr never shows it (in ``vars()``, debuggers, tracebacks' locals)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


@dataclass(frozen=True)
class _AccountKey:
    account_url: str
    account_name: str
    key: str

    def __repr__(self) -> str:  # the key never shows, even in a debugger or a traceback's locals
        return f"_AccountKey(account_url={self.account_url!r}, account_name={self.account_name!r})"


def _parse_connection_string(text: object) -> _AccountKey:
    """Account URL, name and key from an Azure Storage connection string. Errors never echo it."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("the Azure Storage connection string is empty")
    settings: dict[str, str] = {}
    for part in text.strip().rstrip(";").split(";"):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise InvalidInput("the Azure Storage connection string is malformed (expected Name=value;...)")
        settings[name.strip().upper()] = value.strip()
    if settings.get("USEDEVELOPMENTSTORAGE", "").lower() == "true":
        return _AccountKey(_DEV_ENDPOINT, _DEV_ACCOUNT, _DEV_KEY)
    account, key = settings.get("ACCOUNTNAME"), settings.get("ACCOUNTKEY")
    if not account or not key:
        raise InvalidInput(
            "the Azure Storage connection string needs AccountName and AccountKey "
            "(for a managed identity, configure an account URL instead)"
        )
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the AccountKey of the Azure Storage connection string is not base64") from None
    endpoint = settings.get("BLOBENDPOINT")
    if not endpoint:
        protocol = settings.get("DEFAULTENDPOINTSPROTOCOL", "https").lower()
        suffix = settings.get("ENDPOINTSUFFIX", "core.windows.net")
        endpoint = f"{protocol}://{account}.blob.{suffix}"
    return _AccountKey(_check_account_url(endpoint), account, key)


def _check_account_url(url: object) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InvalidInput("the Azure Blob account URL must be an http(s) URL without query (https://ACCOUNT.blob...)")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _account_name_from_url(url: str) -> str:
    """As the SDK reads it: ``ACCOUNT.blob.<suffix>``, or the first path segment on an emulator/IP host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0]
    try:
        is_ip = host == "localhost" or bool(ipaddress.ip_address(host))
    except ValueError:
        is_ip = False
    segment = parts.path.strip("/").split("/", 1)[0]
    if is_ip and segment:
        return segment
    raise InvalidInput("cannot tell the storage account name from the Blob account URL: pass account_name")


def _check_expires(expires_in: object, limit: int) -> int:
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 1 <= expires_in <= limit:
        raise InvalidInput(f"expires_in must be an integer from 1 to {limit} seconds")
    return expires_in


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _DelegationKey:
    """A user delegation key as the service returned it (strings verbatim: they are signed)."""

    oid: str
    tid: str
    start: str
    expiry: str
    service: str
    version: str
    value: str
    delegated_user_tid: str
    expires_at: float  # the expiry we asked for, as a timestamp, for the cache

    def __repr__(self) -> str:
        return f"_DelegationKey(oid={self.oid!r}, tid={self.tid!r}, expiry={self.expiry!r})"


def udk_string_to_sign(
    *,
    account: str,
    container: str,
    blob: str,
    permission: str,
    expiry: str,
    key: _DelegationKey,
    protocol: str = "",
    version: str = UDK_SAS_VERSION,
) -> str:
    """The user-delegation SAS string-to-sign of versions 2025-07-05 to 2025-11-05, for one blob.

    Fields this store never sets (start, IP, snapshot, encryption scope, authorised/unauthorised
    object ids, correlation id, delegated user object id, response headers) are empty lines.
    """
    return "\n".join(
        [
            permission,
            "",  # st
            expiry,
            f"/blob/{account}/{container}/{blob}",
            key.oid,
            key.tid,
            key.start,
            key.expiry,
            key.service,
            key.version,
            "",  # saoid
            "",  # suoid
            "",  # scid
            key.delegated_user_tid,  # skdutid
            "",  # sduoid
            "",  # sip
            protocol,
            version,
            "b",  # sr
            "",  # snapshot time
            "",  # ses
            "",  # rscc
            "",  # rscd
            "",  # rsce
            "",  # rscl
            "",  # rsct
        ]
    )


def _udk_sas(
    *, account: str, container: str, blob: str, permission: str, expiry: str, key: _DelegationKey, protocol: str
) -> str:
    to_sign = udk_string_to_sign(
        account=account,
        container=container,
        blob=blob,
        permission=permission,
        expiry=expiry,
        key=key,
        protocol=protocol,
    )
    digest = hmac.new(base64.b64decode(key.value), to_sign.encode("utf-8"), hashlib.sha256).digest()
    params = [
        ("sp", permission),
        ("se", expiry),
        ("sv", UDK_SAS_VERSION),
        ("sr", "b"),
        ("skoid", key.oid),
        ("sktid", key.tid),
        ("skt", key.start),
        ("ske", key.expiry),
        ("sks", key.service),
        ("skv", key.version),
    ]
    if key.delegated_user_tid:
        params.append(("skdutid", key.delegated_user_tid))
    if protocol:
        params.append(("spr", protocol))
    params.append(("sig", base64.b64encode(digest).decode("ascii")))
    return urlencode(params, quote_via=quote, safe="")


_OPERATIONS: dict[tuple[str, str, str], str] = {
    # (method, restype, comp) -> Azure REST operation name
    ("GET", "container", "list"): "ListBlobs",
    ("PUT", "container", ""): "CreateContainer",
    ("DELETE", "container", ""): "DeleteContainer",
    ("GET", "container", ""): "GetContainerProperties",
    ("POST", "", "batch"): "BlobBatch",
    ("POST", "container", "batch"): "BlobBatch",
    ("POST", "service", "userdelegationkey"): "GetUserDelegationKey",
    ("PUT", "", ""): "PutBlob",
    ("GET", "", ""): "GetBlob",
    ("HEAD", "", ""): "GetBlobProperties",
    ("DELETE", "", ""): "DeleteBlob",
}


def _operation_name(method: str, url: str) -> str:
    query = dict(parse_qsl(urlsplit(url).query))
    key = (method.upper(), query.get("restype", ""), query.get("comp", ""))
    return _OPERATIONS.get(key) or " ".join(part for part in key if part)


# ---- errors -------------------------------------------------------------------------------------


def _error_code(exc: Any) -> tuple[str, int]:
    code = getattr(exc, "error_code", None)
    response = getattr(exc, "response", None)
    status = int(getattr(exc, "status_code", None) or getattr(response, "status_code", 0) or 0)
    if not code and response is not None:
        code = getattr(response, "headers", {}).get("x-ms-error-code")
    return str(getattr(code, "value", code) or ""), status


@contextmanager
def _translate_errors(operation: str, key: str | None = None) -> Iterator[None]:
    """Turn ``azure.core`` errors into core errors: one line, no SDK text, never a credential."""
    sdk = _sdk("azure.core.exceptions")
    what = f"Azure Blob {operation}" + (f" of {key!r}" if key is not None else "")
    try:
        yield
    except sdk.ResourceNotFoundError as exc:
        code, _ = _error_code(exc)
        if code == "ContainerNotFound":
            raise Unavailable(f"{what} failed: the configured container does not exist") from exc
        raise NotFound(f"no object {key!r}" if key is not None else f"{what}: not found") from exc
    except sdk.ClientAuthenticationError as exc:  # 401/403, and a credential that cannot get a token
        code, status = _error_code(exc)
        detail = code or (str(status) if status else type(exc).__name__)
        raise Unavailable(f"{what} failed: access denied ({detail})") from exc
    except (sdk.ServiceRequestError, sdk.ServiceResponseError) as exc:  # connection refused, reset, timeout
        raise Unavailable(f"{what} failed: storage endpoint unreachable ({type(exc).__name__})") from exc
    except sdk.HttpResponseError as exc:
        code, status = _error_code(exc)
        if code in _DENIED_CODES or status in (401, 403):
            raise Unavailable(f"{what} failed: access denied ({code or status})") from exc
        if status >= 500 or status == 429:
            raise Unavailable(f"{what} failed: storage unavailable ({code or status})") from exc
        raise PdcatError(f"{what} failed ({code or status})") from exc
    except sdk.AzureError as exc:
        raise Unavailable(f"{what} failed ({type(exc).__name__})") from exc


def _timestamp(when: Any) -> float | None:
    """A ``Last-Modified`` datetime (timezone-aware, from the SDK) as epoch seconds."""
    return float(when.timestamp()) if isinstance(when, datetime) else None


def _already_gone(response: Any) -> bool:
    """A batch sub-response saying the blob is not there (but the container is)."""
    return bool(response.status_code == 404 and response.headers.get("x-ms-error-code") != "ContainerNotFound")


# ---- the store ----------------------------------------------------------------------------------


class AzureBlobStore(BlobStore):
    """:class:`BlobStore` over one Blob container; clients move the bytes through SAS URLs.

    Build it with :meth:`from_connection_string` (account key) or :meth:`from_credential` (managed
    identity); both take the same keyword options as ``__init__``.
    """

    # Put Blob needs the blob type, and a SAS cannot carry a header: the catalog tells every pusher to send it.
    put_headers = MappingProxyType({"x-ms-blob-type": "BlockBlob"})

    def __init__(
        self,
        account_url: str,
        container: str,
        *,
        account_name: str | None = None,
        account_key: str | None = None,
        credential: TokenCredential | None = None,
        name: str = "azure",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        connection_verify: bool | str = True,
        user_delegation_key_lifetime: int = 6 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (account_key is None) == (credential is None):
            raise ValueError("give exactly one of account_key and credential")
        if not isinstance(container, str) or not 3 <= len(container) <= 63:
            raise InvalidInput("the Blob container name must have 3 to 63 characters")
        self.account_url = _check_account_url(account_url)
        if credential is not None and not self.account_url.startswith("https://"):
            raise InvalidInput("a token credential (managed identity) needs an https:// Blob account URL")
        self.account_name = account_name or _account_name_from_url(self.account_url)
        self.container = container
        self.name = name
        self.calls: dict[str, int] = {}
        self._account_key = _Secret(account_key) if account_key is not None else None
        self._credential = credential
        self._options = (connect_timeout, read_timeout, max_attempts, connection_verify)
        self._udk_lifetime = max(int(user_delegation_key_lifetime), 2 * _SKEW)
        self._clock = clock
        self._udk: _DelegationKey | None = None
        self._clients_obj: tuple[Any, Any] | None = None
        self._lock = threading.Lock()
        self._udk_lock = threading.Lock()
        self._protocol = "https" if self.account_url.startswith("https://") else ""
        self._container_url = f"{self.account_url}/{quote(container, safe='')}"

    @classmethod
    def from_connection_string(cls, connection_string: str, container: str, **options: Any) -> AzureBlobStore:
        """Account-key SAS. The connection string is parsed now (bad input fails here) and not kept."""
        parsed = _parse_connection_string(connection_string)
        return cls(parsed.account_url, container, account_name=parsed.account_name, account_key=parsed.key, **options)

    @classmethod
    def from_credential(
        cls, account_url: str, container: str, credential: TokenCredential, **options: Any
    ) -> AzureBlobStore:
        """User-delegation SAS signed with a key fetched with ``credential`` (a managed identity)."""
        if credential is None or not callable(getattr(credential, "get_token", None)):
            raise InvalidInput("credential must be an azure.core TokenCredential")
        return cls(account_url, container, credential=credential, **options)

    def __repr__(self) -> str:
        mode = "account-key" if self._account_key is not None else "user-delegation"
        return (
            f"AzureBlobStore(name={self.name!r}, account={self.account_name!r}, container={self.container!r}, "
            f"account_url={self.account_url!r}, sas={mode!r})"
        )

    # ---- client -----------------------------------------------------------------------------
    def _clients(self) -> tuple[Any, Any]:
        """The SDK's service and container clients, built together on first use (thread-safe)."""
        clients = self._clients_obj
        if clients is not None:
            return clients
        with self._lock:
            if self._clients_obj is None:
                blob = _sdk("azure.storage.blob")
                connect_timeout, read_timeout, max_attempts, verify = self._options
                credential: Any = self._credential
                if self._account_key is not None:
                    credential = _sdk("azure.core.credentials").AzureNamedKeyCredential(
                        self.account_name, str(self._account_key)
                    )
                # The SDK's default retry waits 15 s, then 18 s...: far too long inside an API call.
                retry = blob.ExponentialRetry(
                    initial_backoff=0.5, increment_base=2, retry_total=max(0, max_attempts - 1), random_jitter_range=0.4
                )
                service = blob.BlobServiceClient(
                    self.account_url,
                    credential=credential,
                    retry_policy=retry,
                    connection_timeout=connect_timeout,
                    read_timeout=read_timeout,
                    connection_verify=verify,
                    raw_request_hook=self._count_call,
                )
                # One assignment, so no thread ever sees a service client without its container client.
                self._clients_obj = (service, service.get_container_client(self.container))
            return self._clients_obj

    def _service(self) -> Any:
        return self._clients()[0]

    def _container(self) -> Any:
        return self._clients()[1]

    def _count_call(self, request: Any) -> None:
        # The hook runs on every attempt; the context is the same object across the retries of one
        # call, so marking it counts each call (each page of a listing, each batch) exactly once.
        context = request.context
        if context.get("pdcat_counted"):
            return
        context["pdcat_counted"] = True
        http = request.http_request
        operation = _operation_name(str(http.method), str(http.url))
        with self._lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    # ---- signing ----------------------------------------------------------------------------
    def presign(self, key: str, method: HttpMethod, expires_in: int) -> str:
        key = validate_key(key)
        permission = _PERMISSIONS.get(method) if isinstance(method, str) else None
        if permission is None:
            raise InvalidInput("method must be GET or PUT")
        limit = MAX_EXPIRES_IN if self._account_key is not None else MAX_UDK_EXPIRES_IN
        expires = _check_expires(expires_in, limit)
        now = self._clock()
        # Round up: a URL must live at least ``expires_in`` seconds, never a fraction less.
        expiry = _iso(math.ceil(now) + expires)
        if self._account_key is not None:
            sas = _sdk("azure.storage.blob").generate_blob_sas(
                self.account_name,
                self.container,
                key,
                account_key=str(self._account_key),
                permission=permission,
                expiry=expiry,
                protocol=self._protocol or None,
            )
        else:
            delegation_key = self._delegation_key(now, expires)
            sas = _udk_sas(
                account=self.account_name,
                container=self.container,
                blob=key,
                permission=permission,
                expiry=expiry,
                key=delegation_key,
                protocol=self._protocol,
            )
        return f"{self._container_url}/{quote(key, safe='/~')}?{sas}"

    def _delegation_key(self, now: float, expires_in: int) -> _DelegationKey:
        """The cached user delegation key if it outlives the URL by a margin; else a fresh one."""
        cached = self._udk
        if cached is not None and cached.expires_at >= now + expires_in + _SKEW:
            return cached
        with self._udk_lock:
            cached = self._udk
            if cached is not None and cached.expires_at >= now + expires_in + _SKEW:
                return cached
            lifetime = min(max(self._udk_lifetime, expires_in + 2 * _SKEW), _MAX_UDK_LIFETIME)
            start, expiry = datetime.fromtimestamp(now - _SKEW, UTC), datetime.fromtimestamp(now + lifetime, UTC)
            with _translate_errors("get user delegation key"):
                got = self._service().get_user_delegation_key(start, expiry)
            fresh = _DelegationKey(
                oid=str(got.signed_oid or ""),
                tid=str(got.signed_tid or ""),
                start=str(got.signed_start or ""),
                expiry=str(got.signed_expiry or ""),
                service=str(got.signed_service or ""),
                version=str(got.signed_version or ""),
                value=str(got.value or ""),
                delegated_user_tid=str(getattr(got, "signed_delegated_user_tid", None) or ""),
                expires_at=now + lifetime,
            )
            if not (fresh.oid and fresh.tid and fresh.value and fresh.start and fresh.expiry):
                raise Unavailable("Azure Blob get user delegation key failed: the service returned an incomplete key")
            self._udk = fresh
            return fresh

    # ---- the port ---------------------------------------------------------------------------
    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Blobs under ``prefix`` in key order (the service lists lexicographically), 1,000 per request."""
        prefix = validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[BlobInfo]:
        with _translate_errors("list"):
            pages = self._container().list_blobs(name_starts_with=prefix or None, results_per_page=PAGE_SIZE)
            for page in pages.by_page():
                for item in page:
                    yield BlobInfo(str(item.name), int(item.size), _timestamp(item.last_modified))

    def head(self, key: str) -> BlobInfo | None:
        """Get Blob Properties (one HEAD); ``None`` when the blob is missing (a missing container is
        :class:`Unavailable`, as everywhere else)."""
        key = validate_key(key)
        try:
            with _translate_errors("head", key):
                props = self._container().get_blob_client(key).get_blob_properties()
        except NotFound:
            return None
        return BlobInfo(key, int(props.size), _timestamp(props.last_modified))

    def put_bytes(self, key: str, data: bytes) -> None:
        key = validate_key(key)
        with _translate_errors("put", key):
            self._container().upload_blob(key, bytes(data), overwrite=True)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """One Put Blob with ``If-None-Match: *`` (the SDK's ``overwrite=False``): the service creates
        the blob atomically or refuses (409 ``BlobAlreadyExists``; 412 ``ConditionNotMet`` is taken
        the same way), and an existing blob is never touched."""
        key = validate_key(key)
        exceptions = _sdk("azure.core.exceptions")
        with _translate_errors("put if absent", key):
            try:
                self._container().upload_blob(key, bytes(data), overwrite=False)
            except exceptions.ResourceExistsError:
                return False
            except exceptions.ResourceModifiedError as exc:
                if _error_code(exc) != ("ConditionNotMet", 412):
                    raise
                return False
        return True

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The blob's bytes. With ``max_bytes`` the one Get Blob asks for the first ``max_bytes + 1``
        bytes only, and its ``Content-Range`` (the blob's full size) is checked before anything else is
        read: a blob larger than that is :class:`PayloadTooLarge` after at most
        ``min(max_bytes + 1, 32 MiB)`` bytes (32 MiB is the SDK's first read; beyond it, more ranged
        reads follow only for a blob that is within the limit)."""
        key = validate_key(key)
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise InvalidInput("max_bytes must be a non-negative integer")
        with _translate_errors("get", key):
            if max_bytes is None:
                return bytes(self._container().download_blob(key).readall())
            try:
                downloader = self._container().download_blob(key, offset=0, length=max_bytes + 1)
            except _sdk("azure.core.exceptions").HttpResponseError as exc:
                if _error_code(exc) == ("InvalidRange", 416):  # a range of an empty blob: it exists, empty
                    return b""
                raise
            if int(downloader.size) > max_bytes:  # the SDK clips the range to the blob's size
                raise PayloadTooLarge(f"object {key!r} is larger than the limit of {max_bytes} bytes")
            return bytes(downloader.readall())

    def delete(self, keys: Iterable[str]) -> None:
        """Blob Batch deletes, 256 blobs a request; a blob that is already gone (404) is ignored."""
        checked = [validate_key(key) for key in keys]  # validate them all before deleting any
        for start in range(0, len(checked), BATCH_SIZE):
            batch = checked[start : start + BATCH_SIZE]
            with _translate_errors("delete"):
                responses = list(
                    self._container().delete_blobs(*batch, delete_snapshots="include", raise_on_any_failure=False)
                )
            failed = [r for r in responses if r.status_code not in (200, 202) and not _already_gone(r)]
            if failed:
                codes = sorted({str(r.headers.get("x-ms-error-code") or r.status_code) for r in failed})
                if "ContainerNotFound" in codes:
                    raise Unavailable("Azure Blob delete failed: the configured container does not exist")
                denied = any(r.status_code in (401, 403) or r.status_code >= 500 for r in failed)
                error = Unavailable if denied else PdcatError
                raise error(f"Azure Blob delete failed for {len(failed)} object(s) ({', '.join(codes)})")

    def close(self) -> None:
        with self._lock:
            clients, self._clients_obj = self._clients_obj, None
        if clients is not None:
            clients[0].close()

    # ---- set-up helpers (tests, the demo, local runs) ----------------------------------------
    def create_container(self) -> None:
        """Create the container if it does not exist yet (idempotent)."""
        exists = _sdk("azure.core.exceptions").ResourceExistsError
        with _translate_errors("create container"), suppress(exists):
            self._container().create_container()
