"""Shared helpers of the HTTP contract suite.

Everything here speaks HTTP only (plus ``core.pack`` for the index format), so the same suite runs
unchanged against every backend: the embedded server, AWS and Azure.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import zstandard

from core.pack import EXTENT_FORMATS, FORMAT_EXTENTS, Naming, PackIndex

__all__ = [
    "CHUNK_SIZE",
    "Pack",
    "RawResponse",
    "ask_chunks",
    "assert_error",
    "begin_push",
    "build_pack",
    "commit",
    "declaration",
    "download_chunk",
    "extents_pack",
    "fetch_index",
    "index_bytes",
    "manifest_path",
    "plain",
    "pull",
    "pull_urls",
    "push_empty",
    "push_pack",
    "put_index",
    "race",
    "raw_request",
    "send_chunks",
    "upload_chunks",
    "verify",
]

CHUNK_SIZE = 4096
T = TypeVar("T")
_ZSTD = zstandard.ZstdCompressor(level=3)
# One plain client (no credentials) for presigned URLs: building an httpx.Client costs ~30 ms (TLS
# context), which would dominate a suite that moves a few KiB per request. httpx.Client is thread-safe.
plain = httpx.Client(timeout=60)


@dataclass
class Pack:
    """A hand-built pack: its index (as JSON) and its stored chunks by digest (raw bytes)."""

    index: dict[str, Any]
    chunks: dict[str, bytes] = field(default_factory=dict)

    @property
    def digests(self) -> list[str]:
        return list(self.chunks)

    def file_digests(self, path: str) -> list[str]:
        for f in self.index["files"]:
            if f["path"] == path:
                return [c["digest"] for c in f["chunks"]]
        raise KeyError(path)


def build_pack(files: Mapping[str, bytes], chunk_size: int = CHUNK_SIZE) -> Pack:
    """Cut each file on the ``chunk_size`` grid; all-zero cells are holes (left out, never stored)."""
    entries: list[dict[str, Any]] = []
    chunks: dict[str, bytes] = {}
    for path, data in files.items():
        file_chunks = []
        for offset in range(0, len(data), chunk_size):
            raw = data[offset : offset + chunk_size]
            if not raw.strip(b"\x00"):
                continue
            digest = hashlib.sha256(raw).hexdigest()
            chunks[digest] = raw
            file_chunks.append({"offset": offset, "size": len(raw), "digest": digest})
        entries.append({"path": path, "type": "file", "mode": 0o644, "size": len(data), "chunks": file_chunks})
    index = {
        "format": 1,
        "compression": "zstd",
        "chunk_size": chunk_size,
        "size": sum(len(d) for d in files.values()),
        "files": entries,
    }
    PackIndex.parse(index)  # the helper itself must build valid indexes
    return Pack(index, chunks)


Extent = tuple[int, int, bytes, int]
"""``(file_offset, length, object's raw bytes, object_offset)``: a run of a file taken from an object."""


def extents_pack(
    files: Mapping[str, tuple[int, list[Extent]]],
    *,
    block_size: int = 65536,
    chunk_size: int = 131072,
    fmt: int = FORMAT_EXTENTS,
) -> Pack:
    """A format-2 (or ``fmt`` 3) pack (docs/adr-004-incremental-chunking.md) written by hand: each
    file's size and its extents, objects named by the root of their blocks and listed in the order of
    first reference."""
    naming = Naming(fmt, block_size)
    objects: dict[str, dict[str, Any]] = {}
    chunks: dict[str, bytes] = {}
    entries: list[dict[str, Any]] = []
    for path, (size, extents) in files.items():
        out = []
        for file_offset, length, raw, object_offset in extents:
            blocks = naming.block_digests(raw)
            digest = naming.root(blocks, len(raw))
            if digest not in objects:
                objects[digest] = {"digest": digest, "size": len(raw), "blocks": blocks.hex()}
                chunks[digest] = raw
            out.append([file_offset, length, list(objects).index(digest), object_offset])
        entries.append({"path": path, "type": "file", "mode": 0o644, "size": size, "extents": out})
    index = {
        "format": fmt,
        "compression": "zstd",
        "chunk_size": chunk_size,
        "block_size": block_size,
        "size": sum(size for size, _ in files.values()),
        "objects": list(objects.values()),
        "files": entries,
    }
    return Pack(index, chunks)


def manifest_path(cid: str, version: str, arch: str) -> str:
    return f"/catalog/{cid}/{version}/{arch}"


def index_bytes(pack: Pack) -> bytes:
    """The canonical bytes a client uploads as the session's index (their sha256 is declared).
    A format-2 or 3 pack's index is sent exactly as built, valid or not (attacks build invalid ones)."""
    if pack.index.get("format") in EXTENT_FORMATS:
        return json.dumps(pack.index, sort_keys=True, separators=(",", ":")).encode()
    return PackIndex.parse(pack.index).canonical_bytes()


def declaration(pack: Pack) -> dict[str, Any]:
    """What a push begins with: the grid (and format) of ``pack``'s index (the index itself is declared later)."""
    fmt = pack.index.get("format")
    if fmt in EXTENT_FORMATS:
        return {"chunk_size": pack.index["chunk_size"], "format": fmt, "block_size": pack.index["block_size"]}
    return {"chunk_size": pack.index["chunk_size"]}


def begin_push(client: httpx.Client, cid: str, version: str, arch: str, pack: Pack, **body: Any) -> httpx.Response:
    """Open a session for ``pack`` (protocol v2); nothing is uploaded yet."""
    return client.post(f"{manifest_path(cid, version, arch)}/push", json={**declaration(pack), **body})


def declare_index(client: httpx.Client, upload_id: str, data: bytes) -> httpx.Response:
    body = {"index_digest": hashlib.sha256(data).hexdigest(), "index_size": len(data)}
    return client.post(f"/uploads/{upload_id}/index", json=body)


def put_index(client: httpx.Client, session: Mapping[str, Any], data: bytes) -> None:
    """Declare ``data`` as the session's index and PUT it where the catalog says."""
    r = declare_index(client, session["upload_id"], data)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    target = r.json()
    r = plain.put(target["index_url"], content=data, headers=dict(target["put_headers"]))
    assert r.status_code in (200, 201, 204), (r.status_code, r.text[:500])


def ask_chunks(client: httpx.Client, upload_id: str, digests: list[str]) -> httpx.Response:
    return client.post(f"/uploads/{upload_id}/chunks", json={"digests": digests})


def verify(client: httpx.Client, upload_id: str, digests: list[str]) -> httpx.Response:
    return client.post(f"/uploads/{upload_id}/verify", json={"digests": digests})


def upload_chunks(
    urls: Mapping[str, str], chunks: Mapping[str, bytes], headers: Mapping[str, str] | None = None
) -> dict[str, int]:
    """PUT each chunk, zstd-compressed, to its presigned (staging) URL with a plain client (no
    credentials), with the ``put_headers`` the catalog named.

    Returns the stored (compressed) size of every chunk sent.
    """
    sizes: dict[str, int] = {}
    for digest, url in urls.items():
        data = _ZSTD.compress(chunks[digest])
        r = plain.put(url, content=data, headers=dict(headers or {}))
        assert r.status_code in (200, 201, 204), (r.status_code, r.text[:500])
        sizes[digest] = len(data)
    return sizes


def send_chunks(client: httpx.Client, upload_id: str, pack: Pack, digests: list[str] | None = None) -> dict[str, Any]:
    """Ask about ``digests`` (default: all), upload the missing ones and have them verified.

    Returns ``{"stored": [...], "uploaded": [...], "verdict": <merged verify answer>}``.
    """
    wanted = pack.digests if digests is None else digests
    stored: list[str] = []
    uploaded: list[str] = []
    verdict: dict[str, list[str]] = {"verified": [], "missing": [], "corrupt": []}
    for start in range(0, len(wanted), 500):
        page = wanted[start : start + 500]
        r = ask_chunks(client, upload_id, page)
        assert r.status_code == 200, (r.status_code, r.text[:1000])
        answer = r.json()
        stored += answer["stored"]
        upload_chunks(answer["urls"], pack.chunks, answer["put_headers"])
        uploaded += list(answer["urls"])
    for start in range(0, len(uploaded), 32):
        v = verify(client, upload_id, uploaded[start : start + 32])
        assert v.status_code == 200, (v.status_code, v.text[:1000])
        for name, items in v.json().items():
            verdict[name] += items
    return {"stored": stored, "uploaded": uploaded, "verdict": verdict}


def commit(client: httpx.Client, upload_id: str, **body: Any) -> httpx.Response:
    return client.post(f"/uploads/{upload_id}/commit", json=body)


def push_pack(
    client: httpx.Client,
    cid: str,
    version: str,
    arch: str,
    files: Mapping[str, bytes] | Pack,
    *,
    chunk_size: int = CHUNK_SIZE,
    **meta: Any,
) -> dict[str, Any]:
    """Begin, put the index, upload and verify the missing chunks, commit; returns the manifest."""
    pack = files if isinstance(files, Pack) else build_pack(files, chunk_size)
    r = begin_push(client, cid, version, arch, pack, **meta)
    assert r.status_code == 201, (r.status_code, r.text[:1000])
    session = r.json()
    put_index(client, session, index_bytes(pack))
    sent = send_chunks(client, session["upload_id"], pack)
    assert not sent["verdict"]["corrupt"] and not sent["verdict"]["missing"], sent["verdict"]
    c = commit(client, session["upload_id"])
    assert c.status_code == 200, (c.status_code, c.text[:1000])
    manifest: dict[str, Any] = c.json()
    assert manifest["status"] == "ready"
    return manifest


def push_empty(client: httpx.Client, cid: str, version: str, arch: str = "x86_64", **meta: Any) -> dict[str, Any]:
    """The cheapest possible manifest: a pack without files (begin, put the index, commit)."""
    pack = Pack({"chunk_size": CHUNK_SIZE, "files": []})
    r = begin_push(client, cid, version, arch, pack, **meta)
    assert r.status_code == 201, (r.status_code, r.text[:1000])
    put_index(client, r.json(), index_bytes(pack))
    c = commit(client, r.json()["upload_id"])
    assert c.status_code == 200, (c.status_code, c.text[:1000])
    result: dict[str, Any] = c.json()
    return result


def fetch_index(pull_answer: Mapping[str, Any]) -> dict[str, Any]:
    """The index a pull answer points at, checked against the manifest's pack digest."""
    r = plain.get(pull_answer["index_url"])
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert hashlib.sha256(r.content).hexdigest() == pull_answer["manifest"]["pack"]["digest"]
    index: dict[str, Any] = json.loads(r.content)
    return index


def pull_urls(client: httpx.Client, cid: str, version: str, arch: str, digests: list[str]) -> httpx.Response:
    return client.post(f"{manifest_path(cid, version, arch)}/pull/urls", json={"digests": digests})


def pull(client: httpx.Client, cid: str, version: str, arch: str) -> httpx.Response:
    return client.post(f"{manifest_path(cid, version, arch)}/pull")


def download_chunk(url: str) -> bytes:
    """GET a presigned URL with a plain client and return the decompressed bytes."""
    r = plain.get(url)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return zstandard.ZstdDecompressor().decompress(r.content, max_output_size=64 * 1024 * 1024)


def assert_error(
    r: httpx.Response | RawResponse, status: int | tuple[int, ...], code: str | None = None
) -> dict[str, str]:
    """The one error shape, the expected status, and never a stack trace."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:1000])
    assert "Traceback" not in r.text
    assert 'File "' not in r.text
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and {"code", "message"} <= set(error), error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def raw_request(
    base_url: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 60,
) -> RawResponse:
    """Send ``path`` exactly as given (no dot-segment removal, no re-encoding), as an attacker would."""
    url = urlsplit(base_url)
    conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(url.hostname or "localhost", url.port, timeout=timeout)
    try:
        conn.putrequest(method, url.path.rstrip("/") + path, skip_accept_encoding=True)
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Length", str(len(body)))
        elif method in ("POST", "PUT", "PATCH"):
            all_headers.setdefault("Content-Length", "0")
        for name, value in all_headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        data = resp.read()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def race(n: int, action: Callable[[int], T]) -> list[T]:
    """Run ``action(i)`` on ``n`` threads released together by a barrier; the results in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            results[i] = action(i)
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    if errors:
        raise errors[0]
    return results
