"""``pdcat serve`` tells clients where it is (issue 15, item 3): the URL presigned URLs start with is
``--public-url`` (or ``PDCAT_PUBLIC_URL``), and a server listening on every interface names this machine,
not the loopback address, and says how to change it. With TLS (``--tls-self-signed``) it is https."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _first_lines(tmp_path: Path, *args: str, count: int = 1) -> list[str]:
    env = {**os.environ, "PDCAT_JWT_SECRET": secrets.token_hex(32), "PDCAT_CONFIG_DIR": str(tmp_path / "cfg")}
    env.pop("PDCAT_PUBLIC_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--data", str(tmp_path / "data"), "--port", "0", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        return [process.stdout.readline().strip() for _ in range(count)]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_public_url_is_the_one_given(tmp_path: Path) -> None:
    (line,) = _first_lines(tmp_path, "--public-url", "https://pdcat.example:8443/")
    assert line.startswith("pdcat catalog serving on https://pdcat.example:8443 "), line


def test_a_url_without_a_scheme_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "client.cli", "serve", "--data", str(tmp_path / "d"), "--public-url", "pdcat:8080"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PDCAT_JWT_SECRET": secrets.token_hex(32)},
    )
    assert done.returncode != 0 and "is not a catalog URL" in done.stderr


def test_every_interface_names_this_machine(tmp_path: Path) -> None:
    note, line = _first_lines(tmp_path, "--host", "0.0.0.0", count=2)
    assert "--public-url" in note
    assert line.startswith(f"pdcat catalog serving on http://{socket.getfqdn()}:"), line


def test_with_tls_the_default_public_url_is_https(tmp_path: Path) -> None:
    note, line = _first_lines(tmp_path, "--host", "0.0.0.0", "--tls-self-signed", count=2)
    assert "--public-url https://NAME:PORT" in note
    assert line.startswith(f"pdcat catalog serving on https://{socket.getfqdn()}:"), line
    (line,) = _first_lines(tmp_path, "--tls-self-signed", count=1)
    assert line.startswith("pdcat catalog serving on https://127.0.0.1:"), line
