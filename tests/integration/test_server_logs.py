"""What ``pdcat serve`` logs (issue 15): a line per request and per push, pull and refusal, as text for
a person at a terminal and as JSON lines anywhere else, and never a secret a URL carried.

Each test runs the real server (``pdcat serve`` on loopback), sends it a push, a pull, a refused pull,
a presigned download, a forged one and a query with made-up secrets, then reads its stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from core.auth import issue_token
from infra.local.servers import REPO, start_embedded
from tests.contract.helpers import plain, pull, push_pack

SECRET = "server-logs-" + secrets.token_hex(24)
QUERY_SECRETS = {"api_key": "key-" + secrets.token_hex(8), "password": "pw-" + secrets.token_hex(8)}
WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def _traffic(url: str) -> dict[str, Any]:
    """A push, a pull and its index download, a refused pull, a forged download, a query with secrets."""
    token = issue_token(SECRET, "alice", ["SUPER_USER"], [], 600)[0]
    cid = f"logs-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        push_pack(c, cid, "1.0", "x86_64", {"disk.hdd": secrets.token_bytes(10_000)})
        index_url = pull(c, cid, "1.0", "x86_64").json()["index_url"]
        assert plain.get(index_url).status_code == 200
        signature = dict(parse_qsl(urlsplit(index_url).query))["signature"]
        forged = index_url.replace(signature, "0" * len(signature))
        assert plain.get(forged).status_code == 403
        assert c.patch(f"/catalog/{cid}/1.0/x86_64/taint").status_code == 200
        assert pull(c, cid, "1.0", "x86_64").status_code == 409
        assert c.get("/catalog", params={"tag": "lts", **QUERY_SECRETS}).status_code == 200
        # a client that puts a secret where a parameter's name goes, or smuggles one into a declared value
        assert c.get(f"/catalog?{token}").status_code == 200
        smuggled = f"{url}{urlsplit(index_url).path}?method=GET%26signature%3D{signature}"
        assert plain.get(smuggled).status_code == 403
    return {"cid": cid, "secrets": [token, signature, SECRET, *QUERY_SECRETS.values()]}


def _log_of(tmp_path: Path, env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    settings = {"PDCAT_JWT_SECRET": SECRET, "PDCAT_ADMIN_PASSWORD": secrets.token_hex(12), **env}
    with start_embedded(tmp_path / "catalog", env=settings) as server:
        sent = _traffic(server.url)
        time.sleep(0.2)  # the last access line is written after its answer
    return server.log_path.read_text(), sent


def _assert_no_secret(log: str, sent: dict[str, Any]) -> None:
    for value in sent["secrets"]:
        assert value not in log
    assert not re.search(r"signature=(?!\*\*\*)", log)


def test_text_logs_one_readable_line_per_request_push_pull_and_refusal(tmp_path: Path) -> None:
    log, sent = _log_of(tmp_path, {"PDCAT_LOG_FORMAT": "text", "PDCAT_LOG_LEVEL": "DEBUG"})
    cid, lines = sent["cid"], log.splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    m = rf"/api/v1/catalog/{cid}/1\.0/x86_64"

    def one(pattern: str) -> str:
        found = [line for line in lines if re.fullmatch(pattern, line)]
        assert len(found) == 1, (pattern, lines[-20:])
        return found[0]

    one(rf'{WHEN} 127\.0\.0\.1 alice "POST {m}/push" 201 \d+B [\d.]+ms')
    one(rf'{WHEN} push committed manifest="{cid}:1\.0 \(x86_64\)" by=alice size=10000 digest=[0-9a-f]{{64}}')
    one(rf'{WHEN} 127\.0\.0\.1 alice "POST {m}/pull" 200 \d+B [\d.]+ms')
    one(rf'{WHEN} pull manifest="{cid}:1\.0 \(x86_64\)" by=alice size=10000')
    one(rf'{WHEN} 127\.0\.0\.1 alice "POST {m}/pull" 409 \d+B [\d.]+ms tainted: {cid}:1\.0 \(x86_64\) is tainted .*')
    # the presigned download (DEBUG: one per chunk) and the forged one, without their signatures
    blob = rf'"GET /blobs/catalogs/{cid}/1\.0/x86_64/index\.json\?method=GET&expires=\d+&signature=\*\*\*"'
    one(rf"{WHEN} 127\.0\.0\.1 - {blob} 200 \d+B [\d.]+ms")
    one(rf"{WHEN} 127\.0\.0\.1 - {blob} 403 \d+B [\d.]+ms forbidden: .*")
    one(rf'{WHEN} 127\.0\.0\.1 alice "GET /api/v1/catalog\?tag=lts&api_key=\*\*\*&password=\*\*\*" 200 \d+B [\d.]+ms')
    _assert_no_secret(log, sent)


def test_json_lines_when_the_log_is_not_a_terminal(tmp_path: Path) -> None:
    log, sent = _log_of(tmp_path, {"PDCAT_LOG_FORMAT": "", "PDCAT_LOG_LEVEL": "INFO"})  # auto, into a file
    docs = [json.loads(line) for line in log.splitlines()]
    requests = [d for d in docs if d["message"] == "request"]
    push = next(d for d in requests if d["path"].endswith(f"/{sent['cid']}/1.0/x86_64/push"))
    assert push["client"] == "127.0.0.1" and push["subject"] == "alice" and push["status"] == 201
    assert push["bytes"] > 0 and isinstance(push["ms"], float) and push["request_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", push["time"])
    refused = next(d for d in requests if d["status"] == 409)
    assert refused["error"] == "tainted" and "is tainted" in refused["detail"]
    listed = next(d for d in requests if d["path"] == "/api/v1/catalog")
    assert listed["query"] == "tag=lts&api_key=***&password=***"
    committed = next(d for d in docs if d["message"] == "push committed")
    assert committed["by"] == "alice" and committed["size"] == 10_000
    # at INFO a transfer through a presigned URL is not logged, a refused one is
    blobs = [d for d in requests if d["path"].startswith("/blobs/")]
    assert [(d["status"], d["error"]) for d in blobs] == [(403, "forbidden")] * 2  # the forged, the smuggled
    assert blobs[0]["query"].endswith("&signature=***")
    assert blobs[1]["query"] == "method=***"
    _assert_no_secret(log, sent)


def test_a_terminal_gets_text_by_default(tmp_path: Path) -> None:
    """Without PDCAT_LOG_FORMAT, a server whose stderr is a terminal logs text lines."""
    main, child = os.openpty()
    env = {**os.environ, "PDCAT_JWT_SECRET": SECRET, "PDCAT_LOG_LEVEL": "INFO", "PDCAT_LOG_FORMAT": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--data", str(tmp_path / "data"), "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=child,
        text=True,
    )
    os.close(child)
    try:
        assert process.stdout is not None
        url = re.search(r"serving on (http://\S+)", process.stdout.readline())
        assert url, "pdcat serve did not say where it serves"
        seen = ""
        deadline = time.monotonic() + 30
        while "/api/v1/health" not in seen and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(url.group(1) + "/api/v1/health", timeout=2)
            while select.select([main], [], [], 0.2)[0]:
                seen += os.read(main, 65536).decode(errors="replace")
        line = next(line for line in seen.splitlines() if "/api/v1/health" in line)
        assert re.fullmatch(rf'{WHEN} 127\.0\.0\.1 anonymous "GET /api/v1/health" 200 \d+B [\d.]+ms', line.strip())
    finally:
        process.terminate()
        process.wait(timeout=10)
        os.close(main)
