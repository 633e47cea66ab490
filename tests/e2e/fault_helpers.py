"""Helpers for the fault-injection tests (tests/e2e/test_faults.py): ``pdcat`` started in the
background so it can be killed, bounded polling, random bundles, a size-limited tmpfs, and a flaky
HTTP proxy in front of a real catalog server.

Plain functions and classes (no fixtures), so importing them never shadows a fixture name.
"""

from __future__ import annotations

import errno
import http.server
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.e2e.conftest import REPO, Pdcat, Run

__all__ = [
    "Background",
    "FlakyProxy",
    "chunk_dir",
    "fill_until_full",
    "random_bundle",
    "spawn",
    "stored_chunks",
    "tmpfs",
    "wait_until",
]

T = TypeVar("T")
MIB = 1024 * 1024


def wait_until(
    check: Callable[[], T],
    what: str,
    *,
    timeout: float,
    interval: float = 0.02,
    process: Background | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy (returned); fail clearly on timeout, or as
    soon as ``process`` exits (the event waited for can then never come)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"waiting for {what}: pdcat {' '.join(process.args)} exited {process.poll()} first:\n"
                f"{process.stderr()}\n{process.stdout()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---- pdcat in the background ------------------------------------------------------------------
@dataclass
class Background:
    """One ``pdcat`` child process; output goes to files, so it can never block on a full pipe."""

    args: tuple[str, ...]
    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def kill9(self) -> None:
        """SIGKILL, then reap: no cleanup code of pdcat runs."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def wait(self, timeout: float = 120) -> Run:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"pdcat {' '.join(self.args)} still running after {timeout:.0f}s; killed it:\n{self.stderr()}"
            ) from None
        return Run(self.args, code, self.stdout(), self.stderr())

    def stop(self) -> None:
        """Kill it if it is still running (teardown); only this process, by its pid."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def spawn(pdcat: Pdcat, *args: str, env: dict[str, str | None] | None = None) -> Background:
    """Start ``pdcat ARGS`` with the test's environment (plus ``env``; None removes a variable)."""
    full = dict(pdcat.env)
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    logs = pdcat.tmp / "bg"
    logs.mkdir(exist_ok=True)
    n = len(list(logs.iterdir())) // 2
    out, err = logs / f"{n}.out", logs / f"{n}.err"
    with out.open("wb") as fo, err.open("wb") as fe:
        process = subprocess.Popen(
            [sys.executable, "-m", "client.cli", *args],
            cwd=REPO,
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=fo,
            stderr=fe,
        )
    return Background(tuple(args), process, out, err)


# ---- data -------------------------------------------------------------------------------------
def random_bundle(parent: Path, name: str, data_bytes: int, *, seed: int) -> Path:
    """A bundle of config.pvs plus one disk file of ``data_bytes`` random bytes: every chunk of it
    is distinct (no dedup, no zero runs, nothing compresses)."""
    bundle = parent / f"{name}.pvm"
    (bundle / "disk.hdd").mkdir(parents=True)
    (bundle / "config.pvs").write_text(
        f"<ParallelsVirtualMachine><Identification><VmName>{name}</VmName></Identification>"
        f"<!-- seed {seed} --></ParallelsVirtualMachine>\n"
    )
    rng = random.Random(seed)
    with (bundle / "disk.hdd" / "disk.hds").open("wb") as f:
        left = data_bytes
        while left:
            n = min(4 * MIB, left)
            f.write(rng.randbytes(n))
            left -= n
    return bundle


def chunk_dir(data_dir: Path, catalog_id: str) -> Path:
    """Where the embedded server keeps the pushed objects of one catalog id: ``objects/`` of index
    format 2, what pdcat pushes (core.storage_layout.objects_prefix, under the file blob store's own
    ``objects`` folder); tests check the count matches, so a layout change fails loudly instead of
    making a poll wait for files that never appear."""
    return data_dir / "blobs" / "objects" / "catalogs" / catalog_id / "objects"


def stored_chunks(data_dir: Path, catalog_id: str) -> int:
    """How many complete chunk objects are stored (uploads land in ``blobs/tmp`` and are renamed in)."""
    try:
        with os.scandir(chunk_dir(data_dir, catalog_id)) as it:
            return sum(1 for e in it if e.is_file())
    except FileNotFoundError:
        return 0


# ---- a small filesystem -----------------------------------------------------------------------
@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (needs root); always unmounted again."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill_until_full(path: Path) -> int:
    """Write ``path`` until the filesystem says ENOSPC (big blocks, then small ones); returns its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    written = 0
    try:
        for block in (b"\xa5" * MIB, b"\xa5" * 4096):
            while True:
                try:
                    n = os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += n
                if n < len(block):
                    break
    finally:
        os.close(fd)
    return written


# ---- a flaky network ----------------------------------------------------------------------------
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


class FlakyProxy:
    """An HTTP proxy on loopback in front of ``upstream``: every ``every``-th request under
    ``/blobs/`` fails, alternately with a 503 and with the connection dropped before any answer.
    A given URL path fails at most twice, so a chunk can never exhaust the client's retries."""

    def __init__(self, upstream: str, every: int = 3) -> None:
        self.upstream = upstream.rstrip("/")
        self.every = every
        self.lock = threading.Lock()
        self.blob_requests = 0
        self.answered_503 = 0
        self.dropped = 0
        self.forwarded = 0
        self._failed: dict[str, int] = {}
        self._http = httpx.Client(timeout=60)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._fault(self.path)
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "503":
                    payload = b'{"error":{"code":"unavailable","message":"injected by the test proxy"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                answer = proxy._http.request(self.command, proxy.upstream + self.path, headers=headers, content=body)
                with proxy.lock:
                    proxy.forwarded += 1
                self.send_response(answer.status_code)
                for k, v in answer.headers.items():
                    if k.lower() not in _HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.content)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="flaky-proxy", daemon=True)
        self._thread.start()

    def _fault(self, raw_path: str) -> str | None:
        path = raw_path.split("?", 1)[0]
        if not path.startswith("/blobs/"):
            return None
        with self.lock:
            self.blob_requests += 1
            if self.blob_requests % self.every or self._failed.get(path, 0) >= 2:
                return None
            self._failed[path] = self._failed.get(path, 0) + 1
            if (self.answered_503 + self.dropped) % 2 == 0:
                self.answered_503 += 1
                return "503"
            self.dropped += 1
            return "drop"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._http.close()
