"""Shared fixtures. A *backend* is a catalog the contract suite can reach through httpx.

``backend`` is parametrised by name: the embedded server (``pdcat serve`` as a child process); the AWS
frontend served by ``chalice local`` (``aws-http``) and in-process through ``chalice.test.Client``
(``aws-inproc``), both over DynamoDB on a real moto server and S3 on a real SeaweedFS server (which,
unlike moto, checks SigV4 signatures, expiry and conditional writes); the Azure frontend under the small
local Functions host (``azure-http``) and in-process (``azure-inproc``), both over the Cosmos DB emulator
and Azurite. Backends reached over a socket (not ``*-inproc``) also serve the end-to-end suite, which
runs the real ``pdcat`` command. If a server cannot start, the fixture raises: a test never skips
silently.
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.api import CatalogClient
from core.auth import issue_token
from infra.local.servers import REPO, RunningProcess, RunningServer, start_chalice_local, start_embedded, start_moto
from tests.backend_names import BACKENDS
from tests.contract.helpers import RawResponse, raw_request

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
    # in-process backends: every request goes through this transport instead of a socket
    transport: Any = None
    # writes one object straight into the backend's storage, through its own blob adapter
    blob_writer: Callable[[str, bytes], None] | None = None

    @property
    def api_url(self) -> str:
        return self.url + "/api/v1"

    def token(
        self, subject: str = "tester", roles: Iterable[str] = (), claims: Iterable[str] = (), ttl: int = 3600
    ) -> str:
        return issue_token(self.jwt_secret, subject, list(roles), list(claims), ttl)[0]

    def http(
        self,
        *,
        roles: Iterable[str] = (),
        claims: Iterable[str] = (),
        subject: str = "tester",
        anonymous: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Client:
        """A raw HTTP client for the API, authenticated as a principal with these roles/claims."""
        auth = {} if anonymous else {"Authorization": f"Bearer {self.token(subject, roles, claims)}"}
        return httpx.Client(
            base_url=self.api_url, headers={**auth, **(headers or {})}, timeout=60, transport=self.transport
        )

    def client(
        self, *, roles: Iterable[str] = (), claims: Iterable[str] = (), subject: str = "tester"
    ) -> CatalogClient:
        return CatalogClient(self.url, token=self.token(subject, roles, claims), transport=self.transport)

    def raw(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> RawResponse:
        """Send ``path`` exactly as given (no dot-segment removal, no re-encoding), as an attacker would."""
        if self.transport is not None:
            return self.transport.raw(method, path, dict(headers or {}), body or b"")
        return raw_request(self.url, method, path, headers=headers, body=body)

    def put_object(self, key: str, data: bytes) -> None:
        """Put ``data`` at ``key`` in this backend's storage, as an admin with access to the bucket
        does (packs the original product pushed, say): not through the catalog's API."""
        if self.blob_writer is None:
            raise RuntimeError(f"no storage writer wired for the {self.name} backend")
        self.blob_writer(key, data)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        for process in self.processes:
            process.stop()
        if self.transport is not None:
            self.transport.close()


def _embedded(tmp: Path, infra: LocalInfra) -> Backend:
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
        blob_writer=_file_writer(server.data_dir / "blobs", server.url),
    )


def _file_writer(root: Path, url: str) -> Callable[[str, bytes], None]:
    """The embedded server's own file store over its data folder (it only signs URLs with its key;
    a write needs none, so a throwaway one is given)."""
    from core.local.file_blobs import FileBlobStore

    return FileBlobStore(root, url, secrets.token_bytes(32)).put_bytes


def _s3_writer(env: dict[str, str]) -> Callable[[str, bytes], None]:
    import boto3
    from chalicelib.s3_blobs import S3BlobStore

    session = boto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )  # fmt: skip
    store = S3BlobStore(env["PDCAT_BUCKET"], region="us-east-1", endpoint_url=env["PDCAT_S3_ENDPOINT"], session=session)
    return store.put_bytes


def _azure_writer(env: dict[str, str]) -> Callable[[str, bytes], None]:
    from azurelib.blob_store import AzureBlobStore

    def write(key: str, data: bytes) -> None:
        store = AzureBlobStore.from_connection_string(env["PDCAT_BLOB_CONNECTION_STRING"], env["PDCAT_BLOB_CONTAINER"])
        try:
            store.put_bytes(key, data)
        finally:
            store.close()

    return write


# moto (DynamoDB) takes any credentials; SeaweedFS (S3) is started with an identity for exactly these.
AWS_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class LocalInfra:
    """The emulators backends share within one test process, started on first use, stopped at the end."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self._moto: RunningProcess | None = None
        self._seaweed: RunningProcess | None = None
        self._cosmos: RunningProcess | None = None
        self._azurite: RunningProcess | None = None

    @property
    def moto(self) -> RunningProcess:
        if self._moto is None:
            self._moto = start_moto(self._tmp.mktemp("moto"), serial=True)
        return self._moto

    @property
    def seaweed(self) -> RunningProcess:
        """SeaweedFS, the S3 of the AWS backends (one bucket each); moto serves their DynamoDB only."""
        if self._seaweed is None:
            from infra.local.seaweed import start_seaweed

            self._seaweed = start_seaweed(
                self._tmp.mktemp("seaweed"),
                access_key_id=AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                secret_access_key=AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            )
        return self._seaweed

    @property
    def cosmos(self) -> RunningProcess:
        if self._cosmos is None:
            from infra.local.cosmos_emulator import start_cosmos

            self._cosmos = start_cosmos(self._tmp.mktemp("cosmos"))
        return self._cosmos

    @property
    def azurite(self) -> RunningProcess:
        if self._azurite is None:
            from infra.local.azurite import start_azurite

            self._azurite = start_azurite(self._tmp.mktemp("azurite"))
        return self._azurite

    def stop(self) -> None:
        for process in (self._moto, self._seaweed, self._cosmos, self._azurite):
            if process is not None:
                process.stop()


def _aws_env(moto: RunningProcess, seaweed: RunningProcess) -> dict[str, str]:
    """A fresh table on moto and bucket on SeaweedFS, and the environment the AWS frontend reads them from."""
    sys.path.insert(0, str(REPO / "aws_app"))
    import boto3
    from chalicelib.dynamo_store import create_table
    from chalicelib.s3_blobs import S3BlobStore

    name = f"pdcat-{uuid.uuid4().hex[:12]}"
    session = boto3.Session(
        aws_access_key_id=AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    for key, value in AWS_TEST_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    create_table(name, region="us-east-1", host=moto.url)
    S3BlobStore(name, region="us-east-1", endpoint_url=seaweed.url, session=session).create_bucket()
    return {
        **AWS_TEST_CREDENTIALS,
        "PDCAT_TABLE": name,
        "PDCAT_BUCKET": name,
        "PDCAT_DYNAMODB_ENDPOINT": moto.url,
        "PDCAT_S3_ENDPOINT": seaweed.url,
        "PDCAT_JWT_SECRET": TEST_JWT_SECRET,
        "PDCAT_LOG_LEVEL": "WARNING",
    }


def _aws_http(tmp: Path, infra: LocalInfra) -> Backend:
    """The Chalice app under ``chalice local``, with DynamoDB on a real moto server and S3 on SeaweedFS."""
    env = _aws_env(infra.moto, infra.seaweed)
    server = start_chalice_local(env, tmp / "chalice")
    return Backend(
        "aws-http", server.url, TEST_JWT_SECRET, supports_password_login=False, processes=[server],
        blob_writer=_s3_writer(env),
    )  # fmt: skip


def _aws_inproc(tmp: Path, infra: LocalInfra) -> Backend:
    """The same app in this process through ``chalice.test.Client``; its bootstrap reads os.environ."""
    from tests.aws_inprocess import ChaliceTransport

    env = _aws_env(infra.moto, infra.seaweed)
    os.environ.update(env)
    return Backend(
        "aws-inproc", "http://aws.inprocess", TEST_JWT_SECRET, supports_password_login=False,
        transport=ChaliceTransport(), blob_writer=_s3_writer(env),
    )  # fmt: skip


def _azure_http(tmp: Path, infra: LocalInfra) -> Backend:
    """The function app under the small local Functions host, on the Cosmos DB emulator and Azurite."""
    from infra.local.azure_host import azure_backend_env, start_azure_host

    env = azure_backend_env(infra.cosmos, infra.azurite, TEST_JWT_SECRET)
    server = start_azure_host(env, tmp / "functions")
    return Backend(
        "azure-http", server.url, TEST_JWT_SECRET, supports_password_login=False, processes=[server],
        blob_writer=_azure_writer(env),
    )  # fmt: skip


def _azure_inproc(tmp: Path, infra: LocalInfra) -> Backend:
    """The same function app in this process; its bootstrap reads os.environ, as app settings."""
    from infra.local.azure_host import azure_backend_env
    from tests.azure_inprocess import AzureFunctionsTransport

    env = azure_backend_env(infra.cosmos, infra.azurite, TEST_JWT_SECRET)
    os.environ.update(env)
    return Backend(
        "azure-inproc", "http://azure.inprocess", TEST_JWT_SECRET, supports_password_login=False,
        transport=AzureFunctionsTransport(), blob_writer=_azure_writer(env),
    )  # fmt: skip


FACTORIES: dict[str, Callable[[Path, LocalInfra], Backend]] = {
    "embedded": _embedded,
    "aws-http": _aws_http,
    "aws-inproc": _aws_inproc,
    "azure-http": _azure_http,
    "azure-inproc": _azure_inproc,
}


@pytest.fixture(scope="session")
def started_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Backend]]:
    """Start each backend once per test process, on first use, whichever suite asks for it first."""
    infra = LocalInfra(tmp_path_factory)
    running: dict[str, Backend] = {}

    def get(name: str) -> Backend:
        if name not in running:
            running[name] = FACTORIES[name](tmp_path_factory.mktemp(name), infra)
        return running[name]

    try:
        yield get
    finally:
        for b in running.values():
            b.stop()
        infra.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest, started_backends: Callable[[str], Backend]) -> Backend:
    return started_backends(request.param)


@pytest.fixture
def cid() -> str:
    """A fresh catalog id per test, so tests sharing one backend never see each other's data."""
    return f"t-{uuid.uuid4().hex[:12]}"
