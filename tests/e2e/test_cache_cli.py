"""The local VM cache through the ``pdcat`` command: hits, chunk reuse, eviction order, pins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Pdcat, assert_same_tree, make_bundle

ARCH = "x86_64"


def _pull(pdcat: Pdcat, ref: str, dest: Path, name: str, env: dict[str, str | None] | None = None) -> dict[str, Any]:
    return pdcat.json("pull", ref, "--arch", ARCH, "--dest", str(dest), "--name", name, "--no-register", env=env)


@pytest.mark.every_backend
def test_a_second_pull_is_a_cache_hit_and_a_new_version_reuses_cached_chunks(
    pdcat: Pdcat, cid: str, tmp_path: Path
) -> None:
    v1 = make_bundle(tmp_path / "src1")
    v2 = make_bundle(tmp_path / "src2", variant=1)
    pdcat.push(v1, cid, "1")
    pdcat.push(v2, cid, "2")
    dest = tmp_path / "vms"

    cold = _pull(pdcat, f"{cid}:1", dest, "cold")
    assert cold["cache"] == "miss" and cold["downloaded_chunks"] > 0

    hit = _pull(pdcat, f"{cid}:1", dest, "hit")
    assert hit["cache"] == "hit" and hit["downloaded_chunks"] == 0 and hit["downloaded_bytes"] == 0
    assert_same_tree(v1, dest / "hit.pvm")

    # version 2 differs in one chunk: everything else is read from the cached version 1
    newer = _pull(pdcat, f"{cid}:2", dest, "newer")
    assert newer["cache"] == "miss"
    assert newer["downloaded_chunks"] <= 2, newer
    assert newer["reused_chunks"] >= cold["downloaded_chunks"] - 2
    assert_same_tree(v2, dest / "newer.pvm")

    listing = pdcat.json("cache", "ls")
    assert {e["version"] for e in listing["items"]} == {"1", "2"}


def test_eviction_is_least_recently_used_first_and_pins_are_kept(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    dest = tmp_path / "vms"
    for n in (1, 2, 3):
        pdcat.push(make_bundle(tmp_path / f"s{n}", seed=n), cid, str(n))
        _pull(pdcat, f"{cid}:{n}", dest, f"v{n}")
    entries = {e["version"]: e for e in pdcat.json("cache", "ls")["items"]}
    assert set(entries) == {"1", "2", "3"}
    one = entries["1"]["disk_usage"]

    # version 1 is the least recently used; use it again so that version 2 becomes the oldest
    assert _pull(pdcat, f"{cid}:1", dest, "again")["cache"] == "hit"
    pdcat.ok("cache", "pin", f"{cid}:3:{ARCH}")

    budget = str(one + one // 2)  # room for one VM only
    dry = pdcat.json("cache", "prune", "--dry-run", "--max-size", budget, "--keep-free", "0")
    assert [e["version"] for e in dry["evicted"]] == ["2", "1"]  # LRU first; the pinned 3 never
    assert len(pdcat.json("cache", "ls")["items"]) == 3  # a dry run removes nothing

    done = pdcat.json("cache", "prune", "--max-size", budget, "--keep-free", "0")
    assert [e["version"] for e in done["evicted"]] == ["2", "1"]
    left = pdcat.json("cache", "ls")["items"]
    assert [(e["version"], e["pinned"]) for e in left] == [("3", True)]

    pdcat.ok("cache", "unpin", f"{cid}:3")
    pdcat.ok("cache", "rm", f"{cid}:3")
    assert pdcat.json("cache", "ls")["items"] == []
    # the pulled copies are the user's: eviction never touches them
    assert (dest / "v1.pvm" / "config.pvs").exists() and (dest / "v2.pvm" / "config.pvs").exists()


def test_a_pull_over_budget_reports_each_eviction(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    dest = tmp_path / "vms"
    pdcat.push(make_bundle(tmp_path / "a", seed=11), cid, "a")
    pdcat.push(make_bundle(tmp_path / "b", seed=12), cid, "b")
    _pull(pdcat, f"{cid}:a", dest, "a")
    size = pdcat.json("cache", "ls")["items"][0]["disk_usage"]
    env: dict[str, str | None] = {"PDCAT_CACHE_MAX_BYTES": str(size + size // 2), "PDCAT_CACHE_KEEP_FREE_BYTES": "0"}
    r = pdcat.ok("pull", f"{cid}:b", "--arch", ARCH, "--dest", str(dest), "--name", "b", "--no-register", env=env)
    assert f"Evicted {cid}:a ({ARCH}) from the cache" in r.out
    assert [e["version"] for e in pdcat.json("cache", "ls")["items"]] == ["b"]


def test_cache_commands_explain_bad_references(pdcat: Pdcat) -> None:
    assert "needs" in pdcat.fail("cache", "pin")
    line = pdcat.fail("cache", "rm", "nothing-here:1")
    assert "not" in line.lower()


def test_no_cache_pulls_straight_to_the_destination(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    pdcat.push(make_bundle(tmp_path / "s"), cid, "1")
    got = pdcat.json("pull", f"{cid}:1", "--arch", ARCH, "--dest", str(tmp_path / "d"), "--no-register", "--no-cache")
    assert got["cache"] == "off" and got["downloaded_chunks"] > 0
    assert pdcat.json("cache", "ls")["items"] == []
