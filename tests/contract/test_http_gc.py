"""Garbage collection over HTTP, on every backend: ``POST /admin/gc`` reclaims a deleted version's
unshared chunks and staged garbage, and never a chunk that a running push needs.

Backends are shared by the whole run, so a sweep here sweeps everyone's data: the collector must be
safe while other tests push (its leases and the sessions' marks make it so). Each test looks only at
its own catalog id, through the protocol itself: the chunks route answers which digests are stored.
"""

from __future__ import annotations

import hashlib

import httpx

from tests.contract.helpers import (
    Pack,
    ask_chunks,
    assert_error,
    begin_push,
    build_pack,
    commit,
    extents_pack,
    fetch_index,
    index_bytes,
    pull,
    pull_urls,
    push_pack,
    put_index,
    send_chunks,
    upload_chunks,
)

KIB4 = 4096


def _block(seed: int) -> bytes:
    return hashlib.sha256(b"gc-%d" % seed).digest() * (KIB4 // 32)


def _gc(admin: httpx.Client, **body: object) -> list[dict[str, object]]:
    """Walk every step of a collection (grace 0 unless given); returns each step's report."""
    reports = []
    cursor = None
    for _ in range(1000):
        r = admin.post("/admin/gc", json={"grace_seconds": 0, **body, "cursor": cursor})
        assert r.status_code == 200, (r.status_code, r.text[:500])
        reports.append(r.json())
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return reports
    raise AssertionError("gc never finished its walk")


def _stored(client: httpx.Client, cid: str, pack: Pack, version: str = "probe") -> set[str]:
    """Which of ``pack``'s chunks the catalog holds verified, asked through a throwaway session."""
    r = begin_push(client, cid, version, "x86_64", pack)
    assert r.status_code == 201, r.text
    answer = ask_chunks(client, r.json()["upload_id"], pack.digests)
    assert answer.status_code == 200, answer.text
    client.delete(f"/uploads/{r.json()['upload_id']}")
    return set(answer.json()["stored"])


def test_gc_reclaims_a_deleted_versions_unshared_chunks_only(publisher, admin, cid):
    a, b, c = _block(1), _block(2), _block(3)
    push_pack(publisher, cid, "1.0", "x86_64", {"disk": a + b})
    push_pack(publisher, cid, "2.0", "x86_64", {"disk": b + c})
    everything = build_pack({"disk": a + b + c})
    digest = {name: hashlib.sha256(block).hexdigest() for name, block in (("a", a), ("b", b), ("c", c))}
    assert _stored(publisher, cid, everything) == set(digest.values())

    assert admin.delete(f"/catalog/{cid}/1.0/x86_64").status_code == 204
    assert_error(admin.get(f"/catalog/{cid}/1.0/x86_64"), 404, "not_found")
    dry = _gc(admin, dry_run=True)
    assert all(step["dry_run"] for step in dry)
    assert sum(int(step["chunks_deleted"]) for step in dry) >= 1
    assert _stored(publisher, cid, everything) == set(digest.values()), "a dry run deleted something"

    reports = _gc(admin)
    assert sum(int(step["chunks_deleted"]) for step in reports) >= 1
    assert _stored(publisher, cid, everything) == {digest["b"], digest["c"]}
    for report in reports:  # counts only: a report names no catalog and no key
        assert cid not in str(report)

    answer = pull(publisher, cid, "2.0", "x86_64").json()
    index = fetch_index(answer)
    digests = [ch["digest"] for f in index["files"] for ch in f["chunks"]]
    assert set(pull_urls(publisher, cid, "2.0", "x86_64", digests).json()["urls"]) == set(digests)


def test_gc_never_sweeps_a_chunk_a_running_push_reuses(publisher, admin, cid):
    shared = _block(10)
    push_pack(publisher, cid, "1.0", "x86_64", {"disk": shared})
    pack = build_pack({"disk": shared + _block(11)})
    r = begin_push(publisher, cid, "2.0", "x86_64", pack)
    session = r.json()
    put_index(publisher, session, index_bytes(pack))
    asked = ask_chunks(publisher, session["upload_id"], pack.digests).json()
    assert asked["stored"] == [hashlib.sha256(shared).hexdigest()]  # reused: it will not be uploaded

    assert admin.delete(f"/catalog/{cid}/1.0/x86_64").status_code == 204  # nothing else references it
    _gc(admin)

    sent = send_chunks(publisher, session["upload_id"], pack)
    assert sent["uploaded"] == [d for d in pack.digests if d not in asked["stored"]]
    c = commit(publisher, session["upload_id"])
    assert c.status_code == 200, c.text
    index = fetch_index(pull(publisher, cid, "2.0", "x86_64").json())
    digests = [ch["digest"] for f in index["files"] for ch in f["chunks"]]
    assert set(pull_urls(publisher, cid, "2.0", "x86_64", digests).json()["urls"]) == set(digests)


def test_gc_removes_the_staging_of_an_aborted_push(publisher, admin, cid):
    pack = build_pack({"disk": _block(20) + _block(21)})
    r = begin_push(publisher, cid, "1.0", "x86_64", pack)
    session = r.json()
    put_index(publisher, session, index_bytes(pack))
    answer = ask_chunks(publisher, session["upload_id"], pack.digests).json()
    staged_url = next(iter(answer["urls"].values()))
    assert "staging/" in staged_url
    upload_chunks(answer["urls"], pack.chunks, answer["put_headers"])  # staged, never verified
    assert publisher.delete(f"/uploads/{session['upload_id']}").status_code == 204
    reports = _gc(admin)
    assert sum(int(step["staged_deleted"]) for step in reports) >= 3  # index, meta, marks, chunks
    assert _stored(publisher, cid, pack) == set(), "an unverified staged chunk was never promoted"


def test_gc_needs_the_delete_claim_and_checks_its_body(backend, admin):
    with backend.http(roles=["PUBLISHER"]) as publisher:
        assert_error(publisher.post("/admin/gc", json={}), 403, "forbidden")
    with backend.http(anonymous=True) as anonymous:
        assert anonymous.post("/admin/gc", json={}).status_code == 401
    for body in ({"dry_run": "yes"}, {"grace_seconds": -1}, {"cursor": 5}, {"nope": 1}, {"cursor": "not-a-cursor"}):
        assert_error(admin.post("/admin/gc", json=body), 400, "invalid_input")


def test_gc_keeps_the_base_objects_an_incremental_version_still_uses(publisher, admin, cid):
    """Index format 2: v2 points into part of v1's objects; deleting v1 must not reclaim them."""
    bs, cs = 65536, 131072
    a, b, new = (hashlib.sha256(b"gc2-%d" % i).digest() * (cs // 32) for i in range(3))
    v1 = extents_pack({"disk": (2 * cs, [(0, cs, a, 0), (cs, cs, b, 0)])})
    v2 = extents_pack({"disk": (2 * cs, [(0, bs, a, 0), (bs, bs, new[:bs], 0), (cs, cs, a, 0)])})
    for version, pack in (("1.0", v1), ("2.0", v2)):
        r = begin_push(publisher, cid, version, "x86_64", pack)
        sent = send_chunks(publisher, r.json()["upload_id"], pack)
        assert not sent["verdict"]["corrupt"]
        put_index(publisher, r.json(), index_bytes(pack))
        assert commit(publisher, r.json()["upload_id"]).status_code == 200
    everything = extents_pack({"disk": (3 * cs, [(0, cs, a, 0), (cs, cs, b, 0), (2 * cs, bs, new[:bs], 0)])})
    assert len(_stored(publisher, cid, everything)) == 3

    assert admin.delete(f"/catalog/{cid}/1.0/x86_64").status_code == 204
    _gc(admin)
    kept = _stored(publisher, cid, everything)
    assert kept == set(v2.chunks), "gc swept an object a ready format-2 version uses, or kept one none does"
