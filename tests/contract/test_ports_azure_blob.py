"""The Azure Blob store (azure_app) against a real Azurite on loopback, which checks every SAS.

It runs the shared :class:`BlobStoreContract` twice — account-key SAS (connection string) and
user-delegation SAS (a token credential, as with a managed identity) — then what only Azure has:
SAS URL scoping, byte round trips through SAS URLs with plain httpx, Azurite refusing (403) expired,
tampered, wrong-permission and wrong-blob URLs, the delegation key cache, request counts and error
translation.

One Azurite serves the module, in HTTPS with ``--oauth basic`` (a self-signed certificate made here
with ``cryptography``): Azurite answers *Get User Delegation Key* only to a bearer token over HTTPS.
In basic mode it checks a token's lifetime, issuer and audience but not its signature, so
:class:`FakeEntraCredential` mints HS256 JWTs with Entra's issuer and Storage's audience. Each test
class gets a container of its own; nothing is written to ``os.environ``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import secrets
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import httpx
import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import UserDelegationKey, generate_blob_sas
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from azure_app.azurelib.blob_store import (
    MAX_UDK_EXPIRES_IN,
    UDK_SAS_VERSION,
    AzureBlobStore,
    _DelegationKey,
    _translate_errors,
    udk_string_to_sign,
)
from core.errors import InvalidInput, NotFound, PayloadTooLarge, PdcatError, Unavailable
from core.local.file_blobs import MAX_EXPIRES_IN
from core.ports import BlobInfo, BlobStore, HttpMethod
from infra.local.azurite import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_account_url,
    azurite_connection_string,
    start_azurite,
)
from infra.local.servers import RunningProcess, free_port
from tests.contract.test_ports import BlobStoreContract, PresignedUrlContract

REPO = Path(__file__).resolve().parents[2]
KEY_FORMS = [AZURITE_KEY, quote(AZURITE_KEY, safe=""), AZURITE_KEY.rstrip("=")]  # as it could leak into a URL


# ---- the Azurite fixture: HTTPS + OAuth basic ---------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, so clients can pin it as ``verify``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pdcat-azurite-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class FakeEntraCredential:
    """A ``TokenCredential`` handing out JWTs shaped like Entra ID's (Azurite basic mode reads them).

    ``oid``/``tid`` become the delegation key's ``skoid``/``sktid``. ``lifetime`` < 0 mints expired
    tokens; ``fail`` raises like azure-identity does when no identity is available.
    """

    def __init__(self, *, lifetime: int = 3600, fail: bool = False) -> None:
        self.oid = str(uuid.uuid4())
        self.tid = str(uuid.uuid4())
        self.lifetime = lifetime
        self.fail = fail
        self.tokens: list[str] = []
        self.scopes: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        if self.fail:
            raise ClientAuthenticationError("ManagedIdentityCredential: no managed identity endpoint found")
        now = int(time.time())
        claims = {
            "aud": "https://storage.azure.com",
            "iss": f"https://sts.windows.net/{self.tid}/",
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + self.lifetime,
            "oid": self.oid,
            "tid": self.tid,
        }
        token = jwt.encode(claims, secrets.token_hex(32), algorithm="HS256")
        with self._lock:
            self.tokens.append(token)
            self.scopes.append(scopes)
        return AccessToken(token, now + self.lifetime)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _self_signed(tmp_path_factory.mktemp("azurite-tls"))


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory, tls: tuple[Path, Path]) -> Iterator[RunningProcess]:
    server = start_azurite(tmp_path_factory.mktemp("azurite"), https=tls, in_memory=True)  # raises with its log
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cert(tls: tuple[Path, Path]) -> str:
    return str(tls[0])


@pytest.fixture(scope="module")
def http(cert: str) -> Iterator[httpx.Client]:
    """The plain HTTP client a pdcat user has: no Azure SDK, no credentials, only the URL."""
    with httpx.Client(verify=ssl.create_default_context(cafile=cert), timeout=30) as client:
        yield client


def _key_store(azurite: RunningProcess, container: str, cert: str, **kw: Any) -> AzureBlobStore:
    return AzureBlobStore.from_connection_string(
        azurite_connection_string(azurite.url), container, connection_verify=cert, **kw
    )


def _udk_store(
    azurite: RunningProcess, container: str, cert: str, credential: Any | None = None, **kw: Any
) -> AzureBlobStore:
    return AzureBlobStore.from_credential(
        azurite_account_url(azurite.url), container, credential or FakeEntraCredential(), connection_verify=cert, **kw
    )


@pytest.fixture(scope="class")
def container(azurite: RunningProcess, cert: str) -> str:
    """A fresh container for each test class."""
    name = f"pdcat-{uuid.uuid4().hex[:16]}"
    store = _key_store(azurite, name, cert)
    store.create_container()
    store.create_container()  # idempotent
    store.close()
    return name


@pytest.fixture
def key_store(azurite: RunningProcess, container: str, cert: str) -> Iterator[AzureBlobStore]:
    store = _key_store(azurite, container, cert)
    yield store
    store.close()


@pytest.fixture
def credential() -> FakeEntraCredential:
    return FakeEntraCredential()


@pytest.fixture
def udk_store(
    azurite: RunningProcess, container: str, cert: str, credential: FakeEntraCredential
) -> Iterator[AzureBlobStore]:
    store = _udk_store(azurite, container, cert, credential)
    yield store
    store.close()


@pytest.fixture(params=["account-key", "user-delegation"])
def sas_store(request: pytest.FixtureRequest) -> AzureBlobStore:
    """Both ways of signing: every SAS property is proven against Azurite for each."""
    fixture = "key_store" if request.param == "account-key" else "udk_store"
    store: AzureBlobStore = request.getfixturevalue(fixture)
    return store


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def _with_query(url: str, **changes: str) -> str:
    """The URL with some SAS parameters replaced (re-encoded the standard way)."""
    parts = urlsplit(url)
    query = {**_query(url), **changes}
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote, safe="")))


def _when(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def _base() -> str:
    return f"catalogs/c{uuid.uuid4().hex[:8]}"


PUT_HEADERS = {"x-ms-blob-type": "BlockBlob"}  # Put Blob requires it; the SAS cannot carry it


# ---- the shared contract, both ways of signing --------------------------------------------------


class TestAzureBlobStoreAccountKey(BlobStoreContract):
    # Azurite answers 25-150 Put Blob/s on a shared 2-core box, so the contract's bulk test stays small;
    # paging past 1,000 blobs is proven (and its requests counted) in TestAzureRequestCounts.
    many_objects = 150

    @pytest.fixture
    def blobs(self, key_store: AzureBlobStore) -> Iterator[BlobStore]:
        yield key_store

    @pytest.fixture
    def secrets(self) -> list[str]:
        return KEY_FORMS


class TestAzureBlobStoreUserDelegation(BlobStoreContract):
    # Same listing and batching code as above; what differs is bearer-token auth and UDK signing.
    many_objects = 150

    @pytest.fixture
    def blobs(self, udk_store: AzureBlobStore) -> Iterator[BlobStore]:
        yield udk_store

    @pytest.fixture
    def secrets(self, udk_store: AzureBlobStore, credential: FakeEntraCredential) -> list[str]:
        udk_store.presign("warm/up", "GET", 60)  # fetch the delegation key, so its value can be checked
        assert udk_store._udk is not None
        value = udk_store._udk.value
        return [value, quote(value, safe=""), *credential.tokens]


# ---- the shared presigned-URL contract, both ways of signing --------------------------------------


class _AzuritePresignedUrls(PresignedUrlContract):
    """The contract uses its URLs with ``httpx.get/put/delete``; Azurite here is HTTPS with a
    self-signed certificate, so those calls go through :func:`http`, which pins it (and is otherwise
    the same plain client, with no credentials). Nothing is written to ``os.environ``."""

    @pytest.fixture(autouse=True)
    def _trust_azurite(self, monkeypatch: pytest.MonkeyPatch, http: httpx.Client) -> None:
        for name in ("get", "put", "delete"):
            monkeypatch.setattr(httpx, name, getattr(http, name))


class TestAzurePresignedUrlsAccountKey(_AzuritePresignedUrls):
    @pytest.fixture
    def blobs(self, key_store: AzureBlobStore) -> Iterator[BlobStore]:
        yield key_store


class TestAzurePresignedUrlsUserDelegation(_AzuritePresignedUrls):
    @pytest.fixture
    def blobs(self, udk_store: AzureBlobStore) -> Iterator[BlobStore]:
        yield udk_store


# ---- SAS URLs: shape, round trips, and what Azurite refuses --------------------------------------


class TestAzureSasUrls:
    def test_url_is_scoped_to_one_blob_and_one_permission(self, sas_store: AzureBlobStore, container: str) -> None:
        key = f"{_base()}/chunks/{'ab' * 32}"
        cases: list[tuple[HttpMethod, str]] = [("GET", "r"), ("PUT", "cw")]
        for method, permission in cases:
            before = time.time()
            url = sas_store.presign(key, method, 321)
            parts = urlsplit(url)
            assert f"{parts.scheme}://{parts.netloc}" == sas_store.account_url.rsplit("/", 1)[0]
            assert parts.path == f"/{AZURITE_ACCOUNT}/{container}/{key}"
            query = _query(url)
            assert query["sp"] == permission
            assert query["sr"] == "b"
            assert query["spr"] == "https"
            assert "st" not in query and "si" not in query and "sip" not in query
            assert math.floor(before) + 321 <= _when(query["se"]) <= math.ceil(time.time()) + 321
            assert len(query["sig"]) == 44  # base64 of an HMAC-SHA256
            for secret in KEY_FORMS:
                assert secret not in url

    def test_account_key_sas_fields(self, key_store: AzureBlobStore) -> None:
        query = _query(key_store.presign("a/b", "GET", 60))
        assert set(query) == {"sp", "se", "sv", "sr", "spr", "sig"}

    def test_user_delegation_sas_fields(self, udk_store: AzureBlobStore, credential: FakeEntraCredential) -> None:
        query = _query(udk_store.presign("a/b", "PUT", 600))
        assert query["sv"] == UDK_SAS_VERSION
        assert query["skoid"] == credential.oid and query["sktid"] == credential.tid
        assert query["sks"] == "b" and query["skv"]
        assert _when(query["skt"]) <= time.time() <= _when(query["se"]) <= _when(query["ske"])
        assert udk_store._udk is not None
        assert udk_store._udk.value not in udk_store.presign("a/b", "GET", 60)

    def test_round_trip_through_sas_urls_with_plain_http(self, sas_store: AzureBlobStore, http: httpx.Client) -> None:
        base = _base()
        key = f"{base}/chunks/{'cd' * 32}"
        data = bytes(range(256)) * 1000 + b"tail"
        put = http.put(sas_store.presign(key, "PUT", 300), content=data, headers=PUT_HEADERS)
        assert put.status_code == 201, put.text
        again = http.put(sas_store.presign(key, "PUT", 300), content=data, headers=PUT_HEADERS)
        assert again.status_code == 201, again.text  # a retried chunk upload may overwrite (sp=cw)
        got = http.get(sas_store.presign(key, "GET", 300))
        assert got.status_code == 200, got.text
        assert got.content == data
        assert list(sas_store.list(f"{base}/")) == [BlobInfo(key, len(data))]
        assert sas_store.get_bytes(key) == data

    def test_put_without_blob_type_header_is_refused(self, key_store: AzureBlobStore, http: httpx.Client) -> None:
        # Why pdcat's client must send `x-ms-blob-type: BlockBlob` on every PUT to a SAS URL.
        key = f"{_base()}/x"
        response = http.put(key_store.presign(key, "PUT", 300), content=b"data")
        assert response.status_code == 400  # Azure says MissingRequiredHeader; Azurite sends no body
        with pytest.raises(NotFound):
            key_store.get_bytes(key)

    def test_refusals(self, sas_store: AzureBlobStore, http: httpx.Client) -> None:
        """Azurite checks the SAS: each of these is a 403 and changes nothing."""
        base = _base()
        key, other = f"{base}/chunks/{'11' * 32}", f"{base}/chunks/{'22' * 32}"
        sas_store.put_bytes(key, b"original")
        sas_store.put_bytes(other, b"other")
        read_url, write_url = sas_store.presign(key, "GET", 300), sas_store.presign(key, "PUT", 300)
        assert http.get(read_url).content == b"original"  # the URLs under test do work as signed

        # A write with a read SAS, and a read with a write SAS.
        assert http.put(read_url, content=b"evil", headers=PUT_HEADERS).status_code == 403
        assert http.get(write_url).status_code == 403
        # A tampered signature: one character changed.
        sig = _query(read_url)["sig"]
        forged = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
        assert http.get(_with_query(read_url, sig=forged)).status_code == 403
        assert http.get(_with_query(read_url)).status_code == 200  # re-encoding alone changes nothing
        # A permission widened by hand (the signature covers sp).
        widened = _with_query(read_url, sp="rcw")
        assert http.put(widened, content=b"evil", headers=PUT_HEADERS).status_code == 403
        # An expiry pushed back by hand.
        later = _with_query(read_url, se="2099-01-01T00:00:00Z")
        assert http.get(later).status_code == 403
        # The SAS of one blob used for another.
        assert http.get(read_url.replace(key, other)).status_code == 403
        assert http.put(write_url.replace(key, other), content=b"evil", headers=PUT_HEADERS).status_code == 403
        assert sas_store.get_bytes(key) == b"original"
        assert sas_store.get_bytes(other) == b"other"

    def test_expired_url_is_refused(self, sas_store: AzureBlobStore, http: httpx.Client) -> None:
        key = f"{_base()}/x"
        sas_store.put_bytes(key, b"data")
        read_url, write_url = sas_store.presign(key, "GET", 1), sas_store.presign(key, "PUT", 1)
        time.sleep(max(0.0, _when(_query(read_url)["se"]) - time.time()) + 1.1)
        assert http.get(read_url).status_code == 403
        assert http.put(write_url, content=b"late", headers=PUT_HEADERS).status_code == 403
        assert sas_store.get_bytes(key) == b"data"

    def test_lifetimes(self, key_store: AzureBlobStore, udk_store: AzureBlobStore) -> None:
        now = time.time()
        assert _when(_query(key_store.presign("a/b", "GET", MAX_EXPIRES_IN))["se"]) >= now + MAX_EXPIRES_IN
        assert _when(_query(udk_store.presign("a/b", "GET", MAX_UDK_EXPIRES_IN))["se"]) >= now + MAX_UDK_EXPIRES_IN
        with pytest.raises(InvalidInput):
            udk_store.presign("a/b", "GET", MAX_EXPIRES_IN)  # a delegation key cannot outlive 7 days

    @pytest.mark.parametrize("expires_in", [0, -1, MAX_EXPIRES_IN + 1, True, 1.5, "60"])
    def test_bad_lifetime_is_invalid_input(self, sas_store: AzureBlobStore, expires_in: Any) -> None:
        with pytest.raises(InvalidInput):
            sas_store.presign("a/b", "GET", expires_in)

    @pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b", "a\\b", "a b", "a\x00b", "k" * 1025, 7])
    def test_bad_key_is_invalid_input(self, key_store: AzureBlobStore, key: Any) -> None:
        with pytest.raises(InvalidInput):
            key_store.presign(key, "GET", 60)
        with pytest.raises(InvalidInput):
            key_store.put_bytes(key, b"x")
        with pytest.raises(InvalidInput):
            key_store.get_bytes(key)
        with pytest.raises(InvalidInput):
            key_store.head(key)
        with pytest.raises(InvalidInput):
            key_store.put_if_absent(key, b"x")
        with pytest.raises(InvalidInput):
            key_store.delete(["ok/key", key])
        with pytest.raises(InvalidInput):
            list(key_store.list(key if key not in ("", "k" * 1025) else "/abs"))
        assert key_store.calls == {}  # refused before any request

    def test_bad_method_is_invalid_input(self, sas_store: AzureBlobStore) -> None:
        with pytest.raises(InvalidInput):
            sas_store.presign("a/b", "DELETE", 60)  # type: ignore[arg-type]

    def test_name_and_repr_carry_no_credentials(self, key_store: AzureBlobStore, udk_store: AzureBlobStore) -> None:
        assert key_store.name == "azure"
        udk_store.presign("a/b", "GET", 60)
        for store in (key_store, udk_store):
            text = repr(store) + repr(vars(store))
            for secret in KEY_FORMS:
                assert secret not in text
            assert udk_store._udk is not None
            assert udk_store._udk.value not in repr(store) + repr(udk_store._udk)
        conn = azurite_connection_string("http://127.0.0.1:10000")
        assert AzureBlobStore.from_connection_string(conn, "box", name="primary").name == "primary"
        # The http emulator endpoint: same URLs, minus spr=https.
        assert "spr" not in _query(AzureBlobStore.from_connection_string(conn, "box").presign("a/b", "GET", 60))


class TestUserDelegationKeyCache:
    def test_one_key_serves_many_urls(self, udk_store: AzureBlobStore, credential: FakeEntraCredential) -> None:
        with ThreadPoolExecutor(8) as pool:
            urls = list(pool.map(lambda i: udk_store.presign(f"a/{i}", "PUT", 900), range(64)))
        assert len(set(urls)) == 64
        assert udk_store.calls == {"GetUserDelegationKey": 1}
        assert len({_query(u)["ske"] for u in urls}) == 1
        assert credential.scopes == [("https://storage.azure.com/.default",)]

    def test_key_is_replaced_shortly_before_it_must_be(
        self, azurite: RunningProcess, container: str, cert: str
    ) -> None:
        offset = [0.0]
        store = _udk_store(
            azurite, container, cert, user_delegation_key_lifetime=1800, clock=lambda: time.time() + offset[0]
        )
        first = _query(store.presign("a/b", "GET", 60))
        offset[0] = 1800 - 60 - 300 - 30  # the key still outlives a 60 s URL by the 5-minute margin
        assert _query(store.presign("a/b", "GET", 60))["ske"] == first["ske"]
        assert store.calls == {"GetUserDelegationKey": 1}
        offset[0] = 1800 - 60 - 300 + 30  # now it would not: a new key, valid from (about) now
        second = _query(store.presign("a/b", "GET", 60))
        assert second["ske"] != first["ske"]
        assert store.calls == {"GetUserDelegationKey": 2}
        assert _when(second["skt"]) <= time.time() + offset[0] <= _when(second["se"]) <= _when(second["ske"])
        store.close()

    def test_a_longer_url_gets_a_longer_key(self, udk_store: AzureBlobStore, http: httpx.Client) -> None:
        short = _query(udk_store.presign("a/b", "GET", 60))
        key = f"{_base()}/x"
        udk_store.put_bytes(key, b"long")
        url = udk_store.presign(key, "GET", 12 * 3600)  # longer than the default 6 h key
        long = _query(url)
        assert _when(long["ske"]) > _when(short["ske"]) and _when(long["se"]) <= _when(long["ske"])
        assert udk_store.calls["GetUserDelegationKey"] == 2
        assert http.get(url).content == b"long"

    def test_string_to_sign_is_the_sdks_without_the_2026_fields(self) -> None:
        """Cross-check with azure-storage-blob: same fields, same order, minus its two newer lines."""
        udk = UserDelegationKey()  # type: ignore[no-untyped-call]
        udk.signed_oid, udk.signed_tid = "oid-1", "tid-1"
        udk.signed_start, udk.signed_expiry = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"
        udk.signed_service, udk.signed_version, udk.value = "b", "2025-11-05", "a2V5"
        seen: list[str] = []
        generate_blob_sas(
            "acct", "box", "a/b", user_delegation_key=udk, permission="cw", expiry="2026-01-01T01:00:00Z",
            protocol="https", sts_hook=seen.append,
        )  # fmt: skip
        sdk_lines = seen[0].split("\n")
        # The SDK's lines 21 and 22 (0-based) are the signed request headers and query parameters
        # that its newer SAS version added; everything else must match line for line.
        assert sdk_lines[21:23] == ["", ""]
        del sdk_lines[21:23]
        sdk_lines[17] = UDK_SAS_VERSION  # sv
        ours = udk_string_to_sign(
            account="acct", container="box", blob="a/b", permission="cw", expiry="2026-01-01T01:00:00Z",
            key=_DelegationKey("oid-1", "tid-1", udk.signed_start, udk.signed_expiry, "b", "2025-11-05", "a2V5", "", 0),
            protocol="https",
        )  # fmt: skip
        assert ours.split("\n") == sdk_lines


# ---- cost: requests per operation ---------------------------------------------------------------


class TestAzureRequestCounts:
    def test_list_and_delete_1001_blobs_cost_a_few_requests(self, key_store: AzureBlobStore) -> None:
        base = _base()
        keys = [f"{base}/chunks/{i:064x}" for i in range(1001)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: key_store.put_bytes(k, b"xy"), keys))
        assert key_store.calls == {"PutBlob": 1001}
        key_store.reset_calls()
        listed = list(key_store.list(f"{base}/"))
        assert [b.key for b in listed] == keys
        assert {b.size for b in listed} == {2}
        assert key_store.calls == {"ListBlobs": 2}  # one per 1,000 blobs, and no per-blob request
        key_store.reset_calls()
        key_store.delete([*keys, f"{base}/missing"])
        assert key_store.calls == {"BlobBatch": 4}  # 1,002 deletes, 256 per Blob Batch request
        assert list(key_store.list(f"{base}/")) == []

    def test_batch_delete_with_a_managed_identity(self, udk_store: AzureBlobStore) -> None:
        base = _base()
        for i in range(3):
            udk_store.put_bytes(f"{base}/{i}", b"x")
        udk_store.reset_calls()
        udk_store.delete([f"{base}/0", f"{base}/1", f"{base}/2", f"{base}/gone"])
        assert udk_store.calls == {"BlobBatch": 1}
        assert list(udk_store.list(f"{base}/")) == []

    def test_first_use_from_many_threads(self, azurite: RunningProcess, container: str, cert: str) -> None:
        """The SDK clients are built lazily: threads racing on a fresh store all get working ones."""
        store = _key_store(azurite, container, cert)
        store.put_bytes("race/x", b"x")
        fresh = _key_store(azurite, container, cert)
        barrier = threading.Barrier(12)

        def read(_: int) -> bytes:
            barrier.wait()
            return fresh.get_bytes("race/x")

        with ThreadPoolExecutor(12) as pool:
            assert list(pool.map(read, range(12))) == [b"x"] * 12
        assert fresh.calls == {"GetBlob": 12}
        store.close()
        fresh.close()

    def test_head_put_if_absent_and_bounded_get_are_one_request_each(self, key_store: AzureBlobStore) -> None:
        base = _base()
        key_store.put_bytes(f"{base}/empty", b"")
        key_store.reset_calls()
        assert key_store.head(f"{base}/missing") is None
        assert key_store.put_if_absent(f"{base}/c", b"first") is True
        head = key_store.head(f"{base}/c")
        assert head is not None and head.size == 5
        assert key_store.put_if_absent(f"{base}/c", b"second") is False  # Azurite: 409 BlobAlreadyExists
        assert key_store.get_bytes(f"{base}/c", max_bytes=5) == b"first"
        with pytest.raises(PayloadTooLarge):
            key_store.get_bytes(f"{base}/c", max_bytes=4)
        # A range of an empty blob is a 416 (InvalidRange): still the empty object, still one request.
        assert key_store.get_bytes(f"{base}/empty", max_bytes=0) == b""
        assert key_store.get_bytes(f"{base}/empty", max_bytes=10) == b""
        assert key_store.calls == {"GetBlobProperties": 2, "PutBlob": 2, "GetBlob": 4}

    def test_bounded_get_asks_for_no_more_than_the_limit(
        self, azurite: RunningProcess, container: str, cert: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An untrusted staged object of 1 MiB read with a 4,999-byte limit: one ranged Get Blob."""
        store = _key_store(azurite, container, cert)
        ranges: list[str | None] = []
        count = store._count_call

        def record(request: Any) -> None:
            ranges.append(request.http_request.headers.get("x-ms-range"))
            count(request)

        monkeypatch.setattr(store, "_count_call", record)  # before the SDK client is built
        key = f"{_base()}/staging/big"
        store.put_bytes(key, b"x" * (1 << 20))
        ranges.clear()
        with pytest.raises(PayloadTooLarge):
            store.get_bytes(key, max_bytes=4999)
        assert ranges == ["bytes=0-4999"]
        store.close()

    def test_sdk_is_imported_on_first_use(self) -> None:
        code = (
            "import sys\n"
            "from azure_app.azurelib.blob_store import AzureBlobStore\n"
            f"s = AzureBlobStore.from_connection_string({azurite_connection_string('http://127.0.0.1:9')!r}, 'box')\n"
            "assert not [m for m in sys.modules if m.startswith('azure.')], 'azure SDK imported too early'\n"
            "s.presign('a/b', 'GET', 60)\n"
            "assert 'azure.storage.blob' in sys.modules\n"
        )
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ---- errors -------------------------------------------------------------------------------------


class TestAzureErrorTranslation:
    def test_get_missing_is_not_found(self, sas_store: AzureBlobStore) -> None:
        with pytest.raises(NotFound) as info:
            sas_store.get_bytes(f"{_base()}/missing")
        assert isinstance(info.value.__cause__, ResourceNotFoundError)

    def test_missing_container_is_unavailable(self, azurite: RunningProcess, cert: str) -> None:
        store = _key_store(azurite, f"missing-{uuid.uuid4().hex[:8]}", cert)
        calls: list[Callable[[], object]] = [
            lambda: store.get_bytes("a/b"),
            lambda: store.put_bytes("a/b", b"x"),
            lambda: list(store.list("a/")),
            lambda: store.delete(["a/b"]),
            lambda: store.head("a/b"),
            lambda: store.put_if_absent("a/b", b"x"),
            lambda: store.get_bytes("a/b", max_bytes=10),
        ]
        for call in calls:
            with pytest.raises(Unavailable, match="container does not exist"):
                call()

    def test_closed_port_is_unavailable(self, container: str) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        store = AzureBlobStore.from_connection_string(
            azurite_connection_string(url), container, connect_timeout=0.5, read_timeout=1, max_attempts=1
        )
        calls: list[Callable[[], object]] = [
            lambda: store.get_bytes("a/b"),
            lambda: store.put_bytes("a/b", b"x"),
            lambda: list(store.list("a/")),
            lambda: store.delete(["a/b"]),
            lambda: store.head("a/b"),
            lambda: store.put_if_absent("a/b", b"x"),
            lambda: store.get_bytes("a/b", max_bytes=10),
            store.create_container,
        ]
        for call in calls:
            with pytest.raises(Unavailable) as info:
                call()
            assert isinstance(info.value.__cause__, ServiceRequestError)
            assert "unreachable" in str(info.value) and "\n" not in str(info.value)
            for secret in KEY_FORMS:
                assert secret not in str(info.value)
        # account-key signing is local: it works while the endpoint is down
        assert store.presign("a/b", "GET", 60).startswith(azurite_account_url(url))

    def test_wrong_account_key_is_unavailable_without_the_key(
        self, azurite: RunningProcess, container: str, cert: str
    ) -> None:
        wrong = "d3Jvbmcta2V5LWZvci1wZGNhdC10ZXN0cw=="
        conn = azurite_connection_string(azurite.url).replace(AZURITE_KEY, wrong)
        store = AzureBlobStore.from_connection_string(conn, container, connection_verify=cert, max_attempts=1)
        with pytest.raises(Unavailable, match="access denied") as info:
            store.get_bytes("a/b")
        assert isinstance(info.value.__cause__, ClientAuthenticationError)
        assert wrong not in str(info.value) and wrong not in repr(store) and "\n" not in str(info.value)

    def test_credential_that_cannot_get_a_token_is_unavailable(
        self, azurite: RunningProcess, container: str, cert: str
    ) -> None:
        store = _udk_store(azurite, container, cert, FakeEntraCredential(fail=True), max_attempts=1)
        for call in (lambda: store.presign("a/b", "GET", 60), lambda: store.get_bytes("a/b")):
            with pytest.raises(Unavailable, match="access denied") as info:
                call()
            assert "\n" not in str(info.value) and "managed identity" not in str(info.value)

    def test_expired_token_is_refused_by_azurite(self, azurite: RunningProcess, container: str, cert: str) -> None:
        credential = FakeEntraCredential(lifetime=-120)
        store = _udk_store(azurite, container, cert, credential, max_attempts=1)
        with pytest.raises(Unavailable, match="access denied") as info:
            store.presign("a/b", "GET", 60)
        assert isinstance(info.value.__cause__, ClientAuthenticationError)
        assert credential.tokens and credential.tokens[-1] not in str(info.value)

    @pytest.mark.parametrize(
        "connection_string",
        [
            "",
            "garbage",
            "AccountName=acct",
            "AccountName=acct;AccountKey=%%bad-value%%;BlobEndpoint=http://127.0.0.1:1/acct",
            "AccountName=acct;AccountKey=a2V5;BlobEndpoint=ftp://host/acct",
            "AccountName=acct;SharedAccessSignature=sv=2020&sig=c2VjcmV0",
            None,
        ],
    )
    def test_bad_connection_string_is_invalid_input(self, connection_string: Any) -> None:
        with pytest.raises(InvalidInput) as info:
            AzureBlobStore.from_connection_string(connection_string, "box")
        for part in ("bad-value", "c2VjcmV0", "a2V5", "garbage"):
            assert part not in str(info.value)

    def test_connection_string_forms(self) -> None:
        cloud = AzureBlobStore.from_connection_string(
            f"DefaultEndpointsProtocol=https;AccountName=pdcatacct;AccountKey={AZURITE_KEY};"
            "EndpointSuffix=core.windows.net",
            "box",
        )
        assert cloud.account_url == "https://pdcatacct.blob.core.windows.net"
        assert cloud.account_name == "pdcatacct"
        url = cloud.presign("catalogs/x/chunks/ab", "PUT", 60)
        assert url.startswith("https://pdcatacct.blob.core.windows.net/box/catalogs/x/chunks/ab?")
        dev = AzureBlobStore.from_connection_string("UseDevelopmentStorage=true", "box")
        assert dev.account_url == "http://127.0.0.1:10000/devstoreaccount1"

    def test_token_credential_needs_https_and_an_account(self) -> None:
        with pytest.raises(InvalidInput, match="https"):
            AzureBlobStore.from_credential("http://127.0.0.1:10000/devstoreaccount1", "box", FakeEntraCredential())
        with pytest.raises(InvalidInput, match="account name"):
            AzureBlobStore.from_credential("https://storage.example.com", "box", FakeEntraCredential())
        with pytest.raises(InvalidInput):
            AzureBlobStore.from_credential("https://acct.blob.core.windows.net", "box", "not a credential")  # type: ignore[arg-type]
        store = AzureBlobStore.from_credential("https://acct.blob.core.windows.net/", "box", FakeEntraCredential())
        assert store.account_name == "acct" and store.account_url == "https://acct.blob.core.windows.net"

    @pytest.mark.parametrize(
        ("error", "expected", "text"),
        [
            (ResourceNotFoundError("BlobNotFound"), NotFound, "no object"),
            (ClientAuthenticationError("AuthorizationFailure"), Unavailable, "access denied"),
            (ServiceRequestError("connection refused"), Unavailable, "unreachable"),
            (ServiceResponseError("connection reset"), Unavailable, "unreachable"),
            (HttpResponseError("ServerBusy"), Unavailable, "unavailable (ServerBusy)"),
            (HttpResponseError("InvalidHeaderValue"), PdcatError, "(InvalidHeaderValue)"),
        ],
    )
    def test_sdk_errors_are_translated(self, error: HttpResponseError, expected: type[PdcatError], text: str) -> None:
        error.error_code = str(error.message)  # type: ignore[attr-defined]
        error.status_code = 503 if error.message == "ServerBusy" else 400
        error.message = f"secret {AZURITE_KEY} in an SDK message\nRequestId: x"
        with pytest.raises(PdcatError) as info, _translate_errors("get", "a/b"):
            raise error
        assert type(info.value) is expected
        assert text in str(info.value)
        assert AZURITE_KEY not in str(info.value) and "\n" not in str(info.value)
        assert info.value.__cause__ is error
