"""AWS S3 and MinIO (any S3-compatible server) through boto3.

* Always SigV4 (``Config(signature_version="s3v4")``). MinIO uses path-style addressing on its
  ``endpoint``; ``aws-s3`` talks to AWS, except that the standard SDK setting ``AWS_ENDPOINT_URL_S3``
  (or ``AWS_ENDPOINT_URL``) points it elsewhere, as boto3 always allows.
* Without ``access_key``/``secret_key`` boto3's default credential chain is used (environment,
  ``~/.aws``, SSO, the instance or task role).
* Big files go through s3transfer: multipart uploads and parallel ranged downloads, each part
  retried, nothing held whole in memory. ``open_read`` is one GET, resumed with a ``Range`` and
  ``If-Match`` on the first ETag after a dropped connection.
* Every botocore error becomes a core error in :meth:`S3Storage._errors`; messages carry the
  provider, bucket, key and S3 error code, never credentials or SDK text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from client.byo.common import (
    ResumingReader,
    SdkErrors,
    atomic_destination,
    import_sdk,
    is_listable,
    open_buffered,
    validate_key,
    validate_prefix,
)
from client.byo.connection import AwsS3Connection, MinioConnection
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, PdcatError, Unauthenticated, Unavailable

__all__ = ["S3Storage"]

_MAX_PARTS = 10_000
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)
_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"})
_WRONG_REGION = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "301", "IllegalLocationConstraintException"}
)


class S3Storage(SdkErrors):
    """:class:`~client.byo.providers.Storage` over one S3 bucket; the boto3 client is made on first use."""

    def __init__(self, conn: AwsS3Connection | MinioConnection, *, part_size: int, concurrency: int) -> None:
        self._conn = conn
        self.description = conn.description
        self._provider = conn.provider
        self._bucket = conn.bucket
        self._part_size = part_size
        self._concurrency = max(1, concurrency)
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Storage({self.description})"

    # ---- the SDK ---------------------------------------------------------------------------
    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                boto3 = import_sdk("boto3", self._provider)
                config_mod = import_sdk("botocore.config", self._provider)
                conn = self._conn
                minio = isinstance(conn, MinioConnection)
                region = (conn.region or "us-east-1") if minio else conn.region
                session = boto3.session.Session(
                    aws_access_key_id=conn.access_key,
                    aws_secret_access_key=conn.secret_key,
                    aws_session_token=conn.session_token if isinstance(conn, AwsS3Connection) else None,
                    region_name=region,
                )
                config = config_mod.Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path" if minio else "auto"},
                    retries={"max_attempts": 8, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=120,
                    max_pool_connections=max(10, 2 * self._concurrency),
                )
                extra: dict[str, Any] = {}
                if isinstance(conn, MinioConnection):
                    extra = {"endpoint_url": conn.url, "verify": not conn.ignore_cert}
                self._client = session.client("s3", config=config, **extra)
            return self._client

    def _transfer_config(self, size: int) -> Any:
        transfer = import_sdk("boto3.s3.transfer", self._provider)
        part = max(self._part_size, -(-size // _MAX_PARTS))
        return transfer.TransferConfig(
            multipart_threshold=part,
            multipart_chunksize=part,
            max_concurrency=self._concurrency,
            use_threads=self._concurrency > 1,
        )

    def _translate(self, exc: BaseException, op: str, key: str | None) -> PdcatError | None:
        """The core error for an SDK failure (searching its causes), or ``None`` if it is not one."""
        botocore = import_sdk("botocore.exceptions", self._provider)
        transfer_errors = import_sdk("s3transfer.exceptions", self._provider)
        what = f"{key!r} in {self.description}" if key else self.description
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, botocore.ClientError):
                error = seen.response.get("Error", {})
                code = str(error.get("Code", "")) or "unknown"
                status = int(seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                if code in _NOT_FOUND:
                    return NotFound(f"{what} does not exist")
                if code == "NoSuchBucket":
                    return NotFound(f"{self.description} does not exist")
                if code in _BAD_CREDENTIALS:
                    return Unauthenticated(
                        f"{self._provider} refused the credentials for {self.description} ({code}): "
                        "check access_key and secret_key"
                    )
                if code in _DENIED:
                    return Forbidden(
                        f"{self._provider} denied {op} on {self.description} ({code}): "
                        "check the credentials and their permissions"
                    )
                if code in _WRONG_REGION:
                    return InvalidInput(f"{self.description} is not reachable in this region ({code}): check region")
                if code in ("PreconditionFailed", "412"):
                    return Conflict(f"{what} changed while it was being read")
                if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable"):
                    return Unavailable(f"{self._provider} kept failing during {op} of {what} ({code})")
                return PdcatError(f"{self._provider} {op} of {what} failed ({code})")
            if isinstance(seen, botocore.NoCredentialsError | botocore.PartialCredentialsError):
                return Unauthenticated(
                    f"{self._provider}: no credentials for {self.description}: give access_key and secret_key, "
                    "or configure AWS credentials (environment, ~/.aws or a role)"
                )
            if isinstance(seen, botocore.SSLError):
                return Unavailable(
                    f"{self._provider}: TLS to {self.description} failed (for MinIO see use_ssl, ignore_cert)"
                )
            if isinstance(
                seen,
                botocore.EndpointConnectionError
                | botocore.ConnectionClosedError
                | botocore.ConnectTimeoutError
                | botocore.ReadTimeoutError
                | botocore.ResponseStreamingError
                | botocore.IncompleteReadError
                | transfer_errors.RetriesExceededError,
            ):
                return Unavailable(f"{self._provider}: cannot reach {self.description} ({type(seen).__name__})")
            if isinstance(seen, botocore.BotoCoreError):
                return PdcatError(f"{self._provider} {op} of {what} failed ({type(seen).__name__})")
            seen = seen.__cause__ or seen.__context__
        return None

    # ---- Storage ---------------------------------------------------------------------------
    def put_file(self, key: str, path: Path) -> None:
        key = validate_key(key)
        size = path.stat().st_size
        with self._errors("upload", key):
            self._s3().upload_file(str(path), self._bucket, key, Config=self._transfer_config(size))

    def get_file(self, key: str, dest: Path) -> None:
        key = validate_key(key)
        with self._errors("download", key):
            size = self._head(key)
            if size is None:
                raise NotFound(f"{key!r} in {self.description} does not exist")
            with atomic_destination(dest) as tmp:
                self._s3().download_file(self._bucket, key, str(tmp), Config=self._transfer_config(size))

    def open_read(self, key: str) -> BinaryIO:
        key = validate_key(key)
        botocore = import_sdk("botocore.exceptions", self._provider)
        urllib3 = import_sdk("urllib3.exceptions", self._provider)
        state: dict[str, Any] = {}

        def open_at(offset: int) -> Any:
            args: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
            if offset:
                args["Range"] = f"bytes={offset}-"
            if "etag" in state:
                args["IfMatch"] = state["etag"]
            with self._errors("read", key):
                response = self._s3().get_object(**args)
            if "etag" not in state:
                state["etag"] = response.get("ETag")
                state["size"] = int(response.get("ContentLength", 0))
            return response["Body"]

        raw = ResumingReader(
            open_at,
            what=f"{key!r} in {self.description}",
            size=lambda: state.get("size"),
            transient=(
                botocore.ReadTimeoutError,
                botocore.ResponseStreamingError,
                botocore.IncompleteReadError,
                botocore.ConnectionClosedError,
                urllib3.HTTPError,
                ConnectionError,
            ),
        )
        return open_buffered(raw)

    def put_bytes(self, key: str, data: bytes) -> None:
        key = validate_key(key)
        with self._errors("upload", key):
            self._s3().put_object(Bucket=self._bucket, Key=key, Body=data)

    def get_bytes(self, key: str) -> bytes:
        key = validate_key(key)
        with self._errors("download", key):
            body = self._s3().get_object(Bucket=self._bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def _head(self, key: str) -> int | None:
        try:
            with self._errors("look-up", key):
                response = self._s3().head_object(Bucket=self._bucket, Key=key)
        except NotFound:
            return None
        return int(response["ContentLength"])

    def exists(self, key: str) -> bool:
        return self._head(validate_key(key)) is not None

    def size(self, key: str) -> int | None:
        return self._head(validate_key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        return self._list(validate_prefix(prefix))

    def _list(self, prefix: str) -> Iterator[str]:
        with self._errors("list"):
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    if is_listable(item["Key"]):
                        yield item["Key"]

    def delete(self, key: str) -> None:
        key = validate_key(key)
        with self._errors("delete", key):
            self._s3().delete_object(Bucket=self._bucket, Key=key)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
