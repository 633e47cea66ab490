"""What every bring-your-own store shares: key rules, SDK loading, atomic downloads, resuming reads.

* Keys are ``/``-separated relative paths; every store accepts and refuses exactly the same keys, so
  a pack written to one provider can be copied to any other (and a key can never climb out of the
  local provider's folder).
* SDKs load on first use: the client starts fast, and a missing SDK is a one-line install hint.
* A download is written to a temporary name next to its destination and renamed when complete:
  a reader never sees half a file, and a failed download leaves what was there before.
* :class:`ResumingReader` turns "open the object at offset N" into a plain read-only stream that
  reopens where it stopped after a dropped connection, so a 150 GB streaming unpack survives a
  network hiccup without starting over.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from client.retry import RetryPolicy
from core.errors import InvalidInput, PdcatError, Unavailable

__all__ = [
    "READ_BLOCK",
    "TEMP_MARK",
    "Body",
    "MissingExtra",
    "ResumingReader",
    "SdkErrors",
    "atomic_destination",
    "import_sdk",
    "is_listable",
    "open_buffered",
    "validate_key",
    "validate_prefix",
]

log = logging.getLogger("pdcat.byo")

MAX_KEY_BYTES = 1024
TEMP_MARK = ".pdcat-part-"  # temporary files carry it; no key may contain a segment starting with it
READ_BLOCK = 1 << 20


class SdkErrors:
    """One place where an SDK's exceptions become core errors: providers implement ``_translate``
    (None means "not ours": re-raise as is) and wrap every call in ``with self._errors(op, key)``."""

    def _translate(self, exc: BaseException, op: str, key: str | None) -> PdcatError | None:
        raise NotImplementedError

    @contextmanager
    def _errors(self, op: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except PdcatError:
            raise
        except Exception as exc:
            error = self._translate(exc, op, key)
            if error is None:
                raise
            raise error from exc


class MissingExtra(PdcatError):
    """The provider's SDK is not installed."""


def import_sdk(module: str, provider: str) -> Any:
    """Import an SDK module on first use (they are untyped here: ``Any``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0].replace("azure", "azure-storage-blob")
        raise MissingExtra(f"the {provider} provider needs {package}: pip install 'pdcat[byo]'") from exc


def _check(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be text")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidInput(f"{what} is longer than {MAX_KEY_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 or c == "\\" or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise InvalidInput(f"invalid {what} {text[:80]!r}: control characters and backslashes are not allowed")
    if text.startswith("/"):
        raise InvalidInput(f"invalid {what} {text[:80]!r}: must be relative (no leading '/')")
    return text


def _check_segments(segments: list[str], text: str, what: str) -> None:
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidInput(f"invalid {what} {text[:80]!r}: empty, '.' or '..' path segment")
        if segment.startswith(TEMP_MARK):
            raise InvalidInput(f"invalid {what} {text[:80]!r}: '{TEMP_MARK}' is reserved for temporary files")


def validate_key(key: object) -> str:
    """A relative ``/``-separated key with no empty, ``.`` or ``..`` segment; ``InvalidInput`` if not."""
    text = _check(key, "storage key")
    if not text:
        raise InvalidInput("storage key must not be empty")
    _check_segments(text.split("/"), text, "storage key")
    return text


def validate_prefix(prefix: object) -> str:
    """Like a key, but may be empty, end with ``/``, or stop in the middle of a segment."""
    text = _check(prefix, "storage prefix")
    _check_segments(text.split("/")[:-1], text, "storage prefix")
    return text


def is_listable(key: str) -> bool:
    """Whether a key found in a store is one this module could address (others are skipped)."""
    try:
        validate_key(key)
    except InvalidInput:
        return False
    return True


@contextmanager
def atomic_destination(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` on success, remove it on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{TEMP_MARK}{secrets.token_hex(6)}-{dest.name}"[:255])
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Body(Protocol):
    """An open response body: what an SDK hands back for one GET."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class _EndedEarly(Exception):
    """A body ended before the object's size: the connection closed cleanly, too early."""


class ResumingReader(io.RawIOBase):
    """A read-only stream over one stored object that reopens at the current offset when a read fails.

    ``open_at(offset)`` starts a GET from ``offset`` (and raises the store's ``NotFound``/auth errors);
    it is called once at construction, so a missing object fails at ``open``, not at the first read.
    Errors of the types in ``transient`` (and a body that ends before ``size``) are retried as
    :mod:`client.retry` says, up to ``retries`` times in a row; the last cause is kept on
    :class:`Unavailable`.
    """

    def __init__(
        self,
        open_at: Callable[[int], Body],
        *,
        what: str,
        size: Callable[[], int | None],
        transient: tuple[type[BaseException], ...],
        retries: int = 5,
        backoff: float = 0.5,
    ) -> None:
        super().__init__()
        self._open_at = open_at
        self._what = what
        self._transient: tuple[type[BaseException], ...] = (*transient, _EndedEarly)
        self._policy = RetryPolicy(retries, backoff)
        self._offset = 0
        self._body: Body | None = open_at(0)
        self._size = size

    def readable(self) -> bool:
        return True

    def reconnect(self) -> None:
        """Drop the connection and reopen at the current offset, as a failed read does.

        For callers that notice a stalled transfer (and for tests): the object must not have changed
        since it was opened (``Conflict`` if it has).
        """
        self._drop()
        self._body = self._open_at(self._offset)

    def _drop(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # the connection is already broken; closing it may fail too
                log.debug("closing a broken body failed", exc_info=True)

    def _give_up(self, last: BaseException) -> Unavailable:
        why = str(last) if isinstance(last, _EndedEarly) else type(last).__name__
        return Unavailable(f"reading {self._what} kept failing after {self._policy.retries} retries ({why})")

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        return self._policy.run(
            lambda: self._read_into(view), f"reading {self._what}", transient=self._transient, give_up=self._give_up
        )

    def _read_into(self, view: memoryview) -> int:
        """One try: a body dropped by the last failure is reopened where the stream stopped."""
        if self._body is None:
            self._body = self._open_at(self._offset)
        try:
            data = self._body.read(len(view))
            total = self._size()
            if not data and total is not None and self._offset < total:
                raise _EndedEarly("connection ended early")
        except self._transient:
            self._drop()
            raise
        n = len(data)
        view[:n] = data
        self._offset += n
        return n

    def close(self) -> None:
        if self._body is not None:
            body, self._body = self._body, None
            body.close()
        super().close()


def open_buffered(raw: ResumingReader) -> BinaryIO:
    """The buffered stream callers get from ``open_read`` (a context manager with ``read(n)``)."""
    return io.BufferedReader(raw, buffer_size=READ_BLOCK)
