"""The original product's method, measured against the same catalog server as pdcat.

Push: ``tar -cf - -C parent bundle | gzip -5 | tee >(md5sum) > pack.tar.gz`` as one stream (here tar
and gzip are child processes and the md5-and-write loop is this process), then a two-way parallel
upload of the .tar.gz. The upload goes through the catalog's own presigned URLs: a push whose
hand-made index has one file, ``pack.tar.gz``, cut into two "chunks" (its two halves), so both
halves travel exactly the way pdcat's chunks do. Committing that push lets the pull side ask
``/pull`` for presigned GET URLs.

Pull: a two-way parallel GET of the halves into one file, then ``gunzip | tar -x`` as one stream, no
verification (the original product did none).

The sha256 of the halves only exists because this server's API names chunks by digest; the
original product never computed it, so that time is measured but left out of the baseline's figure.

Storage protocol v2 (docs/adr-002-storage-protocol-v2.md) shapes the upload the same way as pdcat's:
begin (chunk_size), ask ``/uploads/{id}/chunks`` for staging URLs, PUT the halves, have the server
verify them (``/verify``), declare the index (digest, size) and PUT it, commit. The server
verifies a chunk by zstd-decompressing it, so each half travels wrapped in a zstd frame of *raw*
(stored, uncompressed) blocks: 14 bytes of frame header plus 3 bytes per 128 KiB, written while the
half streams out, no compression. The ``/verify`` round trip exists only because this catalog
insists on it (the original product verified nothing), so like the sha256 it is timed but NOT
counted: both exclusions make the baseline faster, never slower. The pull unwraps the frames while
it downloads (a copy per block, no decompression work).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import zstandard

from client.api import CatalogClient
from core.pack import MAX_CHUNK_SIZE, PackIndex

__all__ = ["BaselinePull", "BaselinePush", "pull", "push"]

MIB = 1024 * 1024
_BLOCK = MIB
_PAGE = 4096
_MAX_PART = MAX_CHUNK_SIZE  # the largest chunk the catalog verifies; parts still go two at a time
_ZSTD_MAGIC = 0xFD2FB528
_RAW_BLOCK = 128 * 1024  # zstd's largest block


class BaselineError(RuntimeError):
    pass


@dataclass
class BaselinePush:
    pack_path: Path
    pack_bytes: int
    md5: str
    pack_seconds: float
    upload_seconds: float
    hash_seconds: float
    """sha256 of the parts for the catalog's index: measured, NOT counted in ``seconds``."""
    verify_seconds: float = 0.0
    """the catalog's ``/verify`` of the parts (protocol v2): measured, NOT counted in ``seconds``."""
    parts: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.pack_seconds + self.upload_seconds


@dataclass
class BaselinePull:
    download_seconds: float
    unpack_seconds: float
    downloaded_bytes: int

    @property
    def seconds(self) -> float:
        return self.download_seconds + self.unpack_seconds


def _check(proc: subprocess.Popen[bytes], what: str) -> None:
    code = proc.wait()
    if code != 0:
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        raise BaselineError(f"{what} failed (exit {code}): {err[-500:]}")


def pack(bundle: Path, out: Path) -> tuple[int, str, float]:
    """tar | gzip -5 | (md5 + write), one stream; returns (bytes, md5, seconds)."""
    started = time.monotonic()
    tar = subprocess.Popen(
        ["tar", "-cf", "-", "-C", str(bundle.parent), bundle.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert tar.stdout is not None
    gz = subprocess.Popen(["gzip", "-5"], stdin=tar.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tar.stdout.close()  # gzip holds the only read end now, so tar sees SIGPIPE if gzip dies
    assert gz.stdout is not None
    md5 = hashlib.md5()
    total = 0
    with out.open("wb") as f:
        while block := gz.stdout.read(_BLOCK):
            md5.update(block)
            f.write(block)
            total += len(block)
    gz.stdout.close()
    _check(gz, "gzip -5")
    _check(tar, "tar -cf")
    return total, md5.hexdigest(), time.monotonic() - started


def _parts(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the parts: two halves, or more if a half would exceed the largest chunk."""
    count = max(2, -(-size // _MAX_PART))
    chunk = -(-size // count)
    chunk = -(-chunk // _PAGE) * _PAGE
    return [(o, min(chunk, size - o)) for o in range(0, size, chunk)]


def _hash_parts(path: Path, parts: list[tuple[int, int]]) -> list[str]:
    digests = []
    with path.open("rb") as f:
        for offset, length in parts:
            h = hashlib.sha256()
            f.seek(offset)
            left = length
            while left:
                block = f.read(min(_BLOCK, left))
                h.update(block)
                left -= len(block)
            digests.append(h.hexdigest())
    return digests


def _read_range(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(offset)
        left = length
        while left:
            block = f.read(min(_BLOCK, left))
            if not block:
                raise BaselineError(f"{path} shrank while uploading it")
            left -= len(block)
            yield block


def raw_frame_size(length: int) -> int:
    """Bytes of a zstd frame that stores ``length`` bytes in raw blocks."""
    return 4 + 2 + 8 + length + 3 * max(1, -(-length // _RAW_BLOCK))


def _raw_frame(path: Path, offset: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``path`` as one zstd frame of raw (uncompressed) blocks, streamed.

    Frame header: magic, descriptor 0xC0 (8-byte content size, no checksum, no dictionary, NOT single
    segment), window descriptor 0x38 (a 128 KiB window: a single-segment frame's window is its whole
    content, and decoders refuse windows over 128 MiB by default), content size. Each block: a 3-byte
    header (size << 3 | raw type 0 | last bit), then the bytes as they are.
    """
    yield _ZSTD_MAGIC.to_bytes(4, "little") + b"\xc0\x38" + length.to_bytes(8, "little")
    sent = 0
    for block in _read_range(path, offset, length):
        view = memoryview(block)
        out = bytearray()
        for start in range(0, len(view), _RAW_BLOCK):
            piece = view[start : start + _RAW_BLOCK]
            sent += len(piece)
            out += ((len(piece) << 3) | (1 if sent == length else 0)).to_bytes(3, "little")
            out += piece
        yield bytes(out)


def push(
    api: CatalogClient, bundle: Path, work: Path, catalog_id: str, version: str, arch: str, *, streams: int = 2
) -> BaselinePush:
    pack_path = work / "pack.tar.gz"
    size, md5, pack_seconds = pack(bundle, pack_path)
    if size < 2 * _PAGE:
        raise BaselineError("the .tar.gz is too small to split in two")

    parts = _parts(size)
    t = time.monotonic()
    digests = _hash_parts(pack_path, parts)
    hash_seconds = time.monotonic() - t

    chunk_size = parts[0][1]
    doc: dict[str, Any] = {
        "format": 1,
        "compression": "zstd",
        "chunk_size": chunk_size,
        "size": size,
        "files": [
            {
                "path": "pack.tar.gz",
                "type": "file",
                "mode": 0o644,
                "size": size,
                "chunks": [{"offset": o, "size": n, "digest": d} for (o, n), d in zip(parts, digests, strict=True)],
            }
        ],
    }
    index_bytes = PackIndex.parse(doc).canonical_bytes()
    by_digest = {d: p for p, d in zip(parts, digests, strict=True)}

    declared = {"index_digest": hashlib.sha256(index_bytes).hexdigest(), "index_size": len(index_bytes)}
    started = time.monotonic()
    body: dict[str, Any] = {"chunk_size": chunk_size, "force": True, "vm_type": "pvm"}
    session = api.push_begin(catalog_id, version, arch, body)
    upload_id = session["upload_id"]
    put_headers: dict[str, str] = dict(session.get("put_headers") or {})
    with httpx.Client(timeout=600) as http:

        def put_index(url: str, headers: dict[str, str]) -> None:
            r = http.put(url, content=index_bytes, headers=headers)
            if r.status_code >= 300:
                raise BaselineError(f"PUT of the index answered HTTP {r.status_code}: {r.text[:200]}")

        answer = api.upload_chunks(upload_id, list(by_digest))
        urls: dict[str, str] = dict(answer["urls"])

        def put(d: str) -> None:
            offset, length = by_digest[d]
            headers = {**put_headers, "Content-Length": str(raw_frame_size(length))}
            r = http.put(urls[d], content=_raw_frame(pack_path, offset, length), headers=headers)
            if r.status_code >= 300:
                raise BaselineError(f"PUT of part at {offset} answered HTTP {r.status_code}: {r.text[:200]}")

        with ThreadPoolExecutor(max_workers=streams) as pool:
            list(pool.map(put, list(urls)))
        uploaded = time.monotonic()
        verify_seconds = 0.0
        if urls:
            verdict = api.verify_chunks(upload_id, list(urls))
            verify_seconds = time.monotonic() - uploaded
            if verdict["corrupt"] or verdict["missing"]:
                raise BaselineError(f"the catalog refused the baseline's parts: {verdict}")
        t = time.monotonic()
        target = api.declare_index(upload_id, declared)
        put_index(target["index_url"], dict(target.get("put_headers") or {}))
    api.commit(upload_id)
    upload_seconds = (uploaded - started) + (time.monotonic() - t)
    return BaselinePush(pack_path, size, md5, pack_seconds, upload_seconds, hash_seconds, verify_seconds, digests)


def pull(
    api: CatalogClient, catalog_id: str, version: str, arch: str, work: Path, dest: Path, *, streams: int = 2
) -> BaselinePull:
    started = time.monotonic()
    answer = api.pull(catalog_id, version, arch)
    with httpx.Client(timeout=600) as http:
        r = http.get(answer["index_url"])
        if r.status_code != 200:
            raise BaselineError(f"GET of the index answered HTTP {r.status_code}")
        entry = json.loads(r.content)["files"][0]
    chunks = entry["chunks"]
    urls = api.pull_urls(catalog_id, version, arch, [c["digest"] for c in chunks])
    target = work / "download.tar.gz"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    got = [0] * len(chunks)
    try:
        os.ftruncate(fd, entry["size"])
        with httpx.Client(timeout=600) as http:

            def get(i: int) -> None:
                c = chunks[i]
                offset = c["offset"]
                # the part is a zstd frame of raw blocks (see push): unwrapping it is a copy, not a decompression
                unwrap = zstandard.ZstdDecompressor().decompressobj()
                with http.stream("GET", urls[c["digest"]]) as r:
                    if r.status_code != 200:
                        raise BaselineError(f"GET of part at {c['offset']} answered HTTP {r.status_code}")
                    for block in r.iter_bytes(_BLOCK):
                        data = unwrap.decompress(block)
                        os.pwrite(fd, data, offset)
                        offset += len(data)
                got[i] = offset - c["offset"]

            with ThreadPoolExecutor(max_workers=streams) as pool:
                list(pool.map(get, range(len(chunks))))
    finally:
        os.close(fd)
    download_seconds = time.monotonic() - started

    started = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    gunzip = subprocess.Popen(["gzip", "-dc", str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert gunzip.stdout is not None
    tar = subprocess.Popen(["tar", "-xf", "-", "-C", str(dest)], stdin=gunzip.stdout, stderr=subprocess.PIPE)
    gunzip.stdout.close()
    _check(tar, "tar -x")
    _check(gunzip, "gzip -dc")
    unpack_seconds = time.monotonic() - started
    target.unlink()
    return BaselinePull(download_seconds, unpack_seconds, sum(got))
