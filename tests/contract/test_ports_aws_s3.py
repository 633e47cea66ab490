"""The S3 blob store (aws_app) against a real S3 server, SeaweedFS, on loopback.

It runs the shared :class:`BlobStoreContract` and :class:`PresignedUrlContract` (SeaweedFS checks
SigV4 signatures, expiry, the method and ``If-None-Match: *``, which moto does not), then what only
S3 has: the shape of SigV4 URLs, the regional endpoint, a byte round trip through presigned URLs with
a plain HTTP client, request counts, and error translation. SeaweedFS is started once per module
(per xdist worker) with an identity for the test key pair; each test class gets a bucket of its
own. Credentials are held by an explicit ``boto3.Session``: nothing is written to ``os.environ``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
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
from botocore.response import StreamingBody
from botocore.stub import Stubber

from aws_app.chalicelib.s3_blobs import S3BlobStore, make_s3_client
from core.errors import InvalidInput, NotFound, PayloadTooLarge, PdcatError, Unavailable
from core.ports import BlobInfo, BlobStore
from infra.local.seaweed import RunningSeaweed, start_seaweed
from infra.local.servers import free_port
from tests.contract.test_ports import BlobStoreContract, PresignedUrlContract

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIAPDCATTESTING0001"
SECRET_ACCESS_KEY = "pdcat-test-secret-" + uuid.uuid4().hex  # must never show up in a URL or message
REPO = Path(__file__).resolve().parents[2]


def _session() -> Any:
    return boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, region_name=REGION
    )


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSeaweed]:
    # raises with SeaweedFS's log if it cannot start; only this module's key pair is admitted
    server = start_seaweed(
        tmp_path_factory.mktemp("seaweed"), access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="class")
def bucket(seaweed: RunningSeaweed) -> str:
    """A fresh bucket for each test class."""
    name = f"pdcat-{uuid.uuid4().hex[:16]}"
    store = S3BlobStore(name, region=REGION, endpoint_url=seaweed.url, session=_session())
    store.create_bucket()
    store.create_bucket()  # idempotent
    store.close()
    return name


def _store(seaweed: RunningSeaweed, bucket: str, **kw: Any) -> S3BlobStore:
    return S3BlobStore(bucket, region=REGION, endpoint_url=seaweed.url, session=_session(), **kw)


@pytest.fixture
def s3(seaweed: RunningSeaweed, bucket: str) -> Iterator[S3BlobStore]:
    store = _store(seaweed, bucket)
    yield store
    store.close()


class TestS3BlobStore(BlobStoreContract):
    # Sequential PutObjects: just over one page is enough here; TestS3RequestCounts covers 2,500.
    many_objects = 1050

    @pytest.fixture
    def blobs(self, s3: S3BlobStore) -> Iterator[BlobStore]:
        yield s3

    @pytest.fixture
    def secrets(self) -> list[str]:
        return [SECRET_ACCESS_KEY]

    @staticmethod
    def listing_order(key: str) -> Any:
        """SeaweedFS deviates from S3 here: it lists a directory tree depth first, so ``1.0/...`` comes
        before ``1.0.1/...`` although ``.`` sorts before ``/`` (AWS S3 lists in plain UTF-8 byte order)."""
        return key.split("/")


class TestS3PresignedUrlsEnforced(PresignedUrlContract):
    """SeaweedFS checks what a URL allows: signature (method, key), expiry."""

    @pytest.fixture
    def blobs(self, s3: S3BlobStore) -> Iterator[BlobStore]:
        yield s3


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


class TestS3PresignedUrls:
    # What the server enforces is TestS3PresignedUrlsEnforced; this is the shape of the URL itself:
    # SigV4 parameters, the exact object path, the requested lifetime, the endpoint.
    def test_url_is_sigv4_and_scoped_to_one_object(self, s3: S3BlobStore, seaweed: RunningSeaweed, bucket: str) -> None:
        key = f"catalogs/c{uuid.uuid4().hex[:8]}/chunks/{'ab' * 32}"
        for method in ("GET", "PUT"):
            url = s3.presign(key, method, 321)
            parts = urlsplit(url)
            assert f"{parts.scheme}://{parts.netloc}" == seaweed.url
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

    @pytest.mark.parametrize(
        ("region", "bucket_name", "host", "path"),
        [
            ("eu-west-1", "pdcat-vms", "pdcat-vms.s3.eu-west-1.amazonaws.com", "/a/b"),
            ("us-east-1", "pdcat-vms", "pdcat-vms.s3.us-east-1.amazonaws.com", "/a/b"),
            # a dotted name cannot be a virtual host under TLS: path style, still regional
            ("eu-west-1", "pdcat.vms", "s3.eu-west-1.amazonaws.com", "/pdcat.vms/a/b"),
        ],
    )
    def test_without_endpoint_urls_use_the_regional_endpoint(
        self, region: str, bucket_name: str, host: str, path: str
    ) -> None:
        # never the global s3.amazonaws.com: it redirects for buckets outside us-east-1, and a
        # presigned request cannot follow a redirect. Presigning is local: no network here.
        session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, region_name=region
        )
        store = S3BlobStore(bucket_name, region=region, session=session)
        for method in ("GET", "PUT"):
            url = store.presign("a/b", method, 300)
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc, parts.path) == ("https", host, path)
            assert _query(url)["X-Amz-Credential"].endswith(f"/{region}/s3/aws4_request")
        assert store.calls == {}
        store.close()

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
            s3.head(key)
        with pytest.raises(InvalidInput):
            s3.put_if_absent(key, b"x")
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


class TestS3ConditionalWrites:
    """``put_if_absent`` on a real server: If-None-Match: * is honoured, races have one winner."""

    def test_races_have_one_winner_every_time(self, s3: S3BlobStore) -> None:
        base = f"catalogs/c{uuid.uuid4().hex[:8]}/chunks"
        # SeaweedFS serialises conditional writes to one key with a lock it polls each second, so a
        # round of 6 takes up to a few seconds: 3 rounds (and the contract's own race) are enough.
        writers = 6
        for round_ in range(3):
            key = f"{base}/{round_:064x}"
            start = threading.Barrier(writers)

            def write(i: int, key: str = key, start: threading.Barrier = start) -> bool:
                start.wait()
                return s3.put_if_absent(key, b"writer-%d-" % i + bytes(1000 * i))

            with ThreadPoolExecutor(writers) as pool:
                results = list(pool.map(write, range(writers)))
            assert results.count(True) == 1, results
            winner = results.index(True)
            assert s3.get_bytes(key) == b"writer-%d-" % winner + bytes(1000 * winner)
        assert s3.calls == {"PutObject": 3 * writers, "GetObject": 3}

    def test_a_plain_put_is_not_refused_by_an_earlier_conditional_one(self, s3: S3BlobStore) -> None:
        key = f"catalogs/c{uuid.uuid4().hex[:8]}/x"
        assert s3.put_if_absent(key, b"one") is True
        s3.put_bytes(key, b"two")  # put_bytes overwrites (indexes, marks): only chunks are write-once
        assert s3.put_if_absent(key, b"three") is False
        assert s3.get_bytes(key) == b"two"

    def test_an_empty_object_is_never_replaced_either(self, s3: S3BlobStore) -> None:
        # a verified chunk is never replaced by put_if_absent, whatever its size or content
        key = f"catalogs/c{uuid.uuid4().hex[:8]}/chunks/{'77' * 32}"
        assert s3.put_if_absent(key, b"") is True
        assert s3.put_if_absent(key, b"not empty") is False
        info = s3.head(key)
        assert info is not None and info.size == 0


class TestS3BoundedReads:
    def test_head_costs_one_request(self, s3: S3BlobStore) -> None:
        key = f"catalogs/c{uuid.uuid4().hex[:8]}/h"
        s3.put_bytes(key, b"abc")
        s3.reset_calls()
        info = s3.head(key)
        assert info is not None and (info.key, info.size) == (key, 3) and info.modified is not None
        assert s3.head(key + "-missing") is None
        assert s3.calls == {"HeadObject": 2}

    def test_max_bytes_edges(self, s3: S3BlobStore) -> None:
        key = f"catalogs/c{uuid.uuid4().hex[:8]}/e"
        s3.put_bytes(key, b"")
        assert s3.get_bytes(key, max_bytes=0) == b""
        s3.put_bytes(key, b"1")
        with pytest.raises(PayloadTooLarge):
            s3.get_bytes(key, max_bytes=0)
        for bad in (-1, True, 1.5):
            with pytest.raises(InvalidInput):
                s3.get_bytes(key, max_bytes=bad)  # type: ignore[arg-type]

    def test_too_large_is_refused_before_the_body_is_read(self) -> None:
        client = make_s3_client(REGION, "http://127.0.0.1:9", session=_session(), max_attempts=1)
        store = S3BlobStore("bucket", region=REGION, client=client)
        raw = _CountingStream(b"z" * 100_000)
        with Stubber(client) as stub:
            stub.add_response("get_object", {"Body": StreamingBody(raw, 100_000), "ContentLength": 100_000})
            with pytest.raises(PayloadTooLarge):
                store.get_bytes("a/b", max_bytes=1000)
        assert raw.read_bytes == 0 and raw.closed

    def test_a_lying_length_still_reads_no_more_than_max_plus_one(self) -> None:
        client = make_s3_client(REGION, "http://127.0.0.1:9", session=_session(), max_attempts=1)
        store = S3BlobStore("bucket", region=REGION, client=client)
        raw = _CountingStream(b"z" * 100_000)
        with Stubber(client) as stub:
            stub.add_response("get_object", {"Body": StreamingBody(raw, 10), "ContentLength": 10})
            with pytest.raises(PayloadTooLarge):
                store.get_bytes("a/b", max_bytes=1000)
        assert raw.read_bytes <= 1001


class _CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


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
            lambda: store.get_bytes("a/b", max_bytes=10),
            lambda: store.head("a/b"),
            lambda: store.put_if_absent("a/b", b"x"),
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

    def test_wrong_secret_is_refused_by_the_server(self, seaweed: RunningSeaweed, bucket: str) -> None:
        # SeaweedFS checks SigV4 signatures: a wrong secret is refused (moto accepted anything)
        session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key="not-the-secret", region_name=REGION
        )
        store = S3BlobStore(bucket, region=REGION, endpoint_url=seaweed.url, session=session, max_attempts=1)
        with pytest.raises(Unavailable, match="access denied"):
            store.put_bytes("a/b", b"x")
        with pytest.raises(Unavailable, match="access denied"):
            store.head("a/b")
        assert httpx.get(f"{seaweed.url}/{bucket}/a/b", timeout=10).status_code == 403  # unsigned
        store.close()

    def test_connect_timeout_is_unavailable(self, seaweed: RunningSeaweed, bucket: str) -> None:
        store = _store(seaweed, bucket, max_attempts=1)

        def time_out(**_kw: Any) -> None:
            raise ConnectTimeoutError(endpoint_url=seaweed.url)

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

    @pytest.mark.parametrize(
        ("code", "status", "expected"),
        [
            ("NoSuchKey", 404, None),
            ("404", 404, None),
            ("AccessDenied", 403, Unavailable),
            ("InternalError", 500, Unavailable),
        ],
    )
    def test_head_errors_are_translated(self, code: str, status: int, expected: type[PdcatError] | None) -> None:
        client = make_s3_client(REGION, "http://127.0.0.1:9", session=_session(), max_attempts=1)
        store = S3BlobStore("b", region=REGION, client=client)
        with Stubber(client) as stub:
            stub.add_client_error("head_object", service_error_code=code, http_status_code=status)
            if expected is None:
                assert store.head("a/b") is None
            else:
                with pytest.raises(expected):
                    store.head("a/b")

    def test_conditional_put_outcomes(self) -> None:
        client = make_s3_client(REGION, "http://127.0.0.1:9", session=_session(), max_attempts=1)
        store = S3BlobStore("b", region=REGION, client=client)
        expected = {"Bucket": "b", "Key": "a/b", "Body": b"x", "IfNoneMatch": "*"}
        with Stubber(client) as stub:
            stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412, expected_params=expected)
            assert store.put_if_absent("a/b", b"x") is False
            # 409: another conditional write to the key was in flight; retried, then decided
            stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
            stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412)
            assert store.put_if_absent("a/b", b"x") is False
            stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
            stub.add_response("put_object", {}, expected_params=expected)
            assert store.put_if_absent("a/b", b"x") is True
            stub.add_client_error("put_object", "AccessDenied", http_status_code=403)
            with pytest.raises(Unavailable):
                store.put_if_absent("a/b", b"x")
            for _ in range(6):
                stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
            with pytest.raises(PdcatError):
                store.put_if_absent("a/b", b"x")
            stub.assert_no_pending_responses()
        assert store.calls == {"PutObject": 12}

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
