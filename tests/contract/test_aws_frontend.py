"""What only the AWS frontend has to prove, beyond the shared contract suite that runs against it.

- A pull costs 2 DynamoDB requests (a read and the download counter; by explicit version and by
  ``latest``) and no S3 request (protocol v2: the client fetches the index from storage), counted on
  the real stores (DynamoDB on a real moto server, S3 on a real SeaweedFS server), through the same
  router the Lambda serves.
- The Lambda handler, invoked with an API Gateway proxy event, logs one JSON line per request with
  the request id (API Gateway's own when the client sent none) and no secret.
- Importing the handler module loads no AWS SDK: the cold start stays cheap (figure printed).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from aws_app.chalicelib.dynamo_store import DynamoApiKeyStore, DynamoManifestStore, create_table
from aws_app.chalicelib.s3_blobs import S3BlobStore
from core.api import build_router
from core.auth import AuthConfig, Authenticator, TokenVerifier, issue_token
from core.http import Request, Router
from core.logs import configure_logging
from core.service import CatalogService
from infra.local.seaweed import RunningSeaweed, start_seaweed
from infra.local.servers import REPO, RunningProcess, start_moto
from tests.contract.helpers import push_pack

REGION = "us-east-1"
SECRET = "aws-frontend-tests-" + uuid.uuid4().hex


class RouterTransport(httpx.BaseTransport):
    """httpx straight into core's router: the Lambda's code path without API Gateway in front."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.router.dispatch(
            Request(
                method=request.method,
                path=request.url.path,
                query=dict(request.url.params),
                headers=dict(request.headers),
                body=request.read(),
            )
        )
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body, request=request)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSeaweed]:
    """S3 (moto serves DynamoDB only); the Lambda's default credential chain finds these in the env."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"), access_key_id="testing", secret_access_key="testing")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stores(moto: RunningProcess, seaweed: RunningSeaweed) -> tuple[DynamoManifestStore, S3BlobStore, DynamoApiKeyStore]:
    name = f"pdcat-{uuid.uuid4().hex[:12]}"
    create_table(name, REGION, moto.url)
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    blobs = S3BlobStore(name, region=REGION, endpoint_url=seaweed.url, session=session)
    blobs.create_bucket()
    return (
        DynamoManifestStore(name, region=REGION, host=moto.url),
        blobs,
        DynamoApiKeyStore(name, region=REGION, host=moto.url),
    )


def test_a_pull_costs_two_dynamodb_requests_and_no_s3_request(stores: Any) -> None:
    store, blobs, api_keys = stores
    authenticator = Authenticator(TokenVerifier(AuthConfig(jwt_secret=SECRET)), api_keys)
    router = build_router(CatalogService(store, blobs, api_keys), lambda r: authenticator.authenticate(r.headers))
    token = issue_token(SECRET, "puller", ["ADMIN"], [], 600)[0]
    cid = f"c-{uuid.uuid4().hex[:10]}"
    with httpx.Client(
        transport=RouterTransport(router), base_url="http://lambda/api/v1", headers={"Authorization": f"Bearer {token}"}
    ) as api:
        push_pack(api, cid, "1.0", "arm64", {"disk.hds": os.urandom(200_000), "config.pvs": b"<xml/>"})
        push_pack(api, cid, "2.0", "arm64", {"disk.hds": os.urandom(100_000)})

        for version in ("1.0", "latest"):
            store.reset_calls()
            blobs.reset_calls()
            r = api.post(f"/catalog/{cid}/{version}/arm64/pull")
            assert r.status_code == 200, r.text
            print(f"pull {version}: DynamoDB {dict(store.operations)}, S3 {blobs.calls}")
            # one read (GetItem by key, or one Query of the catalog id for latest) and the download
            # counter, atomically; never a Scan
            read = "GetItem" if version == "1.0" else "Query"
            assert dict(store.operations) == {read: 1, "UpdateItem": 1}, (version, store.operations)
            # storage protocol v2: the client fetches the index itself; the URL is signed locally
            assert blobs.calls == {}, (version, blobs.calls)
            assert r.json()["format"] == "chunks" and r.json()["index_url"]

        assert api.get(f"/catalog/{cid}/1.0/arm64").json()["download_count"] == 1
        assert api.get(f"/catalog/{cid}/2.0/arm64").json()["download_count"] == 1


def _gateway_event(method: str, path: str, headers: dict[str, str], request_id: str) -> dict[str, Any]:
    """An API Gateway (REST, proxy) event as Lambda delivers it, for the health route."""
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": "/api" + path,
            "requestId": request_id,
            "stage": "api",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": None,
        "isBase64Encoded": False,
    }


def test_lambda_logs_json_with_the_request_id_and_no_secret(
    stores: Any, moto: RunningProcess, seaweed: RunningSeaweed, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, blobs, _ = stores
    monkeypatch.syspath_prepend(str(REPO / "aws_app"))
    for key, value in {
        "PDCAT_TABLE": store.table_name,
        "PDCAT_BUCKET": blobs.bucket,
        "PDCAT_DYNAMODB_ENDPOINT": moto.url,
        "PDCAT_S3_ENDPOINT": seaweed.url,
        "PDCAT_JWT_SECRET": SECRET,
        "PDCAT_LOG_LEVEL": "INFO",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    import app as lambda_module  # aws_app/app.py, as Lambda imports it

    lambda_module.router.cache_clear()
    stream = io.StringIO()
    token = issue_token(SECRET, "logger", ["USER"], [], 600)[0]
    try:
        lambda_module.router()
        configure_logging("INFO", stream)  # the bootstrap configured stderr; capture the same formatter here
        answer = lambda_module.app(
            _gateway_event("GET", "/api/v1/auth/whoami", {"Authorization": f"Bearer {token}"}, "gw-req-42"),
            None,
        )
        assert answer["statusCode"] == 200, answer
        assert answer["headers"]["X-Request-Id"] == "gw-req-42"
        answer = lambda_module.app(
            _gateway_event(
                "GET", "/api/v1/auth/whoami", {"Authorization": "Bearer not-a-jwt", "X-Request-Id": "client-7"}, "gw-43"
            ),
            None,
        )
        assert answer["statusCode"] == 401
        assert answer["headers"]["X-Request-Id"] == "client-7"  # the client's own id wins
    finally:
        lambda_module.router.cache_clear()
        logging.getLogger().handlers.clear()

    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    requests = [doc for doc in lines if doc["message"] == "request"]
    assert [(d["request_id"], d["status"], d["path"]) for d in requests] == [
        ("gw-req-42", 200, "/api/v1/auth/whoami"),
        ("client-7", 401, "/api/v1/auth/whoami"),
    ]
    assert requests[0]["subject"] == "logger"
    text = stream.getvalue()
    for secret in (SECRET, token, "not-a-jwt", "testing"):
        assert secret not in text


KEY_VAULT_REFERENCE = "@Microsoft.KeyVault(VaultName=pdcat-kv-guessable;SecretName=pdcat-jwt-secret)"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"PDCAT_JWT_SECRET": "Q"}, "PDCAT_JWT_SECRET is too short"),
        ({"PDCAT_JWT_SECRET": "short-secret-" + "q" * 18}, "PDCAT_JWT_SECRET is too short"),  # 31 bytes
        ({"PDCAT_JWT_SECRET": KEY_VAULT_REFERENCE}, "PDCAT_JWT_SECRET is an unresolved Key Vault reference"),
        ({"PDCAT_JWT_SECRET": SECRET, "PDCAT_BUCKET": KEY_VAULT_REFERENCE}, "PDCAT_BUCKET is an unresolved Key"),
    ],
)
def test_unsafe_jwt_secrets_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], change: dict[str, str], named: str
) -> None:
    """The Lambda never checks a token against a secret under 32 bytes or an unresolved reference: the
    catalog refuses to start, in one logged line naming the setting and never its value."""
    monkeypatch.syspath_prepend(str(REPO / "aws_app"))
    for key in [k for k in os.environ if k.startswith("PDCAT_")]:
        monkeypatch.delenv(key)
    for key, value in {"PDCAT_TABLE": "t", "PDCAT_BUCKET": "b", "AWS_DEFAULT_REGION": REGION, **change}.items():
        monkeypatch.setenv(key, value)
    import app as lambda_module  # aws_app/app.py, as Lambda imports it

    bad = next(v for v in change.values() if v != SECRET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyjwt warns about a short HMAC key: that is the point here
        forged = issue_token(bad, "mallory", ["SUPER_USER"], [], 600)[0]
    lambda_module.router.cache_clear()
    try:
        with pytest.raises(RuntimeError) as refused:
            lambda_module.router()
        assert named in str(refused.value) and "\n" not in str(refused.value)
        assert bad not in str(refused.value)
        answer = lambda_module.app(
            _gateway_event("GET", "/api/v1/auth/whoami", {"Authorization": f"Bearer {forged}"}, "gw-bad-1"), None
        )
    finally:
        lambda_module.router.cache_clear()
        logging.getLogger().handlers.clear()
    assert answer["statusCode"] == 500
    logged = capfd.readouterr().err
    assert named in logged
    for text in (answer["body"], logged):
        assert bad not in text and "pdcat-kv-guessable" not in text and forged not in text


def test_cold_import_of_the_handler_loads_no_sdk() -> None:
    """``python -X importtime -c 'import app'``: the SDKs load on the first request, not at import."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import app"],
        cwd=REPO / "aws_app",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    modules: Counter[str] = Counter()
    total_us = 0
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            modules[match.group(3).split(".")[0]] += 1
            if match.group(3) == "app" and not match.group(2).strip(" "):
                total_us = int(match.group(1))
    for heavy in ("boto3", "botocore", "pynamodb", "jwt", "cryptography"):
        assert heavy not in modules, f"{heavy} is imported at cold start"
    assert total_us > 0
    print(f"cold import of aws_app/app.py: {total_us / 1000:.0f} ms (cumulative, -X importtime)")
