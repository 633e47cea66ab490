"""Copy a VM bundle folder as cheaply as the filesystem allows.

A cached VM is 20-150 GB; copying it byte by byte for every pull would make the cache slower than the
network. So, best first:

* ``clonefile`` (macOS, APFS): one ``clonefile(2)`` call clones the whole tree copy-on-write.
* ``reflink`` (Linux, XFS/btrfs/...): every regular file is cloned with the ``FICLONE`` ioctl; blocks
  are shared until one side writes, so the copy costs no space and no time.
* ``sparse-copy`` (anywhere else): only the data ranges of each file are copied (``SEEK_DATA`` /
  ``SEEK_HOLE``), with ``copy_file_range`` where the kernel has it, so a 64 GiB disk image that holds
  5 GiB costs 5 GiB, and its holes stay holes.

The copy is built in a hidden sibling of the destination and renamed into place at the end, so the
destination either does not exist or is complete; a failure removes the half-built copy.
setuid/setgid bits are never copied (as ``client.packer`` never applies them on unpack).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import secrets
import shutil
import stat
import sys
from pathlib import Path

from core.errors import Conflict, InvalidInput, NotFound

__all__ = ["CLONEFILE", "REFLINK", "SPARSE_COPY", "clone_tree", "data_ranges", "remove_tree", "supports_reflink"]

log = logging.getLogger("pdcat.clone")

CLONEFILE, REFLINK, SPARSE_COPY = "clonefile", "reflink", "sparse-copy"
_STRENGTH = {SPARSE_COPY: 0, REFLINK: 1, CLONEFILE: 2}  # a tree reports the weakest method it used

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from <linux/fs.h>
_CLONE_NOFOLLOW = 0x0001  # <sys/clonefile.h>: clone a symlink as a symlink, never what it points to
# FICLONE answers these when the filesystem (or the pair of filesystems) cannot share blocks;
# anything else (EIO, ENOSPC...) is a real failure and is raised.
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}
# copy_file_range answers these where it cannot work (old kernel, cross-filesystem, odd files);
# pread/pwrite always can.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_SEEK_DATA: int | None = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE: int | None = getattr(os, "SEEK_HOLE", None)
_FILE_MODE_BITS = 0o777
_DIR_MODE_BITS = 0o1777
_COPY_STEP = 64 * 1024 * 1024  # one copy_file_range call at most; keeps Ctrl-C responsive
_READ_STEP = 8 * 1024 * 1024  # one pread at most in the fallback


def clone_tree(src: Path, dst: Path) -> str:
    """Copy ``src`` (a folder, or a single file) to ``dst``, which must not exist.

    Returns how: ``"clonefile"``, ``"reflink"`` or ``"sparse-copy"`` (the weakest one used by any file).
    """
    try:
        st = os.lstat(src)
    except FileNotFoundError as exc:
        raise NotFound(f"{src} does not exist") from exc
    if os.path.lexists(dst):
        raise Conflict(f"{dst} already exists")
    tmp = dst.with_name(f".{dst.name}.pdcat-clone-{secrets.token_hex(4)}")
    try:
        method = CLONEFILE if sys.platform == "darwin" and _clonefile(src, tmp) else None
        if method is None:
            remove_tree(tmp)  # whatever a failed clonefile may have left
            method = _copy_entry(src, tmp, st) or SPARSE_COPY
        os.rename(tmp, dst)
    except BaseException:
        remove_tree(tmp)
        raise
    return method


def supports_reflink(directory: Path) -> bool:
    """Whether files in ``directory`` can be cloned with ``FICLONE`` (tried on a tiny temp file there)."""
    if not sys.platform.startswith("linux"):
        return False
    probe = directory / f".pdcat-reflink-probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        src_fd = os.open(probe / "a", os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
        try:
            os.write(src_fd, b"\x01" * 4096)
            dst_fd = os.open(probe / "b", os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
            try:
                return _ficlone(dst_fd, src_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
    except OSError:
        return False
    finally:
        remove_tree(probe)


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of every run of the first ``size`` bytes of ``fd`` that may hold data.

    Holes are left out. Where the filesystem cannot tell (no ``SEEK_DATA``, or it answers nonsense),
    the whole file is one range: correct, only not sparse.
    """
    if size <= 0:
        return []
    everything = [(0, size)]
    if _SEEK_DATA is None or _SEEK_HOLE is None:
        return everything
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, _SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but hole from pos to the end of the file
                break
            return everything  # EINVAL / ENOTSUP: this filesystem does not know
        if start >= size:
            break
        if start < pos:
            return everything
        try:
            end = min(os.lseek(fd, start, _SEEK_HOLE), size)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                return everything
            end = size  # the file shrank under us; the copy notices
        if end <= start:
            return everything
        ranges.append((start, end - start))
        pos = end
    return ranges


def remove_tree(path: Path) -> None:
    """Remove a file or a folder tree, also when folders in it are read-only; missing is fine.

    Bundles keep their folders' modes (a VM folder may be 0555), so a plain ``rmtree`` would fail for
    the user who owns them.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink(missing_ok=True)
        return

    # make every folder writable first (top-down, so a folder is fixed before it is listed): rmtree
    # then only unlinks and never meets a folder it may not change
    _make_writable(str(path))
    for parent, dirs, _files in os.walk(path):
        for name in dirs:
            _make_writable(os.path.join(parent, name))
    shutil.rmtree(path, ignore_errors=False)


def _make_writable(folder: str) -> None:
    try:
        st = os.lstat(folder)
        if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
            os.chmod(folder, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
    except FileNotFoundError:
        pass


# ---- macOS ------------------------------------------------------------------------------------
def _clonefile(src: Path, dst: Path) -> bool:
    """One ``clonefile(2)`` for the whole tree; False when it is not available or refuses (not APFS,
    another volume...), and the caller copies instead."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.clonefile
    except (OSError, AttributeError):
        return False
    func.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32]
    func.restype = ctypes.c_int
    if func(os.fsencode(src), os.fsencode(dst), _CLONE_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        log.debug("clonefile %s -> %s failed: %s; copying instead", src, dst, os.strerror(err))
        return False
    _strip_privileged_bits(dst)
    return True


def _strip_privileged_bits(root: Path) -> None:
    """clonefile keeps setuid/setgid; the copy must not."""
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))


# ---- the portable walk ------------------------------------------------------------------------
def _weakest(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if _STRENGTH[a] <= _STRENGTH[b] else b


def _copy_entry(src: Path, dst: Path, st: os.stat_result) -> str | None:
    """Copy one entry (recursively for folders); the weakest method used, None if no file was copied."""
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(dst, 0o700)  # writable until filled; the real mode is applied last
        method: str | None = None
        with os.scandir(src) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            method = _weakest(
                method, _copy_entry(src / child.name, dst / child.name, child.stat(follow_symlinks=False))
            )
        os.chmod(dst, stat.S_IMODE(st.st_mode) & _DIR_MODE_BITS)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        return method
    if stat.S_ISREG(st.st_mode):
        return _copy_file(src, dst)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        if os.utime in os.supports_follow_symlinks:
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return None
    raise InvalidInput(f"{src} is not a file, folder or symlink; refusing to copy it")


def _copy_file(src: Path, dst: Path) -> str:
    src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | _CLOEXEC)
    try:
        st = os.fstat(src_fd)
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600)
        try:
            if sys.platform.startswith("linux") and _ficlone(dst_fd, src_fd):
                method = REFLINK
            else:
                _sparse_copy(src_fd, dst_fd, st.st_size, src)
                method = SPARSE_COPY
            os.fchmod(dst_fd, stat.S_IMODE(st.st_mode) & _FILE_MODE_BITS)
            os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return method


def _ficlone(dst_fd: int, src_fd: int) -> bool:
    import fcntl  # POSIX only; imported here so the module still loads everywhere

    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            return False
        raise
    return True


def _sparse_copy(src_fd: int, dst_fd: int, size: int, src: Path) -> None:
    """Copy the data ranges only, then set the size: holes between and after them stay holes."""
    use_copy_range = hasattr(os, "copy_file_range")
    for offset, length in data_ranges(src_fd, size):
        done = 0
        while done < length:
            pos = offset + done
            step = min(length - done, _COPY_STEP)
            copied = 0
            if use_copy_range:
                try:
                    copied = os.copy_file_range(src_fd, dst_fd, step, pos, pos)
                except OSError as exc:
                    if exc.errno not in _NO_COPY_RANGE:
                        raise
                if copied <= 0:  # refused, or 0 where a filesystem cannot say why: read it ourselves
                    use_copy_range = False
                    continue
            else:
                copied = _pread_pwrite(src_fd, dst_fd, min(step, _READ_STEP), pos, src)
            done += copied
    os.ftruncate(dst_fd, size)


def _pread_pwrite(src_fd: int, dst_fd: int, length: int, offset: int, src: Path) -> int:
    data = os.pread(src_fd, length, offset)
    if not data:
        raise Conflict(f"{src} shrank while being copied")
    view = memoryview(data)
    written = 0
    while written < len(data):
        written += os.pwrite(dst_fd, view[written:], offset + written)
    return len(data)
