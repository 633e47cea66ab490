"""The embedded server's signed blob URLs (``/blobs/<key>?method=&expires=&signature=``).

Embedded-specific: S3 and Azure Blob check their own presigned URLs (``test_ports_aws_s3.py``,
``test_ports_azure_blob.py``), so this module runs against the embedded server only. Every forged,
stretched or re-targeted URL must be refused before a byte moves.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import zstandard

from core.auth import issue_token
from core.local.file_blobs import FileBlobStore
from core.ports import BlobStore
from infra.local.servers import RunningServer, start_embedded
from tests.contract.helpers import (
    ask_chunks,
    assert_error,
    begin_push,
    build_pack,
    fetch_index,
    index_bytes,
    plain,
    pull,
    pull_urls,
    push_pack,
    put_index,
    raw_request,
)
from tests.contract.test_ports import PresignedUrlContract


@pytest.fixture(scope="module")
def backend(started_backends):
    """Only the embedded server: S3 and Azure Blob check their own presigned URLs (their port tests)."""
    return started_backends("embedded")


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def _path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _blocks(*seeds: int) -> bytes:
    return b"".join(hashlib.sha256(f"blob-{s}".encode()).digest() * 128 for s in seeds)


def _get_urls(client: httpx.Client, cid: str, version: str) -> dict[str, str]:
    """A pull: the index from storage, then a GET URL per chunk."""
    answer = pull(client, cid, version, "x86_64").json()
    digests = sorted({c["digest"] for f in fetch_index(answer)["files"] for c in f["chunks"]})
    found: dict[str, str] = pull_urls(client, cid, version, "x86_64", digests).json()["urls"]
    return found


def _put_url(client: httpx.Client, cid: str, version: str, data: bytes) -> tuple[str, str]:
    """A pending push's staging PUT URL for its one chunk: (digest, url)."""
    pending = build_pack({"disk": data})
    session = begin_push(client, cid, version, "x86_64", pending).json()
    put_index(client, session, index_bytes(pending))
    ((digest, url),) = ask_chunks(client, session["upload_id"], pending.digests).json()["urls"].items()
    return digest, url


@pytest.fixture
def urls(publisher, cid) -> dict[str, str]:
    """A committed two-chunk version's GET URLs and a pending push's PUT URL, all freshly signed."""
    a, b = _blocks(1), _blocks(2)
    push_pack(publisher, cid, "1.0", "x86_64", {"disk": a + b})
    gets = _get_urls(publisher, cid, "1.0")
    put_digest, put_url = _put_url(publisher, cid, "2.0", _blocks(3))
    return {
        "get_a": gets[hashlib.sha256(a).hexdigest()],
        "get_b": gets[hashlib.sha256(b).hexdigest()],
        "put": put_url,
        "put_digest": put_digest,
    }


def test_a_signed_url_works_and_only_as_signed(urls):
    r = plain.get(urls["get_a"])
    assert r.status_code == 200
    assert hashlib.sha256(zstandard.ZstdDecompressor().decompress(r.content)).hexdigest() in urls["get_a"]
    head = plain.head(urls["get_a"])
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(r.content)


def test_tampered_signature_is_403(urls):
    url = urls["get_a"]
    sig = dict(parse_qsl(urlsplit(url).query))["signature"]
    forged = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert_error(plain.get(_with_query(url, signature=forged)), 403, "forbidden")
    assert_error(plain.get(_with_query(url, signature="f" * 64)), 403, "forbidden")
    assert_error(plain.get(_with_query(url, signature="nothex")), (400, 403))
    assert_error(plain.get(_with_query(url, signature="")), (400, 403))


def test_stretched_expiry_is_403(urls):
    url = urls["get_a"]
    expires = int(dict(parse_qsl(urlsplit(url).query))["expires"])
    assert_error(plain.get(_with_query(url, expires=str(expires + 3600))), 403, "forbidden")
    assert_error(plain.get(_with_query(url, expires="99999999999")), 403, "forbidden")
    assert_error(plain.get(_with_query(url, expires="-1")), (400, 403))


def test_a_put_url_cannot_be_used_for_get_and_the_other_way_round(urls):
    put = urls["put"]
    assert_error(plain.get(put), 403, "forbidden")
    # rewriting the method parameter breaks the signature
    assert_error(plain.get(_with_query(put, method="GET")), 403, "forbidden")
    original = plain.get(urls["get_a"]).content
    assert_error(plain.put(urls["get_a"], content=b"overwritten"), 403, "forbidden")
    assert_error(plain.put(_with_query(urls["get_a"], method="PUT"), content=b"overwritten"), 403, "forbidden")
    assert plain.get(urls["get_a"]).content == original
    assert_error(plain.post(put, content=b"x"), (403, 405))
    assert_error(plain.delete(urls["get_a"]), (403, 405))
    assert plain.get(urls["get_a"]).status_code == 200


def test_a_url_for_one_key_does_not_open_another(urls, publisher, cid):
    get_a, get_b = urls["get_a"], urls["get_b"]
    b_path = urlsplit(get_b).path
    assert_error(plain.get(_with_path(get_a, b_path)), 403, "forbidden")
    # the same digest in another catalog id is another key
    other_catalog = urlsplit(get_a).path.replace(f"/catalogs/{cid}/", f"/catalogs/{cid}-other/")
    assert_error(plain.get(_with_path(get_a, other_catalog)), 403, "forbidden")
    # a staging PUT URL for one chunk cannot write another chunk, its own verified key or the index
    put = urls["put"]
    assert "/blobs/staging/" in urlsplit(put).path, put
    index_path = f"/blobs/catalogs/{cid}/1.0/x86_64/index.json"
    assert_error(plain.put(_with_path(put, index_path), content=b"{}"), 403, "forbidden")
    assert_error(plain.put(_with_path(put, b_path), content=b"x"), 403, "forbidden")
    own_chunk = f"/blobs/catalogs/{cid}/chunks/{urls['put_digest']}"
    assert_error(plain.put(_with_path(put, own_chunk), content=b"x"), 403, "forbidden")
    assert plain.get(get_b).status_code == 200
    assert pull(publisher, cid, "1.0", "x86_64").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/blobs/../../etc/passwd",
        "/blobs/%2e%2e/%2e%2e/etc/passwd",
        "/blobs/..%2f..%2fetc%2fpasswd",
        "/blobs/catalogs/x/../../../etc/passwd",
        "/blobs/%2Fetc%2Fpasswd",
        "/blobs//etc/passwd",
        "/blobs/catalogs/x/chunks/%00",
        "/blobs/catalogs/x/chunks/a\\b",
        "/blobs/",
    ],
)
def test_path_traversal_in_blob_keys_is_4xx(backend, path):
    for query in ("", "?method=GET&expires=99999999999&signature=" + "0" * 64):
        r = raw_request(backend.url, "GET", path + query)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert_error(r, r.status_code)
        assert "root:" not in r.text
    r = raw_request(backend.url, "PUT", path + "?method=PUT&expires=99999999999&signature=" + "0" * 64, body=b"x")
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)


def test_a_signed_url_with_traversal_appended_is_refused(backend, urls):
    parts = urlsplit(urls["get_a"])
    for suffix in ("/../../../../etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd"):
        r = raw_request(backend.url, "GET", f"{parts.path}{suffix}?{parts.query}")
        assert_error(r, (400, 403, 404))


@pytest.mark.slow
def test_an_expired_url_is_403(tmp_path: Path):
    secret = "expiry-" + secrets.token_hex(24)
    env = {"PDCAT_JWT_SECRET": secret, "PDCAT_URL_EXPIRY_SECONDS": "5", "PDCAT_LOG_LEVEL": "WARNING"}
    with start_embedded(tmp_path / "catalog", env=env) as server:
        token = issue_token(secret, "publisher", ["PUBLISHER"])[0]
        with httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}) as c:
            push_pack(c, "expiry", "1.0", "x86_64", {"disk": _blocks(9)})
            get_url = next(iter(_get_urls(c, "expiry", "1.0").values()))
            _, put_url = _put_url(c, "expiry", "2.0", _blocks(10))
            assert plain.get(get_url).status_code == 200
            deadline = int(dict(parse_qsl(urlsplit(get_url).query))["expires"])
            time.sleep(max(0.0, deadline - time.time()) + 1.0)
            assert_error(plain.get(get_url), 403, "forbidden")
            assert_error(plain.put(put_url, content=b"late"), 403, "forbidden")
            # a fresh URL for the same chunk works again
            fresh = c.post("/catalog/expiry/1.0/x86_64/pull/urls", json={"digests": [get_url.split("?")[0][-64:]]})
            assert plain.get(next(iter(fresh.json()["urls"].values()))).status_code == 200


# ---- the storage-level presigned URL contract, on a live embedded server -------------------------


@pytest.fixture(scope="class")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of this class only: the contract writes objects straight into its data folder."""
    data_dir = tmp_path_factory.mktemp("presigned") / "catalog"
    secret = "presigned-" + secrets.token_hex(24)
    with start_embedded(data_dir, env={"PDCAT_JWT_SECRET": secret, "PDCAT_LOG_LEVEL": "WARNING"}) as server:
        yield server


class TestEmbeddedPresignedUrls(PresignedUrlContract):
    """``FileBlobStore`` URLs, used for real against the server's ``/blobs`` route.

    The store is built over the server's own data folder with the server's own signing key (the
    ``blob-signing-key`` file written at first start, see ``core.local.bootstrap``), so what it
    signs is what the server accepts, and what the server writes is what it reads.
    """

    @pytest.fixture
    def blobs(self, own_server: RunningServer) -> Iterator[BlobStore]:
        signing_key = bytes.fromhex((own_server.data_dir / "blob-signing-key").read_text().strip())
        store = FileBlobStore(own_server.data_dir / "blobs", own_server.url, signing_key)
        yield store
        store.close()

    def test_a_put_url_replaces_a_staged_object(self, blobs: BlobStore, base: str) -> None:
        """Staging keys stay plain PUTs: a client re-uploading a corrupt chunk replaces it."""
        key = f"staging/{base.rsplit('/', 1)[-1]}/chunks/{'ab' * 32}"
        assert self._put(blobs, blobs.presign(key, "PUT", 300), b"corrupt") == 200
        assert self._put(blobs, blobs.presign(key, "PUT", 300), b"good bytes") == 200
        assert blobs.get_bytes(key) == b"good bytes"
        info = blobs.head(key)
        assert info is not None and info.size == len(b"good bytes")
        blobs.delete([key])
