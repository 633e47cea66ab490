"""Fault injection, end to end: the real ``pdcat`` against the real embedded server, with real
signals (kill -9 mid-push and mid-pull, then resume), expiring presigned URLs, a truncated chunk in
storage, a destination that runs out of space (a small tmpfs), two pulls of one VM at once, and a
flaky network (a proxy that answers 503 or drops the connection).

Timing is made deterministic with ``PDCAT_DEBUG_CHUNK_DELAY`` (seconds of sleep per chunk); every
wait is bounded and fails with a message saying what it waited for.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.auth import issue_token
from infra.local.servers import RunningServer, start_embedded
from tests.e2e.conftest import Pdcat, Run, assert_same_tree, listing, needs_embedded, progress_lines, reason_lines
from tests.e2e.fault_helpers import (
    Background,
    FlakyProxy,
    chunk_dir,
    fill_until_full,
    random_bundle,
    spawn,
    stored_chunks,
    tmpfs,
    wait_until,
)

ARCH = "x86_64"
CHUNK = 65536
MIB = 1024 * 1024
WAIT = 60.0  # upper bound of every poll: far above the seconds a healthy run takes


# ---- fixtures and small helpers ---------------------------------------------------------------
@pytest.fixture
def fpdcat(pdcat: Pdcat, tmp_path: Path) -> Pdcat:
    """``pdcat`` as in the e2e suite, with a private (unused) cache folder: these tests pull with
    --no-cache, straight into --dest, so the journal and partial folder sit next to the VM."""
    pdcat.env["PDCAT_CACHE_DIR"] = str(tmp_path / "cache")
    return pdcat


@pytest.fixture
def background() -> Iterator[list[Background]]:
    """Every background pdcat a test starts goes in this list; any still running is killed at teardown."""
    started: list[Background] = []
    yield started
    for bg in started:
        bg.stop()


@pytest.fixture
def embedded_data(backend: Any) -> Path:
    needs_embedded(backend, "the embedded server's data folder")
    assert backend.server is not None
    data_dir: Path = backend.server.data_dir
    return data_dir


def push_args(bundle: Path, cid: str, *extra: str, version: str = "1.0") -> list[str]:
    args = ["push", str(bundle), "--catalog", cid, "--version", version, "--arch", ARCH]
    return [*args, "--chunk-size", str(CHUNK), *extra]


def pull_args(cid: str, dest: Path, name: str, *extra: str, version: str = "1.0") -> list[str]:
    ref = f"{cid}:{version}"
    return ["pull", ref, "--arch", ARCH, "--dest", str(dest), "--name", name, "--no-register", "--no-cache", *extra]


def slow(delay: float) -> dict[str, str | None]:
    return {"PDCAT_DEBUG_CHUNK_DELAY": str(delay)}


def reason(run: Run) -> str:
    """The one-line reason of a failed run: no traceback, and any other stderr line is a warning."""
    assert run.code == 1, f"pdcat {' '.join(run.args)} exited {run.code}, expected 1:\n{run.err}\n{run.out}"
    assert "Traceback" not in run.err + run.out
    lines = reason_lines(run.err)
    assert lines, "no reason on stderr"
    assert all(line.startswith("pdcat: warning: ") for line in lines[:-1]), run.err
    assert lines[-1].startswith("pdcat: ") and not lines[-1].startswith("pdcat: warning: "), run.err
    return lines[-1]


def journal_lines(journal: Path) -> int:
    try:
        return journal.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def settled(count: Callable[[], int], what: str, quiet: float = 0.5) -> int:
    """``count()`` once it has not changed for ``quiet`` seconds (requests the server had fully
    received before a client died may still be landing)."""
    value, since = count(), time.monotonic()

    def steady() -> bool:
        nonlocal value, since
        now = count()
        if now != value:
            value, since = now, time.monotonic()
        return time.monotonic() - since >= quiet

    wait_until(steady, f"{what} to stop changing", timeout=WAIT, interval=0.05)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def extra_server(tmp_path: Path, name: str, env: dict[str, str], *, port: int = 0) -> tuple[RunningServer, str]:
    """Another embedded server with special settings; returns it and a token (ADMIN) for it."""
    secret = "faults-" + secrets.token_hex(24)
    server = start_embedded(
        tmp_path / name, env={"PDCAT_JWT_SECRET": secret, "PDCAT_LOG_LEVEL": "WARNING", **env}, port=port
    )
    token = issue_token(secret, "fault-admin", ["ADMIN"], [], 3600)[0]
    return server, token


# ---- 1. kill -9 mid-push, then resume -------------------------------------------------------------
@pytest.mark.every_backend
def test_push_killed_mid_transfer_resumes_with_only_the_missing_chunks(
    fpdcat: Pdcat, cid: str, tmp_path: Path, embedded_data: Path, background: list[Background]
) -> None:
    src = random_bundle(tmp_path / "src", "big", 13 * MIB, seed=11)
    total = 13 * MIB // CHUNK + 1  # the disk's distinct chunks + config.pvs
    bg = spawn(fpdcat, *push_args(src, cid, "--workers", "2"), env=slow(0.03))
    background.append(bg)
    wait_until(lambda: stored_chunks(embedded_data, cid) >= 60, "60 stored chunks", timeout=WAIT, process=bg)
    bg.kill9()
    assert bg.poll() == -9
    stored = settled(lambda: stored_chunks(embedded_data, cid), "the stored chunk count")
    assert 60 <= stored < total - 20, f"{stored} of {total} chunks stored: the kill came too late to test resuming"
    staging = embedded_data / "blobs" / "objects" / "staging"  # shared by every test on this server
    sessions = [
        d
        for d in staging.iterdir()
        if (d / "meta.json").is_file() and json.loads((d / "meta.json").read_text())["catalog_id"] == cid
    ]
    assert len(sessions) == 1, "the killed push should have left its upload session's staging area"
    assert "index.json" not in listing(sessions[0]), "a push declares and uploads its index last"

    # The catalog lists what is stored, so the rerun sends exactly the rest: no slack is needed
    # (requests still in flight at the kill have landed or vanished by the time the count settles).
    again = fpdcat.json(*push_args(src, cid))
    assert again["chunks"] == total
    assert again["uploaded_chunks"] == total - stored, (again["uploaded_chunks"], total, stored)
    assert again["reused_bytes"] > 0 and again["manifest"]["status"] == "ready"
    assert stored_chunks(embedded_data, cid) == total

    dest = tmp_path / "vms"
    got = fpdcat.json(*pull_args(cid, dest, "back"))
    assert got["downloaded_chunks"] == total
    assert_same_tree(src, dest / "back.pvm")
    assert listing(dest) == ["back.pvm"]


# ---- 2. kill -9 mid-pull, then resume -------------------------------------------------------------
@pytest.mark.every_backend
def test_pull_killed_mid_transfer_resumes_from_its_journal(
    fpdcat: Pdcat, cid: str, tmp_path: Path, background: list[Background]
) -> None:
    src = random_bundle(tmp_path / "src", "big", 13 * MIB, seed=12)
    pushed = fpdcat.json(*push_args(src, cid))
    total = pushed["chunks"]
    dest = tmp_path / "vms"
    final, partial, journal = dest / "vm.pvm", dest / ".vm.pvm.pdcat-partial", dest / ".vm.pvm.pdcat-journal"

    bg = spawn(fpdcat, *pull_args(cid, dest, "vm", "--workers", "2"), env=slow(0.03))
    background.append(bg)
    wait_until(lambda: journal_lines(journal) >= 60, "60 journal lines", timeout=WAIT, process=bg)
    bg.kill9()
    assert bg.poll() == -9
    lines = journal_lines(journal)  # the pack digest, then one finished chunk per line
    assert 60 <= lines < total - 20, f"{lines} journal lines of {total} chunks: the kill came too late"
    assert not final.exists() and partial.is_dir()
    assert sorted(listing(dest)) == sorted([partial.name, journal.name])

    got = fpdcat.json(*pull_args(cid, dest, "vm"))
    assert got["resumed_chunks"] == lines - 1 >= 59
    assert got["downloaded_chunks"] == total - got["resumed_chunks"]
    assert_same_tree(src, final)
    assert listing(dest) == ["vm.pvm"]  # no partial folder, no journal


# ---- 3. presigned URLs expire mid-transfer ----------------------------------------------------------
def _url_refreshes(log: Path) -> dict[str, int]:
    """URL requests beyond the first page, in the server's JSON request log, by kind (push or pull).

    A push asks ``/uploads/{id}/chunks`` once for a page (81 chunks are one page) and again only for
    a refused URL; a pull asks ``…/pull/urls`` once per page and again only after a refusal.
    """
    counts = {"push": -1, "pull": -1}
    for line in log.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        path = str(doc.get("path", ""))
        if doc.get("message") == "request" and doc.get("status") == 200:
            if path.endswith("/pull/urls"):
                counts["pull"] += 1
            elif path.endswith("/chunks"):
                counts["push"] += 1
    return counts


@pytest.mark.slow
@pytest.mark.every_backend
def test_urls_expiring_mid_transfer_are_refreshed(fpdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    # The first page holds every URL (page size 500 > 81 chunks), so without expiry the client would
    # never call .../urls. URLs live 2 s: the transfers take over 3 s, so the first page expires
    # midway. (Not 1 s: the server computes expiry as int(now) + lifetime, so a URL minted at x.999 s
    # with a 1 s lifetime is dead 1 ms later, and a refreshed URL refused again fails the transfer.)
    server, token = extra_server(
        tmp_path,
        "expiring",
        {"PDCAT_URL_EXPIRY_SECONDS": "2", "PDCAT_LOG_LEVEL": "INFO"},
    )
    try:
        fpdcat.env.update({"PDCAT_SERVER": server.url, "PDCAT_TOKEN": token})
        src = random_bundle(tmp_path / "src", "vm", 80 * CHUNK, seed=13)
        pushed = fpdcat.json(*push_args(src, cid, "--workers", "1"), env=slow(0.04))
        assert pushed["uploaded_chunks"] == pushed["chunks"] == 81
        after_push = _url_refreshes(server.log_path)
        assert after_push["push"] >= 1, f"no upload URL was refreshed: {after_push}"

        dest = tmp_path / "vms"
        got = fpdcat.json(*pull_args(cid, dest, "vm", "--workers", "1"), env=slow(0.04))
        assert got["downloaded_chunks"] == 81
        assert _url_refreshes(server.log_path)["pull"] >= 1, "no download URL was refreshed"
        assert_same_tree(src, dest / "vm.pvm")
        assert listing(dest) == ["vm.pvm"]
    finally:
        server.stop()


# ---- 4. a truncated chunk in storage --------------------------------------------------------------
def test_truncated_chunk_in_storage_fails_the_pull_and_leaves_nothing(
    fpdcat: Pdcat, cid: str, tmp_path: Path, embedded_data: Path
) -> None:
    # (a flipped byte is test_cli.py::test_corrupt_chunk_in_storage)
    src = random_bundle(tmp_path / "src", "vm", 12 * CHUNK, seed=14)
    pushed = fpdcat.json(*push_args(src, cid))
    chunks = sorted(chunk_dir(embedded_data, cid).iterdir())
    assert len(chunks) == pushed["chunks"] == 13
    victim = max(chunks, key=lambda p: p.stat().st_size)
    size = victim.stat().st_size
    with victim.open("r+b") as f:
        f.truncate(size // 2)

    dest = tmp_path / "vms"
    line = reason(fpdcat.run(*pull_args(cid, dest, "vm")))
    assert "corrupt" in line and victim.name[:12] in line, line
    assert listing(dest) == []  # no bundle, no partial folder, no journal


# ---- 5. the destination runs out of space ------------------------------------------------------------
def test_pull_larger_than_the_free_space_is_refused_up_front(fpdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    src = random_bundle(tmp_path / "src", "vm", 40 * MIB, seed=15)
    fpdcat.json(*push_args(src, cid, "--chunk-size", str(MIB)))
    with tmpfs(tmp_path / "small", "16m") as small:
        line = reason(fpdcat.run(*pull_args(cid, small, "vm")))
        assert "space" in line and str(small) in line, line
        assert listing(small) == []


def test_disk_filling_up_mid_pull_fails_cleanly(
    fpdcat: Pdcat, cid: str, tmp_path: Path, background: list[Background]
) -> None:
    src = random_bundle(tmp_path / "src", "vm", 8 * MIB, seed=16)  # fits the 16 MiB tmpfs...
    fpdcat.json(*push_args(src, cid))
    with tmpfs(tmp_path / "small", "16m") as small:
        journal = small / ".vm.pvm.pdcat-journal"
        bg = spawn(fpdcat, *pull_args(cid, small, "vm", "--workers", "2"), env=slow(0.03))
        background.append(bg)
        try:
            wait_until(lambda: journal_lines(journal) >= 10, "the pull to be under way", timeout=WAIT, process=bg)
            filler = small / "filler"
            fill_until_full(filler)  # ...until something else takes the space
            run = bg.wait(timeout=WAIT)
        finally:
            bg.stop()
        line = reason(run)
        assert "space" in line, line
        assert listing(small) == ["filler"]  # no bundle, no partial folder, no journal


# ---- 6. two pulls of one VM at the same time ------------------------------------------------------------
def test_concurrent_pulls_of_the_same_version(
    fpdcat: Pdcat, cid: str, tmp_path: Path, background: list[Background]
) -> None:
    src = random_bundle(tmp_path / "src", "vm", 64 * CHUNK, seed=17)
    fpdcat.json(*push_args(src, cid))
    dests = [tmp_path / "one", tmp_path / "two"]
    runs = [spawn(fpdcat, *pull_args(cid, d, "vm", "--json", "--workers", "2"), env=slow(0.03)) for d in dests]
    background.extend(runs)
    journals = [d / ".vm.pvm.pdcat-journal" for d in dests]
    # both really run at once: their journals exist at the same moment
    wait_until(lambda: all(j.exists() for j in journals), "both pulls under way", timeout=WAIT, process=runs[0])
    for bg, dest in zip(runs, dests, strict=True):
        run = bg.wait(timeout=WAIT)
        assert run.code == 0, f"pull into {dest} exited {run.code}:\n{run.err}"
        assert run.json()["downloaded_chunks"] == 65
        assert_same_tree(src, dest / "vm.pvm")
        assert listing(dest) == ["vm.pvm"]


# ---- 7. a flaky network: 503s and dropped connections -----------------------------------------------------
def test_push_and_pull_through_a_flaky_network(fpdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    # Blob URLs carry the server's public URL, so the server is told the proxy's URL is its own:
    # chunk traffic goes through the proxy too. The port is fixed first so the proxy knows where to go.
    port = free_port()
    proxy = FlakyProxy(f"http://127.0.0.1:{port}", every=3)
    try:
        server, token = extra_server(tmp_path, "behind-proxy", {"PDCAT_PUBLIC_URL": proxy.url}, port=port)
        try:
            fpdcat.env.update({"PDCAT_SERVER": proxy.url, "PDCAT_TOKEN": token})
            src = random_bundle(tmp_path / "src", "vm", 14 * CHUNK, seed=18)
            pushed = fpdcat.json(*push_args(src, cid, "--workers", "4"))
            assert pushed["uploaded_chunks"] == pushed["chunks"] == 15
            failed_in_push = proxy.answered_503 + proxy.dropped
            assert failed_in_push > 0 and proxy.answered_503 > 0, "the proxy injected no fault during the push"

            dest = tmp_path / "vms"
            got = fpdcat.json(*pull_args(cid, dest, "vm", "--workers", "4"))
            assert got["downloaded_chunks"] == 15
            assert proxy.answered_503 + proxy.dropped > failed_in_push, "the proxy injected no fault during the pull"
            assert proxy.dropped > 0
            assert_same_tree(src, dest / "vm.pvm")
            assert listing(dest) == ["vm.pvm"]
        finally:
            server.stop()
    finally:
        proxy.close()


# ---- progress without a terminal, and a server that dies mid-push --------------------------------
def test_without_a_terminal_progress_is_plain_lines_and_a_dead_server_says_how_to_resume(
    fpdcat: Pdcat, cid: str, tmp_path: Path, background: list[Background]
) -> None:
    """Issue 15, item 6: in CI (no TTY) a transfer prints its progress as plain lines; when the catalog
    dies under a push, the last progress line says where it stopped (not 100%) and the reason ends with
    how to resume. Run again against the catalog back up, it finishes."""
    secret, port = "faults-" + secrets.token_hex(24), free_port()
    settings = {"PDCAT_JWT_SECRET": secret, "PDCAT_LOG_LEVEL": "WARNING"}
    server = start_embedded(tmp_path / "dying", env=settings, port=port)
    token = issue_token(secret, "fault-admin", ["ADMIN"], [], 3600)[0]
    env: dict[str, str | None] = {"PDCAT_SERVER": server.url, "PDCAT_TOKEN": token, **slow(0.1)}
    src = random_bundle(tmp_path / "src", "ci", 16 * MIB, seed=15)  # 256 chunks at 0.1 s, 2 at a time: ~13 s
    bg = spawn(fpdcat, *push_args(src, cid, "--workers", "2"), env=env)
    background.append(bg)
    wait_until(lambda: "pushing: " in bg.stderr(), "the first progress line", timeout=WAIT, process=bg)
    server.process.kill()  # dies mid-push, without finishing the requests in flight
    server.process.wait(timeout=30)
    run = bg.wait(timeout=120)
    assert run.code == 1 and "Traceback" not in run.err, run.err
    *_, what, hint = reason_lines(run.err)
    assert "cannot reach the catalog" in what or "giving up" in what, run.err
    assert hint == "pdcat: run the same command again to resume: what was sent and verified is kept", run.err
    shown = progress_lines(run.err)
    assert shown[0].startswith("pushing: ") and shown[-1].startswith("pushing: stopped at "), run.err
    assert "100%" not in shown[-1]

    again_server = start_embedded(tmp_path / "dying", env=settings, port=port)
    try:
        done = fpdcat.run(*push_args(src, cid), env={"PDCAT_SERVER": again_server.url, "PDCAT_TOKEN": token})
        assert done.code == 0, done.err
        assert progress_lines(done.err)[-1].startswith("pushing: done, "), done.err
    finally:
        again_server.stop()
