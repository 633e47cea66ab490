"""FileBlobStore beyond the port contract: signed URLs, key validation, atomic streamed writes."""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from core.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from core.local.file_blobs import FileBlobStore, validate_key
from core.ports import BlobInfo

SIGNING_KEY = b"unit-test-signing-key-0123456789abcdef"
BASE_URL = "http://127.0.0.1:9999"
KEY = "catalogs/ubuntu/chunks/" + "ab" * 32
NOW = 1_900_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "data", BASE_URL + "/", SIGNING_KEY, max_object_size=1 << 20)


def _params(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    assert parts.path.startswith("/blobs/")
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    return parts.path.removeprefix("/blobs/"), query


def _temp_files(store: FileBlobStore) -> list[str]:
    return os.listdir(store.root / "tmp")


# ---- signed URLs --------------------------------------------------------------------------------


def test_presign_url_shape(store: FileBlobStore) -> None:
    url = store.presign(KEY, "PUT", 300, now=NOW)
    assert url.startswith(f"{BASE_URL}/blobs/{KEY}?")
    key, query = _params(url)
    assert key == KEY
    assert query["method"] == "PUT"
    assert query["expires"] == str(int(NOW) + 300)
    assert len(query["signature"]) == 64
    assert SIGNING_KEY.hex() not in url and SIGNING_KEY.decode() not in url


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_verify_accepts_fresh_url(store: FileBlobStore, method: str) -> None:
    key, q = _params(store.presign(KEY, method, 300, now=NOW))  # type: ignore[arg-type]
    store.verify(key, method, q["expires"], q["signature"], now=NOW)
    store.verify(key, method, int(q["expires"]), q["signature"], now=NOW + 299)
    store.verify_query(key, method, q, now=NOW)


def test_verify_refuses_tampered_signature(store: FileBlobStore) -> None:
    key, q = _params(store.presign(KEY, "GET", 300, now=NOW))
    sig = q["signature"]
    tampered = ("0" if sig[0] != "0" else "1") + sig[1:]
    with pytest.raises(Forbidden, match="signature does not match"):
        store.verify(key, "GET", q["expires"], tampered, now=NOW)


def test_verify_refuses_other_key(store: FileBlobStore) -> None:
    _key, q = _params(store.presign(KEY, "GET", 300, now=NOW))
    with pytest.raises(Forbidden, match="signature does not match"):
        store.verify("catalogs/ubuntu/chunks/" + "cd" * 32, "GET", q["expires"], q["signature"], now=NOW)
    with pytest.raises(Forbidden, match="signature does not match"):
        store.verify("catalogs/debian/chunks/" + "ab" * 32, "GET", q["expires"], q["signature"], now=NOW)


def test_verify_refuses_other_method(store: FileBlobStore) -> None:
    key, q = _params(store.presign(KEY, "GET", 300, now=NOW))
    with pytest.raises(Forbidden, match="signature does not match"):
        store.verify(key, "PUT", q["expires"], q["signature"], now=NOW)
    with pytest.raises(Forbidden):
        store.verify_query(key, "PUT", q, now=NOW)
    with pytest.raises(Forbidden):  # rewriting the method parameter does not help
        store.verify_query(key, "PUT", {**q, "method": "PUT"}, now=NOW)


def test_verify_refuses_extended_expiry(store: FileBlobStore) -> None:
    key, q = _params(store.presign(KEY, "GET", 300, now=NOW))
    with pytest.raises(Forbidden, match="signature does not match"):
        store.verify(key, "GET", str(int(q["expires"]) + 3600), q["signature"], now=NOW)


def test_verify_refuses_expired_url(store: FileBlobStore) -> None:
    key, q = _params(store.presign(KEY, "GET", 300, now=NOW))
    with pytest.raises(Forbidden, match="URL expired"):
        store.verify(key, "GET", q["expires"], q["signature"], now=NOW + 300)
    with pytest.raises(Forbidden, match="URL expired"):
        store.verify(key, "GET", q["expires"], q["signature"], now=NOW + 86400)


def test_verify_refuses_url_of_another_signing_key(store: FileBlobStore, tmp_path: Path) -> None:
    other = FileBlobStore(tmp_path / "other", BASE_URL, b"another-signing-key-0123456789")
    key, q = _params(other.presign(KEY, "GET", 300, now=NOW))
    with pytest.raises(Forbidden, match="signature does not match"):
        store.verify(key, "GET", q["expires"], q["signature"], now=NOW)


@pytest.mark.parametrize("expires", ["", "abc", "-1", "1e9", "12.5", " 1900000300", "9" * 20])
def test_verify_malformed_expires_is_invalid(store: FileBlobStore, expires: str) -> None:
    _key, q = _params(store.presign(KEY, "GET", 300, now=NOW))
    with pytest.raises(InvalidInput):
        store.verify(KEY, "GET", expires, q["signature"], now=NOW)


@pytest.mark.parametrize("signature", ["", "zz", "ab" * 31, "AB" * 32, "é" * 64])
def test_verify_malformed_signature_is_invalid(store: FileBlobStore, signature: str) -> None:
    _key, q = _params(store.presign(KEY, "GET", 300, now=NOW))
    with pytest.raises(InvalidInput):
        store.verify(KEY, "GET", q["expires"], signature, now=NOW)


def test_verify_malformed_method_and_query(store: FileBlobStore) -> None:
    key, q = _params(store.presign(KEY, "GET", 300, now=NOW))
    with pytest.raises(InvalidInput):
        store.verify(key, "DELETE", q["expires"], q["signature"], now=NOW)
    with pytest.raises(InvalidInput):
        store.verify_query(key, "GET", {"method": "GET", "expires": q["expires"]}, now=NOW)


def test_head_is_allowed_with_a_get_url(store: FileBlobStore) -> None:
    key, q = _params(store.presign(KEY, "GET", 300, now=NOW))
    store.verify_query(key, "HEAD", q, now=NOW)


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1])
def test_presign_refuses_bad_expiry(store: FileBlobStore, expires_in: int) -> None:
    with pytest.raises(InvalidInput):
        store.presign(KEY, "GET", expires_in)


def test_repr_and_errors_do_not_leak_the_signing_key(store: FileBlobStore) -> None:
    assert SIGNING_KEY.decode() not in repr(store)
    with pytest.raises(ValueError):
        FileBlobStore(store.root, BASE_URL, b"short")


# ---- key validation -----------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "../x",
    "a/../../b",
    "a/./b",
    ".",
    "..",
    "/abs",
    "a//b",
    "a/",
    "a\\b",
    "a\x00b",
    "a b",
    "a?b",
    "a%2e%2e/b",
    "ä",
    "x" * 1025,
    "a/" + "y" * 300,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_invalid_everywhere(store: FileBlobStore, key: str) -> None:
    with pytest.raises(InvalidInput):
        validate_key(key)
    with pytest.raises(InvalidInput):
        store.presign(key, "GET", 60)
    with pytest.raises(InvalidInput):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidInput):
        store.get_bytes(key)
    with pytest.raises(InvalidInput):
        store.open_for_read(key)
    with pytest.raises(InvalidInput):
        store.delete([key])
    with pytest.raises(InvalidInput):
        store.verify(key, "GET", "1", "0" * 64)
    assert list(store.root.parent.rglob("x")) == []


@pytest.mark.parametrize("prefix", ["../", "/abs", "a//", "a/../", "a\\"])
def test_bad_prefixes_are_invalid(store: FileBlobStore, prefix: str) -> None:
    with pytest.raises(InvalidInput):
        store.list(prefix)


@pytest.mark.parametrize(
    "key", ["catalogs/ubuntu/1.0+b:2/arm64/index.json", "a", "A-b_c.d", ".hidden/x", "a/..b", "x" * 255]
)
def test_good_keys(store: FileBlobStore, key: str) -> None:
    assert validate_key(key) == key
    store.put_bytes(key, b"ok")
    assert store.get_bytes(key) == b"ok"
    assert list(store.list("")) == [BlobInfo(key, 2)]


def test_symlink_out_of_the_root_is_refused(store: FileBlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (store.root / "objects" / "catalogs").mkdir()
    os.symlink(outside, store.root / "objects" / "catalogs" / "evil")
    with pytest.raises(InvalidInput):
        store.get_bytes("catalogs/evil/secret")
    with pytest.raises(InvalidInput):
        store.put_bytes("catalogs/evil/new", b"x")
    assert not (outside / "new").exists()
    assert list(store.list("catalogs/")) == []


def test_keys_differing_only_in_case_do_not_collide(store: FileBlobStore) -> None:
    store.put_bytes("catalogs/x/V1/arm64/index.json", b"upper")
    store.put_bytes("catalogs/x/v1/arm64/index.json", b"lower")
    assert store.get_bytes("catalogs/x/V1/arm64/index.json") == b"upper"
    assert store.get_bytes("catalogs/x/v1/arm64/index.json") == b"lower"
    assert [b.key for b in store.list("catalogs/x/")] == [
        "catalogs/x/V1/arm64/index.json",
        "catalogs/x/v1/arm64/index.json",
    ]
    assert [b.key for b in store.list("catalogs/x/V")] == ["catalogs/x/V1/arm64/index.json"]


def test_key_that_is_a_prefix_of_another(store: FileBlobStore) -> None:
    store.put_bytes("a/b", b"x")
    with pytest.raises(Conflict):
        store.put_bytes("a", b"y")
    with pytest.raises(NotFound):
        store.get_bytes("a")
    store.delete(["a"])
    assert store.get_bytes("a/b") == b"x"
    assert _temp_files(store) == []


# ---- reads --------------------------------------------------------------------------------------


def test_open_for_read(store: FileBlobStore) -> None:
    store.put_bytes(KEY, b"hello world")
    handle, size = store.open_for_read(KEY)
    with handle:
        assert size == 11
        assert handle.read() == b"hello world"
    with pytest.raises(NotFound):
        store.open_for_read(KEY + "0")
    with pytest.raises(NotFound):
        store.open_for_read("catalogs/ubuntu")  # a directory is not an object


# ---- writes -------------------------------------------------------------------------------------


class _Unreadable(io.RawIOBase):
    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body must not be read")


def test_payload_too_large_before_reading(store: FileBlobStore) -> None:
    with pytest.raises(PayloadTooLarge):
        store.write_stream(KEY, _Unreadable(), (1 << 20) + 1)  # type: ignore[arg-type]
    assert _temp_files(store) == []


def test_write_stream_exactly_at_the_limit(store: FileBlobStore) -> None:
    data = os.urandom(1 << 20)
    store.write_stream(KEY, io.BytesIO(data), len(data))
    assert store.get_bytes(KEY) == data


def test_write_stream_reads_only_length_bytes(store: FileBlobStore) -> None:
    stream = io.BytesIO(b"0123456789")
    store.write_stream(KEY, stream, 4)
    assert store.get_bytes(KEY) == b"0123"
    assert stream.read() == b"456789"


def test_truncated_stream_leaves_no_object_and_no_temp_file(store: FileBlobStore) -> None:
    with pytest.raises(InvalidInput, match="truncated"):
        store.write_stream(KEY, io.BytesIO(b"x" * 1000), 2000)
    assert list(store.list("")) == []
    assert _temp_files(store) == []


def test_truncated_stream_keeps_the_previous_object(store: FileBlobStore) -> None:
    store.put_bytes(KEY, b"previous")
    with pytest.raises(InvalidInput):
        store.write_stream(KEY, io.BytesIO(b"new"), 10)
    assert store.get_bytes(KEY) == b"previous"
    assert _temp_files(store) == []


class _Interrupted(io.RawIOBase):
    """A body that fails mid-way, after checking that nothing partial is visible."""

    def __init__(self, store: FileBlobStore, exc: BaseException) -> None:
        self.store = store
        self.exc = exc
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls == 1:
            return b"x" * min(size, 1000)
        assert list(self.store.list("")) == []  # the partial upload is invisible
        assert len(_temp_files(self.store)) == 1
        raise self.exc


@pytest.mark.parametrize("exc", [OSError("connection reset"), KeyboardInterrupt()])
def test_failing_stream_cleans_up(store: FileBlobStore, exc: BaseException) -> None:
    stream = _Interrupted(store, exc)
    with pytest.raises(type(exc)):
        store.write_stream(KEY, stream, 5000)  # type: ignore[arg-type]
    assert stream.calls == 2
    assert list(store.list("")) == []
    assert _temp_files(store) == []


def test_negative_length_is_invalid(store: FileBlobStore) -> None:
    with pytest.raises(InvalidInput):
        store.write_stream(KEY, io.BytesIO(b""), -1)


# ---- listing and deleting -----------------------------------------------------------------------


def test_list_order_matches_plain_key_order(store: FileBlobStore) -> None:
    keys = ["a.b", "a/x", "a-b", "a/b/c", "a0", "aB", "ab", "A"]
    for key in keys:
        store.put_bytes(key, b"1")
    assert [b.key for b in store.list("")] == sorted(keys)


def test_delete_prunes_empty_directories(store: FileBlobStore) -> None:
    store.put_bytes("catalogs/x/chunks/aa", b"1")
    store.put_bytes("catalogs/y/chunks/bb", b"2")
    store.delete(["catalogs/x/chunks/aa"])
    assert not (store.root / "objects" / "catalogs" / "x").exists()
    assert (store.root / "objects" / "catalogs" / "y" / "chunks" / "bb").exists()
    store.delete(["catalogs/y/chunks/bb"])
    assert os.listdir(store.root / "objects") == []
    store.put_bytes("catalogs/x/chunks/aa", b"again")
    assert store.get_bytes("catalogs/x/chunks/aa") == b"again"


def test_delete_validates_every_key_before_deleting_any(store: FileBlobStore) -> None:
    store.put_bytes("a", b"1")
    with pytest.raises(InvalidInput):
        store.delete(["a", "../b"])
    assert store.get_bytes("a") == b"1"


def test_stale_temp_files_are_removed_on_start(store: FileBlobStore) -> None:
    stale = store.root / "tmp" / "put-old.part"
    fresh = store.root / "tmp" / "put-new.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (0, 0))
    FileBlobStore(store.root, BASE_URL, SIGNING_KEY)
    assert sorted(_temp_files(store)) == ["put-new.part"]


# ---- a spooled request body is adopted, anything else copied ---------------------------------------


def _spooled(directory: Path, data: bytes) -> io.BufferedRandom:
    path = directory / f"body-{os.urandom(4).hex()}.part"
    path.write_bytes(data)
    return open(path, "r+b")


def test_a_body_spooled_in_the_store_s_temp_folder_is_renamed_into_place(store: FileBlobStore) -> None:
    data = os.urandom(5000)
    with _spooled(store.spool_dir, data) as body:
        inode = os.fstat(body.fileno()).st_ino
        store.write_stream(KEY, body, len(data))
    stored = store.root / "objects" / Path(*KEY.split("/"))
    assert stored.read_bytes() == data and stored.stat().st_ino == inode
    assert _temp_files(store) == []


@pytest.mark.parametrize("case", ["elsewhere", "longer", "read-begun", "renamed-away"])
def test_any_other_file_is_copied_and_left_alone(store: FileBlobStore, tmp_path: Path, case: str) -> None:
    data = os.urandom(5000)
    directory = tmp_path if case == "elsewhere" else store.spool_dir
    with _spooled(directory, data + (b"extra" if case == "longer" else b"")) as body:
        inode, name = os.fstat(body.fileno()).st_ino, body.name
        if case == "read-begun":
            body.seek(10)
            data = data[10:]
        if case == "renamed-away":  # its name now names another file: never move that one
            os.rename(name, name + ".moved")
            Path(name).write_bytes(b"someone else's")
        store.write_stream(KEY, body, len(data))
    stored = store.root / "objects" / Path(*KEY.split("/"))
    assert stored.read_bytes() == data and stored.stat().st_ino != inode
    assert os.path.exists(name)
