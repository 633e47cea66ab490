"""Every API body stays bounded whatever the VM size (docs/adr-002-storage-protocol-v2.md), on every
backend, through the real client.

One file of ~100,000 non-zero 4 KiB cells cycling through 501 distinct blocks: 501 unique chunks
are stored (one more than a page of ``/chunks`` and of pull URLs, so both are paged), but the index
has 99,699 entries (≈ 11 MB of canonical JSON, past Lambda's 6 MB payload cap).
``client.transfer.push`` and ``pull`` move it; an httpx event hook on the catalog client (not on the
storage client) records every API request and answer, and each must stay under 1 MiB: the index
travels between the client and storage only.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.transfer import TransferConfig, pull, push
from core.identity import ManifestKey
from core.wire import CHUNK_PAGE

ARCH = "x86_64"
CELL = 4096
CELLS = 100_000
DISTINCT = CHUNK_PAGE + 1  # each distinct chunk costs the cloud backends a few storage requests
MIB = 1_048_576
BUDGET_SECONDS = 60.0


def _block(i: int) -> bytes:
    return hashlib.sha256(f"scale-{i}".encode()).digest() * (CELL // 32)


def _make_bundle(root: Path) -> Path:
    """``root/disk.hdd``: CELLS cells, cell n holding block n % DISTINCT (none all-zero)."""
    root.mkdir(parents=True)
    period = b"".join(_block(i) for i in range(DISTINCT))
    with (root / "disk.hdd").open("wb") as f:
        for _ in range(CELLS // DISTINCT):
            f.write(period)
    (root / "config.pvs").write_bytes(b"<ParallelsVirtualMachine/>")
    return root


class ApiLog:
    """Every request the catalog client sends and every answer it gets, with body sizes."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def on_request(self, request: httpx.Request) -> None:
        body = request.read()
        self.calls.append({"method": request.method, "path": request.url.path, "sent": len(body), "body": body})

    def on_response(self, response: httpx.Response) -> None:
        response.read()
        call = next(c for c in reversed(self.calls) if "received" not in c)
        call.update(status=response.status_code, received=len(response.content))

    def hook(self, client: Any) -> None:
        client._http.event_hooks = {"request": [self.on_request], "response": [self.on_response]}

    def summary(self) -> dict[str, int]:
        by_route: dict[str, int] = {}
        for c in self.calls:
            route = c["path"].rsplit("/", 1)[-1]
            by_route[route] = by_route.get(route, 0) + 1
        return by_route


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 22), fb.read(1 << 22)
            if x != y:
                return False
            if not x:
                return True


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_100k_chunk_index_never_travels_through_the_api(backend, cid, tmp_path, monkeypatch):
    monkeypatch.setenv("PDCAT_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _make_bundle(tmp_path / "src" / "big.pvm")
    config = TransferConfig(chunk_size=CELL, workers=8, retries=3, backoff=0.2)
    log = ApiLog()

    started = time.monotonic()
    with backend.client(roles=["PUBLISHER"], subject="scale-publisher") as api:
        log.hook(api)
        pushed = push(api, bundle, ManifestKey.parse(cid, "1.0", ARCH), config=config)
    push_seconds = time.monotonic() - started
    assert pushed.manifest["status"] == "ready"
    assert pushed.chunks == DISTINCT + 1  # the config file is one chunk more
    assert pushed.uploaded_chunks == DISTINCT + 1
    push_calls = len(log.calls)

    started = time.monotonic()
    with backend.client(roles=["USER"], subject="scale-user") as api:
        log.hook(api)
        pulled = pull(api, cid, "1.0", ARCH, tmp_path / "dst", name="big", config=config)
    pull_seconds = time.monotonic() - started

    assert _same_file(bundle / "disk.hdd", pulled.path / "disk.hdd")
    assert (pulled.path / "config.pvs").read_bytes() == (bundle / "config.pvs").read_bytes()
    assert pulled.downloaded_chunks == DISTINCT + 1

    # the index really is big: what the push declared
    declared = next(c for c in log.calls if c["path"].endswith("/index"))
    index_size = json.loads(declared["body"])["index_size"]
    assert index_size > 10 * 1_000_000, index_size

    # every API body is bounded, whatever the index size
    assert all("received" in c for c in log.calls), "a request got no answer"
    too_big = [
        (c["method"], c["path"], c["sent"], c["received"]) for c in log.calls if max(c["sent"], c["received"]) >= MIB
    ]
    assert not too_big, too_big
    assert all(c["status"] < 400 for c in log.calls), [(c["path"], c["status"]) for c in log.calls]
    biggest_sent = max(c["sent"] for c in log.calls)
    biggest_received = max(c["received"] for c in log.calls)
    # and no body carries the index's chunk entries (the offsets only the index holds)
    assert not any(b'"offset"' in c["body"] for c in log.calls)

    summary = log.summary()
    assert summary["chunks"] >= 2 and summary["urls"] >= 2, summary  # both lists came a page at a time
    report = (
        f"{backend.name}: push {push_seconds:.1f} s ({push_calls} API calls), pull {pull_seconds:.1f} s "
        f"({len(log.calls) - push_calls} API calls), index {index_size:,} B, largest request {biggest_sent:,} B, "
        f"largest answer {biggest_received:,} B, calls {summary}"
    )
    print(report)
    # a guard against a pathological regression (a request per index entry, say), not a benchmark: the
    # budget is ~60 s per backend on an idle machine, and contract runs share the machine with others
    assert push_seconds + pull_seconds < BUDGET_SECONDS * 3, report
