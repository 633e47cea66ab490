"""``pdcat pull`` of a pack the original product left in the catalog's storage, after an admin imported it.

The pack and its ``.meta`` are put where the original keeps them (``<catalog_id>/<name>.pdpack`` and
``.meta``) straight into the backend's storage, as an admin with bucket access would, by pdcat's own
exporter (``client.pdpack.export_pack``, which writes what the original's Go reader reads); the
contract suite covers packs built the way the Go writer builds them. Then the real ``pdcat`` command
pulls it: one presigned GET streamed into the safe unpacker, and nothing left behind when the pack
is corrupt, truncated, replaced, or too big for the disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.pdpack import PackMeta, export_pack
from client.pdpack_pull import PackDownload, open_pack_stream
from core.pdpack_meta import meta_key, pack_key
from tests.e2e.conftest import DISK_REL, Pdcat, assert_same_tree, assert_sparse, listing, make_bundle

ARCH = "x86_64"


class CatalogStorage:
    """The part of a storage provider ``export_pack`` uses, writing into the backend's own storage."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.objects: dict[str, bytes] = {}

    def put_file(self, key: str, path: Path) -> None:
        self.put_bytes(key, path.read_bytes())

    def put_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = data
        self.backend.put_object(key, data)

    def exists(self, key: str) -> bool:
        return key in self.objects

    def get_bytes(self, key: str) -> bytes:
        return self.objects[key]

    def open_read(self, key: str) -> Any:
        raise NotImplementedError("only written here")

    def delete(self, key: str) -> None:
        raise NotImplementedError("only written here")


def export_and_import(backend: Any, tmp: Path, cid: str, version: str) -> tuple[Path, CatalogStorage, PackMeta]:
    bundle = make_bundle(tmp / f"src-{version}", "Legacy VM")
    storage = CatalogStorage(backend)
    meta = export_pack(storage, bundle, cid, version, ARCH, {"tags": ["legacy"]}, compress=True)
    register(backend, cid, version)
    return bundle, storage, meta


def register(backend: Any, cid: str, version: str) -> dict[str, Any]:
    with backend.http(roles=["ADMIN"], subject="e2e-admin") as admin:
        body = {"catalog_id": cid, "version": version, "architecture": ARCH, "format": "pdpack"}
        r = admin.post("/catalog/import", json=body)
    assert r.status_code == 201, r.text
    manifest: dict[str, Any] = r.json()
    return manifest


def pull_args(cid: str, version: str, dest: Path, *extra: str) -> list[str]:
    return ["pull", f"{cid}:{version}", "--arch", ARCH, "--dest", str(dest), "--name", "Legacy", *extra]


@pytest.mark.every_backend
def test_pdcat_pulls_an_imported_original_pack(pdcat: Pdcat, backend: Any, cid: str, tmp_path: Path) -> None:
    bundle, storage, meta = export_and_import(backend, tmp_path, cid, "1.0")
    dest = tmp_path / "vms"
    got = pdcat.json(*pull_args(cid, "latest", dest))
    final = dest / "Legacy.pvm"
    assert got["path"] == str(final)
    assert got["manifest"]["pack"]["format"] == "pdpack"
    assert got["manifest"]["tags"] == ["legacy"]
    assert got["cache"] == "off"  # a single tar has no chunks to share through the cache
    assert got["downloaded_bytes"] == meta.pack_size == len(storage.objects[pack_key(cid, ARCH, "1.0")])
    assert got["registered"] is True
    assert_same_tree(bundle, final)
    assert_sparse(final / DISK_REL)  # holes stay holes
    assert listing(dest) == ["Legacy.pvm"]  # no partial folder, no journal
    assert next(argv for argv in pdcat.prlctl_calls() if argv[:1] == ["register"])[1] == str(final)

    assert pdcat.json("cache", "ls")["items"] == []  # the pack went past the cache

    # the text output says what was pulled; a second pull into the same place is refused up front
    out = pdcat.ok(*pull_args(cid, "1.0", tmp_path / "again", "--no-register")).out
    assert f"Pulled {cid}:1.0 ({ARCH})" in out, out
    line = pdcat.fail(*pull_args(cid, "1.0", dest, "--no-register"))
    assert f"{final} already exists" in line, line


def test_a_corrupt_or_replaced_pack_leaves_nothing_behind(pdcat: Pdcat, backend: Any, cid: str, tmp_path: Path) -> None:
    _bundle, storage, _meta = export_and_import(backend, tmp_path, cid, "1.0")
    key = pack_key(cid, ARCH, "1.0")
    pack = storage.objects[key]
    dest = tmp_path / "vms"

    flipped = bytearray(pack)
    flipped[len(pack) // 2] ^= 0x5A
    backend.put_object(key, bytes(flipped))  # same size: only the contents tell
    line = pdcat.fail(*pull_args(cid, "1.0", dest, "--no-register"))
    assert "corrupt" in line or "does not match its .meta" in line, line
    assert listing(dest) == []

    backend.put_object(key, pack[: len(pack) // 2])
    line = pdcat.fail(*pull_args(cid, "1.0", dest, "--no-register"))
    assert "replaced after it was imported" in line, line
    assert listing(dest) == []

    # a pack cut short before it was imported (its .meta agrees with what is there): the tar tells
    short = pack[: len(pack) - 4096]
    folder_meta = PackMeta.from_json(storage.objects[meta_key(cid, ARCH, "1.0")])
    backend.put_object(pack_key(cid, ARCH, "2.0"), short)
    cut = dataclasses.replace(
        folder_meta,
        version="2.0",
        pack_path=pack_key(cid, ARCH, "2.0").rsplit("/", 1)[1],
        pack_size=len(short),
        checksum=hashlib.md5(short).hexdigest(),
    )
    backend.put_object(meta_key(cid, ARCH, "2.0"), cut.to_json())
    register(backend, cid, "2.0")
    line = pdcat.fail(*pull_args(cid, "2.0", dest, "--no-register"))
    assert "truncated" in line or "corrupt" in line, line
    assert listing(dest) == []
    assert not pdcat.prlctl_calls()


def test_a_pack_too_big_for_the_disk_is_refused_before_downloading(
    pdcat: Pdcat, backend: Any, cid: str, tmp_path: Path
) -> None:
    _bundle, storage, meta = export_and_import(backend, tmp_path, cid, "1.0")
    huge = dataclasses.replace(meta, version="3.0", size=2**60)
    backend.put_object(pack_key(cid, ARCH, "3.0"), storage.objects[pack_key(cid, ARCH, "1.0")])
    backend.put_object(meta_key(cid, ARCH, "3.0"), huge.to_json())
    register(backend, cid, "3.0")
    dest = tmp_path / "vms"
    line = pdcat.fail(*pull_args(cid, "3.0", dest, "--no-register"))
    assert "not enough space" in line, line
    assert listing(dest) == []


class _CutStream(httpx.SyncByteStream):
    """The first response's body breaks after ``limit`` bytes, as a dropped connection does."""

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self._inner:
            if sent + len(chunk) > self._limit:
                yield chunk[: self._limit - sent]
                raise httpx.ReadError("connection reset by the test")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _Flaky(httpx.BaseTransport):
    """A real transport to the backend's storage that drops the first body mid-way and refuses the
    URL of the second request, as an expired presigned URL is refused."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.ranges: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.ranges.append(request.headers.get("range"))
        if len(self.ranges) == 2:
            return httpx.Response(403, request=request)
        response = self._inner.handle_request(request)
        if len(self.ranges) == 1:
            return httpx.Response(
                response.status_code, headers=response.headers, stream=_CutStream(response.stream, 5000),
                request=request,
            )  # fmt: skip
        return response

    def close(self) -> None:
        self._inner.close()


@pytest.mark.every_backend
def test_the_pack_stream_resumes_after_a_dropped_connection_and_an_expired_url(
    backend: Any, cid: str, tmp_path: Path
) -> None:
    _bundle, storage, _meta = export_and_import(backend, tmp_path, cid, "1.0")
    pack = storage.objects[pack_key(cid, ARCH, "1.0")]
    with backend.client(roles=["USER"], subject="flaky") as api:
        first = PackDownload.parse(api.pull(cid, "1.0", ARCH)["pack"])
        refreshed: list[PackDownload] = []

        def refresh() -> PackDownload:
            refreshed.append(PackDownload.parse(api.pull_pack_url(cid, "1.0", ARCH)))
            return refreshed[-1]

        transport = _Flaky()
        with httpx.Client(transport=transport) as http:
            stream = open_pack_stream(http, first, refresh, backoff=0.01)
            with stream:
                data = stream.read()
        assert data == pack
        assert len(refreshed) == 1 and "first" not in repr(refreshed[0]) and "http" not in repr(refreshed[0])
        assert transport.ranges == [None, "bytes=5000-", "bytes=5000-"]
        assert api.get(cid, "1.0", ARCH)["download_count"] == 1  # fresh URLs are not downloads
