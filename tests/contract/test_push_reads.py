"""How a push reads the bundle (``client.transfer.push``): each file is opened once for all its cells,
small cells are read by the coordinator itself, and a file that changes while it is read fails the
push before anything is committed. Client behaviour: the embedded backend suffices."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from client.packer import read_cell_into
from client.transfer import TransferConfig, pull, push
from core.errors import Conflict
from core.identity import ManifestKey
from tests.conftest import Backend

ARCH = "x86_64"
CELL = 4096


@pytest.fixture
def embedded(started_backends: Callable[[str], Backend]) -> Backend:
    return started_backends("embedded")


def _open_under(folder: Path) -> list[str]:
    """Files under ``folder`` this process holds open (Linux: ``/proc/self/fd``)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                found.append(target)
    return found


def _bundle(root: Path, size: int) -> Path:
    bundle = root / "vm.pvm"
    bundle.mkdir(parents=True)
    (bundle / "config.pvs").write_bytes(b"<ParallelsVirtualMachine/>")
    (bundle / "disk.hdd").write_bytes(os.urandom(size))
    return bundle


@pytest.mark.parametrize("chunk_size", [CELL, 1024 * 1024])
def test_a_file_written_during_the_push_fails_it_and_nothing_is_committed(
    embedded: Backend, cid: str, tmp_path: Path, chunk_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write in place (same size, as a running VM writes its disk) after the first cell is read:
    cells the coordinator reads (4 KiB) and cells the pool reads (1 MiB) alike."""
    bundle = _bundle(tmp_path, 16 * chunk_size)
    disk = bundle / "disk.hdd"
    reads = []

    def read_then_write(fd: int, path: Path, offset: int, view: memoryview) -> None:
        read_cell_into(fd, path, offset, view)
        reads.append(offset)
        if len(reads) == 1:
            time.sleep(0.01)  # a later modification time, also on a coarse clock
            with disk.open("r+b") as f:
                f.write(b"changed")

    monkeypatch.setattr(sys.modules["client.transfer.push"], "read_cell_into", read_then_write)
    config = TransferConfig(chunk_size=chunk_size)
    with embedded.client(roles=["PUBLISHER"]) as api:
        with pytest.raises(Conflict, match=r"disk\.hdd changed while pushing; stop the VM and push again"):
            push(api, bundle, ManifestKey.parse(cid, "1", ARCH), config=config)
        left = api.get(cid, "1", ARCH)  # the session's record, never committed
        assert (left["status"], left["usable"]) == ("uploading", False)
    assert _open_under(bundle) == []  # the failed push closed what it had open
    assert disk.read_bytes()[:7] == b"changed" and len(reads) > 1


def test_a_bundle_of_many_small_cells_round_trips(embedded: Backend, cid: str, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "src", 300 * CELL)
    config = TransferConfig(chunk_size=CELL, workers=4)
    with embedded.client(roles=["PUBLISHER"]) as api:
        pushed = push(api, bundle, ManifestKey.parse(cid, "1", ARCH), config=config)
        assert pushed.chunks == 301 and pushed.manifest["status"] == "ready"
        assert _open_under(bundle) == []
        pulled = pull(api, cid, "1", ARCH, tmp_path / "dst", name="vm", config=config)
    assert (pulled.path / "disk.hdd").read_bytes() == (bundle / "disk.hdd").read_bytes()
