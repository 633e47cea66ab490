"""Deterministic VM-like bundles for benchmarks and tests, and a hole-aware tree comparison.

``make_bundle(dir, size_gib, seed)`` writes a ``.pvm`` folder: config.pvs, VmInfo.pvi, NVRAM.dat, a
log, a disk descriptor and one sparse disk image of ``size_gib`` GiB apparent. The disk is cut into
32 MiB-aligned regions; by default ~15% hold random (incompressible) bytes, ~15% log-like text
(repetitive, but not one line repeated), ~10% explicit zeros (allocated, not holes) and the rest are
holes. The same ``(size_gib, seed, mix)`` always gives the same bytes (``random.Random(seed)``, 1 MiB
at a time, one generator per region so the result does not depend on write order).

``mutate(bundle, fraction, seed)`` rewrites ``fraction`` of the disk's non-zero 1 MiB blocks in place
with new random bytes, picked uniformly over the whole disk: the change between two VM versions.
``rewrite(bundle, fraction, seed, min_run=, max_run=, align=)`` does the same with runs of any length
at any offset (unaligned runs of 1-16 MiB; scattered 1 MiB writes at 4 KiB-aligned offsets), so no
chunker is favoured by writes that fall on its grid.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "GIB",
    "MIB",
    "REGION",
    "BundleInfo",
    "MutateResult",
    "allocated_bytes",
    "apparent_bytes",
    "compare_trees",
    "data_ranges",
    "make_bundle",
    "mutate",
    "plan_regions",
    "rewrite",
]

MIB = 1024 * 1024
GIB = 1024 * MIB
REGION = 32 * MIB
BLOCK = MIB
DISK_NAME = "harddisk.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds"
RANDOM, TEXT, ZERO = "random", "text", "zero"
_ZERO_BLOCK = bytes(BLOCK)


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    disk: Path
    disk_size: int
    regions: dict[str, int]
    """Region counts by kind (random / text / zero); the other regions are holes."""
    written_bytes: int
    """Bytes written to the disk (random + text + explicit zeros), small files excluded."""
    seconds: float = 0.0

    @property
    def nonzero_bytes(self) -> int:
        return (self.regions.get(RANDOM, 0) + self.regions.get(TEXT, 0)) * REGION


@dataclass(frozen=True)
class MutateResult:
    disk: Path
    offsets: list[int] = field(default_factory=list)
    candidates: int = 0
    """How many non-zero 1 MiB blocks the disk had (the blocks picked from)."""

    @property
    def bytes(self) -> int:
        return len(self.offsets) * BLOCK

    def touched_cells(self, chunk_size: int) -> int:
        """Distinct grid cells of ``chunk_size`` bytes the mutation changed."""
        return len({o // chunk_size for o in self.offsets})


# ---- layout -----------------------------------------------------------------------------------
def plan_regions(
    size_gib: float, seed: int, random_frac: float = 0.15, text_frac: float = 0.15, zero_frac: float = 0.10
) -> dict[int, str]:
    """Region index -> kind, for every region that is not a hole. Deterministic from the arguments."""
    count = max(1, round(size_gib * GIB / REGION))

    def n(frac: float) -> int:
        return 0 if frac <= 0 else max(1, round(frac * count))

    kinds = [RANDOM] * n(random_frac) + [TEXT] * n(text_frac) + [ZERO] * n(zero_frac)
    if len(kinds) > count:
        raise ValueError(f"the mix asks for {len(kinds)} data regions but the disk has only {count}")
    rng = random.Random(f"layout:{seed}:{count}")
    slots = rng.sample(range(count), len(kinds))
    rng.shuffle(kinds)
    return dict(sorted(zip(slots, kinds, strict=True)))


# ---- content ----------------------------------------------------------------------------------
_SERVICES = (
    "kernel",
    "systemd",
    "sshd",
    "cron",
    "nginx",
    "postgres",
    "dockerd",
    "NetworkManager",
    "prl_tools",
    "snapd",
    "containerd",
    "journald",
)
_TEMPLATES = (
    "{svc}[{pid}]: accepted connection from 10.{a}.{b}.{c} port {port}",
    '{svc}[{pid}]: 10.{a}.{b}.{c} - - "GET /api/v1/items/{n} HTTP/1.1" 200 {m} "-" "curl/8.{a}.0"',
    "{svc}[{pid}]: session {hex} opened for user u{n} by (uid=0)",
    "{svc}[{pid}]: checkpoint complete: wrote {n} buffers ({a}.{b}%); {m} WAL file(s) added",
    "{svc}[{pid}]: eth{a}: link up, {m}Mbps, full-duplex, lpa 0x{hex}",
    "{svc}[{pid}]: Started Session {n} of user u{m}.",
    "{svc}[{pid}]: EXT4-fs (sda{a}): mounted filesystem {hex} with ordered data mode",
    "{svc}[{pid}]: container {hex} exited with code {a} after {n}ms",
    "{svc}[{pid}]: WARNING: slow query ({n} ms): SELECT * FROM t{a} WHERE id = {m}",
    "{svc}[{pid}]: audit: type=1400 apparmor=ALLOWED operation=open pid={m} name=/var/lib/{hex}",
)


def _line_pool(rng: random.Random, size: int = 1024) -> list[str]:
    pool = []
    for _ in range(size):
        template = rng.choice(_TEMPLATES)
        pool.append(
            template.format(
                svc=rng.choice(_SERVICES),
                pid=rng.randrange(100, 65000),
                a=rng.randrange(256),
                b=rng.randrange(256),
                c=rng.randrange(256),
                port=rng.randrange(1024, 65536),
                n=rng.randrange(10**6),
                m=rng.randrange(10**4),
                hex=rng.randbytes(8).hex(),
            )
            + "\n"
        )
    return pool


class _TextSource:
    """Log-like text: lines drawn from a pool of distinct lines, each with its own timestamp."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._pool = _line_pool(rng)
        self._clock = rng.randrange(10**9)

    def block(self, size: int = BLOCK) -> bytes:
        parts: list[str] = []
        total = 0
        clock = self._clock
        for line in self._rng.choices(self._pool, k=size // 60 + 16):
            clock += 997 + len(line)
            text = f"[{clock // 1_000_000:>7}.{clock % 1_000_000:06d}] {line}"
            parts.append(text)
            total += len(text)
            if total >= size:
                break
        self._clock = clock
        data = "".join(parts).encode()
        while len(data) < size:  # never in practice: k lines are always more than enough
            data += data
        return data[:size]


def _write_region(fd: int, index: int, kind: str, seed: int) -> None:
    base = index * REGION
    rng = random.Random(f"region:{seed}:{index}")
    text = _TextSource(rng) if kind == TEXT else None
    for offset in range(base, base + REGION, BLOCK):
        if kind == RANDOM:
            block = rng.randbytes(BLOCK)
        elif text is not None:
            block = text.block()
        else:
            block = _ZERO_BLOCK
        os.pwrite(fd, block, offset)


def _config_pvs(name: str, disk_size: int, seed: int) -> str:
    rng = random.Random(f"config:{seed}")
    uuid = "{" + rng.randbytes(16).hex() + "}"
    devices = "".join(
        f"    <UsbDevice id='{i}'><Name>usb-{rng.randbytes(4).hex()}</Name><Enabled>0</Enabled></UsbDevice>\n"
        for i in range(40)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ParallelsVirtualMachine schemaVersion="1.0" dyn_lists="VirtualAppliance 0">\n'
        f"  <Identification><VmUuid>{uuid}</VmUuid><VmName>{name}</VmName></Identification>\n"
        "  <Hardware>\n    <Cpu><Number>2</Number></Cpu><Memory><RAM>4096</RAM></Memory>\n"
        f"    <Hdd id='0'><Size>{disk_size // MIB}</Size><SystemName>harddisk.hdd</SystemName></Hdd>\n"
        f"{devices}  </Hardware>\n</ParallelsVirtualMachine>\n"
    )


def make_bundle(
    dest_dir: Path,
    size_gib: float,
    seed: int,
    *,
    name: str = "Bench VM",
    random_frac: float = 0.15,
    text_frac: float = 0.15,
    zero_frac: float = 0.10,
) -> BundleInfo:
    """Write ``dest_dir/<name>.pvm`` and return what is in it. ``dest_dir`` may exist; the bundle must not."""
    started = time.monotonic()
    regions = plan_regions(size_gib, seed, random_frac, text_frac, zero_frac)
    disk_size = max(1, round(size_gib * GIB / REGION)) * REGION
    bundle = Path(dest_dir) / f"{name}.pvm"
    disk_dir = bundle / "harddisk.hdd"
    disk_dir.mkdir(parents=True)
    (bundle / "config.pvs").write_text(_config_pvs(name, disk_size, seed))
    (bundle / "VmInfo.pvi").write_text(
        f'<?xml version="1.0"?>\n<VmInfo><RegistrationInfo><Seed>{seed}</Seed></RegistrationInfo></VmInfo>\n'
    )
    (bundle / "NVRAM.dat").write_bytes(random.Random(f"nvram:{seed}").randbytes(256 * 1024))
    log = _TextSource(random.Random(f"log:{seed}"))
    (bundle / "parallels.log").write_bytes(log.block(512 * 1024))
    (disk_dir / "DiskDescriptor.xml").write_text(
        "<Parallels_disk_image Version='1.0'><Disk_Parameters>"
        f"<Disk_size>{disk_size // 512}</Disk_size><Cylinders>{disk_size // (16 * 63 * 512)}</Cylinders>"
        f"</Disk_Parameters><StorageData><Storage><Image><File>{DISK_NAME}</File></Image></Storage>"
        "</StorageData></Parallels_disk_image>\n"
    )
    disk = disk_dir / DISK_NAME
    fd = os.open(disk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, disk_size)
        for index, kind in regions.items():
            _write_region(fd, index, kind, seed)
    finally:
        os.close(fd)
    counts = {k: sum(1 for v in regions.values() if v == k) for k in (RANDOM, TEXT, ZERO)}
    return BundleInfo(bundle, disk, disk_size, counts, len(regions) * REGION, time.monotonic() - started)


# ---- mutation ---------------------------------------------------------------------------------
def find_disk(bundle: Path) -> Path:
    files = [p for p in bundle.rglob("*") if p.is_file() and not p.is_symlink()]
    if not files:
        raise ValueError(f"{bundle} holds no files")
    return max(files, key=lambda p: p.stat().st_size)


def mutate(bundle: Path, fraction: float, seed: int, *, max_run_mib: int = 1) -> MutateResult:
    """Rewrite ``fraction`` of the disk's non-zero 1 MiB blocks with new random bytes.

    ``max_run_mib=1`` scatters single blocks uniformly (the worst case for any chunking). Larger values
    rewrite runs of 1..max_run_mib consecutive blocks at random places, the way a guest's file system
    writes files and updates: that is the realistic case.
    """
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    disk = find_disk(bundle)
    fd = os.open(disk, os.O_RDWR)
    try:
        candidates = [
            offset
            for start, end in data_ranges(disk)
            for offset in range(start - start % BLOCK, end, BLOCK)
            if os.pread(fd, BLOCK, offset) != _ZERO_BLOCK[: min(BLOCK, end - offset)]
        ]
        candidates = sorted(set(candidates))
        rng = random.Random(f"mutate:{seed}")
        wanted = max(1, round(fraction * len(candidates))) if candidates else 0
        chosen: set[int] = set()
        while len(chosen) < wanted:
            start = rng.choice(candidates)
            for i in range(rng.randint(1, max_run_mib)):
                if len(chosen) >= wanted:
                    break
                chosen.add(start + i * BLOCK)
        valid = set(candidates)
        picked = sorted(o for o in chosen if o in valid)
        for offset in picked:
            os.pwrite(fd, rng.randbytes(BLOCK), offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return MutateResult(disk, picked, len(candidates))


@dataclass(frozen=True)
class RewriteResult:
    """What ``rewrite`` changed: merged ``(offset, length)`` ranges of the disk."""

    disk: Path
    ranges: list[tuple[int, int]]
    data_bytes: int
    """Non-zero bytes of the disk before (the whole the fraction was taken of)."""
    writes: int
    """How many runs were written (overlapping runs are merged in ``ranges``)."""

    @property
    def bytes(self) -> int:
        return sum(length for _, length in self.ranges)

    def touched_cells(self, chunk_size: int) -> int:
        """Distinct grid cells of ``chunk_size`` bytes the rewrite changed."""
        cells: set[int] = set()
        for offset, length in self.ranges:
            cells.update(range(offset // chunk_size, (offset + length - 1) // chunk_size + 1))
        return len(cells)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, length in sorted(ranges):
        end = start + length
        if merged and start <= merged[-1][0] + merged[-1][1]:
            last_start, last_len = merged[-1]
            merged[-1] = (last_start, max(last_start + last_len, end) - last_start)
        else:
            merged.append((start, length))
    return merged


def rewrite(
    bundle: Path, fraction: float, seed: int, *, min_run: int = MIB, max_run: int = 16 * MIB, align: int = 1
) -> RewriteResult:
    """Rewrite ``fraction`` of the disk's non-zero bytes with new random bytes, in runs of
    ``min_run..max_run`` bytes (a multiple of ``align``) starting at ``align``-aligned offsets.

    Starts are uniform over the non-zero 1 MiB blocks; a run stops where the non-zero data does (it
    never turns a hole or a zero region into data), and the last one is cut so that the union of all
    runs is ``fraction`` of the data. ``align=1``: offsets and lengths at any byte.
    """
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    if align < 1 or min_run < align or max_run < min_run:
        raise ValueError("need 1 <= align <= min_run <= max_run")
    disk = find_disk(bundle)
    fd = os.open(disk, os.O_RDWR)
    try:
        blocks = sorted(
            {
                offset
                for start, end in data_ranges(disk)
                for offset in range(start - start % BLOCK, end, BLOCK)
                if os.pread(fd, BLOCK, offset) != _ZERO_BLOCK[: min(BLOCK, end - offset)]
            }
        )
        size = os.fstat(fd).st_size
        data_bytes = sum(min(BLOCK, size - b) for b in blocks)
        valid = set(blocks)
        wanted = round(fraction * data_bytes)
        rng = random.Random(f"rewrite:{seed}:{min_run}:{max_run}:{align}")
        runs: list[tuple[int, int]] = []
        changed = 0
        while changed < wanted and blocks:
            block = rng.choice(blocks)
            start = block + rng.randrange(0, BLOCK, align)
            length = rng.randrange(min_run, max_run + 1, align)
            end = start + length
            limit = block + BLOCK  # the run continues only through consecutive non-zero blocks
            while limit < end and limit in valid:
                limit += BLOCK
            end = min(end, limit, size)
            if end <= start:
                continue
            trial = _merge([*runs, (start, end - start)])
            total = sum(n for _, n in trial)
            if total > wanted:  # cut the last run so the union is (about) the fraction asked
                end -= total - wanted
                if end <= start:
                    break
                trial = _merge([*runs, (start, end - start)])
                total = sum(n for _, n in trial)
            runs.append((start, end - start))
            changed = total
        for start, length in runs:
            os.pwrite(fd, rng.randbytes(length), start)
        os.fsync(fd)
    finally:
        os.close(fd)
    return RewriteResult(disk, _merge(runs), data_bytes, len(runs))


# ---- inspection -------------------------------------------------------------------------------
def data_ranges(path: Path) -> list[tuple[int, int]]:
    """Where a file holds data (SEEK_DATA/SEEK_HOLE), so reading skips its holes."""
    ranges = []
    with path.open("rb") as f:
        fd, end, offset = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while offset < end:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, offset))
    return ranges


def allocated_bytes(root: Path) -> int:
    """Bytes the files under ``root`` really occupy on disk (holes excluded)."""
    paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_blocks * 512 for p in paths)


def apparent_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        for start, end in sorted(set(data_ranges(a) + data_ranges(b))):
            for offset in range(start, end, 8 * MIB):
                n = min(8 * MIB, end - offset)
                if os.pread(fa.fileno(), n, offset) != os.pread(fb.fileno(), n, offset):
                    return False
    return True


def compare_trees(a: Path, b: Path) -> str | None:
    """None when both trees hold the same paths and byte-identical files (a hole equals zeros)."""
    left = sorted(str(p.relative_to(a)) for p in a.rglob("*"))
    right = sorted(str(p.relative_to(b)) for p in b.rglob("*"))
    if left != right:
        only = sorted(set(left) ^ set(right))
        return f"the file lists differ, e.g. {only[:3]}"
    for rel in left:
        pa, pb = a / rel, b / rel
        if pa.is_file() and not _same_file(pa, pb):
            return f"{rel} differs"
    return None
