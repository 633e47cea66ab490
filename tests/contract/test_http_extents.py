"""Index formats 2 and 3 over HTTP on every backend (docs/adr-004-incremental-chunking.md,
docs/adr-005-blake3-object-names.md): objects named by the root of their blocks and verified by the
server, extents into the base version's objects, the base a push is offered (and the format a series
keeps), and the commit rules an index must pass."""

from __future__ import annotations

import hashlib
import json
import random

import httpx

from core.pack import FORMAT_BLAKE3, FORMAT_EXTENTS, Naming
from tests.contract.helpers import (
    ask_chunks,
    assert_error,
    begin_push,
    build_pack,
    commit,
    download_chunk,
    extents_pack,
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

BS = 65536
CS = 131072
N2, N3 = Naming(FORMAT_EXTENTS, BS), Naming(FORMAT_BLAKE3, BS)
DISK = "vm.pvm/disk.hds"
CONFIG = "vm.pvm/config.pvs"


def _error(r, status: int, code: str, words: str) -> None:
    """The one error shape, and a message that names what is wrong."""
    message = assert_error(r, status, code)["message"]
    assert words in message, message


def _rnd(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


A, B, C = _rnd(1, CS), _rnd(2, CS), _rnd(3, 70000)
SIZE = 2 * CS + len(C)
V1 = {
    CONFIG: (9, [(0, 9, b"<config/>", 0)]),
    DISK: (SIZE, [(0, CS, A, 0), (CS, CS, B, 0), (2 * CS, len(C), C, 0)]),
}


def _push(client: httpx.Client, cid: str, version: str, files, fmt: int = 2, **body) -> tuple[dict, dict]:
    pack = extents_pack(files, fmt=fmt)
    r = begin_push(client, cid, version, "x86_64", pack, **body)
    assert r.status_code == 201, r.text
    session = r.json()
    sent = send_chunks(client, session["upload_id"], pack)
    assert not sent["verdict"]["corrupt"] and not sent["verdict"]["missing"], sent["verdict"]
    put_index(client, session, index_bytes(pack))
    c = commit(client, session["upload_id"])
    assert c.status_code == 200, c.text
    return session, {**sent, "manifest": c.json(), "pack": pack}


def test_an_incremental_push_sends_only_new_objects_and_pulls_back_whole(publisher, cid):
    first, v1 = _push(publisher, cid, "1", V1)
    assert first["base"] is None  # nothing to build on yet
    assert v1["manifest"]["pack"]["format"] == 2
    assert v1["manifest"]["pack"]["chunk_count"] == 4

    new_block = _rnd(4, BS)  # v2 rewrites the second block of the disk's first cell
    v2_files = {
        CONFIG: V1[CONFIG],
        DISK: (SIZE, [(0, BS, A, 0), (BS, BS, new_block, 0), (CS, CS, B, 0), (2 * CS, len(C), C, 0)]),
    }
    second, v2 = _push(publisher, cid, "2", v2_files)
    base = second["base"]
    assert (base["version"], base["pack_digest"]) == ("1", v1["manifest"]["pack"]["digest"])
    offered = plain.get(base["index_url"])
    assert offered.status_code == 200 and hashlib.sha256(offered.content).hexdigest() == base["pack_digest"]
    assert sorted(v2["uploaded"]) == [N2.digest(new_block)]  # everything else is stored
    assert len(v2["stored"]) == 4

    answer = pull(publisher, cid, "2", "x86_64").json()
    index = fetch_index(answer)
    assert index["format"] == 2 and index["block_size"] == BS
    assert all(o["stored_size"] > 0 for o in index["objects"])
    objects = {o["digest"]: o for o in index["objects"]}
    urls = pull_urls(publisher, cid, "2", "x86_64", list(objects)).json()["urls"]
    raw = {d: download_chunk(u) for d, u in urls.items()}
    assert all(N2.digest(data) == d for d, data in raw.items())
    disk = next(f for f in index["files"] if f["path"] == DISK)
    rebuilt = bytearray(disk["size"])
    for file_offset, length, number, object_offset in disk["extents"]:
        source = raw[index["objects"][number]["digest"]]
        rebuilt[file_offset : file_offset + length] = source[object_offset : object_offset + length]
    assert bytes(rebuilt) == A[:BS] + new_block + B + C

    report = publisher.post(f"/catalog/{cid}/2/x86_64/pull/report", json={"digests": list(objects)[:2]})
    assert report.status_code == 200, report.text
    assert report.json() == {"quarantined": [], "intact": list(objects)[:2]}


def test_the_server_names_objects_by_their_block_root(publisher, cid):
    pack = extents_pack(V1)
    session = begin_push(publisher, cid, "1", "x86_64", pack).json()
    digests = list(pack.chunks)
    asked = ask_chunks(publisher, session["upload_id"], digests).json()
    wrong = {digests[0]: pack.chunks[digests[1]], digests[1]: pack.chunks[digests[1]] + b"x"}
    upload_chunks({d: asked["urls"][d] for d in wrong}, wrong, asked["put_headers"])
    verdict = verify(publisher, session["upload_id"], list(wrong)).json()
    assert sorted(verdict["corrupt"]) == sorted(wrong)
    # format 1's name for the same bytes (their sha256) is not a format-2 object's name
    plain_name = hashlib.sha256(A).hexdigest()
    asked = ask_chunks(publisher, session["upload_id"], [plain_name]).json()
    upload_chunks(asked["urls"], {plain_name: A}, asked["put_headers"])
    assert verify(publisher, session["upload_id"], [plain_name]).json()["corrupt"] == [plain_name]


def _begin_and_send(client: httpx.Client, cid: str, pack, **body) -> dict:
    r = begin_push(client, cid, "1", "x86_64", pack, **body)
    assert r.status_code == 201, r.text
    session = r.json()
    sent = send_chunks(client, session["upload_id"], pack)
    assert not sent["verdict"]["corrupt"], sent["verdict"]
    return session


def test_commit_refuses_an_index_that_breaks_the_format_rules(publisher, cid):
    pack = extents_pack(V1)
    session = _begin_and_send(publisher, cid, pack)

    def refused(index: dict, status: int, code: str, rule: str) -> None:
        data = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
        put_index(publisher, session, data)
        _error(commit(publisher, session["upload_id"]), status, code, rule)

    with_size = json.loads(json.dumps(pack.index))
    with_size["objects"][0]["stored_size"] = 1
    refused(with_size, 400, "invalid_input", "C2")
    overlapping = json.loads(json.dumps(pack.index))
    overlapping["files"][1]["extents"][1][0] = 0
    refused(overlapping, 400, "invalid_input", "I5")
    renamed = json.loads(json.dumps(pack.index))
    renamed["objects"][1]["digest"] = renamed["objects"][2]["digest"]
    refused(renamed, 400, "invalid_input", "I3")
    refused(extents_pack(V1, block_size=CS).index, 400, "invalid_input", "block_size")  # not the session's grid
    unverified = extents_pack({**V1, "vm.pvm/more": (BS, [(0, BS, _rnd(9, BS), 0)])})
    put_index(publisher, session, index_bytes(unverified))
    _error(commit(publisher, session["upload_id"]), 409, "conflict", "not verified")
    put_index(publisher, session, index_bytes(pack))
    assert commit(publisher, session["upload_id"]).status_code == 200


def test_commit_refuses_an_index_that_keeps_more_than_twice_its_data(publisher, cid):
    big = 4 * BS  # objects of four blocks, each used for one: four times the data stays alive
    objects = [_rnd(20 + i, big) for i in range(3)]
    files = {DISK: (3 * BS, [(i * BS, BS, obj, 0) for i, obj in enumerate(objects)])}
    pack = extents_pack(files, chunk_size=big)
    session = _begin_and_send(publisher, cid, pack)
    put_index(publisher, session, index_bytes(pack))
    _error(commit(publisher, session["upload_id"]), 400, "invalid_input", "C4")


def test_the_base_a_push_is_offered(su, publisher, cid):
    _push(publisher, cid, "1", V1)
    _push(publisher, cid, "2", V1)
    pack = extents_pack(V1)
    assert begin_push(publisher, cid, "3", "x86_64", pack).json()["base"]["version"] == "2"  # the newest
    assert begin_push(publisher, cid, "4", "x86_64", pack, base="1").json()["base"]["version"] == "1"
    assert begin_push(publisher, cid, "5", "arm64", pack).json()["base"] is None  # another architecture
    assert begin_push(publisher, cid, "6", "x86_64", pack, base="9").json()["base"] is None  # not an error: see below
    _error(begin_push(publisher, cid, "6", "x86_64", pack, base="!bad"), 400, "invalid_input", "version")
    grid = build_pack({DISK: A})
    _error(begin_push(publisher, cid, "7", "x86_64", grid, base="1"), 400, "invalid_input", "format-2")
    assert begin_push(publisher, cid, "8", "x86_64", grid).json()["base"] is None  # format 1 has none

    # a version the pusher cannot see: no base at all, exactly as if dedup were off; a named base that
    # does not exist answers the same before and after, and a malformed one the same 400
    push_pack(su, cid, "secret", "x86_64", grid, required_roles=["hidden-team"])
    assert begin_push(publisher, cid, "9", "x86_64", pack).json()["base"] is None
    assert begin_push(publisher, cid, "10", "x86_64", pack, base="1").json()["base"] is None
    assert begin_push(publisher, cid, "11", "x86_64", pack, base="9").json()["base"] is None
    _error(begin_push(publisher, cid, "11", "x86_64", pack, base="!bad"), 400, "invalid_input", "version")


def test_the_formats_never_reach_each_others_objects(publisher, cid):
    """Format-1 chunks live under chunks/ (named by sha256), format-2 objects under objects/ (named by a
    root that binds their size): no index of one format can confirm, claim or quarantine the other's."""
    _push(publisher, cid, "1", V1)
    x = N2.digest(A)
    # a format-1 index naming a format-2 object: its session does not see it stored, so no commit
    grid = build_pack({DISK: A}, chunk_size=CS)
    grid.index["files"][0]["chunks"][0]["digest"] = x
    grid.chunks = {x: A}
    r = begin_push(publisher, cid, "2", "x86_64", grid)
    assert ask_chunks(publisher, r.json()["upload_id"], [x]).json()["stored"] == []
    put_index(publisher, r.json(), index_bytes(grid))
    _error(commit(publisher, r.json()["upload_id"]), 409, "conflict", "not verified")
    # a format-1 version's report cannot quarantine it either: the format-1 name is not stored at all
    push_pack(publisher, cid, "3", "x86_64", {DISK: A}, chunk_size=CS)
    plain_name = hashlib.sha256(A).hexdigest()
    report = publisher.post(f"/catalog/{cid}/3/x86_64/pull/report", json={"digests": [plain_name]})
    assert report.json() == {"quarantined": [], "intact": [plain_name]}
    answer = pull(publisher, cid, "1", "x86_64").json()
    assert download_chunk(pull_urls(publisher, cid, "1", "x86_64", [x]).json()["urls"][x]) == A
    assert answer["manifest"]["pack"]["format"] == 2

    # the root's preimage pushed as a format-1 chunk lands in chunks/, not where format 2 looks
    preimage_pack = extents_pack({DISK: (CS, [(0, CS, A[:CS], 0)])})
    root_input = b"pdcat-object-v2\x00" + BS.to_bytes(8, "big") + CS.to_bytes(8, "big")
    root_input += bytes.fromhex(preimage_pack.index["objects"][0]["blocks"])
    assert hashlib.sha256(root_input).hexdigest() == x
    push_pack(publisher, cid, "4", "x86_64", {DISK: root_input}, chunk_size=CS)
    r = begin_push(publisher, cid, "5", "x86_64", extents_pack({DISK: (CS, [(0, CS, _rnd(7, CS), 0)])}))
    assert ask_chunks(publisher, r.json()["upload_id"], [x]).json()["stored"] == [x]  # the real object, untouched


def test_an_index_cannot_give_a_stored_object_another_size(publisher, cid):
    """The name binds the size: an index that shortens a stored object names another object."""
    _push(publisher, cid, "1", V1)
    pack = extents_pack(V1)
    session = begin_push(publisher, cid, "2", "x86_64", pack).json()
    send_chunks(publisher, session["upload_id"], pack)
    lying = json.loads(json.dumps(pack.index))
    disk = next(f for f in lying["files"] if f["path"] == DISK)
    number = disk["extents"][2][2]  # the object of the short tail C
    lying["objects"][number]["size"] -= 1
    disk["size"] -= 1
    lying["size"] -= 1
    disk["extents"][2][1] -= 1
    put_index(publisher, session, json.dumps(lying, sort_keys=True, separators=(",", ":")).encode())
    _error(commit(publisher, session["upload_id"]), 400, "invalid_input", "I3")


def test_a_format_3_series_is_named_and_verified_with_blake3(publisher, cid):
    first, v1 = _push(publisher, cid, "1", V1, fmt=3)
    assert first["format"] == 3 and first["base"] is None
    assert v1["manifest"]["pack"]["format"] == 3
    assert sorted(v1["uploaded"]) == sorted(N3.digest(raw) for raw in (b"<config/>", A, B, C))

    new_block = _rnd(5, BS)  # v2 rewrites the first block of the disk's second cell
    v2_files = {
        CONFIG: V1[CONFIG],
        DISK: (SIZE, [(0, CS, A, 0), (CS, BS, new_block, 0), (CS + BS, BS, B, BS), (2 * CS, len(C), C, 0)]),
    }
    second, v2 = _push(publisher, cid, "2", v2_files, fmt=3)
    assert second["format"] == 3 and second["base"]["version"] == "1"
    assert v2["uploaded"] == [N3.digest(new_block)]  # everything else is stored
    index = fetch_index(pull(publisher, cid, "2", "x86_64").json())
    assert index["format"] == 3
    urls = pull_urls(publisher, cid, "2", "x86_64", [o["digest"] for o in index["objects"]]).json()["urls"]
    assert all(N3.digest(download_chunk(u)) == d for d, u in urls.items())

    # bytes named by format 2's root (sha256) are not a format-3 object, and the other way round
    pack = extents_pack(V1, fmt=3)
    session = begin_push(publisher, cid, "3", "x86_64", pack).json()
    sha_name = N2.digest(_rnd(6, BS))
    asked = ask_chunks(publisher, session["upload_id"], [sha_name]).json()
    upload_chunks(asked["urls"], {sha_name: _rnd(6, BS)}, asked["put_headers"])
    assert verify(publisher, session["upload_id"], [sha_name]).json()["corrupt"] == [sha_name]


def test_a_format_2_series_stays_in_format_2(publisher, cid):
    """A format-3 push whose base is a format-2 version is told to push format 2, so the series keeps
    deduplicating; a format-2 push is never offered a format-3 base (it could not name its blocks)."""
    _push(publisher, cid, "1", V1, fmt=2)
    answer = begin_push(publisher, cid, "2", "x86_64", extents_pack(V1, fmt=3)).json()
    assert answer["format"] == 2 and answer["base"]["version"] == "1"
    _, v2 = _push(publisher, cid, "2", V1, fmt=2)  # the session is format 2: its index must be too
    assert v2["uploaded"] == [] and v2["manifest"]["pack"]["format"] == 2

    # a session told format 2 refuses a format-3 index
    r = begin_push(publisher, cid, "3", "x86_64", extents_pack(V1, fmt=3))
    session = r.json()
    assert session["format"] == 2
    pack3 = extents_pack(V1, fmt=3)
    send_chunks(publisher, session["upload_id"], pack3)
    put_index(publisher, session, index_bytes(pack3))
    _error(commit(publisher, session["upload_id"]), 400, "invalid_input", "format")

    other = cid + "-b3"
    _push(publisher, other, "1", V1, fmt=3)
    answer = begin_push(publisher, other, "2", "x86_64", extents_pack(V1, fmt=2)).json()
    assert answer["format"] == 2 and answer["base"] is None
    answer = begin_push(publisher, other, "3", "x86_64", extents_pack(V1, fmt=3)).json()
    assert answer["format"] == 3 and answer["base"]["version"] == "1"
