"""End-to-end fixtures: the real ``pdcat`` command, run as a child process, against a running catalog.

Each test gets its own client config folder, its own keychain (``tests/fakes/file_keyring.py``,
``keychain.json`` in its ``tmp_path``), its own fake ``prlctl`` (``tests/fakes/prlctl``, first on PATH,
logging every call) and sample VM bundles made in its ``tmp_path``. Most tests authenticate
with ``PDCAT_SERVER`` + ``PDCAT_TOKEN`` (a token minted for the backend), so they run against every
backend; the few that need the embedded server's admin password or its data folder say so and skip
elsewhere.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.backend_names import WIRE_BACKENDS

REPO = Path(__file__).resolve().parents[2]
FAKE_PRLCTL = REPO / "tests" / "fakes" / "prlctl"
CHUNK_SIZE = 65536  # small chunks: many of them, and every transfer stays fast
MIB = 1024 * 1024
DISK_SIZE = 64 * MIB
# (offset, length) of the random data in the sample disk; the rest is a hole
DISK_DATA = [(0, 128 * 1024), (3 * MIB + 4096, 96 * 1024 + 123), (40 * MIB, 64 * 1024), (DISK_SIZE - 40_000, 40_000)]
DISK_REL = "harddisk.hdd/harddisk.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds"
TEST_KEYRING = "tests.fakes.file_keyring.FileKeyring"


@pytest.fixture(scope="session", params=WIRE_BACKENDS)
def backend(request: pytest.FixtureRequest, started_backends: Any) -> Any:
    """The backends reachable over a socket: the ``pdcat`` command runs as a separate process."""
    return started_backends(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The whole e2e suite runs on the embedded backend; on the cloud backends, the tests marked
    ``every_backend``: push, pull, resume, refresh, cache and recipes, with the bytes going through S3
    or Azure Blob presigned URLs. The rest exercise the client's own logic, which does not change with
    the catalog behind it, and the HTTP contract runs in full on every backend in ``tests/contract``."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        in_e2e = Path(str(item.path)).parent == Path(__file__).parent
        cloud = params.get("backend", "embedded") != "embedded"
        if in_e2e and cloud and item.get_closest_marker("every_backend") is None:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def needs_embedded(backend: Any, what: str) -> None:
    """Skip, saying exactly why, when a test needs something only the embedded server has."""
    if backend.name != "embedded" or backend.server is None:
        pytest.skip(f"needs {what}, which only the embedded backend exposes (backend: {backend.name})")


def admin_password(config: pytest.Config) -> str:
    """``ADMIN_PASSWORD`` of tests/conftest.py (the embedded server's bootstrap password).

    Read from the loaded conftest module itself: importing ``tests.conftest`` again would run it a
    second time and mint a different random password.
    """
    root_conftest = (REPO / "tests" / "conftest.py").resolve()
    for plugin in config.pluginmanager.get_plugins():
        file = getattr(plugin, "__file__", None)
        if file and Path(file).resolve() == root_conftest:
            return str(plugin.ADMIN_PASSWORD)
    raise RuntimeError("tests/conftest.py is not loaded; cannot find ADMIN_PASSWORD")


def path_without_prlctl() -> str:
    """The current PATH minus every folder that holds a ``prlctl``, so no real one can be found.

    The test interpreter's folder comes first, so the fake's ``#!/usr/bin/env python3`` finds it
    directly (not through a slow shim such as pyenv's).
    """
    dirs = [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]
    kept = [d for d in dict.fromkeys(dirs) if d and not (Path(d) / "prlctl").exists()]
    return os.pathsep.join(kept)


# ---- sample bundles -----------------------------------------------------------------------------
def make_bundle(parent: Path, name: str = "Sample VM", *, seed: int = 1, variant: int = 0) -> Path:
    """A small VM-like bundle: config.pvs, a nested disk folder with a sparse 64 MiB disk holding a
    few hundred KiB of random data, an executable script, a symlink and an empty folder.

    The same ``seed`` gives the same bytes; ``variant`` > 0 rewrites one 64 KiB region of the disk and
    the config, so two variants share most of their chunks.
    """
    rng = random.Random(seed)
    bundle = parent / f"{name}.pvm"
    disk = bundle / DISK_REL
    disk.parent.mkdir(parents=True)
    (bundle / "config.pvs").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<ParallelsVirtualMachine>\n'
        f"  <Identification><VmName>{name}</VmName></Identification>\n"
        f"  <!-- variant {variant} -->\n</ParallelsVirtualMachine>\n"
    )
    (disk.parent / "DiskDescriptor.xml").write_text("<Parallels_disk_image><Disk_Parameters/></Parallels_disk_image>\n")
    with disk.open("wb") as f:
        f.truncate(DISK_SIZE)
        for offset, length in DISK_DATA:
            f.seek(offset)
            f.write(rng.randbytes(length))
        if variant:
            f.seek(20 * MIB)
            f.write(random.Random(1000 + variant).randbytes(CHUNK_SIZE))
    script = bundle / "tools" / "deep" / "start.sh"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    (bundle / "Snapshots").mkdir()
    (bundle / "disk.link").symlink_to(DISK_REL)
    return bundle


def _entries(root: Path) -> dict[str, os.stat_result]:
    return {str(p.relative_to(root)): p.lstat() for p in root.rglob("*")}


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """Where a file holds data (SEEK_DATA / SEEK_HOLE); everything else reads as zeros."""
    ranges, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole after offset
            break
        offset = os.lseek(fd, start, os.SEEK_HOLE)
        ranges.append((start, offset))
    return ranges


def _same_bytes(a: Path, b: Path) -> bool:
    """Byte for byte, without reading megabytes of holes: equal sizes, and every data range of
    either file reads the same in the other (outside them both files read as zeros)."""
    with a.open("rb") as fa, b.open("rb") as fb:
        size = os.fstat(fa.fileno()).st_size
        if os.fstat(fb.fileno()).st_size != size:
            return False
        for start, end in _data_ranges(fa.fileno(), size) + _data_ranges(fb.fileno(), size):
            for offset in range(start, end, 4 * MIB):
                n = min(4 * MIB, end - offset)
                if os.pread(fa.fileno(), n, offset) != os.pread(fb.fileno(), n, offset):
                    return False
    return True


def assert_same_tree(src: Path, dst: Path) -> None:
    """Every entry of ``src`` is in ``dst`` with the same kind, permissions, bytes or link target."""
    left, right = _entries(src), _entries(dst)
    assert sorted(left) == sorted(right)
    for rel, st in left.items():
        other = right[rel]
        assert stat.S_IFMT(st.st_mode) == stat.S_IFMT(other.st_mode), rel
        if stat.S_ISLNK(st.st_mode):
            assert os.readlink(src / rel) == os.readlink(dst / rel), rel
            continue
        assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(other.st_mode), rel
        if stat.S_ISREG(st.st_mode):
            assert st.st_size == other.st_size, rel
            assert _same_bytes(src / rel, dst / rel), f"{rel} differs"


def assert_sparse(path: Path) -> None:
    st = path.stat()
    data = sum(length for _, length in DISK_DATA) + CHUNK_SIZE
    assert st.st_blocks * 512 < max(4 * data, 4 * MIB) < st.st_size, (st.st_blocks * 512, st.st_size)


def listing(folder: Path) -> list[str]:
    """Everything in ``folder``, hidden entries included ([] when it does not exist)."""
    return sorted(os.listdir(folder)) if folder.exists() else []


# ---- the command ------------------------------------------------------------------------------
@dataclass
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Pdcat:
    """``pdcat`` as a user runs it, with this test's environment."""

    env: dict[str, str]
    tmp: Path
    prlctl_log: Path
    calls: list[Run] = field(default_factory=list)

    def run(
        self, *args: str, env: dict[str, str | None] | None = None, timeout: float = 120, stdin: str | None = None
    ) -> Run:
        full = dict(self.env)
        for k, v in (env or {}).items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = v
        done = subprocess.run(
            [sys.executable, "-m", "client.cli", *args],
            cwd=REPO,
            env=full,
            capture_output=True,
            text=True,
            timeout=timeout,
            **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}),
        )
        result = Run(args, done.returncode, done.stdout, done.stderr)
        self.calls.append(result)
        return result

    def ok(self, *args: str, env: dict[str, str | None] | None = None) -> Run:
        r = self.run(*args, env=env)
        assert r.code == 0, f"pdcat {' '.join(args)} exited {r.code}:\n{r.err}\n{r.out}"
        assert "Traceback" not in r.err
        return r

    def fail(self, *args: str, env: dict[str, str | None] | None = None, code: int = 1) -> str:
        """Run a command that must fail with a one-line reason and no traceback; returns that line."""
        r = self.run(*args, env=env)
        assert r.code == code, f"pdcat {' '.join(args)} exited {r.code}, expected {code}:\n{r.err}\n{r.out}"
        assert "Traceback" not in r.err + r.out
        lines = reason_lines(r.err)
        assert len(lines) == 1, f"expected one line on stderr, got:\n{r.err}"
        return lines[0]

    def json(self, *args: str, env: dict[str, str | None] | None = None) -> Any:
        return self.ok(*args, "--json", env=env).json()

    def push(self, bundle: Path, catalog: str, version: str, *extra: str, arch: str = "x86_64") -> dict[str, Any]:
        args = ["push", str(bundle), "--catalog", catalog, "--version", version, "--arch", arch]
        result: dict[str, Any] = self.json(*args, "--chunk-size", str(CHUNK_SIZE), *extra)
        return result

    def prlctl_calls(self) -> list[list[str]]:
        if not self.prlctl_log.exists():
            return []
        return [json.loads(line)["argv"] for line in self.prlctl_log.read_text().splitlines() if line.strip()]

    def fake_prlctl(self, *args: str) -> str:
        """Ask the fake prlctl itself (what Parallels would now know)."""
        done = subprocess.run(
            [str(FAKE_PRLCTL), *args],
            env={**self.env, "PDCAT_FAKE_PRLCTL_LOG": str(self.tmp / "inspect.log")},
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout


def reason_lines(err: str) -> list[str]:
    """What pdcat said on stderr besides its progress: warnings and reasons, each ``pdcat: ...``.
    (Without a terminal, a transfer's progress is plain lines on stderr too, each starting with its
    phase: ``pushing: 45% ...``.)"""
    return [line for line in err.splitlines() if line.startswith("pdcat:")]


def progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not line.startswith("pdcat:")]


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PDCAT_", "KEYRING_PROPERTY_"))}
    env.update(
        {
            "PDCAT_CONFIG_DIR": str(tmp / "config"),
            # the test's own keychain (tests/fakes/file_keyring.py), never the machine's
            "PYTHON_KEYRING_BACKEND": TEST_KEYRING,
            "KEYRING_PROPERTY_PATH": str(tmp / "keychain.json"),
            "XDG_CONFIG_HOME": str(tmp / "xdg-config"),
            "XDG_CACHE_HOME": str(tmp / "xdg-cache"),
            "XDG_DATA_HOME": str(tmp / "xdg-data"),
            "COLUMNS": "250",  # rich tables never truncate an id
            "NO_COLOR": "1",
        }
    )
    return env


@pytest.fixture
def pdcat_bare(tmp_path: Path) -> Pdcat:
    """Not logged in anywhere: no config, no PDCAT_* variable; the fake prlctl is first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "prlctl").symlink_to(FAKE_PRLCTL)
    env = _clean_env(tmp_path)
    log = tmp_path / "prlctl.log"
    env["PATH"] = os.pathsep.join([str(bin_dir), path_without_prlctl()])
    env["PDCAT_FAKE_PRLCTL_LOG"] = str(log)
    env["PDCAT_FAKE_PRLCTL_STATE"] = str(tmp_path / "prlctl-state.json")
    return Pdcat(env, tmp_path, log)


def token_env(backend: Any, roles: Iterable[str], subject: str) -> dict[str, str]:
    return {"PDCAT_SERVER": backend.url, "PDCAT_TOKEN": backend.token(subject, roles=list(roles))}


@pytest.fixture
def pdcat(backend: Any, pdcat_bare: Pdcat) -> Pdcat:
    """Authenticated through PDCAT_SERVER + PDCAT_TOKEN as an ADMIN (works against every backend)."""
    pdcat_bare.env.update(token_env(backend, ["ADMIN"], "e2e-admin"))
    return pdcat_bare


@pytest.fixture
def no_prlctl() -> dict[str, str | None]:
    """Env overrides for a machine without Parallels: no prlctl on PATH, no PDCAT_PRLCTL."""
    path = path_without_prlctl()
    assert shutil.which("prlctl", path=path) is None
    return {"PATH": path, "PDCAT_PRLCTL": None}
