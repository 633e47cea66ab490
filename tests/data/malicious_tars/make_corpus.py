"""Hostile packs for ``client.pdpack.unpack_pack``, built in memory with ``tarfile`` (no binary blobs).

Each :class:`Case` is one attack or one broken stream, with the text the refusal must contain (the
member's name wherever there is a member to name). ``tests/integration/test_pdpack.py`` feeds every
case to the unpacker; run this file to write them out for a look with other tools::

    python tests/data/malicious_tars/make_corpus.py /tmp/corpus
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CASES", "Case", "Member", "build_tar", "main"]

Member = tuple[str, bytes, dict[str, object]]  # (name, data, TarInfo attributes)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str  # the refusal's message contains this
    compressed: bool | None = None
    max_bytes: int | None = None


def build_tar(members: list[Member], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data, attrs in members:
            info = tarfile.TarInfo(name)
            info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
            info.mode = 0o644
            info.mtime = 1_700_000_000
            for key, value in attrs.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return out.getvalue()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=5, mtime=0)


def _ok(name: str, data: bytes = b"fine\n") -> Member:
    return (name, data, {})


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    return (name, b"", {"type": kind, "linkname": target, "mode": 0o777})


def _special(name: str, kind: bytes) -> Member:
    return (name, b"", {"type": kind, "devmajor": 1, "devminor": 3})


def _cases() -> list[Case]:
    good = build_tar([_ok("config.pvs"), ("harddisk.hdd/disk.hds", b"\x01" * 100_000, {})])
    gz_good = _gz(good)
    bad_crc = bytearray(gz_good)
    bad_crc[-8] ^= 0xFF  # CRC32 of the gzip trailer
    bad_size = bytearray(gz_good)
    bad_size[-1] ^= 0x01  # ISIZE of the gzip trailer
    deep = "/".join(["d" * 250] * 20)  # 5,000 bytes: longer than PATH_MAX
    huge = tarfile.TarInfo("harddisk.hdd/bomb.hds")
    huge.size = 1 << 50  # a 1 PiB member declared in a pack of a few hundred bytes
    bomb_header = huge.tobuf(tarfile.PAX_FORMAT)
    return [
        Case("absolute_path_mixed", build_tar([_ok("config.pvs"), _ok("/etc/pdcat-evil")]), "'/etc/pdcat-evil'"),
        Case("absolute_double_slash", build_tar([_ok("//etc/pdcat-evil")]), "'//etc/pdcat-evil'"),
        Case("dotdot_escape", build_tar([_ok("../escape.txt")]), "'../escape.txt'"),
        Case("dotdot_inside", build_tar([_ok("a/../../escape.txt")]), "'a/../../escape.txt'"),
        Case(
            "symlink_abs_then_write",
            build_tar([_link("passwd", "/etc/passwd"), _ok("passwd", b"root::0:0::/:/bin/sh\n")]),
            "'passwd'",
        ),
        Case(
            "symlink_abs_dir_then_write",
            build_tar([_link("etc", "/etc"), _ok("etc/cron.d/pdcat-evil")]),
            "'etc'",
        ),
        Case(
            "symlink_relative_escape_then_write",
            build_tar([_link("up", "../../../../../../tmp"), _ok("up/pdcat-evil")]),
            "'up'",
        ),
        Case(
            "symlink_inside_then_write_through",
            build_tar([("sub", b"", {"type": tarfile.DIRTYPE, "mode": 0o755}), _link("lnk", "sub"), _ok("lnk/x")]),
            "'lnk/x'",
        ),
        Case("hardlink_absolute", build_tar([_link("h", "/etc/passwd", tarfile.LNKTYPE)]), "'h'"),
        Case("hardlink_escape", build_tar([_link("h", "../../etc/passwd", tarfile.LNKTYPE)]), "'h'"),
        Case("hardlink_to_nothing", build_tar([_link("h", "not-in-pack", tarfile.LNKTYPE)]), "'h'"),
        Case("char_device", build_tar([_ok("config.pvs"), _special("null", tarfile.CHRTYPE)]), "'null'"),
        Case("block_device", build_tar([_special("sda", tarfile.BLKTYPE)]), "'sda'"),
        Case("fifo", build_tar([_special("pipe", tarfile.FIFOTYPE)]), "'pipe'"),
        Case("setuid_file", build_tar([("run.sh", b"#!/bin/sh\n", {"mode": 0o4755})]), "'run.sh'"),
        Case("setgid_file", build_tar([("run.sh", b"#!/bin/sh\n", {"mode": 0o2755})]), "'run.sh'"),
        Case("name_too_long", build_tar([_ok("x" * 300)]), "longer than"),
        Case("path_too_long", build_tar([_ok(deep)]), "longer than"),
        Case("duplicate_member", build_tar([_ok("a"), _link("a", "config.pvs")]), "'a'"),
        Case("inside_a_file", build_tar([_ok("f"), _ok("f/x")]), "'f/x'"),
        Case("file_over_folder", build_tar([_ok("d/x"), _ok("d")]), "'d'"),
        Case("truncated_tar", good[: 512 + 512 + 512 + 40_000], "truncated"),
        Case("truncated_gzip", gz_good[: len(gz_good) // 2], "truncated"),
        Case("gzip_crc_mismatch", bytes(bad_crc), "CRC"),
        Case("gzip_length_mismatch", bytes(bad_size), "length"),
        Case("not_gzip_when_expected", good, "not gzip-compressed", compressed=True),
        Case("gzip_when_plain_expected", gz_good, "gzip-compressed", compressed=False),
        Case("garbage", b"this is not a tar archive at all\n" * 40, "not a readable tar"),
        Case("gzip_bomb_declared", _gz(bomb_header + bytes(1024)), "'harddisk.hdd/bomb.hds'"),
        Case(  # 8 MiB of one repeated byte: 8 KiB of gzip, and more than the 1 MiB allowed
            "gzip_bomb_repeated",
            _gz(build_tar([_ok("config.pvs"), ("disk.hds", b"\xa5" * (8 << 20), {})])),
            "'disk.hds'",
            max_bytes=1 << 20,
        ),
    ]


CASES: list[Case] = _cases()


def _suffix(case: Case) -> str:
    return ".tar.gz" if case.data[:2] == b"\x1f\x8b" else ".tar"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        (out / f"{case.name}{_suffix(case)}").write_bytes(case.data)
    print(f"{len(CASES)} packs written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
