"""The local-filesystem blob store of the embedded backend, with HMAC-signed URLs.

Objects live under ``<root>/objects/``; uploads are streamed into ``<root>/tmp/`` and renamed into
place, so a reader never sees half an object and a listing never sees an upload in progress.
:meth:`FileBlobStore.put_if_absent` (the write-once ``chunks/`` of storage protocol v2) stages the
same way but ``link(2)``-s the temp file into place, which fails rather than replace an object.
Presigned URLs point at the embedded server's ``/blobs/<key>`` route and carry
``method``, ``expires`` and an HMAC-SHA256 ``signature`` over ``method \\n key \\n expires``; the
server calls :meth:`FileBlobStore.verify` (or :meth:`FileBlobStore.verify_query`) before it
serves one. The signing key never appears in a URL, a message or a repr.

Every key is validated with the rules every backend shares (:func:`core.storage_layout.validate_key`)
and the resulting path is checked to resolve inside the root (defence in depth against traversal and
symlinks). What is this store's own is the on-disk encoding: each upper-case letter ``X`` of a key is
stored as ``%x``, because keys are case-sensitive (``V1`` and ``v1`` are different versions) but the
default macOS filesystem is not, and ``%`` cannot occur in a key, so the mapping is one-to-one on every
filesystem. The shared rules count an upper-case letter twice in a segment's length for this reason,
so every encoded name fits a 255-byte file name.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import hmac
import io
import logging
import math
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from core.buffers import BufferPool, fill
from core.chunk_check import CHECKS_AT_ONCE
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from core.ports import BlobInfo, BlobStore, HttpMethod, TakenBlob
from core.storage_layout import MAX_EXPIRES_IN, MAX_KEY_LENGTH, validate_key, validate_prefix

# The key rules are core's (core.storage_layout); they stay importable from here for existing callers.
__all__ = ["MAX_EXPIRES_IN", "MAX_KEY_LENGTH", "FileBlobStore", "validate_key"]

logger = logging.getLogger(__name__)

_BLOCK = 1 << 20
_READS = BufferPool(keep=CHECKS_AT_ONCE, largest=9 * 1024 * 1024)
"""Buffers ``taken`` reads staged chunks into (a default chunk's zstd frame, with room to spare): one per
check that may run at once (``taken`` runs inside one)."""
_STALE_TEMP_S = 24 * 3600
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_EXPIRES = re.compile(r"[0-9]{1,12}")
_METHODS: tuple[HttpMethod, ...] = ("GET", "PUT")


def _encode_name(segment: str) -> str:
    if segment.islower() or not any("A" <= c <= "Z" for c in segment):
        return segment
    return "".join("%" + c.lower() if "A" <= c <= "Z" else c for c in segment)


def _decode_name(name: str) -> str | None:
    """The key segment stored as ``name``; ``None`` for names this store did not write."""
    if "%" not in name:
        return None if any("A" <= c <= "Z" for c in name) else name
    out: builtins.list[str] = []
    chars = iter(name)
    for c in chars:
        if "A" <= c <= "Z":
            return None
        if c == "%":
            nxt = next(chars, "")
            if not "a" <= nxt <= "z":
                return None
            out.append(nxt.upper())
        else:
            out.append(c)
    return "".join(out)


def _raise_if_full(exc: OSError) -> None:
    """A full disk is the backend being unavailable; the caller re-raises any other OS error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise Unavailable("local storage is full") from exc


@contextmanager
def _removed_on_failure(temp: str) -> Iterator[None]:
    """A staged temp file is removed if what follows fails; a full disk says so (``_raise_if_full``)."""
    try:
        yield
    except BaseException as exc:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            _raise_if_full(exc)
        raise


def _copy_in_kernel(stream: BinaryIO, out_fd: int, length: int) -> int:
    """Copy up to ``length`` bytes of a real file (the server's spooled request body) with
    ``sendfile(2)``, without passing them through Python; the number of bytes copied (0 where the
    stream is not a file or the platform cannot: the caller copies the rest itself)."""
    sendfile = getattr(os, "sendfile", None)
    try:
        in_fd, start = stream.fileno(), stream.tell()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return 0
    if sendfile is None or not stat.S_ISREG(os.fstat(in_fd).st_mode):
        return 0
    copied = 0
    try:
        while copied < length:
            sent = sendfile(out_fd, in_fd, start + copied, length - copied)
            if sent == 0:
                break
            copied += sent
    except OSError:
        if copied == 0:
            return 0  # e.g. macOS, where sendfile writes to sockets only
        raise
    stream.seek(start + copied)
    return copied


def _method(value: object) -> HttpMethod:
    for method in _METHODS:
        if value == method:
            return method
    raise InvalidInput("method must be GET or PUT")


def _expires(value: object) -> int:
    if isinstance(value, bool):
        raise InvalidInput("malformed expires")
    if isinstance(value, int):
        if value < 0:
            raise InvalidInput("malformed expires")
        return value
    if not isinstance(value, str) or not _EXPIRES.fullmatch(value):
        raise InvalidInput("malformed expires")
    return int(value)


class FileBlobStore(BlobStore):
    """:class:`BlobStore` over a local directory; the embedded server serves its signed URLs."""

    # Reads of small files cost microseconds of CPU: a commit read its session's 200 marks in 28 ms
    # one after another and in 110-120 ms on 16 threads (the GIL and the hand-offs).
    concurrency = 1

    name = "local"

    def __init__(
        self,
        root: Path | str,
        base_url: str,
        signing_key: bytes,
        max_object_size: int = 1 << 30,
        *,
        fsync: bool = False,
    ) -> None:
        if not isinstance(signing_key, bytes) or len(signing_key) < 16:
            raise ValueError("signing_key must be at least 16 random bytes")
        if max_object_size < 0:
            raise ValueError("max_object_size must not be negative")
        self._root = Path(root)
        self._objects = self._root / "objects"
        self._tmp = self._root / "tmp"
        for directory in (self._root, self._objects, self._tmp):  # private whatever the umask
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(directory.stat().st_mode) != 0o700:
                os.chmod(directory, 0o700)
        self._objects_real = os.path.realpath(self._objects)
        self._base_url = base_url.rstrip("/")
        self._signing_key = signing_key
        self._max_object_size = max_object_size
        self._fsync = fsync
        self._remove_stale_temp_files()

    def __repr__(self) -> str:
        return f"FileBlobStore(root={str(self._root)!r}, base_url={self._base_url!r})"

    @property
    def spool_dir(self) -> Path:
        """Where the server may spool a request body so that storing it is a rename
        (``write_stream`` adopts such a file instead of copying it)."""
        return self._tmp

    @property
    def root(self) -> Path:
        return self._root

    @property
    def max_object_size(self) -> int:
        return self._max_object_size

    # ---- signed URLs ----------------------------------------------------------------------
    def _sign(self, method: str, key: str, expires: int) -> str:
        message = f"{method}\n{key}\n{expires}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def presign(self, key: str, method: HttpMethod, expires_in: int, *, now: float | None = None) -> str:
        key = validate_key(key)
        method = _method(method)
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise InvalidInput("expires_in must be an integer number of seconds")
        if not 1 <= expires_in <= MAX_EXPIRES_IN:
            raise InvalidInput(f"expires_in must be between 1 and {MAX_EXPIRES_IN} seconds")
        # Round up: a URL must live at least ``expires_in`` seconds, never a fraction less.
        expires = math.ceil(time.time() if now is None else now) + expires_in
        signature = self._sign(method, key, expires)
        # The key's alphabet is URL-safe in a path, so it goes in unescaped.
        return f"{self._base_url}/blobs/{key}?method={method}&expires={expires}&signature={signature}"

    def verify(self, key: str, method: str, expires: str | int, signature: str, now: float | None = None) -> None:
        """Accept a request only if the URL was signed for this key and this method and is fresh.

        ``method`` must be the HTTP method of the request being served (not the URL's ``method``
        parameter): that is what binds a GET URL to GETs. The signature is checked before the
        expiry, so "URL expired" is only ever said about a URL this store really signed.
        """
        key = validate_key(key)
        checked_method = _method(method)
        expires_at = _expires(expires)
        if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
            raise InvalidInput("malformed signature")
        if not hmac.compare_digest(self._sign(checked_method, key, expires_at), signature):
            raise Forbidden("signature does not match")
        if (time.time() if now is None else now) >= expires_at:
            raise Forbidden("URL expired")

    def verify_query(self, key: str, http_method: str, query: Mapping[str, str], now: float | None = None) -> None:
        """:meth:`verify` for a ``/blobs/<key>`` request and its query parameters.

        HEAD is allowed with a GET URL. A URL whose ``method`` parameter names another method is
        refused even before the signature is checked.
        """
        method = "GET" if http_method.upper() == "HEAD" else http_method.upper()
        missing = [name for name in ("method", "expires", "signature") if not query.get(name)]
        if missing:
            raise InvalidInput(f"missing query parameter(s): {', '.join(missing)}")
        if query["method"] != method:
            raise Forbidden(f"this URL allows {_method(query['method'])}, not {method}")
        self.verify(key, method, query["expires"], query["signature"], now=now)

    # ---- paths ----------------------------------------------------------------------------
    def _path(self, key: object) -> Path:
        return self._resolve_inside(validate_key(key))

    def _resolve_inside(self, key: str) -> Path:
        path = self._objects.joinpath(*(_encode_name(s) for s in key.split("/"))) if key else self._objects
        resolved = os.path.realpath(path)
        if resolved != self._objects_real and not resolved.startswith(self._objects_real + os.sep):
            raise InvalidInput(f"blob key {key[:80]!r} leaves the storage root")
        return path

    # ---- reading --------------------------------------------------------------------------
    def open_for_read(self, key: str) -> tuple[BinaryIO, int]:
        """An open file and its size, for the server to stream; the caller closes the file."""
        path = self._path(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - handed to the caller
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            raise NotFound(f"no object {key!r}") from None
        try:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise NotFound(f"no object {key!r}")
        except BaseException:
            handle.close()
            raise
        return handle, info.st_size

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; ``PayloadTooLarge`` (before reading any) when it exceeds ``max_bytes``."""
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise InvalidInput("max_bytes must be a non-negative integer")
        handle, size = self.open_for_read(key)
        with handle:
            if max_bytes is None:
                return handle.read()
            if size > max_bytes:
                raise PayloadTooLarge(f"object {key!r} is larger than {max_bytes} bytes")
            # Never read past the bound, even if the file were somehow longer than fstat said.
            data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise PayloadTooLarge(f"object {key!r} is larger than {max_bytes} bytes")
            return data

    @contextmanager
    def taken(self, key: str, max_bytes: int) -> Iterator[TakenBlob]:
        """Rename the object to a private temp name first (a later PUT to ``key`` makes a new file and
        cannot touch it), read it, and promote *that* inode with ``link(2)``: no second write."""
        path = self._path(key)
        # A fresh name (128 random bits) in the private temp folder, not a file: mkstemp's placeholder
        # was created only for the rename to delete it, an inode made and freed per verified chunk.
        temp = os.path.join(self._tmp, f"take-{secrets.token_hex(16)}.part")
        try:
            try:
                os.rename(path, temp)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise NotFound(f"no object {key!r}") from None
            self._prune(path.parent)

            def link(final: str) -> bool:
                try:
                    return self._link_new(temp, self._path(final), final)
                except OSError as exc:
                    _raise_if_full(exc)
                    raise

            try:
                handle = open(temp, "rb", buffering=0)  # noqa: SIM115 - closed by the with below
            except IsADirectoryError:  # a prefix of other keys, not an object: put it back as it was
                os.rename(temp, path)
                raise NotFound(f"no object {key!r}") from None
            with handle:
                size = os.fstat(handle.fileno()).st_size
                if size > max_bytes:
                    raise PayloadTooLarge(f"object {key!r} is larger than {max_bytes} bytes")
                with _READS.take(size + 1) as buffer:  # a byte more than fstat said: never past the bound
                    got = fill(handle, buffer)
                    if got > max_bytes:
                        raise PayloadTooLarge(f"object {key!r} is larger than {max_bytes} bytes")
                    yield TakenBlob(buffer[:got], link)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(temp)

    def head(self, key: str) -> BlobInfo | None:
        """Size and mtime of one object; ``None`` when missing (a directory is a prefix, not an object)."""
        path = self._path(key)
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return BlobInfo(key, info.st_size, info.st_mtime)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Objects whose key starts with ``prefix``, in key order, streamed directory by directory."""
        prefix = validate_prefix(prefix)
        directory, _, name_start = prefix.rpartition("/")
        base = self._resolve_inside(directory)
        return self._walk(base, directory + "/" if directory else "", name_start)

    def _walk(self, directory: Path | str, key_prefix: str, name_start: str) -> Iterator[BlobInfo]:
        try:
            with os.scandir(directory) as scan:
                entries = builtins.list(scan)
        except (FileNotFoundError, NotADirectoryError):
            return
        # A directory sorts as "name/" so that a depth-first walk yields keys in plain key order
        # ("a.b" < "a/x" because "." < "/").
        items: builtins.list[tuple[str, os.DirEntry[str], bool]] = []
        for entry in entries:
            name = _decode_name(entry.name)
            if name is None or not name.startswith(name_start):
                continue
            if entry.is_dir(follow_symlinks=False):
                items.append((name + "/", entry, True))
            elif entry.is_file(follow_symlinks=False):
                items.append((name, entry, False))
        items.sort(key=lambda item: item[0])
        for name, entry, is_dir in items:
            if is_dir:
                yield from self._walk(entry.path, key_prefix + name, "")
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # deleted while we were listing
                continue
            yield BlobInfo(key_prefix + name, info.st_size, info.st_mtime)

    # ---- writing --------------------------------------------------------------------------
    def write_stream(self, key: str, stream: BinaryIO, length: int) -> None:
        """Store exactly ``length`` bytes read from ``stream`` as ``key``, atomically.

        The size limit is checked before anything is read. The bytes go to a temporary file that is
        renamed into place only once complete; on any failure (truncated body, disk full, Ctrl-C) the
        temporary file is removed and any previous object under ``key`` is left as it was.
        """
        path = self._path(key)
        temp = self._stage(stream, length)
        with _removed_on_failure(temp):
            self._install(temp, path, key)

    def _stage(self, stream: BinaryIO, length: int) -> str:
        """Exactly ``length`` bytes of ``stream`` in a new temp file (fsynced if configured); its path.

        The size limit is checked before anything is read; on any failure the temp file is removed.
        """
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise InvalidInput("length must be a non-negative integer")
        if length > self._max_object_size:
            raise PayloadTooLarge(
                f"an object of {length} bytes is larger than the limit of {self._max_object_size} bytes"
            )
        adopted = self._adopt(stream, length)
        if adopted is not None:
            return adopted
        fd, temp = tempfile.mkstemp(dir=self._tmp, prefix="put-", suffix=".part")
        with _removed_on_failure(temp), os.fdopen(fd, "wb") as out:
            remaining = length - _copy_in_kernel(stream, out.fileno(), length)
            while remaining:
                block = stream.read(min(_BLOCK, remaining))
                if not block:
                    raise InvalidInput(f"upload truncated: received {length - remaining} of {length} bytes")
                block = block[:remaining]
                out.write(block)
                remaining -= len(block)
            if self._fsync:
                out.flush()
                os.fsync(out.fileno())
        return temp

    def _adopt(self, stream: BinaryIO, length: int) -> str | None:
        """The path of ``stream``'s own file if it is a file in this store's temp folder holding
        exactly the ``length`` bytes to store (the server's spooled request body): nothing to copy.

        Anything else (another folder, another size, a read already begun, a name that no longer
        names the open file) returns None and is copied as usual.
        """
        name = getattr(stream, "name", None)
        if not isinstance(name, str) or os.path.dirname(name) != str(self._tmp):
            return None
        try:
            if stream.tell() != 0:
                return None
            mine, there = os.fstat(stream.fileno()), os.stat(name, follow_symlinks=False)
        except (OSError, ValueError):
            return None
        if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino) or mine.st_size != length:
            return None
        if self._fsync:
            os.fsync(stream.fileno())
        stream.seek(length)
        return name

    def _install(self, temp: str, path: Path, key: str) -> None:
        """Rename ``temp`` to ``path``, re-creating parents a concurrent delete may have pruned."""
        for attempt in range(5):
            try:
                self._make_parents(path, key)
                os.replace(temp, path)
                return
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                raise Conflict(f"blob key {key!r} collides with an existing object or prefix") from exc
            except FileNotFoundError:
                if attempt == 4 or not os.path.exists(temp):
                    raise

    def _make_parents(self, path: Path, key: str) -> None:
        """Create the directories above ``path``. ``Conflict`` only if an object really sits where a
        directory must be: a directory a concurrent delete prunes between ``mkdir``'s "exists" and
        its own check makes it fail too, and that is reported as ``FileNotFoundError`` (retry)."""
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            directory = path.parent
            while directory != self._objects and self._objects in directory.parents:
                with suppress(FileNotFoundError, NotADirectoryError):
                    if not stat.S_ISDIR(os.lstat(directory).st_mode):
                        raise Conflict(f"blob key {key!r} collides with an existing object or prefix") from exc
                directory = directory.parent
            raise FileNotFoundError(errno.ENOENT, "a parent directory was removed concurrently") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self.write_stream(key, io.BytesIO(data), len(data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if no object is there: the bytes are staged in a temp file, then
        ``link(2)``-ed into place, which fails with EEXIST instead of replacing. Of racing callers
        exactly one gets True. The temp file is removed in every case."""
        path = self._path(key)
        temp = self._stage(io.BytesIO(data), len(data))
        try:
            return self._link_new(temp, path, key)
        except OSError as exc:
            _raise_if_full(exc)
            raise
        finally:
            with suppress(FileNotFoundError):
                os.unlink(temp)

    def _link_new(self, temp: str, path: Path, key: str) -> bool:
        """Hard-link ``temp`` to ``path`` unless something is there; re-creates pruned parents."""
        for attempt in range(5):
            try:
                self._make_parents(path, key)
                try:
                    os.link(temp, path)
                except FileExistsError as exc:
                    info = os.lstat(path)  # FileNotFoundError (deleted meanwhile): try again
                    if stat.S_ISDIR(info.st_mode):  # a prefix of other keys, not an object
                        raise Conflict(f"blob key {key!r} collides with an existing object or prefix") from exc
                    return False
                except NotADirectoryError as exc:
                    raise Conflict(f"blob key {key!r} collides with an existing object or prefix") from exc
                return True
            except FileNotFoundError:  # a concurrent delete pruned a parent between mkdir and link
                if attempt == 4 or not os.path.exists(temp):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def delete(self, keys: Iterable[str]) -> None:
        paths = [self._path(key) for key in keys]  # validate them all before deleting any
        for path in paths:
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            except PermissionError:
                if path.is_dir():  # macOS answers EPERM for unlink() on a directory
                    continue
                raise
            self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove directories left empty, up to (not including) ``objects/``."""
        while directory != self._objects and self._objects in directory.parents:
            try:
                os.rmdir(directory)
            except OSError:  # not empty (or already gone): stop
                return
            directory = directory.parent

    def _remove_stale_temp_files(self) -> None:
        """Temp files of uploads killed mid-way (a crashed server) would otherwise pile up."""
        cutoff = time.time() - _STALE_TEMP_S
        try:
            with os.scandir(self._tmp) as scan:
                for entry in scan:
                    with suppress(OSError):
                        if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)
        except OSError as exc:  # pragma: no cover - best effort
            logger.warning("could not clean %s: %s", self._tmp, exc)
