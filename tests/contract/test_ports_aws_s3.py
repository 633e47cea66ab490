"""The S3 blob store (aws_app) against a real ``moto_server`` on loopback.

It runs the shared :class:`BlobStoreContract`, then what only S3 has: SigV4 URL scoping, a byte
round trip through presigned URLs with a plain HTTP client, request counts, and error translation.
moto is started once per module (per xdist worker) and each test class gets a bucket of its own.
Credentials are dummies held by an explicit ``boto3.Session``: nothing is written to ``os.environ``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError
from botocore.stub import Stubber

from aws_app.chalicelib.s3_blobs import S3BlobStore, make_s3_client
from core.errors import InvalidInput, NotFound, PdcatError, Unavailable
from core.ports import BlobInfo, BlobStore
from infra.local.servers import RunningProcess, free_port, start_moto
from tests.contract.test_ports import BlobStoreContract

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIAPDCATTESTING0001"
SECRET_ACCESS_KEY = "pdcat-test-secret-" + uuid.uuid4().hex  # must never show up in a URL or message
REPO = Path(__file__).resolve().parents[2]


def _session() -> Any:
    return boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, region_name=REGION
    )


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    server = start_moto(tmp_path_factory.mktemp("moto"))  # raises with moto's log if it cannot start
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="class")
def bucket(moto: RunningProcess) -> str:
    """A fresh bucket for each test class."""
    name = f"pdcat-{uuid.uuid4().hex[:16]}"
    store = S3BlobStore(name, region=REGION, endpoint_url=moto.url, session=_session())
    store.create_bucket()
    store.create_bucket()  # idempotent
    store.close()
    return name


def _store(moto: RunningProcess, bucket: str, **kw: Any) -> S3BlobStore:
    return S3BlobStore(bucket, region=REGION, endpoint_url=moto.url, session=_session(), **kw)


@pytest.fixture
def s3(moto: RunningProcess, bucket: str) -> Iterator[S3BlobStore]:
    store = _store(moto, bucket)
    yield store
    store.close()


class TestS3BlobStore(BlobStoreContract):
    # moto answers ~100 PutObject/s: just over one page is enough here; TestS3RequestCounts covers 2,500.
    many_objects = 1050

    @pytest.fixture
    def blobs(self, s3: S3BlobStore) -> Iterator[BlobStore]:
        yield s3

    @pytest.fixture
    def secrets(self) -> list[str]:
        return [SECRET_ACCESS_KEY]


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


class TestS3PresignedUrls:
    # moto does not verify presigned signatures or expiry, so scoping and expiry are asserted on
    # the URL itself: SigV4 parameters, the exact object path, the requested lifetime.
    def test_url_is_sigv4_and_scoped_to_one_object(self, s3: S3BlobStore, moto: RunningProcess, bucket: str) -> None:
        key = f"catalogs/c{uuid.uuid4().hex[:8]}/chunks/{'ab' * 32}"
        for method in ("GET", "PUT"):
            url = s3.presign(key, method, 321)
            parts = urlsplit(url)
            assert f"{parts.scheme}://{parts.netloc}" == moto.url
            assert parts.path == f"/{bucket}/{key}"
            query = _query(url)
            assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
            assert query["X-Amz-Expires"] == "321"
            assert "host" in query["X-Amz-SignedHeaders"].split(";")
            assert query["X-Amz-Credential"].startswith(f"{ACCESS_KEY_ID}/")
            assert query["X-Amz-Credential"].endswith(f"/{REGION}/s3/aws4_request")
            assert len(query["X-Amz-Signature"]) == 64
            assert "AWSAccessKeyId=" not in url and "Signature=" not in url.replace("X-Amz-Signature=", "")
            assert SECRET_ACCESS_KEY not in url
        get_sig = _query(s3.presign(key, "GET", 300))["X-Amz-Signature"]
        put_sig = _query(s3.presign(key, "PUT", 300))["X-Amz-Signature"]
        assert get_sig != put_sig

    def test_longest_lifetime_is_seven_days(self, s3: S3BlobStore) -> None:
        assert _query(s3.presign("a/b", "GET", 604800))["X-Amz-Expires"] == "604800"
        assert _query(s3.presign("a/b", "GET", 1))["X-Amz-Expires"] == "1"

    @pytest.mark.parametrize("expires_in", [0, -1, 604801, True, 1.5, "60"])
    def test_bad_lifetime_is_invalid_input(self, s3: S3BlobStore, expires_in: Any) -> None:
        with pytest.raises(InvalidInput):
            s3.presign("a/b", "GET", expires_in)

    @pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b", "a\\b", "a b", "a\x00b", "k" * 1025, 7])
    def test_bad_key_is_invalid_input(self, s3: S3BlobStore, key: Any) -> None:
        with pytest.raises(InvalidInput):
            s3.presign(key, "GET", 60)
        with pytest.raises(InvalidInput):
            s3.put_bytes(key, b"x")
        with pytest.raises(InvalidInput):
            s3.get_bytes(key)
        with pytest.raises(InvalidInput):
            s3.delete(["ok/key", key])
        assert s3.calls == {}  # refused before any request

    def test_bad_method_is_invalid_input(self, s3: S3BlobStore) -> None:
        with pytest.raises(InvalidInput):
            s3.presign("a/b", "DELETE", 60)  # type: ignore[arg-type]

    def test_round_trip_through_presigned_urls_with_plain_http(self, s3: S3BlobStore) -> None:
        base = f"catalogs/c{uuid.uuid4().hex[:8]}"
        key = f"{base}/chunks/{'cd' * 32}"
        data = bytes(range(256)) * 1000 + b"tail"
        with httpx.Client(timeout=30) as http:
            put = http.put(s3.presign(key, "PUT", 300), content=data)
            assert put.status_code == 200, put.text
            got = http.get(s3.presign(key, "GET", 300))
            assert got.status_code == 200, got.text
            assert got.content == data
        assert list(s3.list(f"{base}/")) == [BlobInfo(key, len(data))]
        assert s3.get_bytes(key) == data

    def test_name_and_repr_carry_no_credentials(self, s3: S3BlobStore) -> None:
        assert s3.name == "s3"
        assert SECRET_ACCESS_KEY not in repr(s3) and ACCESS_KEY_ID not in repr(s3)
        assert S3BlobStore("b", region=REGION, name="primary").name == "primary"


class TestS3RequestCounts:
    def test_list_and_delete_2500_objects_cost_three_requests_each(self, s3: S3BlobStore) -> None:
        base = f"catalogs/c{uuid.uuid4().hex[:8]}"
        keys = [f"{base}/chunks/{i:064x}" for i in range(2500)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: s3.put_bytes(k, b"xy"), keys))
        assert s3.calls == {"PutObject": 2500}
        s3.reset_calls()
        listed = list(s3.list(f"{base}/"))
        assert [b.key for b in listed] == keys
        assert {b.size for b in listed} == {2}
        assert s3.calls == {"ListObjectsV2": 3}  # one per 1,000 keys and no HeadObject
        s3.reset_calls()
        s3.delete([*keys, f"{base}/missing"])
        assert s3.calls == {"DeleteObjects": 3}
        assert list(s3.list(f"{base}/")) == []

    def test_client_is_created_lazily(self) -> None:
        store = S3BlobStore("b", region=REGION, endpoint_url="http://127.0.0.1:9")
        assert store._client_obj is None
        code = "import sys, aws_app.chalicelib.s3_blobs; assert not {'boto3', 'botocore'} & set(sys.modules)"
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=30)


class TestS3ErrorTranslation:
    def test_get_missing_is_not_found(self, s3: S3BlobStore) -> None:
        with pytest.raises(NotFound) as info:
            s3.get_bytes(f"catalogs/c{uuid.uuid4().hex[:8]}/missing")
        assert info.value.__cause__ is not None

    def test_closed_port_is_unavailable(self, bucket: str) -> None:
        store = S3BlobStore(
            bucket,
            region=REGION,
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            session=_session(),
            connect_timeout=0.5,
            read_timeout=1,
            max_attempts=1,
        )
        calls: list[Any] = [
            lambda: store.get_bytes("a/b"),
            lambda: store.put_bytes("a/b", b"x"),
            lambda: list(store.list("a/")),
            lambda: store.delete(["a/b"]),
            store.create_bucket,
        ]
        for call in calls:
            with pytest.raises(Unavailable) as info:
                call()
            assert isinstance(info.value.__cause__, EndpointConnectionError)
            assert SECRET_ACCESS_KEY not in str(info.value)
        # presigning is local: it works even when the endpoint is down
        assert store.presign("a/b", "GET", 60).startswith(store.endpoint_url or "")

    def test_connect_timeout_is_unavailable(self, moto: RunningProcess, bucket: str) -> None:
        store = _store(moto, bucket, max_attempts=1)

        def time_out(**_kw: Any) -> None:
            raise ConnectTimeoutError(endpoint_url=moto.url)

        store._client().meta.events.register("before-send.s3", time_out)
        with pytest.raises(Unavailable) as info:
            store.get_bytes("a/b")
        assert isinstance(info.value.__cause__, ConnectTimeoutError)

    @pytest.mark.parametrize(
        ("code", "status", "expected"),
        [
            ("NoSuchKey", 404, NotFound),
            ("404", 404, NotFound),
            ("AccessDenied", 403, Unavailable),
            ("InvalidAccessKeyId", 403, Unavailable),
            ("SignatureDoesNotMatch", 403, Unavailable),
            ("NoSuchBucket", 404, Unavailable),
            ("SlowDown", 503, Unavailable),
            ("InternalError", 500, Unavailable),
            ("InvalidArgument", 400, PdcatError),
        ],
    )
    def test_client_errors_are_translated(self, code: str, status: int, expected: type[PdcatError]) -> None:
        client = make_s3_client(REGION, "http://127.0.0.1:9", session=_session(), max_attempts=1)
        store = S3BlobStore("b", region=REGION, client=client)
        leaky = f"User arn:aws:iam::123456789012:user/x with secret {SECRET_ACCESS_KEY} is not authorized"
        with Stubber(client) as stub:
            stub.add_client_error("get_object", service_error_code=code, service_message=leaky, http_status_code=status)
            with pytest.raises(PdcatError) as info:
                store.get_bytes("a/b")
        assert type(info.value) is expected
        assert SECRET_ACCESS_KEY not in str(info.value) and "123456789012" not in str(info.value)
        assert info.value.__cause__ is not None
        assert store.calls == {"GetObject": 1}

    def test_delete_reports_per_key_errors(self) -> None:
        client = make_s3_client(REGION, "http://127.0.0.1:9", session=_session(), max_attempts=1)
        store = S3BlobStore("b", region=REGION, client=client)
        with Stubber(client) as stub:
            stub.add_response(
                "delete_objects",
                {"Errors": [{"Key": "a/b", "Code": "AccessDenied", "Message": "no"}]},
            )
            with pytest.raises(Unavailable):
                store.delete(["a/b"])
