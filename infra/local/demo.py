"""``make demo``: push and pull a VM through the embedded catalog, from nothing, in a temp folder.

Starts ``pdcat serve``, makes a sample .pvm bundle (config.pvs + a sparse 4 GiB disk with some real
data), pushes it with the real ``pdcat`` command, lists it, pulls it elsewhere, proves the pulled
files are byte-identical (holes included), stops the server, and says what happened.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from client.clone import data_ranges
from infra.local.servers import start_embedded

GIB = 1024**3
MIB = 1024**2


def make_sample_vm(root: Path) -> Path:
    """A VM-like bundle: a small config, a big sparse disk with random and compressible data."""
    bundle = root / "Demo Ubuntu.pvm"
    disk_dir = bundle / "harddisk.hdd"
    disk_dir.mkdir(parents=True)
    (bundle / "config.pvs").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<ParallelsVirtualMachine>\n'
        "  <Identification><VmName>Demo Ubuntu</VmName></Identification>\n"
        "  <Hardware><Cpu><Number>2</Number></Cpu><Memory><RAM>4096</RAM></Memory></Hardware>\n"
        "</ParallelsVirtualMachine>\n"
    )
    (disk_dir / "DiskDescriptor.xml").write_text("<Parallels_disk_image><Disk_Parameters/></Parallels_disk_image>\n")
    (bundle / "NVRAM.dat").write_bytes(secrets.token_bytes(256 * 1024))
    disk = disk_dir / "harddisk.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds"
    with disk.open("wb") as f:
        f.truncate(4 * GIB)
        f.seek(0)
        f.write(secrets.token_bytes(48 * MIB))  # "boot and system files"
        f.seek(1 * GIB)
        f.write((b"log line: the quick brown fox jumps over the lazy dog\n" * 600_000)[: 64 * MIB])
        f.seek(3 * GIB + 5 * MIB)
        f.write(secrets.token_bytes(16 * MIB))
    return bundle


def _data_ranges(path: Path) -> list[tuple[int, int]]:
    """Where a file holds data, as (start, end), so comparing skips gigabytes of holes."""
    with path.open("rb") as f:
        return [(offset, offset + length) for offset, length in data_ranges(f.fileno(), path.stat().st_size)]


def same_file(a: Path, b: Path) -> bool:
    """Byte-identical, holes included: every data range of either file reads the same in the other."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        for start, end in _data_ranges(a) + _data_ranges(b):
            for offset in range(start, end, 8 * MIB):
                n = min(8 * MIB, end - offset)
                if os.pread(fa.fileno(), n, offset) != os.pread(fb.fileno(), n, offset):
                    return False
    return True


def same_tree(a: Path, b: Path) -> bool:
    left = sorted(p.relative_to(a) for p in a.rglob("*"))
    right = sorted(p.relative_to(b) for p in b.rglob("*"))
    if left != right:
        return False
    return all(same_file(a / p, b / p) for p in left if (a / p).is_file())


def main() -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pdcat-demo-"))
    password = secrets.token_urlsafe(16)
    env = {
        "PDCAT_ADMIN_PASSWORD": password,
        "PDCAT_CONFIG_DIR": str(work / "client-config"),
        "PDCAT_KEYRING": "0",  # the demo's login lives and dies with its folder, not in your keychain
        "PDCAT_CACHE_DIR": str(work / "client-cache"),
        "PDCAT_LOG_LEVEL": "WARNING",
    }
    pdcat = [sys.executable, "-m", "client.cli"]
    run_env = {**os.environ, **env}

    def run(*args: str) -> str:
        done = subprocess.run([*pdcat, *args], env=run_env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"demo failed at 'pdcat {' '.join(args)}': {done.stderr.strip()}")
        return done.stdout.strip()

    print(f"pdcat demo — working in {work}")
    server = start_embedded(work / "catalog", env=env)
    try:
        print(f"1. started the embedded catalog at {server.url} (SQLite + local files)")
        bundle = make_sample_vm(work / "source")
        apparent = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        print(f"2. made a sample VM '{bundle.name}': {apparent / GIB:.1f} GiB apparent, mostly holes")
        run("login", "--server", server.url, "-u", "admin", "-p", password)
        t = time.monotonic()
        out = run(
            "push",
            str(bundle),
            "--catalog",
            "demo-ubuntu",
            "--version",
            "1.0",
            "--arch",
            "arm64",
            "--tag",
            "demo",
            "--description",
            "A demo VM",
        )
        print(f"3. {out}")
        t_push = time.monotonic() - t
        listing = run("ls")
        print("4. pdcat ls:\n   " + "\n   ".join(listing.splitlines()))
        dest = work / "pulled"
        t = time.monotonic()
        out = run("pull", "demo-ubuntu:latest", "--arch", "arm64", "--dest", str(dest), "--name", "Demo Ubuntu")
        t_pull = time.monotonic() - t
        print("5. " + "\n   ".join(out.splitlines()))
        pulled = dest / "Demo Ubuntu.pvm"
        if not same_tree(bundle, pulled):
            print("6. FAILED: the pulled VM differs from the pushed one")
            return 1
        disk = next(pulled.rglob("*.hds"))
        used = disk.stat().st_blocks * 512
        print(
            f"6. verified: every pulled file is byte-identical; the disk keeps its holes "
            f"({used / MIB:.0f} MiB on disk for {disk.stat().st_size / GIB:.0f} GiB)"
        )
        t = time.monotonic()
        again = json.loads(
            run("pull", "demo-ubuntu", "--arch", "arm64", "--dest", str(dest), "--name", "Second copy", "--json")
        )
        print(
            f"7. pulled it again as 'Second copy' in {time.monotonic() - t:.1f}s: cache {again['cache']} "
            f"({again['clone_method']}), {again['downloaded_bytes']} bytes downloaded"
        )
        if not same_tree(bundle, dest / "Second copy.pvm"):
            print("   FAILED: the second copy differs from the pushed VM")
            return 1
    finally:
        server.stop()
    print(
        f"8. stopped the catalog. push {t_push:.1f}s, pull {t_pull:.1f}s, whole demo {time.monotonic() - started:.1f}s"
    )
    shutil.rmtree(work, ignore_errors=True)
    pdcat = Path(sys.executable).parent / "pdcat"
    print(
        "\nNext: pdcat is installed in this repository's virtualenv. Run it as\n"
        f"  {os.path.relpath(pdcat)} --help\n"
        "or put it on your PATH for this shell with  source .venv/bin/activate  (then just: pdcat --help),\n"
        "or install it for your user with  pipx install .  (Python 3.11 or newer). README.md, 'Using it', goes on."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
