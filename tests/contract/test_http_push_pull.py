"""Push and pull through presigned URLs (storage protocol v2, docs/adr-002-storage-protocol-v2.md):
sessions, the index through storage, staged chunks verified by the server, dedup, force, resume,
abort, import, races, secrets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import zstandard

from core.pack import PackIndex
from tests.contract.helpers import (
    Pack,
    ask_chunks,
    assert_error,
    begin_push,
    build_pack,
    commit,
    declare_index,
    download_chunk,
    fetch_index,
    index_bytes,
    plain,
    pull,
    pull_urls,
    push_pack,
    put_index,
    race,
    send_chunks,
    upload_chunks,
    verify,
)

KIB4 = 4096
SESSION_FIELDS = {"upload_id", "catalog_id", "version", "architecture", "put_headers", "expires_at", "format", "base"}


def _blocks(*seeds: int, size: int = KIB4) -> bytes:
    """Distinct, incompressible-ish 4 KiB blocks, so every chunk has its own digest."""
    return b"".join(hashlib.sha256(str(s).encode()).digest() * (size // 32) for s in seeds)


def _path(url: str) -> str:
    return unquote(urlsplit(url).path)


def _staging_url(url: str, ends_with: str) -> None:
    """A URL a pusher may write to: inside an upload session's staging area, never the catalog's."""
    path = _path(url)
    assert "/staging/" in path, url
    assert "catalogs/" not in path, url
    assert path.endswith("/" + ends_with), url


def _chunk_url(url: str, cid: str, digest: str) -> None:
    """A pull URL: the verified chunk itself, in the catalog id's chunks."""
    assert _path(url).endswith(f"/catalogs/{cid}/chunks/{digest}"), url


def _open(client: httpx.Client, cid: str, version: str, arch: str, pack: Pack, **body: Any) -> dict[str, Any]:
    """Begin a push and put its index: the session, ready for chunks."""
    r = begin_push(client, cid, version, arch, pack, **body)
    assert r.status_code == 201, r.text
    session: dict[str, Any] = r.json()
    put_index(client, session, index_bytes(pack))
    return session


def _chunks(client: httpx.Client, upload_id: str, digests: list[str]) -> dict[str, Any]:
    r = ask_chunks(client, upload_id, digests)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def _verified(client: httpx.Client, upload_id: str, digests: list[str]) -> dict[str, Any]:
    r = verify(client, upload_id, digests)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def _pulled_chunks(client: httpx.Client, cid: str, version: str, arch: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Pull: the index (checked against the manifest's digest) and a GET URL for each of its chunks."""
    r = pull(client, cid, version, arch)
    assert r.status_code == 200, r.text
    index = fetch_index(r.json())
    digests = list(PackIndex.parse(index).unique_digests())
    urls: dict[str, str] = {}
    for start in range(0, len(digests), 500):
        page = pull_urls(client, cid, version, arch, digests[start : start + 500])
        assert page.status_code == 200, page.text
        urls.update(page.json()["urls"])
    return index, urls


def test_push_then_pull_round_trip(publisher, cid):
    files = {
        "vm.pvm/config.pvs": b"<config/>",
        # three data chunks around an all-zero grid cell: the hole is never stored
        "vm.pvm/disk.hdd": _blocks(1, 2) + b"\x00" * KIB4 + _blocks(3)[:1000],
        "vm.pvm/empty": b"",
    }
    pack = build_pack(files)
    assert len(pack.chunks) == 4

    r = begin_push(publisher, cid, "1.0", "arm64", pack, description="round trip")
    assert r.status_code == 201, r.text
    session = r.json()
    assert set(session) == SESSION_FIELDS
    assert (session["catalog_id"], session["version"], session["architecture"]) == (cid, "1.0", "arm64")
    assert session["expires_at"] and session["format"] == 1  # a grid push: the format it asked for

    during = publisher.get(f"/catalog/{cid}/1.0/arm64")
    assert during.status_code == 200
    assert during.json()["status"] == "uploading"
    assert during.json()["upload_in_progress"] is True
    assert_error(pull(publisher, cid, "1.0", "arm64"), 409, "conflict")

    put_index(publisher, session, index_bytes(pack))
    asked = _chunks(publisher, session["upload_id"], pack.digests)
    assert set(asked) == {"stored", "urls", "put_headers", "expires_at"}
    assert asked["stored"] == []
    assert set(asked["urls"]) == set(pack.chunks)
    for digest, url in asked["urls"].items():
        _staging_url(url, digest)
    stored = upload_chunks(asked["urls"], pack.chunks, asked["put_headers"])
    verdict = _verified(publisher, session["upload_id"], pack.digests)
    assert verdict == {"verified": verdict["verified"], "missing": [], "corrupt": []}
    assert sorted(verdict["verified"]) == sorted(pack.chunks)

    c = commit(publisher, session["upload_id"])
    assert c.status_code == 200, c.text
    manifest = c.json()
    assert manifest["status"] == "ready"
    assert manifest["upload_in_progress"] is False
    assert manifest["usable"] is True
    assert manifest["size"] == sum(len(b) for b in files.values())
    assert manifest["stored_size"] == sum(stored.values())
    assert manifest["pack"]["chunk_count"] == 4
    assert manifest["pack"]["file_count"] == 3
    assert manifest["pack"]["chunk_size"] == KIB4
    assert manifest["description"] == "round trip"
    assert manifest["pushed_at"]
    # the commit is done: the session is gone
    assert_error(commit(publisher, session["upload_id"]), 404, "not_found")
    assert_error(ask_chunks(publisher, session["upload_id"], pack.digests), 404, "not_found")

    r = pull(publisher, cid, "1.0", "arm64")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"format", "manifest", "index_url", "expires_at"}
    assert answer["format"] == "chunks"
    assert answer["expires_at"]
    assert _path(answer["index_url"]).endswith(f"/catalogs/{cid}/1.0/arm64/index.json"), answer["index_url"]
    assert answer["manifest"]["id"] == manifest["id"]
    assert answer["manifest"]["download_count"] == 1
    assert answer["manifest"]["last_downloaded_by"] == "paul-publisher"
    assert answer["manifest"]["last_downloaded_at"]
    index = PackIndex.parse(fetch_index(answer))  # its sha256 is the manifest's pack digest
    assert index.digest == manifest["pack"]["digest"]
    assert index.size == manifest["size"]
    assert {f.path: f.size for f in index.files} == {p: len(b) for p, b in files.items()}
    assert {c.digest: c.stored_size for c in index.chunks()} == stored  # the server recorded what it verified
    assert set(index.unique_digests()) == set(pack.chunks)

    r = pull_urls(publisher, cid, "1.0", "arm64", list(index.unique_digests()))
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"urls", "expires_at"}
    urls = r.json()["urls"]
    assert set(urls) == set(pack.chunks)
    for digest, url in urls.items():
        _chunk_url(url, cid, digest)
        data = download_chunk(url)
        assert hashlib.sha256(data).hexdigest() == digest
    # rebuild every file from the index and the chunks: holes read back as zeros
    for f in index.files:
        out = bytearray(f.size)
        for chunk in f.chunks:
            out[chunk.offset : chunk.offset + chunk.size] = download_chunk(urls[chunk.digest])
        assert bytes(out) == files[f.path]

    assert pull(publisher, cid, "1.0", "arm64").json()["manifest"]["download_count"] == 2
    assert publisher.get(f"/catalog/{cid}/1.0/arm64").json()["download_count"] == 2

    # fresh URLs for a pull in progress: not another download
    some = list(pack.chunks)[:2]
    r = pull_urls(publisher, cid, "1.0", "arm64", some)
    assert r.status_code == 200, r.text
    assert set(r.json()["urls"]) == set(some)
    assert r.json()["expires_at"]
    for digest in some:
        assert hashlib.sha256(download_chunk(r.json()["urls"][digest])).hexdigest() == digest
    assert publisher.get(f"/catalog/{cid}/1.0/arm64").json()["download_count"] == 2
    # a chunk a puller reports is re-verified by the server: an intact one is left alone
    report = publisher.post(f"/catalog/{cid}/1.0/arm64/pull/report", json={"digests": some[:1]})
    assert report.status_code == 200, report.text
    assert report.json() == {"quarantined": [], "intact": some[:1]}
    assert hashlib.sha256(download_chunk(urls[some[0]])).hexdigest() == some[0]

    assert_error(pull_urls(publisher, cid, "1.0", "arm64", ["0" * 64]), 400, "invalid_input")
    assert_error(pull_urls(publisher, cid, "1.0", "arm64", []), 400, "invalid_input")
    assert_error(pull_urls(publisher, cid, "1.0", "arm64", some * 251), 400, "invalid_input")  # > 500
    assert_error(publisher.post(f"/catalog/{cid}/1.0/arm64/pull/urls", json={"digests": "x"}), 400, "invalid_input")
    assert_error(publisher.post(f"/catalog/{cid}/1.0/arm64/pull/urls", json={}), 400, "invalid_input")
    assert_error(pull_urls(publisher, cid, "2.0", "arm64", some), 404, "not_found")


def test_asking_for_chunks_again_gives_fresh_staging_urls(publisher, cid):
    pack = build_pack({"d": _blocks(10, 11, 12)})
    session = _open(publisher, cid, "1.0", "x86_64", pack)
    digests = pack.digests
    first = _chunks(publisher, session["upload_id"], digests)
    again = _chunks(publisher, session["upload_id"], digests[:2])
    assert again["stored"] == []  # staged is not verified: nothing is stored yet
    assert set(again["urls"]) == set(digests[:2])
    assert again["expires_at"] >= first["expires_at"]
    for digest, url in again["urls"].items():
        _staging_url(url, digest)
    # the fresh URLs and the first ones both lead into the same session's staging area
    upload_chunks(again["urls"], pack.chunks, again["put_headers"])
    upload_chunks({digests[2]: first["urls"][digests[2]]}, pack.chunks, first["put_headers"])
    assert sorted(_verified(publisher, session["upload_id"], digests)["verified"]) == sorted(digests)
    # once verified, asking again says "stored" and hands out no URL
    assert _chunks(publisher, session["upload_id"], digests) | {"expires_at": ""} == {
        "stored": digests,
        "urls": {},
        "put_headers": first["put_headers"],
        "expires_at": "",
    }
    assert commit(publisher, session["upload_id"]).status_code == 200
    assert_error(ask_chunks(publisher, "not-an-upload", digests), 404, "not_found")
    assert_error(verify(publisher, "not-an-upload", digests), 404, "not_found")


def test_chunk_urls_point_only_into_the_sessions_staging_area(publisher, cid):
    """Any digest may be asked about, but a pusher is only ever handed URLs into its own staging area:
    it can never write a verified chunk, and garbage it stages under a digest is refused."""
    push_pack(publisher, cid, "0.9", "x86_64", {"d": _blocks(14)})
    stored_digest = hashlib.sha256(_blocks(14)).hexdigest()
    pack = build_pack({"d": _blocks(13)})
    (digest,) = pack.digests
    session = _open(publisher, cid, "1.0", "x86_64", pack)
    upload_id = session["upload_id"]
    foreign = "a" * 64  # in no index at all
    asked = _chunks(publisher, upload_id, [digest, foreign, stored_digest])
    assert asked["stored"] == [stored_digest]
    assert set(asked["urls"]) == {digest, foreign}
    for name, url in asked["urls"].items():
        _staging_url(url, name)
        assert f"/{cid}/" not in _path(url), url

    # garbage staged under a digest never becomes that chunk
    r = plain.put(asked["urls"][foreign], content=b"not zstd at all", headers=asked["put_headers"])
    assert r.status_code in (200, 201, 204), r.text
    wrong = zstandard.ZstdCompressor().compress(_blocks(99))
    r = plain.put(asked["urls"][digest], content=wrong, headers=asked["put_headers"])
    assert r.status_code in (200, 201, 204), r.text
    assert _verified(publisher, upload_id, [digest, foreign]) == {
        "verified": [],
        "missing": [],
        "corrupt": [digest, foreign],
    }
    assert _chunks(publisher, upload_id, [digest, foreign])["stored"] == []
    # a digest never uploaded is missing; the good bytes, uploaded again, verify
    assert _verified(publisher, upload_id, [digest]) == {"verified": [], "missing": [digest], "corrupt": []}
    upload_chunks({digest: asked["urls"][digest]}, pack.chunks, asked["put_headers"])
    assert _verified(publisher, upload_id, [digest]) == {"verified": [digest], "missing": [], "corrupt": []}
    assert commit(publisher, upload_id).status_code == 200

    later = _open(publisher, cid, "2.0", "x86_64", build_pack({"d": _blocks(15)}))
    for body in ({"digests": ["not-a-digest"]}, {"digests": ["A" * 64]}, {"digests": []}, {"digests": "x"}, {}):
        assert_error(publisher.post(f"/uploads/{later['upload_id']}/chunks", json=body), 400, "invalid_input")
        assert_error(publisher.post(f"/uploads/{later['upload_id']}/verify", json=body), 400, "invalid_input")
    many = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(501)]
    assert_error(ask_chunks(publisher, later["upload_id"], many), 400, "invalid_input")  # pages of 500
    assert_error(verify(publisher, later["upload_id"], many[:33]), 400, "invalid_input")  # pages of 32


def test_second_push_of_the_same_identity_is_409_unless_forced(publisher, cid):
    old_pack = build_pack({"d": _blocks(20)})
    old = push_pack(publisher, cid, "1.0", "x86_64", old_pack)
    new_pack = build_pack({"d": _blocks(21, 22)})
    assert_error(begin_push(publisher, cid, "1.0", "x86_64", new_pack), 409, "conflict")
    assert_error(begin_push(publisher, cid, "1.0", "x86_64", new_pack, force=False), 409, "conflict")

    session = _open(publisher, cid, "1.0", "x86_64", new_pack, force=True)
    # until the forced push commits, the old version is what is served
    during = pull(publisher, cid, "1.0", "x86_64")
    assert during.status_code == 200, during.text
    assert during.json()["manifest"]["pack"]["digest"] == old["pack"]["digest"]
    _, old_urls = _pulled_chunks(publisher, cid, "1.0", "x86_64")
    assert set(old_urls) == set(old_pack.chunks)
    shown = publisher.get(f"/catalog/{cid}/1.0/x86_64").json()
    assert shown["status"] == "ready"
    assert shown["upload_in_progress"] is True

    send_chunks(publisher, session["upload_id"], new_pack)
    replaced = commit(publisher, session["upload_id"])
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["pack"]["digest"] != old["pack"]["digest"]
    after = pull(publisher, cid, "1.0", "x86_64").json()
    assert after["manifest"]["pack"]["digest"] == replaced.json()["pack"]["digest"]
    new_index = PackIndex.parse(fetch_index(after))
    assert new_index.digest == replaced.json()["pack"]["digest"]
    _, new_urls = _pulled_chunks(publisher, cid, "1.0", "x86_64")
    assert set(new_urls) == set(new_pack.chunks)
    # the old version's chunks are no part of the new one
    assert_error(pull_urls(publisher, cid, "1.0", "x86_64", list(old_pack.chunks)), 400, "invalid_input")


def test_forced_push_aborted_keeps_the_old_version(publisher, cid):
    old = push_pack(publisher, cid, "1.0", "x86_64", {"d": _blocks(23)})
    session = _open(publisher, cid, "1.0", "x86_64", build_pack({"d": _blocks(24)}), force=True)
    r = publisher.delete(f"/uploads/{session['upload_id']}")
    assert r.status_code == 204
    assert r.content == b""
    shown = publisher.get(f"/catalog/{cid}/1.0/x86_64").json()
    assert shown["status"] == "ready"
    assert shown["upload_in_progress"] is False
    assert pull(publisher, cid, "1.0", "x86_64").json()["manifest"]["pack"]["digest"] == old["pack"]["digest"]
    _, urls = _pulled_chunks(publisher, cid, "1.0", "x86_64")
    assert set(urls) == {hashlib.sha256(_blocks(23)).hexdigest()}


def test_push_of_a_revoked_identity_is_410(admin, cid):
    push_pack(admin, cid, "1.0", "x86_64", {"d": b"v"})
    assert admin.patch(f"/catalog/{cid}/1.0/x86_64/revoke").status_code == 200
    pack = build_pack({"d": b"w"})
    assert_error(begin_push(admin, cid, "1.0", "x86_64", pack), 410, "revoked")
    assert_error(begin_push(admin, cid, "1.0", "x86_64", pack, force=True), 410, "revoked")


def test_dedup_sends_only_new_chunks(publisher, cid):
    push_pack(publisher, cid, "1.0", "x86_64", {"disk": _blocks(30, 31, 32)})
    v2 = build_pack({"disk": _blocks(30, 31, 33), "extra": _blocks(32)})
    assert len(v2.chunks) == 4
    session = _open(publisher, cid, "2.0", "x86_64", v2)
    new = hashlib.sha256(_blocks(33)).hexdigest()
    asked = _chunks(publisher, session["upload_id"], v2.digests)
    assert sorted(asked["stored"]) == sorted(hashlib.sha256(_blocks(s)).hexdigest() for s in (30, 31, 32))
    assert list(asked["urls"]) == [new]
    upload_chunks(asked["urls"], v2.chunks, asked["put_headers"])
    assert _verified(publisher, session["upload_id"], [new])["verified"] == [new]
    done = commit(publisher, session["upload_id"])
    assert done.status_code == 200, done.text
    _, urls = _pulled_chunks(publisher, cid, "2.0", "x86_64")
    for digest, url in urls.items():
        assert hashlib.sha256(download_chunk(url)).hexdigest() == digest
    # dedup is per catalog id: another id with the same bytes uploads everything again
    other = _open(publisher, cid + "-other", "1.0", "x86_64", v2)
    asked = _chunks(publisher, other["upload_id"], v2.digests)
    assert asked["stored"] == []
    assert set(asked["urls"]) == set(v2.chunks)


def test_commit_with_a_missing_chunk_is_409(publisher, cid):
    """A chunk never uploaded and verified: the commit is refused until it is."""
    pack = build_pack({"d": _blocks(40, 41)})
    session = _open(publisher, cid, "1.0", "x86_64", pack)
    first, second = pack.digests
    send_chunks(publisher, session["upload_id"], pack, [first])
    error = assert_error(commit(publisher, session["upload_id"]), 409, "conflict")
    assert "not verified" in error["message"]
    assert publisher.get(f"/catalog/{cid}/1.0/x86_64").json()["status"] == "uploading"
    sent = send_chunks(publisher, session["upload_id"], pack, [second])
    assert sent["verdict"]["verified"] == [second]
    assert commit(publisher, session["upload_id"]).status_code == 200


def test_commit_before_verify_is_409(publisher, cid):
    """Staged is not stored: chunks uploaded but not verified do not count, and the index must be
    the one declared. The commit takes no sizes from the client."""
    pack = build_pack({"d": _blocks(42, 43)})
    r = begin_push(publisher, cid, "1.0", "x86_64", pack)
    assert r.status_code == 201, r.text
    session = r.json()
    upload_id = session["upload_id"]
    assert_error(commit(publisher, upload_id), 409, "conflict")  # no index uploaded yet
    put_index(publisher, session, index_bytes(build_pack({"d": _blocks(44)})))  # not the declared index
    assert_error(commit(publisher, upload_id), 409, "conflict")
    put_index(publisher, session, index_bytes(pack))

    asked = _chunks(publisher, upload_id, pack.digests)
    stored = upload_chunks(asked["urls"], pack.chunks, asked["put_headers"])
    assert_error(commit(publisher, upload_id), 409, "conflict")
    assert_error(commit(publisher, upload_id, stored_sizes=stored), 400, "invalid_input")
    assert publisher.get(f"/catalog/{cid}/1.0/x86_64").json()["status"] == "uploading"
    assert sorted(_verified(publisher, upload_id, pack.digests)["verified"]) == sorted(pack.digests)
    done = commit(publisher, upload_id)
    assert done.status_code == 200, done.text
    assert done.json()["stored_size"] == sum(stored.values())


def _lying_pack(raw: bytes, claimed_size: int) -> Pack:
    """An index that names the chunk ``raw`` by its true digest but claims it has ``claimed_size`` bytes."""
    digest = hashlib.sha256(raw).hexdigest()
    index = {
        "format": 1,
        "compression": "zstd",
        "chunk_size": KIB4,
        "size": claimed_size,
        "files": [
            {
                "path": "d",
                "type": "file",
                "mode": 0o644,
                "size": claimed_size,
                "chunks": [{"offset": 0, "size": claimed_size, "digest": digest}],
            }
        ],
    }
    PackIndex.parse(index)
    return Pack(index, {digest: raw})


@pytest.mark.parametrize(("raw_size", "claimed"), [(100, KIB4), (KIB4, 100), (2 * KIB4, KIB4)])
def test_a_chunk_whose_raw_size_differs_from_the_index_is_refused(publisher, cid, raw_size, claimed):
    raw = (hashlib.sha256(f"lie-{raw_size}-{claimed}".encode()).digest() * 512)[:raw_size]
    pack = _lying_pack(raw, claimed)
    (digest,) = pack.digests
    session = _open(publisher, cid, "1.0", "x86_64", pack)
    sent = send_chunks(publisher, session["upload_id"], pack)
    outcome = [name for name, items in sent["verdict"].items() if digest in items]
    assert len(outcome) == 1, sent["verdict"]
    if raw_size > KIB4:  # larger than any chunk of this index can be: corrupt, never promoted
        assert outcome == ["corrupt"], sent["verdict"]
    assert_error(commit(publisher, session["upload_id"]), 409, "conflict")
    shown = publisher.get(f"/catalog/{cid}/1.0/x86_64").json()
    assert shown["status"] == "uploading" and shown["usable"] is False
    assert_error(pull(publisher, cid, "1.0", "x86_64"), 409, "conflict")


def test_abort_removes_a_never_committed_manifest(publisher, cid):
    pack = build_pack({"d": b"x"})
    session = _open(publisher, cid, "1.0", "x86_64", pack)
    assert publisher.get(f"/catalog/{cid}/1.0/x86_64").status_code == 200
    r = publisher.delete(f"/uploads/{session['upload_id']}")
    assert r.status_code == 204
    assert r.content == b""
    assert_error(publisher.get(f"/catalog/{cid}/1.0/x86_64"), 404, "not_found")
    assert_error(publisher.get(f"/catalog/{cid}"), 404, "not_found")
    assert_error(publisher.delete(f"/uploads/{session['upload_id']}"), 404, "not_found")
    assert_error(commit(publisher, session["upload_id"]), 404, "not_found")
    assert_error(ask_chunks(publisher, session["upload_id"], pack.digests), 404, "not_found")
    assert_error(verify(publisher, session["upload_id"], pack.digests), 404, "not_found")
    # and the identity is free again
    assert begin_push(publisher, cid, "1.0", "x86_64", pack).status_code == 201


def test_unknown_upload_ids_are_404(publisher):
    digests = {"digests": ["ab" * 32]}
    for upload_id in ("garbage", "W10", "eyJhIjoxfQ", "WyJhIiwiYiIsImMiLCJkIl0", "a" * 300):
        assert_error(publisher.post(f"/uploads/{upload_id}/commit", json={}), 404, "not_found")
        assert_error(publisher.post(f"/uploads/{upload_id}/chunks", json=digests), 404, "not_found")
        assert_error(publisher.post(f"/uploads/{upload_id}/verify", json=digests), 404, "not_found")
        assert_error(publisher.delete(f"/uploads/{upload_id}"), 404, "not_found")


def test_begin_again_resumes_an_interrupted_push(publisher, cid):
    pack = build_pack({"d": _blocks(50, 51, 52, 53)})
    first = _open(publisher, cid, "1.0", "x86_64", pack)
    digests = pack.digests
    done = digests[:2]
    send_chunks(publisher, first["upload_id"], pack, done)

    second = _open(publisher, cid, "1.0", "x86_64", pack)
    assert second["upload_id"] != first["upload_id"]
    asked = _chunks(publisher, second["upload_id"], digests)
    assert sorted(asked["stored"]) == sorted(done)
    assert set(asked["urls"]) == set(digests[2:])
    assert_error(commit(publisher, first["upload_id"]), 404, "not_found")
    assert_error(publisher.delete(f"/uploads/{first['upload_id']}"), 404, "not_found")
    assert_error(ask_chunks(publisher, first["upload_id"], digests), 404, "not_found")
    assert_error(verify(publisher, first["upload_id"], digests), 404, "not_found")

    upload_chunks(asked["urls"], pack.chunks, asked["put_headers"])
    assert sorted(_verified(publisher, second["upload_id"], digests[2:])["verified"]) == sorted(digests[2:])
    done_manifest = commit(publisher, second["upload_id"])
    assert done_manifest.status_code == 200, done_manifest.text
    _, urls = _pulled_chunks(publisher, cid, "1.0", "x86_64")
    assert set(urls) == set(digests)


def test_concurrent_begins_of_one_new_identity_let_exactly_one_win(backend, cid):
    """Eight publishers start the same new version at once: one session, seven 409s."""
    n = 8
    pack = build_pack({"d": _blocks(60)})
    clients = [backend.http(roles=["PUBLISHER"], subject=f"racer-{i}") for i in range(n)]
    try:
        answers = race(n, lambda i: begin_push(clients[i], cid, "1.0", "x86_64", pack))
        statuses = [r.status_code for r in answers]
        assert sorted(statuses) == [201] + [409] * (n - 1), statuses
        for r in answers:
            if r.status_code == 409:
                assert_error(r, 409, "conflict")
        winner = statuses.index(201)
        session = answers[winner].json()
        put_index(clients[winner], session, index_bytes(pack))
        send_chunks(clients[winner], session["upload_id"], pack)
        done = commit(clients[winner], session["upload_id"])
        assert done.status_code == 200
        assert done.json()["created_by"] == f"racer-{winner}"
    finally:
        for c in clients:
            c.close()


def test_concurrent_pulls_each_count(backend, cid):
    n = 8
    with backend.http(roles=["PUBLISHER"], subject="p") as c:
        push_pack(c, cid, "1.0", "x86_64", {"d": b"counted"})
    clients = [backend.http(roles=["USER"], subject=f"puller-{i}") for i in range(n)]
    try:
        answers = race(n, lambda i: pull(clients[i], cid, "1.0", "x86_64"))
        assert [r.status_code for r in answers] == [200] * n
        assert all(r.json()["format"] == "chunks" and r.json()["index_url"] for r in answers)
        shown = clients[0].get(f"/catalog/{cid}/1.0/x86_64").json()
        assert shown["download_count"] == n
        assert shown["last_downloaded_by"] in {f"puller-{i}" for i in range(n)}
    finally:
        for c in clients:
            c.close()


def test_someone_elses_push_in_progress_needs_force(backend, cid):
    pack = build_pack({"d": _blocks(61)})
    with (
        backend.http(roles=["PUBLISHER"], subject="first") as first,
        backend.http(roles=["PUBLISHER"], subject="second") as second,
    ):
        session = _open(first, cid, "1.0", "x86_64", pack)
        assert_error(begin_push(second, cid, "1.0", "x86_64", pack), 409, "conflict")
        taken = begin_push(second, cid, "1.0", "x86_64", pack, force=True)
        assert taken.status_code == 201, taken.text
        assert_error(commit(first, session["upload_id"]), 404, "not_found")
        assert_error(ask_chunks(first, session["upload_id"], pack.digests), 404, "not_found")
        put_index(second, taken.json(), index_bytes(pack))
        send_chunks(second, taken.json()["upload_id"], pack)
        assert commit(second, taken.json()["upload_id"]).json()["created_by"] == "first"


def test_import_registers_a_pack_already_in_storage(publisher, admin, user, cid):
    original = push_pack(publisher, cid, "1.0", "x86_64", {"d": _blocks(70, 71)})
    assert admin.delete(f"/catalog/{cid}/1.0/x86_64").status_code == 204  # no purge: data stays
    body = {"catalog_id": cid, "version": "1.0", "architecture": "amd64", "tags": ["imported"], "description": "i"}
    assert_error(user.post("/catalog/import", json=body), 403, "forbidden")
    r = publisher.post("/catalog/import", json=body)
    assert r.status_code == 201, r.text
    imported = r.json()
    assert imported["status"] == "ready"
    assert imported["architecture"] == "x86_64"
    assert imported["tags"] == ["imported"]
    assert imported["pack"]["digest"] == original["pack"]["digest"]
    assert imported["size"] == original["size"]
    assert imported["stored_size"] == original["stored_size"]
    index, urls = _pulled_chunks(publisher, cid, "1.0", "x86_64")
    assert index["size"] == original["size"]
    assert set(urls) == {hashlib.sha256(b).hexdigest() for b in (_blocks(70), _blocks(71))}
    for digest, url in urls.items():
        assert hashlib.sha256(download_chunk(url)).hexdigest() == digest
    assert_error(publisher.post("/catalog/import", json=body), 409, "conflict")
    missing = {"catalog_id": cid, "version": "2.0", "architecture": "x86_64"}
    assert_error(publisher.post("/catalog/import", json=missing), 404, "not_found")
    assert_error(publisher.post("/catalog/import", json={"catalog_id": cid}), 400, "invalid_input")
    assert_error(publisher.post("/catalog/import", json={**missing, "version": "latest"}), 400, "invalid_input")


def _secrets(backend) -> list[str]:
    if backend.server is None:
        return []
    data_dir = Path(backend.server.data_dir)
    found = [backend.jwt_secret]
    for name in ("blob-signing-key", "jwt-secret"):
        path = data_dir / name
        if path.exists():
            found.append(path.read_text().strip())
    return [s for s in found if s]


def test_no_response_carries_a_storage_secret_or_a_signed_url_in_a_manifest(backend, cid):
    bodies: list[str] = []
    manifests: list[dict] = []

    def record(r: httpx.Response) -> httpx.Response:
        bodies.append(r.text)
        for name, value in r.headers.items():
            bodies.append(f"{name}: {value}")
        return r

    pack = build_pack({"a": _blocks(80, 81), "b": b"tail"})
    with backend.http(roles=["ADMIN"], subject="auditor") as c:
        session = record(begin_push(c, cid, "1.0", "x86_64", pack, tags=["audit"])).json()
        declared = record(declare_index(c, session["upload_id"], index_bytes(pack))).json()
        _staging_url(declared["index_url"], "index.json")
        put = plain.put(declared["index_url"], content=index_bytes(pack), headers=declared["put_headers"])
        assert put.status_code in (200, 201), put.text
        asked = record(ask_chunks(c, session["upload_id"], pack.digests)).json()
        for digest, url in asked["urls"].items():
            _staging_url(url, digest)
        upload_chunks(asked["urls"], pack.chunks, asked["put_headers"])
        record(verify(c, session["upload_id"], pack.digests))
        manifests.append(record(commit(c, session["upload_id"])).json())
        manifests.append(record(c.get(f"/catalog/{cid}/1.0/x86_64")).json())
        manifests += record(c.get(f"/catalog/{cid}")).json()["items"]
        manifests += record(c.get(f"/catalog/{cid}/latest")).json()["items"]
        manifests += record(c.get("/catalog", params={"tag": "audit", "limit": "1000"})).json()["items"]
        answer = record(pull(c, cid, "1.0", "x86_64")).json()
        manifests.append(answer["manifest"])
        index = fetch_index(answer)
        assert "http" not in json.dumps(index)
        fresh = record(pull_urls(c, cid, "1.0", "x86_64", pack.digests)).json()
        for digest, url in fresh["urls"].items():
            _chunk_url(url, cid, digest)
        record(c.post(f"/catalog/{cid}/1.0/x86_64/pull/report", json={"digests": pack.digests[:1]}))
        manifests.append(record(c.patch(f"/catalog/{cid}/1.0/x86_64/taint")).json())
        manifests.append(record(c.put(f"/catalog/{cid}/1.0/x86_64/metadata", json={"description": "d"})).json())
        record(c.get("/auth/whoami"))
        record(c.get("/openapi.json"))
        key = record(c.post("/auth/api-keys", json={"roles": ["USER"]})).json()
        record(c.get("/auth/api-keys"))
        record(c.delete(f"/auth/api-keys/{key['id']}"))
        record(c.get(f"/catalog/{cid}/9.9/x86_64"))

    for m in manifests:
        text = json.dumps(m)
        assert "signature=" not in text
        assert "http://" not in text and "https://" not in text
        assert "X-Amz-" not in text and "sig=" not in text
        assert "staging/" not in text
    secrets = _secrets(backend)
    if not secrets:
        pytest.skip("this backend exposes no server-side secrets to compare with (not the embedded server)")
    for body in bodies:
        for secret in secrets:
            assert secret not in body


def test_a_forced_push_does_not_clear_a_taint(publisher, admin, cid):
    """Only TAINT holders untaint: new content under a tainted identity stays tainted."""
    push_pack(publisher, cid, "1.0", "x86_64", {"d": _blocks(30)})
    assert admin.patch(f"/catalog/{cid}/1.0/x86_64/taint").status_code == 200
    replaced = push_pack(publisher, cid, "1.0", "x86_64", {"d": _blocks(31)}, force=True)
    assert replaced["tainted"] is True
    assert_error(pull(publisher, cid, "1.0", "x86_64"), 409, "tainted")


def test_aborting_a_revoked_upload_keeps_the_identity_burned(admin, cid):
    session = _open(admin, cid, "1.0", "x86_64", build_pack({"d": _blocks(32)}))
    assert admin.patch(f"/catalog/{cid}/1.0/x86_64/revoke").status_code == 200
    assert admin.delete(f"/uploads/{session['upload_id']}").status_code == 204
    assert admin.get(f"/catalog/{cid}/1.0/x86_64").json()["revoked"] is True
    assert_error(begin_push(admin, cid, "1.0", "x86_64", build_pack({"d": _blocks(33)})), 410, "revoked")


def test_push_refuses_unknown_fields(publisher, cid):
    pack = build_pack({"d": b"x"})
    r = begin_push(publisher, cid, "1.0", "x86_64", pack, descripton="typo")
    assert_error(r, 400, "invalid_input")
    assert "descripton" in r.json()["error"]["message"]
    # a v1 client sends the index itself: refused, naming what v2 wants instead
    r = publisher.post(f"/catalog/{cid}/1.0/x86_64/push", json={"index": pack.index})
    assert "/uploads/{upload_id}/index" in assert_error(r, 400, "invalid_input")["message"]
    assert_error(publisher.get(f"/catalog/{cid}/1.0/x86_64"), 404, "not_found")
    session = _open(publisher, cid, "1.0", "x86_64", pack)
    send_chunks(publisher, session["upload_id"], pack)
    r = commit(publisher, session["upload_id"], stored_sizes={})
    assert "stored_sizes" in assert_error(r, 400, "invalid_input")["message"]
    assert commit(publisher, session["upload_id"]).status_code == 200
