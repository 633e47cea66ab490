"""One pass over a pack's tar stream: every member checked against the safety rules, then written.

The rules, and why each one is there, are in docs/pdpack-format.md ("Unpacking safely").
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import tarfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, cast

from client.packer import data_runs
from client.pdpack.errors import PackRejected
from client.pdpack.tarfmt import GZIP_MAGIC, IO_BUF, PRIVILEGED, member_kind
from core.errors import PdcatError
from core.pack import MAX_DEPTH, MAX_FILES

__all__ = ["Extraction", "Source"]

_ZERO = bytes(IO_BUF)
_ZERO_RUN = 64 * 1024  # zero runs this long (aligned) inside written data are left as holes
_MAX_TRAILER = 16 * 1024 * 1024  # bytes tolerated after the tar's end-of-archive marker (record padding)
_MAX_APPARENT = 64 * 1024**4  # 64 TiB of declared file sizes: far past any VM, well short of a "bomb" header
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class Source:
    """The raw pack: hashed and counted as it is read, with a look at the first bytes."""

    def __init__(self, stream: BinaryIO, algorithm: str, *, sha256: bool = False) -> None:
        self._stream = stream
        self._head = b""
        self.hash = hashlib.new(algorithm, usedforsecurity=False)
        self.sha256 = hashlib.sha256() if sha256 and algorithm != "sha256" else None
        self.count = 0

    def peek(self, size: int) -> bytes:
        while len(self._head) < size:
            more = self._stream.read(size - len(self._head))
            if not more:
                break
            self._account(more)
            self._head += more
        return self._head[:size]

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data, self._head = (self._head, b"") if size < 0 else (self._head[:size], self._head[size:])
            return data
        data = self._stream.read(size if size >= 0 else IO_BUF)
        self._account(data)
        return data

    def _account(self, data: bytes) -> None:
        self.hash.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        self.count += len(data)


class Extraction:
    """One pass over the tar stream; everything lands under ``root`` (the hidden partial folder)."""

    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.budget = budget
        self.files = self.folders = self.symlinks = self.hardlinks = 0
        self.size = self.data_bytes = 0
        self.compressed = False
        self._rooted: bool | None = None  # whether member names carry the original's leading "/"
        self._seen: set[str] = set()
        self._regular: set[str] = set()
        self._dirs: set[str] = set()  # folders made so far, also the ones made as parents of a member
        self._links: dict[str, str] = {}
        self._dir_attrs: dict[str, tuple[int, float]] = {}
        self._root_mode: int | None = None
        self._count = 0
        try:
            self._name_max = os.pathconf(root, "PC_NAME_MAX")
            self._path_max = os.pathconf(root, "PC_PATH_MAX")
        except (OSError, ValueError):
            self._name_max, self._path_max = 255, 4096
        self._root_bytes = len(os.fsencode(str(root)))

    def run(self, source: Source, compressed: bool | None) -> Extraction:
        is_gzip = source.peek(2) == GZIP_MAGIC
        if compressed is True and not is_gzip:
            raise PackRejected("the pack is not gzip-compressed, although a compressed pack was expected")
        if compressed is False and is_gzip:
            raise PackRejected("the pack is gzip-compressed, although a plain tar was expected")
        self.compressed = is_gzip
        # gzip is undone here rather than by tarfile ("r|gz"), whose stream reader never checks the CRC
        reader: Any = gzip.GzipFile(fileobj=cast(BinaryIO, source), mode="rb") if is_gzip else source
        last = ""  # the member being read; the byte count says where the stream itself broke

        def where() -> str:
            return f"{source.count} bytes into the pack" + (f", in or after member {last[:120]!r}" if last else "")

        try:
            with tarfile.open(fileobj=reader, mode="r|", bufsize=IO_BUF, encoding="utf-8") as tar:
                for member in tar:
                    last = member.name
                    self._member(tar, member)
            self._drain(reader)
            if is_gzip:
                while source.read(IO_BUF):  # bytes after the gzip stream (GzipFile has read to EOF)
                    pass
        except PdcatError:
            raise
        except EOFError as exc:
            raise PackRejected(f"the pack is truncated: its gzip stream ends early ({where()})") from exc
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise PackRejected(f"the pack is corrupt: gzip says {exc} ({where()})") from exc
        except tarfile.TarError as exc:
            if "end of data" in str(exc) or "truncated" in str(exc):
                raise PackRejected(f"the pack is truncated ({where()})") from exc
            raise PackRejected(f"the pack is not a readable tar archive ({where()}): {exc}") from exc
        except OSError as exc:
            raise PdcatError(f"could not unpack the pack ({where()}): {exc.strerror or exc}") from exc
        self._finish()
        return self

    # -- members --
    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        raw = member.name
        self._count += 1
        if self._count > MAX_FILES:
            raise PackRejected(f"the pack holds more than {MAX_FILES} members; refused at {raw[:120]!r}")
        name = self._path(raw, member)
        if name is None:  # the bundle folder itself ("." / "./" / "/")
            if not member.isdir():
                raise PackRejected(f"member {raw[:120]!r} has no name")
            self._root_mode = member.mode
            return
        if member.mode & PRIVILEGED:
            raise PackRejected(f"member {raw[:120]!r} has the setuid/setgid bit; refused")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise PackRejected(
                f"member {raw[:120]!r} is a {member_kind(member)}; a pack may hold only folders, files and links"
            )
        if name in self._seen:
            raise PackRejected(f"member {raw[:120]!r} appears twice in the pack")
        self._check_parents(raw, name)
        if not member.isdir() and name in self._dirs:
            raise PackRejected(f"member {raw[:120]!r} clashes with a folder of the same name; refused")
        linkname = member.linkname
        if member.islnk():
            linkname = self._link_target(raw, member.linkname)
        elif member.issym():
            _check_symlink(raw, name, member.linkname)
        try:
            filtered = tarfile.data_filter(member.replace(name=name, linkname=linkname, deep=False), str(self.root))
        except tarfile.FilterError as exc:
            raise PackRejected(f"member {raw[:120]!r} is unsafe: {exc}") from exc
        self._seen.add(name)
        target = self.root / name
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            self._dirs.add(name)
            self._dir_attrs[name] = (member.mode, member.mtime)
            self.folders += 1
        elif member.issym():
            self._links[name] = member.linkname  # created last, once no file is written any more
            self.symlinks += 1
        elif member.islnk():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.root / linkname, target, follow_symlinks=False)
            self._regular.add(name)
            self.hardlinks += 1
        else:
            self._file(tar, member, raw, target, filtered.mode)
            self._regular.add(name)

    def _path(self, raw: str, member: tarfile.TarInfo) -> str | None:
        """The bundle-relative path of a member name, or None for the bundle folder itself."""
        if raw.startswith("//") or "\x00" in raw:
            raise PackRejected(f"member {raw[:120]!r} has an absolute path; refused")
        rooted = raw.startswith("/")
        if raw.strip("/.") or not member.isdir():  # "./" and "/" entries do not decide the convention
            if self._rooted is None:
                self._rooted = rooted
            elif rooted != self._rooted:
                raise PackRejected(
                    f"member {raw[:120]!r} has an absolute path in a pack whose other names are "
                    f"{'absolute' if self._rooted else 'relative'}; refused"
                )
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PackRejected(f"member {raw[:120]!r} contains '..'; refused")
        if not parts:
            return None
        if len(parts) > MAX_DEPTH:
            raise PackRejected(f"member {raw[:120]!r} is nested deeper than {MAX_DEPTH} folders; refused")
        encoded = [len(os.fsencode(p)) for p in parts]
        if max(encoded) > self._name_max:
            raise PackRejected(f"member {raw[:120]!r}: a name in it is longer than {self._name_max} bytes; refused")
        if self._root_bytes + len(parts) + sum(encoded) >= self._path_max:
            raise PackRejected(f"member {raw[:120]!r}: its path is longer than this system allows; refused")
        return "/".join(parts)

    def _check_parents(self, raw: str, name: str) -> None:
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self._links:
                raise PackRejected(f"member {raw[:120]!r} lies inside the symlink {prefix[:120]!r}; refused")
            if prefix in self._regular:
                raise PackRejected(f"member {raw[:120]!r} lies inside the file {prefix[:120]!r}; refused")
        self._dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))

    def _link_target(self, raw: str, linkname: str) -> str:
        """A hard link may only point at a regular file unpacked earlier from this pack."""
        if linkname.startswith("/") and (self._rooted is not True or linkname.startswith("//")):
            raise PackRejected(f"member {raw[:120]!r} is a hard link to an absolute path; refused")
        parts = [p for p in linkname.split("/") if p not in ("", ".")]
        target = "/".join(parts)
        if ".." in parts or target not in self._regular:
            raise PackRejected(
                f"member {raw[:120]!r} is a hard link to {linkname[:120]!r}, "
                "which is not an earlier file of the pack; refused"
            )
        return target

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, raw: str, target: Path, mode: int | None) -> None:
        """Write one file. The budget counts bytes written, not declared: the original's packs store
        holes as zeros, which are never written, so a big mostly-empty disk still fits."""
        sparse = cast("list[tuple[int, int]] | None", getattr(member, "sparse", None))
        runs = list(sparse) if sparse else ([(0, member.size)] if member.size else [])
        if self.size + member.size > _MAX_APPARENT:
            raise PackRejected(f"member {raw[:120]!r} declares {member.size} bytes, past any VM's size; refused")
        if sparse and self.data_bytes + sum(length for _, length in runs) > self.budget:  # exact: fail early
            raise self._over_budget(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, _CREATE_FLAGS, 0o600)
        try:
            os.ftruncate(fd, member.size)
            src: Any = tar.fileobj  # tarfile's forward-only stream: seek() reads ahead, never back
            src.seek(member.offset_data)
            for offset, length in runs:
                written = _copy_run(src, fd, offset, length, raw, self.budget - self.data_bytes)
                if written is None:
                    raise self._over_budget(raw)
                self.data_bytes += written
            if mode is not None:
                os.fchmod(fd, mode & 0o777)
            if member.mtime > 0:  # the original writes mtime 0: "not recorded", so keep the time of unpacking
                os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.files += 1
        self.size += member.size

    def _over_budget(self, raw: str) -> PackRejected:
        return PackRejected(
            f"member {raw[:120]!r} would take the unpacked data past {self.budget} bytes "
            "(the space allowed for it); refused"
        )

    def _drain(self, reader: Any) -> None:
        """Read past the end-of-archive marker to the end, so gzip's CRC is checked and the hash is whole."""
        extra = 0
        while chunk := reader.read(IO_BUF):
            extra += len(chunk)
            if extra > _MAX_TRAILER:
                raise PackRejected(f"the pack carries more than {_MAX_TRAILER} bytes after the end of its tar archive")

    def _finish(self) -> None:
        """Create the symlinks, check where they really lead, then apply folder modes and times."""
        real_root = os.path.realpath(self.root)
        for name, target in sorted(self._links.items()):
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, path)
            resolved = os.path.realpath(path)
            if resolved != real_root and not resolved.startswith(real_root + os.sep):
                raise PackRejected(f"symlink {name[:120]!r} resolves outside the bundle; refused")
        for name, (mode, mtime) in sorted(self._dir_attrs.items(), key=lambda kv: kv[0].count("/"), reverse=True):
            path = self.root / name
            os.chmod(path, (mode & 0o755) | 0o700)
            if mtime > 0:
                os.utime(path, (mtime, mtime), follow_symlinks=False)
        os.chmod(self.root, ((self._root_mode or 0o755) & 0o755) | 0o700)


def _check_symlink(raw: str, name: str, target: str) -> None:
    if not target or target.startswith("/") or "\x00" in target:
        raise PackRejected(f"member {raw[:120]!r} is a symlink to an absolute or empty path {target[:120]!r}; refused")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise PackRejected(f"member {raw[:120]!r} is a symlink leading outside the bundle ({target[:120]!r}); refused")


def _copy_run(src: Any, fd: int, offset: int, length: int, raw: str, limit: int) -> int | None:
    """Copy ``length`` bytes of member data to ``offset``; zero runs are skipped (they are holes already).

    Returns the bytes written, or None as soon as writing would pass ``limit``.
    """
    written = 0
    pos = offset
    remaining = length
    while remaining:
        want = min(IO_BUF, remaining)
        chunk: bytes = src.read(want)
        if len(chunk) != want:
            raise PackRejected(f"the pack is truncated inside member {raw[:120]!r}")
        if chunk != (_ZERO if want == IO_BUF else bytes(want)):
            view = memoryview(chunk)
            runs = list(data_runs(chunk, _ZERO_RUN))
            if written + sum(end - start for start, end in runs) > limit:
                return None
            for start, end in runs:
                done = start
                while done < end:
                    done += os.pwrite(fd, view[done:end], pos + done)
                written += end - start
        pos += want
        remaining -= want
    return written
