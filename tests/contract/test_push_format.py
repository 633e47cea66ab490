"""Which index format a push writes (docs/adr-005-blake3-object-names.md): format 3 by default, the
catalog's word when it answers format 2 (a series pushed in format 2 stays there and keeps
deduplicating), and format 2 against a catalog from before format 3. Client behaviour: the embedded
backend suffices."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.api import CatalogClient
from client.transfer import TransferConfig, pull, push
from core.errors import InvalidInput
from core.identity import ManifestKey
from core.pack import FORMAT_BLAKE3, FORMAT_EXTENTS
from tests.conftest import Backend

ARCH = "x86_64"
MIB = 1024 * 1024


@pytest.fixture
def embedded(started_backends: Callable[[str], Backend]) -> Backend:
    return started_backends("embedded")


def _bundle(root: Path) -> Path:
    bundle = root / "vm.pvm"
    bundle.mkdir(parents=True)
    (bundle / "config.pvs").write_bytes(b"<ParallelsVirtualMachine/>")
    (bundle / "disk.hdd").write_bytes(os.urandom(8 * MIB))
    return bundle


def _rewrite_a_block(bundle: Path) -> None:
    with (bundle / "disk.hdd").open("r+b") as disk:
        disk.seek(5 * MIB)
        disk.write(os.urandom(4096))


def test_a_push_writes_format_3_and_builds_on_it(embedded: Backend, cid: str, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "src")
    with embedded.client(roles=["PUBLISHER"]) as api:
        first = push(api, bundle, ManifestKey.parse(cid, "1", ARCH))
        assert first.manifest["pack"]["format"] == FORMAT_BLAKE3
        _rewrite_a_block(bundle)
        second = push(api, bundle, ManifestKey.parse(cid, "2", ARCH))
        assert second.manifest["pack"]["format"] == FORMAT_BLAKE3
        assert second.uploaded_bytes < 256 * 1024  # one 128 KiB block, compressed or not
        pulled = pull(api, cid, "2", ARCH, tmp_path / "dst", name="vm")
    assert (pulled.path / "disk.hdd").read_bytes() == (bundle / "disk.hdd").read_bytes()


def test_a_format_2_series_stays_in_format_2(embedded: Backend, cid: str, tmp_path: Path) -> None:
    """A series an older pdcat pushed in format 2: a default push is told format 2 and sends only
    the changed block, instead of the whole VM under new names."""
    bundle = _bundle(tmp_path / "src")
    with embedded.client(roles=["PUBLISHER"]) as api:
        first = push(api, bundle, ManifestKey.parse(cid, "1", ARCH), config=TransferConfig(pack_format=FORMAT_EXTENTS))
        assert first.manifest["pack"]["format"] == FORMAT_EXTENTS
        _rewrite_a_block(bundle)
        second = push(api, bundle, ManifestKey.parse(cid, "2", ARCH))
        assert second.manifest["pack"]["format"] == FORMAT_EXTENTS
        assert second.uploaded_bytes < 256 * 1024
        pulled = pull(api, cid, "2", ARCH, tmp_path / "dst", name="vm")
    assert (pulled.path / "disk.hdd").read_bytes() == (bundle / "disk.hdd").read_bytes()


def test_a_catalog_from_before_format_3_gets_format_2(
    embedded: Backend, cid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a catalog refuses format 3 at the start of the push, with its own words; the push begins
    again in format 2. Any other refusal stands."""
    real_begin = CatalogClient.push_begin
    asked: list[Any] = []
    refusal = ["format must be 1 or 2"]

    def older_catalog(self: CatalogClient, catalog_id: str, version: str, arch: str, body: dict[str, Any]) -> Any:
        asked.append(body.get("format"))
        if body.get("format") == FORMAT_BLAKE3:
            raise InvalidInput(refusal[0])
        answer = real_begin(self, catalog_id, version, arch, body)
        answer.pop("format", None)  # nor did it say which format a session is
        return answer

    monkeypatch.setattr(CatalogClient, "push_begin", older_catalog)
    bundle = _bundle(tmp_path / "src")
    with embedded.client(roles=["PUBLISHER"]) as api:
        pushed = push(api, bundle, ManifestKey.parse(cid, "1", ARCH))
        assert asked == [FORMAT_BLAKE3, FORMAT_EXTENTS]
        assert pushed.manifest["pack"]["format"] == FORMAT_EXTENTS
        refusal[0], asked[:] = "description is too long", []
        with pytest.raises(InvalidInput, match="description is too long"):
            push(api, bundle, ManifestKey.parse(cid, "2", ARCH))
        assert asked == [FORMAT_BLAKE3]
