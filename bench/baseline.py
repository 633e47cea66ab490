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
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from client.api import CatalogClient

__all__ = ["BaselinePull", "BaselinePush", "pull", "push"]

MIB = 1024 * 1024
_BLOCK = MIB
_PAGE = 4096
_MAX_PART = 1024 * MIB  # the embedded server's largest object (and the largest chunk_size)


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
    """(offset, length) of the parts: two halves, or more if a half would exceed the server's limit."""
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
    index: dict[str, Any] = {
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
    started = time.monotonic()
    session = api.push_begin(catalog_id, version, arch, {"index": index, "force": True, "vm_type": "pvm"})
    urls: dict[str, str] = dict(session["urls"])
    missing = [m["digest"] for m in session["missing"]]
    if len(urls) < len(missing):
        urls.update(api.upload_urls(session["upload_id"], [d for d in missing if d not in urls]))
    by_digest = {d: p for p, d in zip(parts, digests, strict=True)}

    with httpx.Client(timeout=600) as http:

        def put(d: str) -> None:
            offset, length = by_digest[d]
            r = http.put(
                urls[d], content=_read_range(pack_path, offset, length), headers={"Content-Length": str(length)}
            )
            if r.status_code >= 300:
                raise BaselineError(f"PUT of part at {offset} answered HTTP {r.status_code}: {r.text[:200]}")

        with ThreadPoolExecutor(max_workers=streams) as pool:
            list(pool.map(put, missing))
    api.commit(session["upload_id"], {d: n for (_, n), d in zip(parts, digests, strict=True)})
    upload_seconds = time.monotonic() - started
    return BaselinePush(pack_path, size, md5, pack_seconds, upload_seconds, hash_seconds, digests)


def pull(
    api: CatalogClient, catalog_id: str, version: str, arch: str, work: Path, dest: Path, *, streams: int = 2
) -> BaselinePull:
    started = time.monotonic()
    answer = api.pull(catalog_id, version, arch)
    entry = answer["index"]["files"][0]
    chunks = entry["chunks"]
    urls: dict[str, str] = dict(answer["urls"])
    if len(urls) < len(chunks):
        urls.update(api.pull_urls(catalog_id, version, arch, [c["digest"] for c in chunks if c["digest"] not in urls]))
    target = work / "download.tar.gz"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    got = [0] * len(chunks)
    try:
        os.ftruncate(fd, entry["size"])
        with httpx.Client(timeout=600) as http:

            def get(i: int) -> None:
                c = chunks[i]
                offset = c["offset"]
                with http.stream("GET", urls[c["digest"]]) as r:
                    if r.status_code != 200:
                        raise BaselineError(f"GET of part at {c['offset']} answered HTTP {r.status_code}")
                    for block in r.iter_bytes(_BLOCK):
                        os.pwrite(fd, block, offset)
                        offset += len(block)
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
