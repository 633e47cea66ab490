"""Storage protocol v2 under attack (docs/adr-002-storage-protocol-v2.md), on every backend.

A hostile PUBLISHER and a buggy client try what v1 allowed: replacing a chunk other versions share,
poisoning deduplication with bytes that do not hash to their name, committing what was never
verified, and making the server decompress or read without bound. Every attempt must end with the
stored chunks intact and honest pushes and pulls still byte-identical.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import zstandard

from client.packer import ChunkCorrupt
from client.transfer import TransferConfig
from client.transfer import pull as client_pull
from core.auth import issue_token
from core.storage_layout import chunk_key
from infra.local.servers import start_embedded
from tests.backend_names import BACKENDS
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
    send_chunks,
    upload_chunks,
    verify,
)

ARCH = "x86_64"
KIB4 = 4096
_ZSTD = zstandard.ZstdCompressor(level=3)
# A PUT that storage must refuse still needs Azure's blob type, or Azurite refuses it for the wrong
# reason (S3 and the embedded server ignore the header).
_WRITE_HEADERS = {"x-ms-blob-type": "BlockBlob"}


def _blocks(*seeds: int, size: int = KIB4) -> bytes:
    """Distinct, incompressible-ish 4 KiB blocks, so every chunk has its own digest."""
    return b"".join(hashlib.sha256(f"attack-{s}".encode()).digest() * (size // 32) for s in seeds)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def mallory(backend) -> Iterator[httpx.Client]:
    """A second, hostile PUBLISHER: same role as ``publisher``, another subject."""
    with backend.http(roles=["PUBLISHER"], subject="mallory-publisher") as c:
        yield c


def _session(client: httpx.Client, cid: str, version: str, pack: Pack, **body: Any) -> dict[str, Any]:
    r = begin_push(client, cid, version, ARCH, pack, **body)
    assert r.status_code == 201, (r.status_code, r.text[:1000])
    session: dict[str, Any] = r.json()
    assert "index_url" not in session  # the index is declared once the chunks are in
    return session


def _ask(client: httpx.Client, upload_id: str, digests: list[str]) -> dict[str, Any]:
    r = ask_chunks(client, upload_id, digests)
    assert r.status_code == 200, (r.status_code, r.text[:1000])
    answer: dict[str, Any] = r.json()
    for url in answer["urls"].values():
        _assert_staging_url(url)
    return answer


def _verify(client: httpx.Client, upload_id: str, digests: list[str]) -> dict[str, list[str]]:
    r = verify(client, upload_id, digests)
    assert r.status_code == 200, (r.status_code, r.text[:1000])
    verdict: dict[str, list[str]] = r.json()
    return verdict


def _put(url: str, data: bytes, headers: Mapping[str, str]) -> None:
    r = plain.put(url, content=data, headers=dict(headers))
    assert r.status_code in (200, 201, 204), (r.status_code, r.text[:500])


def _storage_key(url: str) -> str:
    """The object key a presigned URL names, whatever the backend's URL shape."""
    return unquote(urlsplit(url).path)


def _assert_staging_url(url: str) -> None:
    """A URL handed to a pusher names a key under ``staging/`` and nothing the server owns."""
    path = _storage_key(url)
    assert "/staging/" in path, url
    assert "/catalogs/" not in path and "/quarantine/" not in path and "/gc/" not in path, url


def _files_of(client: httpx.Client, cid: str, version: str) -> dict[str, bytes]:
    """Pull ``cid:version`` through the API and storage, checking every chunk; the files' bytes."""
    r = pull(client, cid, version, ARCH)
    assert r.status_code == 200, (r.status_code, r.text[:1000])
    index = fetch_index(r.json())
    digests = sorted({c["digest"] for f in index["files"] for c in f.get("chunks", [])})
    raw: dict[str, bytes] = {}
    for start in range(0, len(digests), 500):
        page = digests[start : start + 500]
        u = pull_urls(client, cid, version, ARCH, page)
        assert u.status_code == 200, (u.status_code, u.text[:1000])
        for digest, url in u.json()["urls"].items():
            data = download_chunk(url)
            assert _digest(data) == digest, f"chunk {digest[:12]} came back with other bytes"
            raw[digest] = data
    out: dict[str, bytes] = {}
    for f in index["files"]:
        buf = bytearray(f["size"])
        for c in f.get("chunks", []):
            buf[c["offset"] : c["offset"] + c["size"]] = raw[c["digest"]]
        out[f["path"]] = bytes(buf)
    return out


def _assert_pulls(client: httpx.Client, cid: str, version: str, files: Mapping[str, bytes]) -> None:
    assert _files_of(client, cid, version) == dict(files)


def _healthy(backend) -> None:
    with backend.http(anonymous=True) as c:
        r = c.get("/health")
    assert r.status_code == 200, (r.status_code, r.text[:500])


# ---- (a) a stored chunk can never be overwritten ------------------------------------------------------


def test_a_stored_chunk_is_answered_stored_without_a_url(backend, publisher, mallory, cid):
    files = {"disk": _blocks(1, 2, 3)}
    honest = build_pack(files)
    push_pack(publisher, cid, "1.0", ARCH, honest)

    # another publisher, another version sharing the chunks plus one new one
    other = build_pack({"disk": _blocks(1, 2, 3, 4)})
    session = _session(mallory, cid, "2.0", other)
    answer = _ask(mallory, session["upload_id"], other.digests)
    assert set(answer["stored"]) == set(honest.digests)
    assert set(answer["urls"]) == set(other.digests) - set(honest.digests)

    # the same with force over the honest version itself: nothing to upload, no URL at all
    forced = _session(mallory, cid, "1.0", honest, force=True)
    again = _ask(mallory, forced["upload_id"], honest.digests)
    assert set(again["stored"]) == set(honest.digests)
    assert again["urls"] == {}
    _assert_pulls(publisher, cid, "1.0", files)


def test_every_url_a_pusher_receives_points_into_staging(publisher, cid):
    pack = build_pack({"disk": _blocks(5, 6, 7, 8), "config.pvs": b"<config/>"})
    session = _session(publisher, cid, "1.0", pack)
    put_index(publisher, session, index_bytes(pack))
    answer = _ask(publisher, session["upload_id"], pack.digests)
    assert set(answer["urls"]) == set(pack.digests)
    nonce_paths = {_storage_key(u).rsplit("/staging/", 1)[1].split("/", 1)[0] for u in answer["urls"].values()}
    assert len(nonce_paths) == 1, "every URL of one session names the same staging area"
    for digest, url in answer["urls"].items():
        assert _storage_key(url).endswith(f"/chunks/{digest}"), url
    # and a refreshed URL (asked again before verification) is a staging URL as well
    refreshed = _ask(publisher, session["upload_id"], pack.digests[:1])
    assert set(refreshed["urls"]) == set(pack.digests[:1])
    upload_chunks(answer["urls"], pack.chunks, session["put_headers"])
    assert _verify(publisher, session["upload_id"], pack.digests)["verified"] == pack.digests
    assert commit(publisher, session["upload_id"]).status_code == 200


_SIGNATURE_PARAMS = ("signature", "X-Amz-Signature", "sig")


def _forged(url: str) -> str:
    """``url`` with its signature altered (one character): what a storage that checks must refuse."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [k for k, _ in query if k in _SIGNATURE_PARAMS]
    assert names, f"no signature parameter found in {url}"

    def alter(value: str) -> str:
        last = value[-1]
        return value[:-1] + ("A" if last != "A" else "B")

    query = [(k, alter(v) if k in _SIGNATURE_PARAMS else v) for k, v in query]
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_a_get_url_cannot_write_or_delete(backend, publisher, cid):
    files = {"disk": _blocks(11, 12)}
    pack = build_pack(files)
    push_pack(publisher, cid, "1.0", ARCH, pack)
    urls = pull_urls(publisher, cid, "1.0", ARCH, pack.digests).json()["urls"]
    digest, url = next(iter(urls.items()))
    assert plain.get(url).status_code == 200
    # every backend's storage checks signatures (files, SeaweedFS, Azurite): a forged URL is refused
    assert plain.get(_forged(url)).status_code >= 400
    garbage = secrets.token_bytes(1024)
    for method in ("PUT", "DELETE"):
        r = plain.request(method, url, content=garbage if method == "PUT" else None, headers=_WRITE_HEADERS)
        assert r.status_code >= 400, (method, r.status_code, r.text[:500])
    # the chunk is still there, byte for byte
    assert download_chunk(url) == pack.chunks[digest]
    _assert_pulls(publisher, cid, "1.0", files)


def test_garbage_at_own_staging_url_after_verification_leaves_the_chunk_intact(publisher, cid):
    files = {"disk": _blocks(21, 22, 23)}
    pack = build_pack(files)
    session = _session(publisher, cid, "1.0", pack)
    put_index(publisher, session, index_bytes(pack))
    answer = _ask(publisher, session["upload_id"], pack.digests)
    upload_chunks(answer["urls"], pack.chunks, session["put_headers"])
    assert sorted(_verify(publisher, session["upload_id"], pack.digests)["verified"]) == sorted(pack.digests)

    # the staging URL is still valid: overwrite the staged copy with garbage and ask again
    target = pack.digests[0]
    _put(answer["urls"][target], secrets.token_bytes(2048), session["put_headers"])
    assert _verify(publisher, session["upload_id"], [target])["corrupt"] == [target]
    # and a valid frame of other content under the same name
    _put(answer["urls"][target], _ZSTD.compress(_blocks(99)), session["put_headers"])
    assert _verify(publisher, session["upload_id"], [target])["corrupt"] == [target]

    c = commit(publisher, session["upload_id"])
    assert c.status_code == 200, c.text  # the chunk verified earlier still is
    _assert_pulls(publisher, cid, "1.0", files)


def test_garbage_staged_by_another_publisher_never_replaces_an_honest_chunk(publisher, mallory, cid):
    """Mallory gets a staging URL for a digest before the honest pusher stores it, then uploads
    garbage there once it is stored: verify refuses it and the stored chunk stands."""
    files = {"disk": _blocks(31, 32)}
    honest = build_pack(files)
    target = honest.digests[1]
    session = _session(mallory, cid, "9.9", honest)
    answer = _ask(mallory, session["upload_id"], honest.digests)
    assert set(answer["urls"]) == set(honest.digests)

    push_pack(publisher, cid, "1.0", ARCH, honest)
    _put(answer["urls"][target], secrets.token_bytes(3000), session["put_headers"])
    verdict = _verify(mallory, session["upload_id"], [target])
    assert verdict["corrupt"] == [target], verdict
    # valid zstd of other content under the digest, too
    _put(answer["urls"][target], _ZSTD.compress(_blocks(77)), session["put_headers"])
    assert _verify(mallory, session["upload_id"], [target])["corrupt"] == [target]
    _assert_pulls(publisher, cid, "1.0", files)
    # mallory's own session is told it is stored now
    assert _ask(mallory, session["upload_id"], [target])["stored"] == [target]


def test_garbage_during_a_force_push_never_replaces_an_honest_chunk(publisher, mallory, cid):
    first = {"disk": _blocks(41, 42)}
    push_pack(publisher, cid, "1.0", ARCH, build_pack(first))
    # mallory force-pushes 1.0 with one chunk more, and holds a staging URL for it
    bigger_files = {"disk": _blocks(41, 42, 43)}
    bigger = build_pack(bigger_files)
    new = _digest(_blocks(43))
    forced = _session(mallory, cid, "1.0", bigger, force=True)
    put_index(mallory, forced, index_bytes(bigger))
    answer = _ask(mallory, forced["upload_id"], bigger.digests)
    assert set(answer["urls"]) == {new}
    # meanwhile an honest push stores that chunk for version 2.0
    push_pack(publisher, cid, "2.0", ARCH, bigger)
    _put(answer["urls"][new], secrets.token_bytes(4096), forced["put_headers"])
    assert _verify(mallory, forced["upload_id"], [new])["corrupt"] == [new]
    assert_error(commit(mallory, forced["upload_id"]), 409, "conflict")
    _assert_pulls(publisher, cid, "2.0", bigger_files)
    _assert_pulls(publisher, cid, "1.0", first)  # the old version stays until a force push commits
    # asked again, the chunk is stored: mallory's force push can now commit the honest bytes only
    assert _ask(mallory, forced["upload_id"], [new])["stored"] == [new]
    assert commit(mallory, forced["upload_id"]).status_code == 200
    _assert_pulls(publisher, cid, "1.0", bigger_files)


# ---- (b) dedup poisoning ---------------------------------------------------------------------------


def _bomb() -> bytes:
    """zstd of 64 MiB of zeros: a few KiB that would expand to 16,384 times a 4 KiB chunk."""
    return _ZSTD.compress(bytes(64 * 1024 * 1024))


def _with_junk(raw: bytes) -> bytes:
    return _ZSTD.compress(raw) + secrets.token_bytes(64)


_SKIPPABLE = (0x184D2A50).to_bytes(4, "little") + (8).to_bytes(4, "little") + b"whatever"


GARBAGE: dict[str, Callable[[bytes], bytes]] = {
    "random-bytes": lambda raw: secrets.token_bytes(len(raw)),
    "zstd-of-other-content": lambda raw: _ZSTD.compress(_blocks(1000)),
    "decompression-bomb": lambda raw: _bomb(),
    "truncated-frame": lambda raw: _ZSTD.compress(raw)[:-9],
    "empty-body": lambda raw: b"",
    "frame-then-junk": _with_junk,
    "larger-than-any-chunk": lambda raw: secrets.token_bytes(64 * 1024),
    "uncompressed-right-bytes": lambda raw: raw,
    # the right bytes in several frames, but the first declares another size than the chunk's (a
    # skippable frame declares 0): a puller refuses that (client.transfer.download), so stored under
    # its digest it would fail every pull of every version with that chunk, and a report would not
    # quarantine it
    "two-frames-the-first-declaring-its-own-size": lambda raw: _ZSTD.compress(raw[:100]) + _ZSTD.compress(raw[100:]),
    "skippable-frame-then-frame": lambda raw: _SKIPPABLE + _ZSTD.compress(raw),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_under_a_new_digest_is_corrupt_and_poisons_nothing(backend, publisher, mallory, cid, kind):
    files = {"disk": _blocks(51, 52, 53)}
    pack = build_pack(files)
    target = _digest(_blocks(52))

    session = _session(mallory, cid, "0.1", pack)
    put_index(mallory, session, index_bytes(pack))
    answer = _ask(mallory, session["upload_id"], pack.digests)
    for digest, url in answer["urls"].items():
        data = GARBAGE[kind](pack.chunks[digest]) if digest == target else _ZSTD.compress(pack.chunks[digest])
        _put(url, data, session["put_headers"])
    started = time.monotonic()
    verdict = _verify(mallory, session["upload_id"], pack.digests)
    took = time.monotonic() - started
    assert verdict["corrupt"] == [target], verdict
    assert sorted(verdict["verified"]) == sorted(set(pack.digests) - {target})
    assert took < 20, f"verify took {took:.1f} s on {kind}"
    assert_error(commit(mallory, session["upload_id"]), 409, "conflict")
    _healthy(backend)

    # a later honest push of that digest is told it is NOT stored, uploads, verifies and pulls right
    honest = _session(publisher, cid, "1.0", pack)
    put_index(publisher, honest, index_bytes(pack))
    told = _ask(publisher, honest["upload_id"], pack.digests)
    assert target not in told["stored"]
    assert set(told["urls"]) == {target}
    upload_chunks(told["urls"], pack.chunks, honest["put_headers"])
    assert _verify(publisher, honest["upload_id"], [target]) == {"verified": [target], "missing": [], "corrupt": []}
    c = commit(publisher, honest["upload_id"])
    assert c.status_code == 200, c.text
    _assert_pulls(publisher, cid, "1.0", files)


def test_verify_of_a_digest_never_uploaded_is_missing(publisher, cid):
    pack = build_pack({"disk": _blocks(61, 62)})
    session = _session(publisher, cid, "1.0", pack)
    put_index(publisher, session, index_bytes(pack))
    _ask(publisher, session["upload_id"], pack.digests)
    verdict = _verify(publisher, session["upload_id"], pack.digests)
    assert sorted(verdict["missing"]) == sorted(pack.digests), verdict
    assert_error(commit(publisher, session["upload_id"]), 409, "conflict")


# ---- (c) commit refuses what was not verified or not declared --------------------------------------------


def test_commit_before_verify_is_409(publisher, cid):
    files = {"disk": _blocks(71, 72, 73)}
    pack = build_pack(files)
    session = _session(publisher, cid, "1.0", pack)
    assert_error(commit(publisher, session["upload_id"]), 409, "conflict")  # no index yet
    put_index(publisher, session, index_bytes(pack))
    answer = _ask(publisher, session["upload_id"], pack.digests)
    upload_chunks(answer["urls"], pack.chunks, session["put_headers"])
    assert_error(commit(publisher, session["upload_id"]), 409, "conflict")  # uploaded, not verified
    part = _verify(publisher, session["upload_id"], pack.digests[:2])
    assert sorted(part["verified"]) == sorted(pack.digests[:2])
    assert_error(commit(publisher, session["upload_id"]), 409, "conflict")  # one still unverified
    assert _verify(publisher, session["upload_id"], pack.digests[2:])["verified"] == pack.digests[2:]
    assert commit(publisher, session["upload_id"]).status_code == 200
    _assert_pulls(publisher, cid, "1.0", files)


def test_commit_refuses_an_index_that_does_not_match_the_declaration(publisher, cid):
    files = {"disk": _blocks(81, 82)}
    pack = build_pack(files)
    session = _session(publisher, cid, "1.0", pack)
    sent = send_chunks(publisher, session["upload_id"], pack)
    assert not sent["verdict"]["corrupt"] and not sent["verdict"]["missing"]

    good = index_bytes(pack)
    # another (valid) index whose chunks are all verified too, but not the declared one
    subset = build_pack({"disk": _blocks(81)})
    for wrong in (
        index_bytes(subset),  # other digest, other size
        good + b" ",  # declared digest no more, one byte longer
        good[:-1] + (b"}" if good[-1:] != b"}" else b" "),  # same size, other digest
        b"",
    ):
        target = declare_index(publisher, session["upload_id"], good).json()
        r = plain.put(target["index_url"], content=wrong, headers=target["put_headers"])
        assert r.status_code in (200, 201), r.text
        assert_error(commit(publisher, session["upload_id"]), 409, "conflict")
    put_index(publisher, session, good)
    assert commit(publisher, session["upload_id"]).status_code == 200
    _assert_pulls(publisher, cid, "1.0", files)


def test_an_index_naming_chunks_of_other_sizes_is_refused(publisher, cid):
    """The session verified a 4 KiB chunk; an index claiming it is 100 bytes cannot commit."""
    data = _blocks(91)
    pack = build_pack({"disk": data})
    digest = pack.digests[0]
    lying = Pack(
        {
            **pack.index,
            "size": 100,
            "files": [
                {**pack.index["files"][0], "size": 100, "chunks": [{"offset": 0, "size": 100, "digest": digest}]}
            ],
        },
        {digest: data},
    )
    session = _session(publisher, cid, "1.0", lying)
    put_index(publisher, session, index_bytes(lying))
    answer = _ask(publisher, session["upload_id"], [digest])
    upload_chunks(answer["urls"], {digest: data}, session["put_headers"])
    assert _verify(publisher, session["upload_id"], [digest])["verified"] == [digest]
    assert_error(commit(publisher, session["upload_id"]), 409, "conflict")


# ---- (d) pull, report and quarantine ---------------------------------------------------------------------


def test_reporting_an_intact_chunk_changes_nothing(publisher, user, cid):
    files = {"disk": _blocks(101, 102)}
    pack = build_pack(files)
    push_pack(publisher, cid, "1.0", ARCH, pack)
    r = user.post(f"/catalog/{cid}/1.0/{ARCH}/pull/report", json={"digests": pack.digests})
    assert r.status_code == 200, r.text
    assert r.json() == {"quarantined": [], "intact": pack.digests}
    _assert_pulls(user, cid, "1.0", files)
    # a new push of the same chunks still finds them stored
    session = _session(publisher, cid, "2.0", pack)
    assert sorted(_ask(publisher, session["upload_id"], pack.digests)["stored"]) == sorted(pack.digests)


def _client_pull(backend, cid: str, version: str, dest: Path, name: str):
    with backend.client(roles=["USER"], subject="ursula-user") as api:
        return client_pull(api, cid, version, ARCH, dest, name=name, config=TransferConfig(workers=2, retries=1))


def _assert_tree(root: Path, files: Mapping[str, bytes]) -> None:
    for path, data in files.items():
        assert (root / path).read_bytes() == data, path


def test_a_chunk_corrupted_in_storage_is_quarantined_and_repaired_by_a_force_push(
    backend, publisher, user, cid, tmp_path, monkeypatch
):
    monkeypatch.setenv("PDCAT_CACHE_DIR", str(tmp_path / "cache"))
    files = {"disk.hdd": _blocks(111, 112, 113, 114), "config.pvs": b"<config/>"}
    pack = build_pack(files)
    push_pack(publisher, cid, "1.0", ARCH, pack)
    first = _client_pull(backend, cid, "1.0", tmp_path / "ok", "vm")
    _assert_tree(first.path, files)

    bad = _digest(_blocks(112))
    other_bad = _digest(_blocks(114))
    backend.put_object(chunk_key(cid, bad), secrets.token_bytes(2000))  # a bit flip, a bad disk, an admin
    backend.put_object(chunk_key(cid, other_bad), _ZSTD.compress(_blocks(1)))  # valid zstd, wrong bytes

    # the real client refuses to finish, says why, and has the catalog re-check (and quarantine) it
    with pytest.raises(ChunkCorrupt) as failed:
        _client_pull(backend, cid, "1.0", tmp_path / "bad", "vm")
    message = str(failed.value)
    assert "quarantined" in message and "push" in message, message
    assert (bad[:12] in message) or (other_bad[:12] in message), message
    assert not (tmp_path / "bad" / "vm.pvm").exists()

    # whichever of the two the client did not report, a report through the route quarantines
    r = user.post(f"/catalog/{cid}/1.0/{ARCH}/pull/report", json={"digests": [bad, other_bad]})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer["quarantined"]) | set(answer["intact"]) == {bad, other_bad}
    # a corrupt chunk the client did not reach is quarantined now; one it did is already gone
    for digest in (bad, other_bad):
        url = pull_urls(user, cid, "1.0", ARCH, [digest]).json()["urls"][digest]
        assert plain.get(url).status_code == 404, f"chunk {digest[:12]} is still in chunks/"
    # the good ones were left alone
    for digest in set(pack.digests) - {bad, other_bad}:
        url = pull_urls(user, cid, "1.0", ARCH, [digest]).json()["urls"][digest]
        assert download_chunk(url) == pack.chunks[digest]

    # a forced push of the same content is told exactly those two are missing, and repairs them
    session = _session(publisher, cid, "1.0", pack, force=True)
    put_index(publisher, session, index_bytes(pack))
    answer = _ask(publisher, session["upload_id"], pack.digests)
    assert set(answer["urls"]) == {bad, other_bad}
    upload_chunks(answer["urls"], pack.chunks, session["put_headers"])
    assert sorted(_verify(publisher, session["upload_id"], [bad, other_bad])["verified"]) == sorted([bad, other_bad])
    assert commit(publisher, session["upload_id"]).status_code == 200
    again = _client_pull(backend, cid, "1.0", tmp_path / "again", "vm")
    _assert_tree(again.path, files)


def test_report_quarantines_a_corrupt_chunk(backend, publisher, user, cid):
    files = {"disk": _blocks(121, 122)}
    pack = build_pack(files)
    push_pack(publisher, cid, "1.0", ARCH, pack)
    bad = _digest(_blocks(122))
    backend.put_object(chunk_key(cid, bad), b"")  # an empty object under the name
    r = user.post(f"/catalog/{cid}/1.0/{ARCH}/pull/report", json={"digests": [bad]})
    assert r.status_code == 200, r.text
    assert r.json() == {"quarantined": [bad], "intact": []}
    url = pull_urls(user, cid, "1.0", ARCH, [bad]).json()["urls"][bad]
    assert plain.get(url).status_code == 404
    # the next push is told it is missing
    session = _session(publisher, cid, "2.0", pack)
    answer = _ask(publisher, session["upload_id"], pack.digests)
    assert set(answer["urls"]) == {bad}


def test_report_refuses_digests_of_other_versions(publisher, user, cid):
    push_pack(publisher, cid, "1.0", ARCH, {"disk": _blocks(131)})
    stranger = _digest(_blocks(132))
    r = user.post(f"/catalog/{cid}/1.0/{ARCH}/pull/report", json={"digests": [stranger]})
    assert_error(r, 400, "invalid_input")


# ---- (e) an expired staging URL ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif("embedded" not in BACKENDS, reason="needs the embedded server (PDCAT_TEST_BACKENDS)")
def test_an_expired_staging_url_is_refused_and_a_fresh_one_works(tmp_path: Path):
    """Only the embedded server can be started with a short URL expiry here: the shared cloud backends
    sign for 900 s (and moto checks no expiry at all); Azurite's expiry is its port test's business."""
    secret = "expiry-" + secrets.token_hex(24)
    env = {"PDCAT_JWT_SECRET": secret, "PDCAT_URL_EXPIRY_SECONDS": "2", "PDCAT_LOG_LEVEL": "WARNING"}
    with start_embedded(tmp_path / "catalog", env=env) as server:
        token = issue_token(secret, "publisher", ["PUBLISHER"])[0]
        with httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}) as c:
            files = {"disk": _blocks(141, 142)}
            pack = build_pack(files)
            session = _session(c, "expiry", "1.0", pack)
            answer = _ask(c, session["upload_id"], pack.digests)
            index_url = declare_index(c, session["upload_id"], index_bytes(pack)).json()["index_url"]
            time.sleep(3.5)
            late = plain.put(index_url, content=index_bytes(pack))
            assert_error(late, 403, "forbidden")
            for url in answer["urls"].values():
                assert_error(plain.put(url, content=b"late"), 403, "forbidden")
            assert sorted(_verify(c, session["upload_id"], pack.digests)["missing"]) == sorted(pack.digests)
            # fresh URLs: asked again (here by beginning again, which takes over the session)
            session = _session(c, "expiry", "1.0", pack)
            put_index(c, session, index_bytes(pack))
            fresh = _ask(c, session["upload_id"], pack.digests)
            upload_chunks(fresh["urls"], pack.chunks, session["put_headers"])
            assert sorted(_verify(c, session["upload_id"], pack.digests)["verified"]) == sorted(pack.digests)
            assert commit(c, session["upload_id"]).status_code == 200
            _assert_pulls(c, "expiry", "1.0", files)


# ---- (f) page sizes and foreign sessions -----------------------------------------------------------------


def _fake_digests(n: int) -> list[str]:
    return [hashlib.sha256(f"fake-{i}".encode()).hexdigest() for i in range(n)]


def test_pages_larger_than_the_limits_are_400(publisher, user, cid):
    pack = build_pack({"disk": _blocks(151)})
    push_pack(publisher, cid, "1.0", ARCH, pack)
    session = _session(publisher, cid, "2.0", pack)
    uid = session["upload_id"]
    assert_error(ask_chunks(publisher, uid, _fake_digests(501)), 400, "invalid_input")
    assert_error(verify(publisher, uid, _fake_digests(33)), 400, "invalid_input")
    assert_error(pull_urls(user, cid, "1.0", ARCH, _fake_digests(501)), 400, "invalid_input")
    r = user.post(f"/catalog/{cid}/1.0/{ARCH}/pull/report", json={"digests": _fake_digests(17)})
    assert_error(r, 400, "invalid_input")
    # the limits themselves are accepted
    assert ask_chunks(publisher, uid, _fake_digests(500)).status_code == 200
    v = verify(publisher, uid, _fake_digests(32))
    assert v.status_code == 200 and len(v.json()["missing"]) == 32, v.text
    # malformed pages
    for bad in ([], ["not-a-digest"], "abc", None, [pack.digests[0].upper()]):
        assert_error(publisher.post(f"/uploads/{uid}/chunks", json={"digests": bad}), 400, "invalid_input")
        assert_error(publisher.post(f"/uploads/{uid}/verify", json={"digests": bad}), 400, "invalid_input")


def _foreign_calls(client: httpx.Client, upload_id: str, digests: list[str]) -> list[httpx.Response]:
    return [
        ask_chunks(client, upload_id, digests),
        verify(client, upload_id, digests),
        commit(client, upload_id),
        client.delete(f"/uploads/{upload_id}"),
    ]


def test_a_session_cannot_be_used_by_another_publisher(publisher, mallory, cid):
    files = {"disk": _blocks(161, 162)}
    pack = build_pack(files)
    session = _session(publisher, cid, "1.0", pack)
    put_index(publisher, session, index_bytes(pack))
    answer = _ask(publisher, session["upload_id"], pack.digests)
    upload_chunks(answer["urls"], pack.chunks, session["put_headers"])
    answers = _foreign_calls(mallory, session["upload_id"], pack.digests)
    statuses = {r.request.url.path.rsplit("/", 1)[-1] + f" ({r.request.method})": r.status_code for r in answers}
    assert all(r.status_code == 404 for r in answers), f"another publisher used the session: {statuses}"
    for r in answers:
        assert_error(r, 404, "not_found")
    assert sorted(_verify(publisher, session["upload_id"], pack.digests)["verified"]) == sorted(pack.digests)
    assert commit(publisher, session["upload_id"]).status_code == 200
    _assert_pulls(publisher, cid, "1.0", files)


def test_a_hidden_session_is_404_to_another_publisher(backend, mallory, cid):
    """Pushed for ADMIN only: a PUBLISHER cannot even tell the session exists."""
    pack = build_pack({"disk": _blocks(171)})
    with backend.http(roles=["ADMIN"], subject="alice-admin") as alice:
        session = _session(alice, cid, "1.0", pack, required_roles=["ADMIN"])
    for r in _foreign_calls(mallory, session["upload_id"], pack.digests):
        assert_error(r, 404, "not_found")


def test_forged_and_garbled_upload_ids_are_404(publisher, user, cid):
    pack = build_pack({"disk": _blocks(181)})
    session = _session(publisher, cid, "1.0", pack)
    real = json.loads(base64.urlsafe_b64decode(session["upload_id"] + "=" * (-len(session["upload_id"]) % 4)))
    forged = [*real[:3], secrets.token_urlsafe(12)]
    forged_id = base64.urlsafe_b64encode(json.dumps(forged, separators=(",", ":")).encode()).decode().rstrip("=")
    for upload_id in (forged_id, "garbage", "e30", session["upload_id"][:-2]):
        for r in _foreign_calls(publisher, upload_id, pack.digests):
            assert_error(r, 404, "not_found")
    # a USER cannot push at all: 403 before anything about the session is revealed
    for r in _foreign_calls(user, session["upload_id"], pack.digests):
        assert_error(r, 403, "forbidden")


def test_the_server_survives_the_attacks(backend):
    """Last in the module: every attack above left the backend answering."""
    _healthy(backend)
