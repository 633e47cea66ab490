"""client.pdpack on a real filesystem: the original product's pack format, both ways, and safely.

Round trips (gzip or not, sparse members or not) must give back the same tree: contents, modes,
mtimes, symlinks, and holes. Packs made the way the original Go tool makes them, by GNU tar, or by
hand must unpack; ours must unpack with GNU tar. Every hostile pack of
``tests/data/malicious_tars/make_corpus.py`` must be refused with a message naming the member, and
leave nothing behind. Export and import go through the real local storage provider (``client.byo``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.byo import open_storage, parse_connection_string
from client.pdpack import (
    COMPRESSION_LEVELS,
    ChecksumMismatch,
    PackMeta,
    PackRejected,
    PackStorage,
    export_pack,
    import_pack,
    import_pack_with_stats,
    meta_key,
    pack_key,
    unpack_pack,
    write_pack,
)
from client.pdpack.tarfmt import SparseTarInfo  # tested directly: its >8 GiB header cannot be produced cheaply
from core.errors import Conflict, InvalidInput, NotFound
from tests.data.malicious_tars.make_corpus import CASES, Case, build_tar

KiB, MiB = 1024, 1024 * 1024
DISK = "harddisk.hdd/harddisk.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds"
T0 = 1_600_000_000


# ---- helpers ----------------------------------------------------------------------------------
def make_bundle(parent: Path, name: str = "Ubuntu.pvm", *, links: bool = True) -> Path:
    """A small VM-like bundle: nested folders, a sparse multi-MiB disk, empty files, modes, links."""
    b = parent / name
    (b / "harddisk.hdd").mkdir(parents=True)
    (b / "Snapshots" / "sub" / "deep").mkdir(parents=True)
    (b / "config.pvs").write_text("<ParallelsVirtualMachine/>\n" * 50)
    (b / "harddisk.hdd" / "DiskDescriptor.xml").write_text("<Parallels_disk_image/>\n")
    with open(b / DISK, "wb") as f:  # 6 MiB apparent, ~260 KiB of data, ends in a hole
        f.truncate(6 * MiB)
        f.seek(1 * MiB)
        f.write(os.urandom(256 * KiB))
        f.seek(5 * MiB + 4 * KiB)
        f.write(b"\xa5" * 4 * KiB)
    (b / "empty.log").touch()
    (b / "Snapshots" / "sub" / "deep" / "empty").touch()
    (b / "tools.sh").write_text("#!/bin/sh\necho hi\n")
    (b / "NVRAM.dat").write_bytes(os.urandom(3000))
    os.chmod(b / "config.pvs", 0o640)
    os.chmod(b / "tools.sh", 0o755)
    os.chmod(b / "NVRAM.dat", 0o600)
    if links:
        os.symlink(DISK, b / "disk.link")
        os.symlink("../../config.pvs", b / "Snapshots" / "sub" / "config.link")
    stamp_tree(b)
    os.chmod(b / "Snapshots", 0o750)
    return b


def stamp_tree(root: Path) -> None:
    """Fixed mtimes, folders last (deepest first) so writing into them does not move theirs."""
    paths = sorted(root.rglob("*"), key=lambda p: (p.is_dir(), -len(p.parts)))
    for i, p in enumerate(paths):
        os.utime(p, (T0 + i, T0 + i), follow_symlinks=False)


def snapshot(root: Path, *, mtimes: bool = True, links: bool = True) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st_ = os.lstat(p)
        when = int(st_.st_mtime) if mtimes else None
        if stat.S_ISLNK(st_.st_mode):
            if links:
                out[rel] = ("link", os.readlink(p))
        elif stat.S_ISDIR(st_.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st_.st_mode), when)
        else:
            out[rel] = ("file", stat.S_IMODE(st_.st_mode), st_.st_size, sha256(p), when)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


class Recorder(io.RawIOBase):
    """Wraps a file and records the biggest single read or write: proof that nothing is slurped."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.biggest = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.biggest = max(self.biggest, len(data))
        return data

    def write(self, data: Any) -> int:
        self.biggest = max(self.biggest, len(data))
        return self.inner.write(data)


def pack_to(path: Path, bundle: Path, **kwargs: Any) -> Any:
    with open(path, "wb") as f:
        return write_pack(bundle, f, **kwargs)


def unpack_from(path: Path, dest: Path, **kwargs: Any) -> Any:
    with open(path, "rb") as f:
        return unpack_pack(f, dest, **kwargs)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "src")


# ---- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse-members", "dense-members"])
def test_round_trip_keeps_contents_modes_mtimes_links_and_holes(
    tmp_path: Path, bundle: Path, compress: bool, sparse: bool
) -> None:
    pack = tmp_path / "x.pdpack"
    with open(pack, "wb") as f:
        rec = Recorder(cast(BinaryIO, f))
        stats = write_pack(bundle, cast(BinaryIO, rec), compress=compress, level="balanced", sparse=sparse)
    assert rec.biggest <= 2 * MiB  # streamed out in bounded pieces
    assert stats.pack_size == pack.stat().st_size
    assert stats.checksum == md5_of(pack)
    assert stats.sha256 == sha256(pack)
    assert stats.compressed is compress and stats.level == (5 if compress else None)
    assert (stats.files, stats.folders, stats.symlinks) == (7, 4, 2)
    files = [p for p in bundle.rglob("*") if p.is_file() and not p.is_symlink()]
    assert stats.size == sum(p.stat().st_size for p in files)
    assert stats.sparse_files == (1 if sparse else 0)
    if not compress:  # the holes are what a sparse member leaves out
        assert (stats.pack_size < 1 * MiB) if sparse else (stats.pack_size > 6 * MiB)
    assert pack.read_bytes()[:2] == (b"\x1f\x8b" if compress else pack.read_bytes()[:2])
    disk_item = next(c for c in stats.contents if c.name == DISK.rsplit("/", 1)[1])
    assert (disk_item.path, disk_item.size) == ("/harddisk.hdd", 6 * MiB)

    dest = tmp_path / "out" / "Ubuntu.pvm"
    dest.parent.mkdir()
    with open(pack, "rb") as f:
        rec = Recorder(cast(BinaryIO, f))
        result = unpack_pack(cast(BinaryIO, rec), dest, compressed=compress, checksum=stats.checksum)
    assert rec.biggest <= 2 * MiB
    assert result.checksum_verified and result.checksum == stats.checksum and result.compressed is compress
    assert (result.files, result.folders, result.symlinks) == (7, 4, 2)
    assert result.pack_bytes == stats.pack_size
    assert snapshot(dest) == snapshot(bundle)
    assert allocated(dest / DISK) < 1 * MiB <= 6 * MiB == (dest / DISK).stat().st_size
    assert listing(dest.parent) == ["Ubuntu.pvm"]  # no partial folder left next to it


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(
        st.sampled_from(["a", "b.hds", "d/c", "d/e/f", "g h/ü.txt"]),
        st.lists(
            st.tuples(st.sampled_from(["data", "zeros", "hole"]), st.integers(min_value=1, max_value=300 * KiB)),
            max_size=4,
        ),
        min_size=1,
    ),
    compress=st.booleans(),
)
def test_pack_then_unpack_is_identity(files: dict[str, list[tuple[str, int]]], compress: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "VM.pvm"
        src.mkdir()
        for rel, segments in files.items():
            path = src / rel
            if any(p.as_posix() in files for p in Path(rel).parents):
                continue  # a name that is both a file and a folder: not a tree
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                for kind, n in segments:
                    if kind == "data":
                        f.write(os.urandom(n))
                    elif kind == "zeros":
                        f.write(bytes(n))
                    else:
                        f.seek(n, os.SEEK_CUR)
                f.truncate()
        stats = pack_to(root / "p", src, compress=compress)
        unpack_from(root / "p", root / "out.pvm", compressed=None, checksum=stats.checksum)
        assert snapshot(root / "out.pvm", mtimes=False) == snapshot(src, mtimes=False)


@pytest.mark.parametrize("where", [0.3, 0.6, 0.97])
@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_a_flipped_byte_is_detected_and_nothing_is_left(
    tmp_path: Path, bundle: Path, compress: bool, where: float
) -> None:
    pack = tmp_path / "x.pdpack"
    stats = pack_to(pack, bundle, compress=compress)
    data = bytearray(pack.read_bytes())
    data[int(len(data) * where)] ^= 0x40
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises((ChecksumMismatch, PackRejected)):
        unpack_pack(io.BytesIO(bytes(data)), out / "VM.pvm", compressed=None, checksum=stats.checksum)
    assert listing(out) == []


def test_setuid_bits_in_the_bundle_are_not_packed(tmp_path: Path, bundle: Path) -> None:
    os.chmod(bundle / "tools.sh", 0o4755)
    stats = pack_to(tmp_path / "p", bundle, compress=False)
    unpack_from(tmp_path / "p", tmp_path / "out.pvm", compressed=False, checksum=stats.checksum)
    assert stat.S_IMODE(os.stat(tmp_path / "out.pvm" / "tools.sh").st_mode) == 0o755


def test_sparse_member_header_holds_sizes_beyond_8_gib() -> None:
    """Stored data over 8 GiB goes into the ustar size field as base-256, never as a PAX size record
    (Python's reader would then mis-place the next header): the header must still parse and checksum."""
    info = SparseTarInfo("GNUSparseFile.0/f0")
    info.size = 9 * 1024**3 + 12345
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "disk.hds"}
    buf = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    assert b"size=" not in buf
    header = tarfile.TarInfo.frombuf(buf[-512:], "utf-8", "surrogateescape")  # checks the header checksum
    assert header.size == 9 * 1024**3 + 12345
    small = SparseTarInfo("GNUSparseFile.0/f1")
    small.size = 4096
    assert tarfile.TarInfo.frombuf(small.tobuf()[-512:], "utf-8", "surrogateescape").size == 4096


def test_compression_levels(tmp_path: Path, bundle: Path) -> None:
    assert dict(COMPRESSION_LEVELS) == {
        "best_speed": 1,
        "balanced": 5,
        "best_compression": 9,
        "no_compression": 0,
        "default": 6,
    }
    stored = pack_to(tmp_path / "stored", bundle, compress=True, level="no_compression")
    best = pack_to(tmp_path / "best", bundle, compress=True, level="BEST_COMPRESSION")
    assert (stored.level, best.level) == (0, 9)
    assert (tmp_path / "stored").read_bytes()[:2] == b"\x1f\x8b"  # still a gzip stream, as Go's level 0 is
    assert best.pack_size < stored.pack_size
    with pytest.raises(InvalidInput, match="unknown compression level 'fastest'"):
        pack_to(tmp_path / "bad", bundle, compress=True, level="fastest")


# ---- packs made by others -----------------------------------------------------------------------
def go_style_pack(bundle: Path, out: Path, *, gz: bool, rooted: bool) -> str:
    """What ``compressMachine`` of prl-devops-service writes: regular files only (``filepath.Walk``
    order), ``Name: TrimPrefix(path, bundle)`` (a leading ``/`` unless the path ended in one),
    ``Mode: int64(info.Mode())``, ``Size``; no mtime, owner or folders; USTAR; gzip at ``balanced``.
    Holes are written out as zeros. Returns the hex MD5 the original records."""
    with open(out, "wb") as raw:
        sink: Any = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=5, mtime=0) if gz else raw
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(bundle):
                dirnames.sort()
                for name in sorted(filenames):
                    path = Path(dirpath) / name
                    rel = path.relative_to(bundle).as_posix()
                    info = tarfile.TarInfo("/" + rel if rooted else rel)
                    st_ = os.stat(path)
                    info.size, info.mode, info.mtime = st_.st_size, stat.S_IMODE(st_.st_mode), 0
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
        if gz:
            sink.close()
    return md5_of(out)


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("rooted", [True, False], ids=["leading-slash", "relative"])
def test_a_pack_written_the_way_the_go_tool_writes_it_unpacks(tmp_path: Path, gz: bool, rooted: bool) -> None:
    src = make_bundle(tmp_path / "src", links=False)  # the Go writer cannot pack symlinks
    checksum = go_style_pack(src, tmp_path / "go.pdpack", gz=gz, rooted=rooted)
    before = time.time()
    result = unpack_from(tmp_path / "go.pdpack", tmp_path / "VM.pvm", compressed=None, checksum=checksum)
    assert result.checksum_verified and result.compressed is gz and result.folders == 0
    got = snapshot(tmp_path / "VM.pvm", mtimes=False)
    want = snapshot(src, mtimes=False)
    assert {k: v for k, v in got.items() if v[0] == "file"} == {k: v for k, v in want.items() if v[0] == "file"}
    assert {k for k, v in got.items() if v[0] == "dir"} == {k for k, v in want.items() if v[0] == "dir"}
    # mtime 0 means "not recorded" in these packs: files keep the time of unpacking, not 1970
    assert os.stat(tmp_path / "VM.pvm" / "config.pvs").st_mtime >= before - 2
    # the zeros the Go writer stored for the holes are not written back: the disk stays sparse
    assert allocated(tmp_path / "VM.pvm" / DISK) < 1 * MiB


@pytest.fixture(scope="module")
def gnu_tar() -> str:
    tar = shutil.which("tar")
    version = subprocess.run([tar or "tar", "--version"], capture_output=True, text=True, check=False).stdout
    if not tar or "GNU tar" not in version:
        raise RuntimeError(f"these tests need GNU tar (Debian package 'tar'); found {version.splitlines()[:1]}")
    return tar


def test_gnu_tar_unpacks_our_sparse_pack(tmp_path: Path, bundle: Path, gnu_tar: str) -> None:
    pack_to(tmp_path / "p.pdpack", bundle, compress=True, level="best_speed")
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run([gnu_tar, "-xzf", str(tmp_path / "p.pdpack"), "-C", str(out)], check=True)
    assert snapshot(out, mtimes=False) == snapshot(bundle, mtimes=False)
    assert allocated(out / DISK) < 1 * MiB


@pytest.mark.parametrize("fmt", ["posix", "gnu"])  # PAX sparse 1.0, and the old GNU 'S' members
def test_we_unpack_gnu_tar_sparse_packs(tmp_path: Path, bundle: Path, gnu_tar: str, fmt: str) -> None:
    pack = tmp_path / "gnu.tgz"
    cmd = [gnu_tar, "--sparse", f"--format={fmt}", "-czf", str(pack), "-C", str(bundle), "."]
    subprocess.run(cmd, check=True)
    result = unpack_from(pack, tmp_path / "VM.pvm", compressed=True)
    assert not result.checksum_verified
    assert snapshot(tmp_path / "VM.pvm") == snapshot(bundle)
    assert allocated(tmp_path / "VM.pvm" / DISK) < 1 * MiB


def test_a_pack_holding_the_bundle_folder_itself_is_unpacked_as_its_contents(tmp_path: Path, gnu_tar: str) -> None:
    src = make_bundle(tmp_path / "src")
    subprocess.run([gnu_tar, "-cf", str(tmp_path / "h.tar"), "-C", str(src.parent), src.name], check=True)
    (tmp_path / "out").mkdir()
    unpack_from(tmp_path / "h.tar", tmp_path / "out" / "Other.pvm", compressed=False)
    assert snapshot(tmp_path / "out" / "Other.pvm") == snapshot(src)
    assert listing(tmp_path / "out") == ["Other.pvm"]


def test_rooted_names_stay_inside_the_destination(tmp_path: Path) -> None:
    """A leading slash on every name is the original's convention: relative to the bundle, never /."""
    data = build_tar([("/etc/pdcat-test-should-not-exist", b"x", {}), ("/config.pvs", b"<xml/>", {})])
    unpack_pack(io.BytesIO(data), tmp_path / "VM.pvm", compressed=False)
    assert (tmp_path / "VM.pvm" / "etc" / "pdcat-test-should-not-exist").read_bytes() == b"x"
    assert not Path("/etc/pdcat-test-should-not-exist").exists()


# ---- hostile packs ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_pack_is_refused_and_leaves_nothing(tmp_path: Path, case: Case) -> None:
    jail = tmp_path / "a" / "b" / "c"  # deep enough that ../../.. escapes still land in tmp_path
    jail.mkdir(parents=True)
    (jail / "keep.txt").write_text("untouched")
    before_jail, before_tmp = listing(jail), sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidInput) as caught:
        unpack_pack(io.BytesIO(case.data), jail / "VM.pvm", compressed=case.compressed, max_bytes=case.max_bytes)
    message = str(caught.value)
    assert case.expect in message
    assert "\n" not in message and "Traceback" not in message
    assert listing(jail) == before_jail
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before_tmp
    assert (jail / "keep.txt").read_text() == "untouched"


def test_the_space_budget_counts_bytes_written_not_holes_stored_as_zeros(tmp_path: Path) -> None:
    """A Go pack stores a disk's holes as zeros; they are never written, so they do not count. Our
    sparse members say their data size up front, so a pack that cannot fit fails before writing."""
    src = make_bundle(tmp_path / "src", links=False)  # 6 MiB disk, ~270 KiB of data in all
    go_style_pack(src, tmp_path / "go.pdpack", gz=True, rooted=True)
    unpack_from(tmp_path / "go.pdpack", tmp_path / "fits.pvm", compressed=True, max_bytes=2 * MiB)
    assert sha256(tmp_path / "fits.pvm" / DISK) == sha256(src / DISK)
    pack_to(tmp_path / "ours.pdpack", src, compress=False)
    with pytest.raises(PackRejected, match="would take the unpacked data past 102400 bytes"):
        unpack_from(tmp_path / "ours.pdpack", tmp_path / "tight.pvm", compressed=False, max_bytes=100 * KiB)
    assert not (tmp_path / "tight.pvm").exists()


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path: Path, bundle: Path) -> None:
    pack_to(tmp_path / "p", bundle, compress=True)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumMismatch, match=r"does not match its \.meta: md5"):
        unpack_from(tmp_path / "p", out / "VM.pvm", compressed=True, checksum="0" * 32)
    assert listing(out) == []


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_other_checksum_shapes_are_verified(tmp_path: Path, bundle: Path, algorithm: str) -> None:
    pack_to(tmp_path / "p", bundle, compress=False)
    digest = hashlib.new(algorithm, (tmp_path / "p").read_bytes()).hexdigest()
    result = unpack_from(tmp_path / "p", tmp_path / "ok.pvm", compressed=None, checksum=digest.upper())
    assert result.checksum_verified and result.checksum_algorithm == algorithm
    with pytest.raises(ChecksumMismatch):
        unpack_from(tmp_path / "p", tmp_path / "bad.pvm", compressed=None, checksum="f" * len(digest))
    assert not (tmp_path / "bad.pvm").exists()


def test_a_recorded_sha256_is_verified_as_well(tmp_path: Path, bundle: Path) -> None:
    stats = pack_to(tmp_path / "p", bundle, compress=True)
    ok = unpack_from(tmp_path / "p", tmp_path / "ok.pvm", compressed=True, checksum=stats.checksum, sha256=stats.sha256)
    assert ok.checksum_verified
    with pytest.raises(ChecksumMismatch, match="sha256"):
        unpack_from(tmp_path / "p", tmp_path / "bad.pvm", compressed=True, checksum=stats.checksum, sha256="e" * 64)
    with pytest.raises(InvalidInput, match="64 hexadecimal"):
        unpack_from(tmp_path / "p", tmp_path / "bad.pvm", compressed=True, sha256="abc")
    assert listing(tmp_path) == ["ok.pvm", "p", "src"]


def test_a_multipart_etag_cannot_be_verified_and_says_so(tmp_path: Path, bundle: Path) -> None:
    pack_to(tmp_path / "p", bundle, compress=False)
    etag = "9b2cf535f27731c974343645a3985328-12"
    result = unpack_from(tmp_path / "p", tmp_path / "VM.pvm", compressed=None, checksum=etag)
    assert not result.checksum_verified


def test_destination_must_be_new_and_its_folder_must_exist(tmp_path: Path, bundle: Path) -> None:
    pack_to(tmp_path / "p", bundle, compress=False)
    (tmp_path / "VM.pvm").mkdir()
    with pytest.raises(Conflict, match="already exists"):
        unpack_from(tmp_path / "p", tmp_path / "VM.pvm", compressed=None)
    with pytest.raises(InvalidInput, match="is not a folder"):
        unpack_from(tmp_path / "p", tmp_path / "missing" / "VM.pvm", compressed=None)


# ---- the .meta document and the keys ------------------------------------------------------------
REAL_META = {
    "id": "0c2b6d9e1f4a4e2d9b7c5a3e8f1d2c4b6a8e0f2d4c6b8a0e2f4d6c8b0a2e4f6d",
    "catalog_id": "ubuntu-server",
    "description": "Ubuntu 24.04 build agent",
    "version": "24.04",
    "name": "ubuntu-server-arm64-24.04",
    "architecture": "arm64",
    "path": "/ubuntu-server",
    "pack_path": "ubuntu-server-arm64-24.04.pdpack",
    "metadata_path": "ubuntu-server-arm64-24.04.meta",
    "type": "pvm",
    "provider": None,
    "size": 21474836480,
    "required_roles": ["DEVELOPERS"],
    "required_claims": None,
    "tags": ["lts", "ci"],
    "created_at": "2024-05-02T10:11:12.123456789Z",
    "updated_at": "2024-05-02T10:41:02.5Z",
    "last_downloaded_at": "",
    "last_downloaded_user": "",
    "is_compressed": True,
    "pack_relative_path": "",
    "download_count": 0,
    "compressed_checksum": "9e107d9d372bb6826bd81d3542a419d6",
    "virtual_machine_contents": [
        {"is_dir": True, "name": "harddisk.hdd", "path": "/", "hash": "", "size": 0,
         "created_at": "", "updated_at": "", "deleted_at": ""},
        {"is_dir": False, "name": "config.pvs", "path": "/", "hash": "", "size": 9213,
         "created_at": "2024-05-01T08:00:00.1+02:00", "updated_at": "2024-05-01T08:00:00.1+02:00", "deleted_at": ""},
    ],
    "pack_contents": [
        {"is_dir": False, "name": "ubuntu-server-arm64-24.04.meta", "path": "/ubuntu-server", "hash": "",
         "size": 0, "created_at": "2024-05-02T10:41:02Z", "updated_at": "2024-05-02T10:41:02Z", "deleted_at": ""},
        {"is_dir": False, "name": "ubuntu-server-arm64-24.04.pdpack", "path": "/ubuntu-server",
         "hash": "9e107d9d372bb6826bd81d3542a419d6", "size": 0, "created_at": "2024-05-02T10:41:02Z",
         "updated_at": "2024-05-02T10:41:02Z", "deleted_at": ""},
    ],
    "pack_size": 7516192768,
    "tainted": False,
    "tainted_by": "",
    "tainted_at": "",
    "untainted_by": "",
    "revoked": False,
    "revoked_at": "",
    "revoked_by": "",
    "minimum_requirements": {"cpu": 2, "memory": 4096, "disk": 65536},
    "compressed_size": 7516192768,  # newer Go versions: fields pdcat does not model must survive
    "compressed_ratio": 65.0,
}  # fmt: skip


def test_meta_parses_a_real_looking_original_document_and_writes_it_back() -> None:
    raw = json.dumps(REAL_META, indent=2).encode()
    meta = PackMeta.from_json(b"\xef\xbb\xbf" + raw)  # a BOM is tolerated
    assert (meta.catalog_id, meta.version, meta.architecture) == ("ubuntu-server", "24.04", "arm64")
    assert (meta.size, meta.pack_size, meta.is_compressed) == (21474836480, 7516192768, True)
    assert meta.checksum == "9e107d9d372bb6826bd81d3542a419d6" and meta.vm_type == "pvm"
    assert (meta.required_roles, meta.required_claims, meta.tags) == (("DEVELOPERS",), (), ("lts", "ci"))
    assert meta.minimum_requirements is not None and meta.minimum_requirements.memory == 4096
    assert meta.contents[1].name == "config.pvs" and meta.contents[1].size == 9213 and meta.contents[0].is_dir
    assert meta.pack_contents[1].checksum == meta.checksum
    assert meta.extra == {"compressed_size": 7516192768, "compressed_ratio": 65.0}  # the rest are Go's defaults

    written = json.loads(meta.to_json())
    assert list(written)[:6] == ["id", "catalog_id", "description", "version", "name", "architecture"]
    assert written == {**REAL_META, "required_claims": []}  # Go's null slice comes back as []
    assert PackMeta.from_json(meta.to_json()) == meta
    assert meta.to_json().startswith(b'{\n  "id": ')
    tainted = PackMeta.from_json(json.dumps({**REAL_META, "tainted": True, "tainted_by": "ops"}).encode())
    assert json.loads(tainted.to_json())["tainted"] is True and tainted.extra["tainted_by"] == "ops"


def test_meta_is_tolerant_of_what_it_does_not_need() -> None:
    minimal = {"catalog_id": "ubuntu", "version": "1", "architecture": "amd64", "future_field": {"x": 1}}
    meta = PackMeta.from_json(json.dumps(minimal).encode())
    assert meta.architecture == "x86_64" and meta.checksum == "" and meta.extra == {"future_field": {"x": 1}}
    written = json.loads(meta.to_json())
    assert written["future_field"] == {"x": 1} and written["provider"] is None and "pack_path" not in written


@pytest.mark.parametrize(
    ("doc", "expect"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"version": "1", "architecture": "arm64"}', "no catalog_id"),
        (b'{"catalog_id": "u", "architecture": "arm64"}', "no version"),
        (b'{"catalog_id": "u", "version": "1"}', "no architecture"),
        (b'{"catalog_id": "u", "version": "1", "architecture": "sparc"}', "invalid architecture"),
        (b'{"catalog_id": "u", "version": "1", "architecture": "arm64", "size": "12"}', "'size'"),
        (b'{"catalog_id": "u", "version": "1", "architecture": "arm64", "pack_size": -1}', "'pack_size'"),
        (b'{"catalog_id": "u", "version": "1", "architecture": "arm64", "is_compressed": "yes"}', "'is_compressed'"),
        (b'{"catalog_id": "u", "version": "1", "architecture": "arm64", "tags": "lts"}', "'tags'"),
        (b'{"catalog_id": 7, "version": "1", "architecture": "arm64"}', "'catalog_id'"),
        (
            b'{"catalog_id": "u", "version": "1", "architecture": "arm64", "pack_contents": [{"size": true}]}',
            "'pack_contents'",
        ),
    ],
)
def test_meta_errors_name_the_field(doc: bytes, expect: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        PackMeta.from_json(doc)
    assert expect in str(caught.value)


def test_keys_follow_the_original_naming() -> None:
    assert pack_key("Ubuntu-Server", "amd64", "24.04") == "ubuntu-server/ubuntu-server-x86_64-24.04.pdpack"
    assert meta_key("ubuntu", "aarch64", "V1.0+build.7") == "ubuntu/ubuntu-arm64-v1.0_build.7.meta"
    assert pack_key("ubuntu", "arm64", "latest") == "ubuntu/ubuntu-arm64-latest.pdpack"
    for bad in (("../etc", "arm64", "1"), ("ubuntu", "arm64", "../1"), ("ubuntu", "sparc", "1"), (".x", "arm64", "1")):
        with pytest.raises(InvalidInput):
            pack_key(*bad)


# ---- through the real local storage provider -------------------------------------------------------
@pytest.fixture()
def storage(tmp_path: Path) -> Iterator[PackStorage]:
    store = open_storage(parse_connection_string(f"provider=local;catalog_path={tmp_path / 'catalog'}"))
    yield store
    store.close()


@pytest.mark.parametrize("compress", [True, False], ids=["tar.gz", "tar"])
def test_export_then_import_through_storage(tmp_path: Path, bundle: Path, storage: PackStorage, compress: bool) -> None:
    fields = {"description": "build agent", "tags": ["LTS"], "required_roles": ["developers"],
              "minimum_requirements": {"cpu": 2, "memory_mb": 4096, "disk_mb": 8192}}  # fmt: skip
    meta = export_pack(storage, bundle, "Ubuntu", "24.04", "aarch64", fields, compress=compress, level="best_speed")
    folder = tmp_path / "catalog" / "ubuntu"
    assert sorted(os.listdir(folder)) == ["ubuntu-arm64-24.04.meta", "ubuntu-arm64-24.04.pdpack"]
    assert [p.name for p in bundle.parent.iterdir()] == ["Ubuntu.pvm"]  # the temp pack is gone
    stored = PackMeta.from_json((folder / "ubuntu-arm64-24.04.meta").read_bytes())
    assert stored == meta
    assert stored.checksum == md5_of(folder / "ubuntu-arm64-24.04.pdpack")
    assert stored.pack_size == (folder / "ubuntu-arm64-24.04.pdpack").stat().st_size
    assert (stored.is_compressed, stored.vm_type, stored.architecture) == (compress, "pvm", "arm64")
    assert (stored.path, stored.pack_path, stored.name) == ("/ubuntu", "ubuntu-arm64-24.04.pdpack", stored.name)
    assert (stored.tags, stored.required_roles) == (("lts",), ("DEVELOPERS",))
    assert stored.minimum_requirements is not None and stored.minimum_requirements.memory == 4096
    assert [c.name for c in stored.pack_contents] == ["ubuntu-arm64-24.04.meta", "ubuntu-arm64-24.04.pdpack"]
    assert any(c.name == "config.pvs" and c.path == "/" for c in stored.contents)

    (tmp_path / "pulled").mkdir()
    dest = import_pack(storage, "ubuntu", "24.04", "arm64", tmp_path / "pulled" / "Ubuntu.pvm")
    assert dest == tmp_path / "pulled" / "Ubuntu.pvm"
    assert snapshot(dest) == snapshot(bundle)

    again = export_pack(storage, bundle, "ubuntu", "24.04", "arm64", {}, compress=compress)
    assert (again.id, again.created_at) == (meta.id, meta.created_at)  # a re-push keeps identity, as Go does


def test_import_verifies_the_meta_checksum_and_cleans_up(tmp_path: Path, bundle: Path, storage: PackStorage) -> None:
    export_pack(storage, bundle, "ubuntu", "1", "arm64", {}, compress=True)
    key = meta_key("ubuntu", "arm64", "1")
    doc = json.loads(storage.get_bytes(key))
    storage.put_bytes(key, json.dumps({**doc, "compressed_checksum": "1" * 32}).encode())
    (tmp_path / "pulled").mkdir()
    with pytest.raises(ChecksumMismatch):
        import_pack(storage, "ubuntu", "1", "arm64", tmp_path / "pulled" / "VM.pvm")
    assert listing(tmp_path / "pulled") == []

    storage.delete(key)  # a lone .pdpack still unpacks, unverified
    meta, stats = import_pack_with_stats(storage, "ubuntu", "1", "arm64", tmp_path / "pulled" / "VM.pvm")
    assert meta is None and not stats.checksum_verified and stats.compressed
    with pytest.raises(NotFound, match=r"no pack at ubuntu/ubuntu-arm64-2\.pdpack"):
        import_pack(storage, "ubuntu", "2", "arm64", tmp_path / "pulled" / "Other.pvm")


def test_import_reads_a_pack_the_go_tool_pushed(tmp_path: Path, storage: PackStorage) -> None:
    """The layout and .meta the original's push leaves in a provider folder, with a Go-style pack."""
    src = make_bundle(tmp_path / "src", links=False)
    folder = tmp_path / "catalog" / "macos"
    folder.mkdir(parents=True)
    checksum = go_style_pack(src, folder / "macos-arm64-14.5.pdpack", gz=True, rooted=True)
    meta = {**REAL_META, "catalog_id": "macos", "version": "14.5", "name": "macos-arm64-14.5", "type": "macvm",
            "pack_path": "macos-arm64-14.5.pdpack", "metadata_path": "macos-arm64-14.5.meta",
            "compressed_checksum": checksum}  # fmt: skip
    (folder / "macos-arm64-14.5.meta").write_text(json.dumps(meta, indent=2))
    got_meta, stats = import_pack_with_stats(storage, "macOS", "14.5", "arm64", tmp_path / "Sonoma.macvm")
    assert got_meta is not None and got_meta.vm_type == "macvm"
    assert stats.checksum_verified and stats.compressed
    assert sha256(tmp_path / "Sonoma.macvm" / DISK) == sha256(src / DISK)


def test_export_refuses_unknown_fields_and_non_bundles(tmp_path: Path, bundle: Path, storage: PackStorage) -> None:
    with pytest.raises(InvalidInput, match=r"unknown \.meta field"):
        export_pack(storage, bundle, "u", "1", "arm64", {"owner": "me"}, compress=True)
    plain = tmp_path / "folder"
    plain.mkdir()
    with pytest.raises(InvalidInput, match=r"not a \.pvm or \.macvm bundle"):
        export_pack(storage, plain, "u", "1", "arm64", {}, compress=True)
    assert not (tmp_path / "catalog").exists() or list((tmp_path / "catalog").rglob("*")) == []
