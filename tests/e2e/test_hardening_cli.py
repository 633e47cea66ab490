"""Security hardening of the ``pdcat`` command, end to end against a live catalog:

- ``--debug`` logs every request, presigned URLs included, but never their signatures;
- a pull whose version is purged under it fails with one clear line and leaves nothing partial
  (no hidden folder, no journal, in --dest or in the cache's staging area).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Pdcat, Run, listing, make_bundle, reason_lines
from tests.e2e.fault_helpers import Background, random_bundle, spawn, wait_until

ARCH = "x86_64"
CHUNK = 65536
MIB = 1024 * 1024
WAIT = 60.0
# a signed query parameter whose value is not the mask: what must never reach stderr
UNMASKED = re.compile(
    r"(?:[?&]|%26|%3F)(?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|sig|signature)(?:=|%3D)(?!\*\*\*)",
    re.IGNORECASE,
)
MASKED_URL = re.compile(
    r"https?://\S+\?\S*(?:X-Amz-Signature|sig|signature)=\*\*\*",
    re.IGNORECASE,
)


@pytest.fixture
def background() -> Any:
    started: list[Background] = []
    yield started
    for bg in started:
        bg.stop()


def _one_line_failure(run: Run) -> str:
    assert run.code == 1, f"pdcat {' '.join(run.args)} exited {run.code}, expected 1:\n{run.err}\n{run.out}"
    assert "Traceback" not in run.err + run.out
    lines = reason_lines(run.err)
    assert lines and all(line.startswith("pdcat: warning: ") for line in lines[:-1]), run.err
    assert lines[-1].startswith("pdcat: ") and not lines[-1].startswith("pdcat: warning: "), run.err
    return lines[-1]


# ---- --debug never prints a signature ---------------------------------------------------------
@pytest.mark.every_backend
def test_debug_logs_presigned_urls_without_their_signatures(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "src", seed=31)
    push = ["push", str(bundle), "--catalog", cid, "--version", "1.0", "--arch", ARCH, "--chunk-size", str(CHUNK)]
    pushed = pdcat.run("--debug", *push)
    assert pushed.code == 0, pushed.err
    dest = tmp_path / "vms"
    pulled = pdcat.run("--debug", "pull", f"{cid}:1.0", "--arch", ARCH, "--dest", str(dest), "--no-register",
                       "--no-cache")  # fmt: skip
    assert pulled.code == 0, pulled.err
    for run, method in ((pushed, "PUT"), (pulled, "GET")):
        requests = [line for line in run.err.splitlines() if "HTTP Request:" in line]
        assert any("/api/v1/" in line for line in requests), run.err[-2000:]  # the catalog's own requests
        signed = [line for line in requests if f"HTTP Request: {method} " in line and MASKED_URL.search(line)]
        assert len(signed) >= 2, f"expected {method} lines with masked presigned URLs:\n{run.err[-3000:]}"
        leaks = [line for line in run.err.splitlines() if UNMASKED.search(line)]
        assert not leaks, "\n".join(leaks[:5])
    assert listing(dest) == [f"{cid}.pvm"]


# ---- a pull cut short by a purge ----------------------------------------------------------------
@pytest.mark.every_backend
@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
def test_a_pull_cut_short_by_a_purge_says_so_and_leaves_nothing_partial(
    pdcat: Pdcat, cid: str, tmp_path: Path, background: list[Background], cached: bool
) -> None:
    cache = tmp_path / "cache"
    pdcat.env["PDCAT_CACHE_DIR"] = str(cache)
    src = random_bundle(tmp_path / "src", "big", 8 * MIB, seed=41)
    pdcat.ok("push", str(src), "--catalog", cid, "--version", "1.0", "--arch", ARCH, "--chunk-size", str(CHUNK))
    total = 8 * MIB // CHUNK + 1
    dest = tmp_path / "vms"
    args = [
        "pull",
        f"{cid}:1.0",
        "--arch",
        ARCH,
        "--dest",
        str(dest),
        "--name",
        "vm",
        "--no-register",
        "--workers",
        "2",
    ]
    bg = spawn(pdcat, *args, *([] if cached else ["--no-cache"]), env={"PDCAT_DEBUG_CHUNK_DELAY": "0.1"})
    background.append(bg)
    # the journal sits next to the partial folder: in the cache's staging area for a pull that builds
    # a bundle there (copy-on-write destinations), else next to the destination
    work = [cache / "staging", dest] if cached else [dest]

    def journal_lines() -> int:
        journals = [j for folder in work if folder.is_dir() for j in folder.glob(".*.pdcat-journal")]
        return journals[0].read_bytes().count(b"\n") if journals else 0

    wait_until(lambda: journal_lines() >= 10, "10 journal lines", timeout=WAIT, process=bg)
    assert journal_lines() < total - 20, "the pull went too far before the purge to test anything"
    pdcat.ok("rm", f"{cid}:1.0", "--arch", ARCH, "--purge")

    line = _one_line_failure(bg.wait(timeout=WAIT))
    assert line.startswith(f"pdcat: {cid}:1.0 ({ARCH}) was deleted or purged while pulling"), line
    assert line.endswith("the partial download was removed"), line
    assert listing(dest) == []  # no VM, no hidden partial folder, no journal
    if cached:
        assert listing(cache / "staging") == []
        assert pdcat.json("cache", "ls")["items"] == []
        kept = [p for p in (cache / "chunks").rglob("*") if p.is_file() and not p.name.startswith(".")]
        assert kept == []  # no chunk of it is kept
    # and nothing is left for a rerun to trip over: it says the version is gone
    again = pdcat.run(*args, "--no-cache")
    assert "not found" in _one_line_failure(again)
    assert listing(dest) == []
