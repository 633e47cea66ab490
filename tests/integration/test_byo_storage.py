"""Bring-your-own storage against real servers: one suite for every provider, then each one's specifics.

* ``aws-s3`` and ``minio`` run against a real moto server with IAM authentication switched on after
  set-up, so signatures are verified: wrong keys fail the way they fail on AWS. (``aws-s3`` reaches
  moto through the standard ``AWS_ENDPOINT_URL_S3`` setting; ``minio`` through its ``endpoint``.)
* ``azure-storage-account`` runs against Azurite, which checks the account-key signature.
* ``artifactory`` runs against ``tests/fakes/artifactory_server.py`` (Artifactory cannot run here).
* ``local`` runs against a temporary folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from client.byo import MissingExtra, Storage, open_storage, parse_connection_string
from client.byo.common import ResumingReader, open_buffered
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, PdcatError, Unauthenticated, Unavailable
from infra.local.azurite import AZURITE_ACCOUNT, AZURITE_KEY, azurite_account_url, start_azurite
from infra.local.servers import REPO, RunningProcess, start_moto
from tests.fakes.artifactory_server import start_artifactory

MiB = 1 << 20
PART = 5 * MiB  # the S3 minimum, so a 12 MiB file goes up in three parts
BIG = 12 * MiB + 12345
PROVIDERS = ["aws-s3", "minio", "azure-storage-account", "artifactory", "local"]
ART_KEY = "AKCp-test-" + uuid.uuid4().hex
ART_PASSWORD = 'pw;with=odd"chars-' + uuid.uuid4().hex[:8]
ART_TOKEN = "eyJ-test-" + uuid.uuid4().hex


@dataclass
class Moto:
    process: RunningProcess
    key_id: str
    secret: str
    buckets: list[str]

    @property
    def endpoint(self) -> str:
        return self.process.url.removeprefix("http://")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningProcess]]:
    """moto, Azurite and the Artifactory fake, started side by side (start-up is most of the wait)."""
    starters: dict[str, Callable[[], RunningProcess]] = {
        "moto": lambda: start_moto(tmp_path_factory.mktemp("moto")),
        "azurite": lambda: start_azurite(tmp_path_factory.mktemp("azurite")),
        "artifactory": lambda: start_artifactory(
            tmp_path_factory.mktemp("artifactory"),
            ART_KEY,
            username="ci",
            password=ART_PASSWORD,
            access_token=ART_TOKEN,
        ),
    }
    started: dict[str, RunningProcess] = {}
    failures: list[BaseException] = []
    with ThreadPoolExecutor(len(starters)) as pool:
        futures = {name: pool.submit(start) for name, start in starters.items()}
        for name, future in futures.items():
            try:
                started[name] = future.result()
            except Exception as exc:  # raised below, after the others are stopped
                failures.append(exc)
    try:
        if failures:
            raise failures[0]
        yield started
    finally:
        for process in started.values():
            process.stop()


@pytest.fixture(scope="module")
def moto(servers: dict[str, RunningProcess]) -> Moto:
    """moto with an IAM user allowed s3:*; authentication is switched on once the set-up is done."""
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    process = servers["moto"]
    session = boto3.Session(aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1")
    iam = session.client("iam", endpoint_url=process.url)
    iam.create_user(UserName="pdcat-byo")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="pdcat-byo", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="pdcat-byo")["AccessKey"]
    s3 = session.client("s3", endpoint_url=process.url, config=Config(signature_version="s3v4"))
    buckets = ["byo-aws", "byo-minio"]
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    httpx.post(f"{process.url}/moto-api/reset-auth", content=b"0").raise_for_status()
    return Moto(process, key["AccessKeyId"], key["SecretAccessKey"], buckets)


@pytest.fixture(scope="module")
def azurite(servers: dict[str, RunningProcess]) -> RunningProcess:
    from azure.storage.blob import BlobServiceClient

    process = servers["azurite"]
    service = BlobServiceClient(
        azurite_account_url(process.url),
        credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
    )
    service.create_container("byo")
    service.close()
    return process


@pytest.fixture(scope="module")
def artifactory(servers: dict[str, RunningProcess]) -> RunningProcess:
    return servers["artifactory"]


@dataclass
class Case:
    """One provider: its connection string, one with a wrong secret, and the environment it needs."""

    provider: str
    text: str
    wrong: str | None = None
    wrong_secret: str = ""
    missing_place: str | None = None  # a connection string whose bucket/container/repo does not exist
    env: dict[str, str] = field(default_factory=dict)


def _isolated_aws_env(moto: Moto) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_S3": moto.process.url,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def cases(
    moto: Moto, azurite: RunningProcess, artifactory: RunningProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Case]:
    wrong = "Wrong-" + uuid.uuid4().hex
    wrong_azure = base64.b64encode(hashlib.sha512(wrong.encode()).digest()).decode()
    aws = f"provider=aws-s3;bucket=byo-aws;region=us-east-1;access_key={moto.key_id}"
    minio = f"provider=minio;endpoint={moto.endpoint};bucket=byo-minio;access_key={moto.key_id};use_ssl=false"
    azure = (
        f"provider=azure-storage-account;storage_account_name={AZURITE_ACCOUNT};container_name=byo;"
        f"endpoint={azurite_account_url(azurite.url)};storage_account_key="
    )
    art = f"provider=artifactory;url={artifactory.url};repo=generic-local;access_key="
    return {
        "aws-s3": Case(
            "aws-s3",
            f"{aws};secret_key={moto.secret}",
            f"{aws};secret_key={wrong}",
            wrong,
            f"provider=aws-s3;bucket=no-such-bucket;region=us-east-1;access_key={moto.key_id};secret_key={moto.secret}",
            _isolated_aws_env(moto),
        ),
        "minio": Case(
            "minio",
            f"{minio};secret_key={moto.secret}",
            f"{minio};secret_key={wrong}",
            wrong,
            f"{minio.replace('byo-minio', 'no-such-bucket')};secret_key={moto.secret}",
        ),
        "azure-storage-account": Case(
            "azure-storage-account",
            azure + AZURITE_KEY,
            azure + wrong_azure,
            wrong_azure,
            azure.replace("container_name=byo", "container_name=nothere") + AZURITE_KEY,
        ),
        "artifactory": Case(
            "artifactory",
            art + ART_KEY,
            art + wrong,
            wrong,
            (art + ART_KEY).replace("generic-local", "no-such-repo"),
        ),
        "local": Case("local", f'provider=local;catalog_path="{tmp_path_factory.mktemp("catalog") / "my catalog"}"'),
    }


@pytest.fixture(params=PROVIDERS)
def case(request: pytest.FixtureRequest, cases: dict[str, Case], monkeypatch: pytest.MonkeyPatch) -> Case:
    chosen = cases[request.param]
    for name, value in chosen.env.items():
        monkeypatch.setenv(name, value)
    return chosen


@pytest.fixture
def storage(case: Case) -> Iterator[Storage]:
    store = open_storage(parse_connection_string(case.text), part_size=PART, concurrency=2)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def prefix() -> str:
    """A fresh folder per test: tests share buckets but never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:10]}"


def _big_file(path: Path, size: int = BIG) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the shared suite ------------------------------------------------------------------------------


def test_put_file_and_get_file_round_trip(storage: Storage, prefix: str, tmp_path: Path) -> None:
    assert isinstance(storage, Storage)
    source = _big_file(tmp_path / "source.pdpack")
    key = f"{prefix}/vm/vm-arm64-1.0.pdpack"
    storage.put_file(key, source)
    assert storage.exists(key)
    assert storage.size(key) == BIG
    dest = tmp_path / "out" / "vm.pdpack"
    dest.parent.mkdir()
    dest.write_bytes(b"the old content is replaced whole")
    storage.get_file(key, dest)
    assert _sha256(dest) == _sha256(source)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["vm.pdpack"]  # no temporary file left


def test_open_read_streams_the_object(storage: Storage, prefix: str, tmp_path: Path) -> None:
    source = _big_file(tmp_path / "source", 3 * MiB + 7)
    key = f"{prefix}/stream.pdpack"
    storage.put_file(key, source)
    digest = hashlib.sha256()
    pieces = 0
    with storage.open_read(key) as stream:
        while piece := stream.read(1_000_003):
            assert len(piece) <= 1_000_003
            digest.update(piece)
            pieces += 1
    assert digest.hexdigest() == _sha256(source)
    assert pieces >= 4


def test_open_read_resumes_at_its_offset_and_refuses_a_changed_object(
    storage: Storage, case: Case, prefix: str
) -> None:
    data = os.urandom(3 * MiB)
    key = f"{prefix}/resume"
    storage.put_bytes(key, data)
    with storage.open_read(key) as stream:
        raw = getattr(stream, "raw", None)
        if not isinstance(raw, ResumingReader):
            assert case.provider == "local"  # a local file needs no reconnecting
            return
        first = stream.read(MiB)
        raw.reconnect()  # what a dropped connection leads to: a ranged GET from where it stopped
        assert first + stream.read() == data
    with storage.open_read(key) as stream:
        assert stream.read(MiB) == data[:MiB]
        storage.put_bytes(key, b"a new version")
        with pytest.raises(Conflict, match="changed while it was being read"):
            raw = stream.raw  # type: ignore[attr-defined]
            raw.reconnect()


def test_small_objects_exists_size_list_and_delete(storage: Storage, prefix: str) -> None:
    keys = [f"{prefix}/a/1.meta", f"{prefix}/a/2.pdpack", f"{prefix}/ab.meta", f"{prefix}/b/x y+z.meta"]
    for i, key in enumerate(keys):
        storage.put_bytes(key, f"object {i}".encode())
    assert storage.get_bytes(keys[3]) == b"object 3"
    assert storage.size(keys[0]) == len(b"object 0")
    assert list(storage.list(f"{prefix}/a")) == keys[:3]  # a string prefix, not only a folder
    assert list(storage.list(f"{prefix}/a/")) == keys[:2]
    assert list(storage.list(f"{prefix}/")) == keys
    assert list(storage.list(f"{prefix}/zzz")) == []
    assert list(storage.list(f"{prefix}-other/")) == []
    storage.put_bytes(keys[0], b"replaced")
    assert storage.get_bytes(keys[0]) == b"replaced"
    storage.delete(keys[0])
    assert not storage.exists(keys[0])
    assert storage.size(keys[0]) is None
    storage.delete(keys[0])  # already gone: fine
    assert list(storage.list(f"{prefix}/a/")) == keys[1:2]


def test_a_missing_key_is_not_found(storage: Storage, case: Case, prefix: str, tmp_path: Path) -> None:
    key = f"{prefix}/missing.pdpack"
    assert not storage.exists(key)
    assert storage.size(key) is None
    for attempt in (lambda: storage.get_bytes(key), lambda: storage.open_read(key)):
        with pytest.raises(NotFound) as caught:
            attempt()
        assert "missing.pdpack" in caught.value.message
    dest = tmp_path / "dest.pdpack"
    with pytest.raises(NotFound):
        storage.get_file(key, dest)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", "a/./b", "a/../../b", "", "a\\b", "x/.pdcat-part-1"])
def test_keys_that_are_not_relative_paths_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(InvalidInput):
        storage.put_bytes(key, b"x")
    with pytest.raises(InvalidInput):
        storage.get_bytes(key)
    with pytest.raises(InvalidInput):
        storage.list("../")


def test_wrong_credentials_fail_clearly_without_the_secret(
    case: Case, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if case.wrong is None:
        assert case.provider == "local"  # a folder has no credentials
        return
    caplog.set_level(logging.DEBUG)
    conn = parse_connection_string(case.wrong)
    store = open_storage(conn, part_size=PART, concurrency=2)
    source = _big_file(tmp_path / "f", 64 * 1024)
    try:
        for attempt in (
            lambda: store.put_bytes(f"{prefix}/x", b"x"),
            lambda: store.put_file(f"{prefix}/y", source),
            lambda: store.get_bytes(f"{prefix}/x"),
            lambda: list(store.list(prefix)),
        ):
            with pytest.raises(Unauthenticated) as caught:
                attempt()
            message = caught.value.message
            assert case.provider in message and "\n" not in message
            assert "credentials" in message or "key" in message
            chain: BaseException | None = caught.value
            while chain is not None:
                assert case.wrong_secret not in str(chain) and case.wrong_secret not in repr(chain)
                chain = chain.__cause__ or chain.__context__
        # a HEAD cannot tell "bad key" from "no permission": either way it is refused, not "missing"
        with pytest.raises((Unauthenticated, Forbidden)):
            store.exists(f"{prefix}/x")
        for shown in (repr(store), str(store.description), repr(conn), str(conn)):
            assert case.wrong_secret not in shown
    finally:
        store.close()
    for record in caplog.records:
        assert case.wrong_secret not in record.getMessage()
        assert case.wrong_secret not in str(record.__dict__)


def test_a_missing_bucket_container_or_repo_is_not_found(case: Case, prefix: str) -> None:
    if case.missing_place is None:
        assert case.provider == "local"  # the folder is created on the first write
        return
    store = open_storage(parse_connection_string(case.missing_place), part_size=PART)
    try:
        with pytest.raises(NotFound) as caught:
            store.put_bytes(f"{prefix}/x", b"x")
        assert case.provider in caught.value.message
    finally:
        store.close()


# ---- provider specifics ----------------------------------------------------------------------------


def test_s3_big_files_go_up_in_parts(cases: dict[str, Case], moto: Moto, tmp_path: Path, prefix: str) -> None:
    import boto3

    store = open_storage(parse_connection_string(cases["minio"].text), part_size=PART, concurrency=2)
    store.put_file(f"{prefix}/big", _big_file(tmp_path / "big"))
    client = boto3.client(
        "s3",
        endpoint_url=moto.process.url,
        aws_access_key_id=moto.key_id,
        aws_secret_access_key=moto.secret,
        region_name="us-east-1",
    )
    head = client.head_object(Bucket="byo-minio", Key=f"{prefix}/big")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    store.close()


def test_aws_s3_without_keys_uses_the_environment(
    cases: dict[str, Case], moto: Moto, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    for name, value in _isolated_aws_env(moto).items():
        monkeypatch.setenv(name, value)
    conn = parse_connection_string("provider=aws-s3;bucket=byo-aws;region=us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret)
    store = open_storage(conn)
    store.put_bytes(f"{prefix}/env", b"from the environment")
    assert store.get_bytes(f"{prefix}/env") == b"from the environment"
    store.close()

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_storage(conn)
    with pytest.raises(Unauthenticated, match="aws-s3 refused the credentials"):
        store.get_bytes(f"{prefix}/env")
    store.close()

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = open_storage(conn)
    with pytest.raises(Unauthenticated, match="no credentials"):
        store.get_bytes(f"{prefix}/env")
    store.close()


def test_azure_big_files_go_up_in_blocks(cases: dict[str, Case], azurite: RunningProcess, tmp_path: Path) -> None:
    from azure.storage.blob import ContainerClient

    store = open_storage(parse_connection_string(cases["azure-storage-account"].text), part_size=PART)
    key = f"{uuid.uuid4().hex}/big"
    store.put_file(key, _big_file(tmp_path / "big"))
    container = ContainerClient(
        azurite_account_url(azurite.url),
        "byo",
        credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
    )
    committed, _ = container.get_blob_client(key).get_block_list("committed")
    assert len(committed) == 3
    container.close()
    store.close()


def _art_stats(artifactory: RunningProcess) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(f"{artifactory.url}/_fake/stats").json()
    return stats


def test_artifactory_deploys_known_bytes_by_checksum(
    cases: dict[str, Case], artifactory: RunningProcess, tmp_path: Path, prefix: str
) -> None:
    store = open_storage(parse_connection_string(cases["artifactory"].text))
    source = _big_file(tmp_path / "pack", 2 * MiB)
    store.put_file(f"{prefix}/one.pdpack", source)
    before = _art_stats(artifactory)
    store.put_file(f"{prefix}/two.pdpack", source)  # the same bytes under another name
    after = _art_stats(artifactory)
    assert after["checksum_deploys"] == before["checksum_deploys"] + 1
    assert after["uploads"] == before["uploads"]  # nothing was sent again
    dest = tmp_path / "two"
    store.get_file(f"{prefix}/two.pdpack", dest)
    assert _sha256(dest) == _sha256(source)
    store.close()


def test_artifactory_download_resumes_after_a_dropped_connection(
    cases: dict[str, Case], artifactory: RunningProcess, tmp_path: Path, prefix: str
) -> None:
    store = open_storage(parse_connection_string(cases["artifactory"].text))
    source = _big_file(tmp_path / "pack", 3 * MiB)
    store.put_file(f"{prefix}/p", source)
    before = _art_stats(artifactory)
    httpx.post(f"{artifactory.url}/_fake/cut-next-get", content=str(MiB + 3).encode()).raise_for_status()
    dest = tmp_path / "dest"
    store.get_file(f"{prefix}/p", dest)
    assert _sha256(dest) == _sha256(source)
    assert _art_stats(artifactory)["ranged_gets"] == before["ranged_gets"] + 1
    store.close()


@pytest.mark.parametrize(
    "auth",
    [
        'username=ci;password="' + ART_PASSWORD.replace('"', '\\"') + '"',  # quoted, with an escaped quote
        "username=ci;password=" + ART_PASSWORD.replace(";", "\\;").replace('"', '\\"'),  # escaped, unquoted
        f"access_token={ART_TOKEN}",
    ],
    ids=["basic-quoted", "basic-escaped", "bearer"],
)
def test_artifactory_basic_auth_and_bearer_token(artifactory: RunningProcess, auth: str, prefix: str) -> None:
    conn = parse_connection_string(f"provider=artifactory;url={artifactory.url};repo=generic-local;{auth}")
    assert getattr(conn, "password", None) in (None, ART_PASSWORD)
    store = open_storage(conn)
    store.put_bytes(f"{prefix}/m.meta", b"{}")
    assert store.get_bytes(f"{prefix}/m.meta") == b"{}"
    assert list(store.list(prefix)) == [f"{prefix}/m.meta"]
    store.close()


def test_artifactory_fake_verifies_checksums_and_credentials(artifactory: RunningProcess) -> None:
    url = f"{artifactory.url}/artifactory/generic-local/checks/file.bin"
    auth = {"X-JFrog-Art-Api": ART_KEY}
    data = b"pack bytes"
    good = hashlib.sha256(data).hexdigest()
    assert httpx.put(url, content=data).status_code == 401
    assert httpx.put(url, content=data, headers={"X-JFrog-Art-Api": "nope"}).status_code == 401
    bad = httpx.put(url, content=data, headers={**auth, "X-Checksum-Sha256": hashlib.sha256(b"other").hexdigest()})
    assert bad.status_code == 409
    assert httpx.put(url, content=data, headers={**auth, "X-Checksum-Sha1": "not-hex"}).status_code == 400
    assert httpx.head(url, headers=auth).status_code == 404  # a refused upload stores nothing
    created = httpx.put(url, content=data, headers={**auth, "X-Checksum-Sha256": good})
    assert created.status_code == 201 and created.json()["checksums"]["sha256"] == good
    head = httpx.head(url, headers=auth)
    assert head.headers["X-Checksum-Sha256"] == good and head.headers["Content-Length"] == str(len(data))
    ranged = httpx.get(url, headers={**auth, "Range": "bytes=5-"})
    assert ranged.status_code == 206 and ranged.content == data[5:]
    listing = httpx.get(f"{artifactory.url}/artifactory/api/storage/generic-local/checks?list&deep=1", headers=auth)
    assert [f["uri"] for f in listing.json()["files"]] == ["/file.bin"]
    assert httpx.delete(url, headers=auth).status_code == 204
    assert httpx.delete(url, headers=auth).status_code == 404


def test_local_refuses_keys_that_lead_outside_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "link").symlink_to(outside)
    store = open_storage(parse_connection_string(f"provider=local;catalog_path={root}"))
    with pytest.raises(InvalidInput, match="outside"):
        store.put_bytes("link/x", b"x")
    with pytest.raises(InvalidInput, match="outside"):
        store.get_bytes("link/x")
    assert list(outside.iterdir()) == []
    store.put_bytes("vm/a.meta", b"x")
    (root / "vm" / ".pdcat-part-abc-b.meta").write_bytes(b"half")  # an interrupted download
    assert list(store.list("")) == ["vm/a.meta"]


# ---- the resuming reader behind every open_read (no server needed) -------------------------------


class _Body:
    """A response body over ``data[offset:]`` that fails (or ends early) after ``stop`` bytes."""

    def __init__(self, data: bytes, stop: int | None, how: str) -> None:
        self.data, self.stop, self.how, self.sent = data, stop, how, 0

    def read(self, size: int = -1, /) -> bytes:
        if self.stop is not None and self.sent >= self.stop:
            if self.how == "reset":
                raise ConnectionResetError("connection reset by peer")
            return b""  # the connection closed cleanly, too early
        end = len(self.data) if size < 0 else self.sent + size
        if self.stop is not None:
            end = min(end, self.stop)
        piece = self.data[self.sent : end]
        self.sent += len(piece)
        return piece

    def close(self) -> None:
        pass


def test_resuming_reader_reopens_where_it_stopped() -> None:
    data = os.urandom(3 * MiB + 17)
    plan = [(MiB + 5, "reset"), (100_000, "short"), (None, "")]
    opened: list[int] = []

    def open_at(offset: int) -> _Body:
        opened.append(offset)
        stop, how = plan[len(opened) - 1]
        return _Body(data[offset:], stop, how)

    raw = ResumingReader(open_at, what="'k'", size=lambda: len(data), transient=(ConnectionError,), backoff=0)
    with open_buffered(raw) as stream:
        assert stream.read() == data
    assert opened == [0, MiB + 5, MiB + 5 + 100_000]


def test_resuming_reader_gives_up_with_the_last_cause() -> None:
    def open_at(offset: int) -> _Body:
        return _Body(b"x" * 10, 0, "reset")

    raw = ResumingReader(
        open_at, what="'k' in somewhere", size=lambda: 10, transient=(ConnectionError,), retries=2, backoff=0
    )
    with pytest.raises(Unavailable, match="reading 'k' in somewhere kept failing after 2 retries") as caught:
        raw.read(5)
    assert isinstance(caught.value.__cause__, ConnectionResetError)


def test_resuming_reader_does_not_retry_other_errors() -> None:
    class Broken(_Body):
        def read(self, size: int = -1, /) -> bytes:
            raise Conflict("'k' changed while it was being read")

    raw = ResumingReader(lambda offset: Broken(b"", None, ""), what="k", size=lambda: 1, transient=(ConnectionError,))
    with pytest.raises(Conflict):
        raw.read(1)
    with pytest.raises(NotFound):
        ResumingReader(_raise_not_found, what="k", size=lambda: None, transient=(ConnectionError,))


def _raise_not_found(offset: int) -> _Body:
    raise NotFound("'k' does not exist")


# ---- packaging -------------------------------------------------------------------------------------


def test_sdks_load_on_first_use_only() -> None:
    code = (
        "import sys; from client.byo import open_storage, parse_connection_string; "
        "s = open_storage(parse_connection_string('provider=aws-s3;bucket=vms;region=us-east-1')); "
        "a = open_storage(parse_connection_string('provider=azure-storage-account;storage_account_name=acme;"
        "container_name=vms;storage_account_key=AA==')); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore', 'azure'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_sdk_is_a_one_line_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)
    for text in (
        "provider=minio;endpoint=127.0.0.1:1;bucket=vms",
        "provider=azure-storage-account;storage_account_name=acme;container_name=vms;storage_account_key=AA==",
    ):
        store = open_storage(parse_connection_string(text))
        with pytest.raises(MissingExtra) as caught:
            store.exists("x")
        assert "pip install 'pdcat[byo]'" in caught.value.message
        assert isinstance(caught.value, PdcatError)
