"""Unpacking a pack safely: into a hidden folder next to the destination, renamed into place only when
every member passed and the checksum matched; on any failure nothing is left behind (docs/pdpack-format.md).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from client.clone import remove_tree
from client.pdpack.errors import ChecksumMismatch
from client.pdpack.extract import Extraction, Source
from core.errors import Conflict, InvalidInput
from core.pdpack_meta import checksum_algorithm as _checksum_algorithm

__all__ = ["UnpackStats", "unpack_pack"]

log = logging.getLogger("pdcat.pdpack")

_BUNDLE_SUFFIXES = (".pvm", ".macvm")


@dataclass(frozen=True)
class UnpackStats:
    dest: Path
    files: int
    folders: int
    symlinks: int
    hardlinks: int
    size: int  # bytes of the unpacked files (their apparent sizes)
    data_bytes: int  # bytes actually written (holes and zero runs left out)
    pack_bytes: int  # bytes of the pack read
    compressed: bool  # the pack was gzip
    checksum: str  # of the pack bytes, with checksum_algorithm
    checksum_algorithm: str
    checksum_verified: bool  # False when no checksum was given, or its shape names no algorithm we know
    # (True also when only ``sha256`` was given and matched)


def unpack_pack(
    stream: BinaryIO,
    dest: Path,
    *,
    compressed: bool | None,
    checksum: str | None = None,
    sha256: str | None = None,
    max_bytes: int | None = None,
) -> UnpackStats:
    """Unpack a pack read from ``stream`` into ``dest`` (the bundle folder, which must not exist yet).

    ``compressed``: True requires gzip, False a plain tar, None sniffs (as the original does; its
    ``is_compressed`` flag is not reliable for that). ``checksum`` is the ``.meta``'s
    ``compressed_checksum`` (MD5 in the original: it catches corruption, not tampering); ``sha256``,
    when the caller knows it (``PackStats.sha256`` of a pdcat export, recorded by a catalog), is verified
    too. ``max_bytes`` caps the bytes written (default: the free space where ``dest`` goes; zeros are
    not written, so the holes the original stores as zeros do not count). On any failure nothing is
    left behind.
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise Conflict(f"{dest} already exists; pull into a new path")
    parent = dest.parent
    if not parent.is_dir():
        raise InvalidInput(f"{parent} is not a folder")
    expected = (checksum or "").strip().lower()
    algorithm = _checksum_algorithm(expected)
    strong = (sha256 or "").strip().lower()
    if strong and _checksum_algorithm(strong) != "sha256":
        raise InvalidInput("sha256 must be 64 hexadecimal digits")
    if expected and algorithm is None:
        log.warning("the pack's checksum %r has no known shape (a multipart ETag?); not verified", expected[:80])
    token = secrets.token_hex(4)
    partial = parent / f".{dest.name}.pdcat-partial-{token}"
    hoisted = parent / f".{dest.name}.pdcat-partial-{token}-b"
    os.mkdir(partial, 0o700)
    try:
        source = Source(stream, algorithm or "md5", sha256=bool(strong))
        budget = max_bytes if max_bytes is not None else _free_bytes(partial)
        counts = Extraction(partial, budget).run(source, compressed)
        actual = source.hash.hexdigest()
        if algorithm is not None and actual != expected:
            raise ChecksumMismatch(
                f"the pack does not match its .meta: {algorithm} {actual} instead of {expected}; "
                "it is corrupt or was replaced"
            )
        actual_strong = (source.sha256 or source.hash).hexdigest() if strong else ""
        if actual_strong != strong:
            raise ChecksumMismatch(
                f"the pack's sha256 is {actual_strong}, not the recorded {strong}; it is corrupt or was replaced"
            )
        final = partial
        inner = _single_bundle_folder(partial)
        if inner is not None:
            os.rename(inner, hoisted)
            os.rmdir(partial)
            final = hoisted
        if os.path.lexists(dest):
            raise Conflict(f"{dest} appeared while the pack was being unpacked")
        os.rename(final, dest)
    except BaseException:
        remove_tree(partial)
        remove_tree(hoisted)
        raise
    return UnpackStats(
        dest=dest,
        files=counts.files,
        folders=counts.folders,
        symlinks=counts.symlinks,
        hardlinks=counts.hardlinks,
        size=counts.size,
        data_bytes=counts.data_bytes,
        pack_bytes=source.count,
        compressed=counts.compressed,
        checksum=source.hash.hexdigest(),
        checksum_algorithm=source.hash.name,
        checksum_verified=algorithm is not None or bool(strong),
    )


def _free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _single_bundle_folder(partial: Path) -> Path | None:
    """The one ``*.pvm``/``*.macvm`` folder a hand-made pack may hold at its root, if that is all it holds."""
    with os.scandir(partial) as it:
        children = list(it)
    if len(children) != 1:
        return None
    only = children[0]
    if only.is_dir(follow_symlinks=False) and only.name.lower().endswith(_BUNDLE_SUFFIXES):
        return Path(only.path)
    return None
