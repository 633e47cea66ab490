"""The S3 :class:`~core.ports.BlobStore`: presigned SigV4 URLs, listing, small objects, batch delete.

Works with AWS S3 and any S3-compatible endpoint (SeaweedFS, MinIO, ...) through ``endpoint_url``; a
custom endpoint uses path-style addressing (``http://host/<bucket>/<key>``). Without one, every
request and presigned URL goes to the bucket's *regional* endpoint, virtual-hosted
(``https://<bucket>.s3.<region>.amazonaws.com/<key>``; path style on it for bucket names with dots),
never the global ``s3.amazonaws.com``, which answers a bucket outside us-east-1 with a redirect that
a presigned URL cannot follow.

* URLs are always SigV4 (``Config(signature_version="s3v4")``): without it boto3 still signs SigV2
  URLs for some set-ups, which carry ``AWSAccessKeyId`` and cannot live longer than the credentials.
* Keys are checked with the storage-key rules every backend shares
  (:func:`core.storage_layout.validate_key`), so every backend accepts and refuses exactly the same keys.
* The boto3 client is created on first use and boto3 is imported only then: a Lambda cold start
  that never touches S3 does not pay for it.
* Every botocore error is translated in one place (:func:`_translate_errors`) into core errors;
  messages name the operation and the S3 error code only, never credentials or request details.
* ``put_if_absent`` is PutObject with ``If-None-Match: *``: S3 answers 412 when the key exists and
  never replaces it, so of racing writers exactly one gets True. A 409 (``ConditionalRequestConflict``,
  another conditional write in flight) is retried; its outcome is then a 201 or a 412.
* ``get_bytes(max_bytes=...)`` refuses an object whose ``Content-Length`` is larger before reading
  its body, and never reads more than ``max_bytes + 1`` bytes of it anyway.
* ``calls`` counts API requests by operation name (one per call or page; retries and presigns are
  not counted), so a test can check that listing 2,500 keys costs 3 ``ListObjectsV2`` calls and
  no ``HeadObject``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from core.errors import InvalidInput, NotFound, PayloadTooLarge, PdcatError, Unavailable
from core.ports import BlobInfo, BlobStore, HttpMethod
from core.storage_layout import MAX_EXPIRES_IN, validate_key, validate_prefix

__all__ = ["S3BlobStore", "make_s3_client"]

PAGE_SIZE = 1000  # the S3 maximum for ListObjectsV2 and DeleteObjects
_CLIENT_METHODS: dict[str, str] = {"GET": "get_object", "PUT": "put_object"}
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
        "AccountProblem",
    }
)
_BUSY_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable"})
_PRECONDITION_FAILED = "PreconditionFailed"  # 412: If-None-Match: * and the object exists
_CONDITIONAL_CONFLICT = "ConditionalRequestConflict"  # 409: a concurrent conditional write; retry
_CONFLICT_RETRIES = 5


def _sdk(module: str) -> Any:
    """Import a boto3/botocore module on first use (cold start); they are untyped: ``Any`` here."""
    return importlib.import_module(module)


def make_s3_client(
    region: str,
    endpoint_url: str | None = None,
    *,
    session: Any | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    max_attempts: int = 5,
) -> Any:
    """A boto3 S3 client configured for presigning and S3-compatible endpoints.

    ``session`` is a ``boto3.Session`` (e.g. one holding explicit credentials for tests); without it
    the default credential chain is used (the Lambda role in production).

    Without ``endpoint_url`` the regional endpoint is used, virtual-hosted: botocore would otherwise
    sign URLs for ``<bucket>.s3.amazonaws.com`` (the global endpoint), which redirects requests for a
    bucket outside us-east-1, and a redirected presigned request fails.
    """
    boto3 = _sdk("boto3")
    s3_config = (
        {"addressing_style": "path"}
        if endpoint_url
        else {"addressing_style": "virtual", "us_east_1_regional_endpoint": "regional"}
    )
    config = _sdk("botocore.config").Config(
        signature_version="s3v4",
        region_name=region,
        s3=s3_config,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # Only send/check the checksums S3 requires: many S3-compatible servers reject the
        # CRC32 trailers boto3 adds by default since 1.36.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    factory = session if session is not None else boto3.session.Session()
    return factory.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)


def _error_code(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


@contextmanager
def _translate_errors(operation: str, key: str | None = None) -> Iterator[None]:
    """Turn botocore errors into core errors. Messages never carry credentials or SDK text."""
    sdk = _sdk("botocore.exceptions")
    what = f"S3 {operation}" + (f" of {key!r}" if key is not None else "")
    try:
        yield
    except sdk.ClientError as exc:
        code, status = _error_code(exc)
        if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
            raise NotFound(f"no object {key!r}" if key is not None else f"{what}: not found") from exc
        if code == "NoSuchBucket":
            raise Unavailable(f"{what} failed: the configured bucket does not exist") from exc
        if code in _DENIED_CODES or status == 403:
            raise Unavailable(f"{what} failed: access denied ({code or status})") from exc
        if code in _BUSY_CODES or status >= 500:
            raise Unavailable(f"{what} failed: storage unavailable ({code or status})") from exc
        raise PdcatError(f"{what} failed ({code or status})") from exc
    except (sdk.ConnectionError, sdk.HTTPClientError) as exc:  # EndpointConnectionError, ConnectTimeoutError...
        raise Unavailable(f"{what} failed: storage endpoint unreachable ({type(exc).__name__})") from exc
    except (sdk.NoCredentialsError, sdk.PartialCredentialsError) as exc:
        raise Unavailable(f"{what} failed: no storage credentials configured") from exc


def _epoch(value: Any) -> float | None:
    """``LastModified`` (a timezone-aware ``datetime`` from botocore) as epoch seconds."""
    timestamp = getattr(value, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else None


def _check_expires(expires_in: object) -> int:
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_EXPIRES_IN:
        raise InvalidInput(f"expires_in must be an integer from 1 to {MAX_EXPIRES_IN} seconds")
    return expires_in


class S3BlobStore(BlobStore):
    """:class:`BlobStore` over one S3 bucket; clients move the bytes through presigned URLs."""

    def __init__(
        self,
        bucket: str,
        *,
        region: str,
        endpoint_url: str | None = None,
        name: str = "s3",
        client: Any | None = None,
        session: Any | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must not be empty")
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.name = name
        self.calls: dict[str, int] = {}
        self._client_obj: Any | None = None
        self._given_client = client
        self._session = session
        self._timeouts = (connect_timeout, read_timeout, max_attempts)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3BlobStore(name={self.name!r}, bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    # ---- client -----------------------------------------------------------------------------
    def _client(self) -> Any:
        client = self._client_obj
        if client is not None:
            return client
        with self._lock:
            if self._client_obj is None:
                if self._given_client is not None:
                    client = self._given_client
                else:
                    connect_timeout, read_timeout, max_attempts = self._timeouts
                    client = make_s3_client(
                        self.region,
                        self.endpoint_url,
                        session=self._session,
                        connect_timeout=connect_timeout,
                        read_timeout=read_timeout,
                        max_attempts=max_attempts,
                    )
                client.meta.events.register("provide-client-params.s3", self._count_call)
                self._client_obj = client
            return self._client_obj

    def _count_call(self, model: Any = None, context: Any = None, **_kwargs: Any) -> None:
        # Emitted once per API call (each page of a paginator is one), before retries, and also
        # while presigning, which sends nothing and is not counted.
        if isinstance(context, dict) and context.get("is_presign_request"):
            return
        operation = str(getattr(model, "name", "unknown"))
        with self._lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    # ---- the port ---------------------------------------------------------------------------
    def presign(self, key: str, method: HttpMethod, expires_in: int) -> str:
        key = validate_key(key)
        client_method = _CLIENT_METHODS.get(method) if isinstance(method, str) else None
        if client_method is None:
            raise InvalidInput("method must be GET or PUT")
        expires = _check_expires(expires_in)
        with _translate_errors("presign", key):
            url = self._client().generate_presigned_url(
                client_method,
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=expires,
                HttpMethod=method,
            )
        return str(url)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Objects under ``prefix`` in key order (S3 lists lexicographically), 1,000 per request."""
        prefix = validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[BlobInfo]:
        with _translate_errors("list"):
            paginator = self._client().get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": PAGE_SIZE})
            for page in pages:
                for item in page.get("Contents", ()):
                    yield BlobInfo(str(item["Key"]), int(item["Size"]), _epoch(item.get("LastModified")))

    def head(self, key: str) -> BlobInfo | None:
        key = validate_key(key)
        try:
            with _translate_errors("head", key):
                response = self._client().head_object(Bucket=self.bucket, Key=key)
        except NotFound:
            return None
        return BlobInfo(key, int(response["ContentLength"]), _epoch(response.get("LastModified")))

    def put_bytes(self, key: str, data: bytes) -> None:
        key = validate_key(key)
        with _translate_errors("put", key):
            self._client().put_object(Bucket=self.bucket, Key=key, Body=bytes(data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """PutObject with ``If-None-Match: *``. True if written; False on 412 (an object exists).

        Should a retried request find the object its own lost first attempt wrote, the answer is
        False: the object is there and was not replaced, which is all a caller may rely on.
        """
        key = validate_key(key)
        body = bytes(data)
        sdk = _sdk("botocore.exceptions")
        for attempt in range(_CONFLICT_RETRIES + 1):
            with _translate_errors("conditional put", key):
                try:
                    self._client().put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
                    return True
                except sdk.ClientError as exc:
                    code, status = _error_code(exc)
                    if code == _PRECONDITION_FAILED or status == 412:
                        return False
                    if (code == _CONDITIONAL_CONFLICT or status == 409) and attempt < _CONFLICT_RETRIES:
                        continue
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        key = validate_key(key)
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise InvalidInput("max_bytes must be a non-negative integer")
        with _translate_errors("get", key):
            response = self._client().get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body:
                if max_bytes is None:
                    return bytes(body.read())
                if int(response.get("ContentLength", 0) or 0) > max_bytes:
                    # closing an unread body drops the connection instead of downloading the rest
                    raise PayloadTooLarge(f"object {key!r} is larger than {max_bytes} bytes")
                data = bytes(body.read(max_bytes + 1))
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"object {key!r} is larger than {max_bytes} bytes")
        return data

    def delete(self, keys: Iterable[str]) -> None:
        checked = [validate_key(key) for key in keys]  # validate them all before deleting any
        for start in range(0, len(checked), PAGE_SIZE):
            batch = checked[start : start + PAGE_SIZE]
            with _translate_errors("delete"):
                response = self._client().delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = [e for e in response.get("Errors", ()) if e.get("Code") not in _NOT_FOUND_CODES]
            if errors:
                codes = sorted({str(e.get("Code", "?")) for e in errors})
                failed = Unavailable if set(codes) & (_DENIED_CODES | _BUSY_CODES) else PdcatError
                raise failed(f"S3 delete failed for {len(errors)} object(s) ({', '.join(codes)})")

    def close(self) -> None:
        with self._lock:
            client, self._client_obj = self._client_obj, None
        if client is not None and self._given_client is None:
            client.close()

    # ---- set-up helpers (tests, local infrastructure) ----------------------------------------
    def create_bucket(self) -> None:
        """Create the bucket if it does not exist yet (idempotent)."""
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with _translate_errors("create bucket"):
            try:
                self._client().create_bucket(**params)
            except _sdk("botocore.exceptions").ClientError as exc:
                if _error_code(exc)[0] != "BucketAlreadyOwnedByYou":
                    raise
