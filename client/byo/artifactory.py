"""JFrog Artifactory (a generic repository) over its REST API, with httpx.

* Authentication: ``X-JFrog-Art-Api: <access_key>`` (the original product's API key), a bearer
  ``access_token``, or basic auth with ``username``/``password``.
* Uploads are one streamed ``PUT /artifactory/<repo>/<key>`` carrying ``X-Checksum-Sha1``,
  ``X-Checksum-Sha256`` and ``X-Checksum-Md5``: Artifactory verifies the bytes it received against
  them and refuses a mismatch (409). Before sending a big file, a *deploy by checksum*
  (``X-Checksum-Deploy: true``, no body) is tried: if Artifactory already holds those bytes anywhere,
  nothing is uploaded again (a re-pushed 100 GB pack costs one request); a 404 means "send it".
* Downloads stream and resume with ``Range`` after a dropped connection (refusing to mix two
  versions of a file: the SHA-1 must not change between attempts) and are checked against the
  ``X-Checksum-Sha256`` Artifactory reports.
* Listing uses the storage API's file list (``GET /api/storage/<repo>/<folder>?list&deep=1``).
* Artifactory may redirect downloads to a signed URL of its cloud storage; such a redirect to
  another origin is followed **without** the credentials.
* Network errors, 5xx and 429 are retried as :mod:`client.retry` says; the last cause is kept.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin, urlsplit

import httpx

from client.byo.common import (
    READ_BLOCK,
    ResumingReader,
    atomic_destination,
    is_listable,
    log,
    open_buffered,
    validate_key,
    validate_prefix,
)
from client.byo.connection import ArtifactoryConnection
from client.retry import RetryPolicy, retryable
from core.errors import Conflict, Forbidden, NotFound, PdcatError, Unauthenticated, Unavailable

__all__ = ["CHECKSUM_DEPLOY_MIN", "ArtifactoryStorage"]

CHECKSUM_DEPLOY_MIN = 10 * 1024  # smaller files are sent directly (as the JFrog CLI does)
_PROVIDER = ArtifactoryConnection.provider
_MAX_REDIRECTS = 5


def file_checksums(path: Path) -> dict[str, str]:
    """SHA-1, SHA-256 and MD5 of a file in one streaming pass, as Artifactory's checksum headers."""
    sha1, sha256, md5 = hashlib.sha1(usedforsecurity=False), hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as source:
        while block := source.read(READ_BLOCK):
            sha1.update(block)
            sha256.update(block)
            md5.update(block)
    return {
        "X-Checksum-Sha1": sha1.hexdigest(),
        "X-Checksum-Sha256": sha256.hexdigest(),
        "X-Checksum-Md5": md5.hexdigest(),
    }


def _bytes_checksums(data: bytes) -> dict[str, str]:
    return {
        "X-Checksum-Sha1": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
        "X-Checksum-Sha256": hashlib.sha256(data).hexdigest(),
        "X-Checksum-Md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
    }


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while block := source.read(READ_BLOCK):
            yield block


class ArtifactoryStorage:
    """:class:`~client.byo.providers.Storage` over one Artifactory repository."""

    def __init__(
        self,
        conn: ArtifactoryConnection,
        *,
        transport: httpx.BaseTransport | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 120.0,
    ) -> None:
        self.description = conn.description
        self._base = conn.base_url
        self._repo = conn.repo
        self._policy = RetryPolicy(retries, backoff)
        headers: dict[str, str] = {}
        auth: httpx.Auth | None = None
        if conn.access_key is not None:
            headers["X-JFrog-Art-Api"] = conn.access_key
            self._check_hint = "check access_key"
        elif conn.access_token is not None:
            headers["Authorization"] = f"Bearer {conn.access_token}"
            self._check_hint = "check access_token"
        else:
            auth = httpx.BasicAuth(conn.username or "", conn.password or "")
            self._check_hint = "check username and password"
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        timeouts = httpx.Timeout(timeout, connect=10.0)
        self._http = httpx.Client(
            headers=headers, auth=auth, timeout=timeouts, limits=limits, follow_redirects=False, transport=transport
        )
        # For redirects to another origin (a signed storage URL): never carries our credentials.
        self._anonymous = httpx.Client(timeout=timeouts, follow_redirects=False, transport=transport)

    def __repr__(self) -> str:
        return f"ArtifactoryStorage({self.description})"

    # ---- HTTP ------------------------------------------------------------------------------
    def _url(self, key: str) -> str:
        # ';' would start Artifactory matrix parameters: quote everything but '/'.
        return f"{self._base}/{self._repo}/{quote(key, safe='/')}"

    def _check(self, response: httpx.Response, what: str, missing: str) -> None:
        status = response.status_code
        if status < 400:
            return
        if status == 401:
            raise Unauthenticated(f"{_PROVIDER} at {self._base} refused the credentials (HTTP 401): {self._check_hint}")
        if status == 403:
            raise Forbidden(f"{_PROVIDER} denied {what} in repo '{self._repo}' (HTTP 403): check the permissions")
        if status == 404:
            raise NotFound(missing)
        if status == 409:
            raise Conflict(f"{_PROVIDER} refused {what} (HTTP 409): the checksums did not match the bytes sent")
        raise PdcatError(f"{_PROVIDER} answered HTTP {status} for {what}")

    def _follow(self, response: httpx.Response, stream: bool) -> httpx.Response:
        """Follow redirects of a GET/HEAD, dropping the credentials when the origin changes."""
        origin = urlsplit(self._base)[:2]
        for _ in range(_MAX_REDIRECTS):
            location = response.headers.get("Location")
            if not response.is_redirect or not location:
                return response
            target = urljoin(str(response.request.url), location)
            method = response.request.method
            response.close()
            client = self._http if urlsplit(target)[:2] == origin else self._anonymous
            response = client.send(client.build_request(method, target), stream=stream)
        raise PdcatError(f"{_PROVIDER} redirected too many times")

    def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        missing: str,
        headers: dict[str, str] | None = None,
        content: Callable[[], Any] | None = None,
        stream: bool = False,
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One request, retried as :mod:`client.retry` says (network errors, 5xx, 429). Other failures
        raise at once: Artifactory's 401/403 are about our credentials, not an expired URL."""

        def attempt() -> httpx.Response:
            request = self._http.build_request(
                method, url, headers=headers, content=content() if content is not None else None
            )
            response = self._http.send(request, stream=stream)
            if method in ("GET", "HEAD"):
                response = self._follow(response, stream)
            if retryable(response.status_code):
                response.close()
                raise Unavailable(f"HTTP {response.status_code}")
            if response.status_code in accept:
                return response
            try:
                self._check(response, what, missing)
            except PdcatError:
                response.close()
                raise
            return response

        def give_up(last: BaseException) -> Unavailable:
            attempts = self._policy.retries + 1
            return Unavailable(
                f"{_PROVIDER}: giving up on {what} after {attempts} attempts ({type(last).__name__}: {last})"
            )

        return self._policy.run(attempt, what, give_up=give_up)

    # ---- Storage ---------------------------------------------------------------------------
    def put_file(self, key: str, path: Path) -> None:
        key = validate_key(key)
        size = path.stat().st_size
        checksums = file_checksums(path)
        url, what = self._url(key), f"the upload of {key!r} to {self.description}"
        missing = f"repo '{self._repo}' does not exist in {_PROVIDER} at {self._base}"
        if size >= CHECKSUM_DEPLOY_MIN:
            response = self._send(
                "PUT",
                url,
                what=what,
                missing=missing,
                headers={**checksums, "X-Checksum-Deploy": "true"},
                accept=(404,),
            )
            response.close()
            if response.status_code != 404:
                log.info("deployed by checksum", extra={"key": key})
                return
        headers = {**checksums, "Content-Length": str(size), "Content-Type": "application/octet-stream"}
        self._send("PUT", url, what=what, missing=missing, headers=headers, content=lambda: _file_chunks(path)).close()

    def _open(self, key: str) -> tuple[ResumingReader, dict[str, Any]]:
        url = self._url(key)
        what = f"the download of {key!r} from {self.description}"
        missing = f"{key!r} in {self.description} does not exist"
        state: dict[str, Any] = {}

        def open_at(offset: int) -> _HttpBody:
            headers = {"Range": f"bytes={offset}-"} if offset else None
            response = self._send(
                "GET", url, what=what, missing=missing, headers=headers, stream=True, accept=(416,) if offset else ()
            )
            if response.status_code == 416:  # shorter than where we were: not the file we started reading
                response.close()
                raise Conflict(f"{key!r} in {self.description} changed while it was being read")
            sha1 = response.headers.get("X-Checksum-Sha1")
            if "size" not in state:
                state["size"] = (
                    int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
                )
                state["sha1"] = sha1
                state["sha256"] = response.headers.get("X-Checksum-Sha256")
            elif sha1 != state["sha1"]:
                response.close()
                raise Conflict(f"{key!r} in {self.description} changed while it was being read")
            body = _HttpBody(response)
            if offset and response.status_code == 200:  # the server ignored the range: skip what we have
                skip = offset
                while skip:
                    skip -= len(body.read(min(skip, READ_BLOCK)))
            return body

        raw = ResumingReader(
            open_at,
            what=f"{key!r} in {self.description}",
            size=lambda: state.get("size"),
            transient=(httpx.TransportError,),
            retries=self._policy.retries,
            backoff=self._policy.backoff,
        )
        return raw, state

    def get_file(self, key: str, dest: Path) -> None:
        key = validate_key(key)
        raw, state = self._open(key)
        digest = hashlib.sha256()
        with open_buffered(raw) as source, atomic_destination(dest) as tmp, tmp.open("wb") as sink:
            while block := source.read(READ_BLOCK):
                digest.update(block)
                sink.write(block)
            sink.flush()
            if state.get("sha256") and digest.hexdigest() != state["sha256"]:
                raise Unavailable(f"the download of {key!r} from {self.description} was corrupted (SHA-256 mismatch)")

    def open_read(self, key: str) -> BinaryIO:
        return open_buffered(self._open(validate_key(key))[0])

    def put_bytes(self, key: str, data: bytes) -> None:
        key = validate_key(key)
        headers = {**_bytes_checksums(data), "Content-Type": "application/octet-stream"}
        what = f"the upload of {key!r} to {self.description}"
        missing = f"repo '{self._repo}' does not exist in {_PROVIDER} at {self._base}"
        self._send("PUT", self._url(key), what=what, missing=missing, headers=headers, content=lambda: data).close()

    def get_bytes(self, key: str) -> bytes:
        key = validate_key(key)
        what = f"the download of {key!r} from {self.description}"
        response = self._send("GET", self._url(key), what=what, missing=f"{key!r} in {self.description} does not exist")
        data = response.content
        expected = response.headers.get("X-Checksum-Sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise Unavailable(f"the download of {key!r} from {self.description} was corrupted (SHA-256 mismatch)")
        return data

    def size(self, key: str) -> int | None:
        key = validate_key(key)
        what = f"the look-up of {key!r} in {self.description}"
        response = self._send("HEAD", self._url(key), what=what, missing="", accept=(404,))
        response.close()
        # A folder answers HEAD too, but only files carry checksums.
        if response.status_code == 404 or "X-Checksum-Sha1" not in response.headers:
            return None
        return int(response.headers.get("Content-Length", "0"))

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def list(self, prefix: str = "") -> Iterator[str]:
        return self._list(validate_prefix(prefix))

    def _list(self, prefix: str) -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        url = f"{self._base}/api/storage/{self._repo}/{quote(folder, safe='/')}?list&deep=1&listFolders=0"
        what = f"the listing of {self.description}"
        response = self._send("GET", url, what=what, missing="", accept=(400, 404))
        if response.status_code in (400, 404):  # no such folder (or it is a file): nothing under it
            return
        try:
            files = response.json().get("files", [])
        except ValueError as exc:
            raise PdcatError(f"{_PROVIDER} answered the listing of {self.description} with something not JSON") from exc
        keys: builtins.list[str] = []
        for item in files:
            if item.get("folder"):
                continue
            relative = str(item.get("uri", "")).lstrip("/")
            key = f"{folder}/{relative}" if folder else relative
            if key.startswith(prefix) and is_listable(key):
                keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        key = validate_key(key)
        what = f"the deletion of {key!r} from {self.description}"
        self._send("DELETE", self._url(key), what=what, missing="", accept=(404,)).close()

    def close(self) -> None:
        self._http.close()
        self._anonymous.close()


class _HttpBody:
    """A streamed httpx response as a :class:`~client.byo.common.Body` (``read(n)`` returns at most n)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = response.iter_bytes(READ_BLOCK)
        self._left = b""

    def read(self, size: int = -1, /) -> bytes:
        if not self._left:
            self._left = next(self._chunks, b"")
        if size < 0 or size >= len(self._left):
            data, self._left = self._left, b""
        else:
            data, self._left = self._left[:size], self._left[size:]
        return data

    def close(self) -> None:
        self._response.close()
