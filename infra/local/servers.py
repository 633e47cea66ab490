"""Start the real local servers as child processes, wait until they answer, stop them by PID.

Used by the test fixtures, ``make demo`` and the benchmarks, so all three run the same way.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

__all__ = [
    "REPO",
    "RunningProcess",
    "RunningServer",
    "free_port",
    "start_chalice_local",
    "start_embedded",
    "start_moto",
    "wait_until_ready",
]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningProcess:
    """A server started as a child process, stopped by PID (gracefully first, then killed)."""

    url: str
    process: subprocess.Popen[Any]
    log_path: Path

    stop_signal = signal.SIGTERM

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RunningServer(RunningProcess):
    """``pdcat serve``: SIGINT lets it close its database cleanly."""

    data_dir: Path = Path()

    stop_signal = signal.SIGINT


def start_embedded(
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    port: int = 0,
    timeout: float = 30.0,
    args: tuple[str, ...] = (),
) -> RunningServer:
    """``pdcat serve`` on a free loopback port; fails loudly with the server's log if it won't start.

    ``args``: more of ``pdcat serve``'s flags (``--tls-self-signed``...). An https server is asked for
    ``/health`` without checking its certificate: whether it answers, not whom clients trust."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}.server.log"
    full_env = {**os.environ, **(env or {})}
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--data", str(data_dir), "--port", str(port), *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"serving on (https?://\S+)", line)
        if match:
            url = match.group(1)
            break
    if url is None:
        process.kill()
        raise RuntimeError(f"pdcat serve did not start; its log:\n{log_path.read_text()[-4000:]}")
    # keep draining stdout so the child never blocks on a full pipe
    import threading

    threading.Thread(target=lambda: [None for _ in process.stdout or []], daemon=True).start()
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2, verify=False).status_code == 200:
                return RunningServer(url, process, log_path, data_dir)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"pdcat serve at {url} never answered /health; its log:\n{log_path.read_text()[-4000:]}")


def wait_until_ready(
    process: subprocess.Popen[Any],
    url: str,
    log_path: Path,
    what: str,
    ready: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
) -> RunningProcess:
    """Poll ``ready`` (connection errors count as "not yet") until it says yes; if the child exits or
    the time runs out, kill it and raise with the end of its log: a test never runs against no server.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if ready():
                return RunningProcess(url, process, log_path)
        except httpx.TransportError:
            pass
        time.sleep(interval)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    raise RuntimeError(f"{what} did not start on {url}; its log:\n{log_path.read_text()[-4000:]}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(
    log_dir: Path, *, port: int | None = None, serial: bool = False, timeout: float = 30.0
) -> RunningProcess:
    """``moto_server`` (DynamoDB + S3 on one port) from this virtualenv, on a free loopback port.

    ``serial`` applies requests one at a time (``serial_moto.py``), as DynamoDB does per item: needed
    wherever a test races conditional writes.
    """
    port = port or free_port()
    exe = Path(sys.executable).with_name("moto_server")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"moto-{port}.log"
    argv = (
        [sys.executable, str(Path(__file__).with_name("serial_moto.py")), str(port)]
        if serial
        else [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    )
    process = subprocess.Popen(
        argv,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
    )
    url = f"http://127.0.0.1:{port}"
    return wait_until_ready(
        process, url, log_path, "moto_server", lambda: httpx.get(f"{url}/moto-api/", timeout=2) is not None,
        timeout=timeout,
    )  # fmt: skip


def start_chalice_local(
    env: dict[str, str], log_dir: Path, *, timeout: float = 60.0, project_dir: Path | None = None
) -> RunningProcess:
    """The AWS frontend as ``chalice local`` (the unchanged app, converted requests), on loopback.

    Run through ``apigw_limits.py``: ``chalice local`` whose gateway enforces API Gateway's and Lambda's
    limits (10 MB request, 6 MB invocation payload each way, 29 s), as the cloud does.
    ``project_dir`` is another Chalice project (the harness's own tests); it must answer /api/v1/health.
    """
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"chalice-{port}.log"
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("apigw_limits.py")),
         "local", "--no-autoreload", "--host", "127.0.0.1", "--port", str(port)],
        cwd=project_dir or REPO / "aws_app",
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1", **env},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return wait_until_ready(
        process, url, log_path, "chalice local",
        lambda: httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200, timeout=timeout, interval=0.2,
    )  # fmt: skip
