"""Shared fixtures. A *backend* is a running catalog reachable over real HTTP on loopback.

``backend`` is parametrised by name; today the embedded server (``pdcat serve`` as a child process).
The AWS and Azure frontends add their names here and the whole contract suite runs against them
unchanged. If a server cannot start, the fixture raises: a test never silently skips.
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.api import CatalogClient
from core.auth import issue_token
from infra.local.servers import REPO, RunningServer, start_chalice_local, start_embedded, start_moto

# Backends the whole contract and e2e suites run against: the embedded server, and the AWS frontend
# (the Chalice app under `chalice local`, DynamoDB and S3 on a real moto server).
# PDCAT_TEST_BACKENDS=embedded narrows a run to one.
BACKENDS = os.environ.get("PDCAT_TEST_BACKENDS", "embedded,aws-http").split(",")
TEST_JWT_SECRET = "contract-tests-" + secrets.token_hex(24)
ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)


@dataclass
class Backend:
    """What a contract test may know about a backend: its URL and how to mint identities."""

    name: str
    url: str
    jwt_secret: str
    supports_password_login: bool
    server: RunningServer | None = None
    admin_password: str | None = None
    processes: list[Any] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return self.url + "/api/v1"

    def token(
        self, subject: str = "tester", roles: Iterable[str] = (), claims: Iterable[str] = (), ttl: int = 3600
    ) -> str:
        return issue_token(self.jwt_secret, subject, list(roles), list(claims), ttl)[0]

    def http(
        self, *, roles: Iterable[str] = (), claims: Iterable[str] = (), subject: str = "tester", anonymous: bool = False
    ) -> httpx.Client:
        """A raw HTTP client for the API, authenticated as a principal with these roles/claims."""
        headers = {} if anonymous else {"Authorization": f"Bearer {self.token(subject, roles, claims)}"}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=60)

    def client(
        self, *, roles: Iterable[str] = (), claims: Iterable[str] = (), subject: str = "tester"
    ) -> CatalogClient:
        return CatalogClient(self.url, token=self.token(subject, roles, claims))


def _embedded(tmp: Path) -> Backend:
    server = start_embedded(
        tmp / "catalog",
        env={"PDCAT_JWT_SECRET": TEST_JWT_SECRET, "PDCAT_ADMIN_PASSWORD": ADMIN_PASSWORD, "PDCAT_LOG_LEVEL": "WARNING"},
    )
    return Backend(
        "embedded",
        server.url,
        TEST_JWT_SECRET,
        supports_password_login=True,
        server=server,
        admin_password=ADMIN_PASSWORD,
    )


AWS_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _aws_http(tmp: Path) -> Backend:
    """The Chalice app under ``chalice local``, with DynamoDB and S3 on a real moto server."""
    sys.path.insert(0, str(REPO / "aws_app"))
    import boto3
    from chalicelib.dynamo_store import create_table
    from chalicelib.s3_blobs import S3BlobStore

    moto = start_moto(tmp / "moto", serial=True)
    name = f"pdcat-{uuid.uuid4().hex[:12]}"
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    for key, value in AWS_TEST_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    create_table(name, region="us-east-1", host=moto.url)
    S3BlobStore(name, region="us-east-1", endpoint_url=moto.url, session=session).create_bucket()
    env = {
        **AWS_TEST_CREDENTIALS,
        "PDCAT_TABLE": name,
        "PDCAT_BUCKET": name,
        "PDCAT_DYNAMODB_ENDPOINT": moto.url,
        "PDCAT_S3_ENDPOINT": moto.url,
        "PDCAT_JWT_SECRET": TEST_JWT_SECRET,
        "PDCAT_LOG_LEVEL": "WARNING",
    }
    server = start_chalice_local(env, tmp / "chalice")
    return Backend("aws-http", server.url, TEST_JWT_SECRET, supports_password_login=False, processes=[server, moto])


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    factories = {"embedded": _embedded, "aws-http": _aws_http}
    b = factories[request.param](tmp_path_factory.mktemp(request.param))
    try:
        yield b
    finally:
        if b.server is not None:
            b.server.stop()
        for process in b.processes:
            process.stop()


@pytest.fixture
def cid() -> str:
    """A fresh catalog id per test, so tests sharing one backend never see each other's data."""
    return f"t-{uuid.uuid4().hex[:12]}"
