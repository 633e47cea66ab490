"""What only the Azure frontend has to prove, beyond the shared contract suite that runs against it.

One Cosmos DB emulator and one Azurite serve the module. The unchanged ``azure_app/function_app.py``
is reached two ways: over HTTP through the local Functions host (``infra/local/azure_host.py``, a
child process) and in-process through ``AzureFunctionsTransport``. Both must answer health, give the
contract's 404 and 405 (not the host's own), keep an encoded ``/`` inside an id, move bytes through
Blob SAS URLs, and log JSON lines with the request id and no secret. Importing ``function_app`` (the
cold start) loads no Azure SDK; the figure is printed. Bad app settings fail in one clear line.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from core.auth import issue_token
from core.logs import JsonFormatter
from infra.local.azure_host import (
    APP_DIR,
    BadRequest,
    FunctionsHost,
    RouteTemplate,
    azure_backend_env,
    kestrel_path,
    start_azure_host,
    to_uri_component,
)
from infra.local.azurite import AZURITE_KEY, start_azurite
from infra.local.cosmos_emulator import COSMOS_EMULATOR_KEY, start_cosmos
from infra.local.servers import REPO, RunningProcess
from tests.azure_inprocess import AzureFunctionsTransport
from tests.contract.helpers import (
    Pack,
    ask_chunks,
    assert_error,
    begin_push,
    build_pack,
    commit,
    declare_index,
    download_chunk,
    fetch_index,
    index_bytes,
    plain,
    pull,
    pull_urls,
    put_index,
    verify,
)

SECRET = "azure-frontend-tests-" + uuid.uuid4().hex
SECRETS = (SECRET, AZURITE_KEY, COSMOS_EMULATOR_KEY)
# the Cosmos DB emulator's certificate is self-signed (verify_tls=False, for that client only)
pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
PUT_HEADERS = {"x-ms-blob-type": "BlockBlob"}  # Put Blob requires it; a SAS URL cannot carry it


def _token(subject: str = "root", roles: tuple[str, ...] = ("SUPER_USER",)) -> str:
    return issue_token(SECRET, subject, list(roles), [], 600)[0]


# ---- the emulators, the host process and the in-process transport -------------------------------


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningProcess, RunningProcess]]:
    log_dir = tmp_path_factory.mktemp("azure-emulators")
    cosmos = start_cosmos(log_dir)
    try:
        azurite = start_azurite(log_dir)
    except BaseException:
        cosmos.stop()
        raise
    try:
        yield cosmos, azurite
    finally:
        azurite.stop()
        cosmos.stop()


@pytest.fixture(scope="module")
def app_env(emulators: tuple[RunningProcess, RunningProcess]) -> dict[str, str]:
    cosmos, azurite = emulators
    return azure_backend_env(cosmos, azurite, SECRET, log_level="INFO")


@pytest.fixture(scope="module")
def host(app_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    server = start_azure_host(app_env, tmp_path_factory.mktemp("azure-host"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def transport(app_env: dict[str, str]) -> Iterator[AzureFunctionsTransport]:
    """App settings are environment variables, as in Azure; restored (and the router forgotten) after."""
    root = logging.getLogger()
    saved = (root.level, [(h, h.formatter) for h in root.handlers])
    with pytest.MonkeyPatch.context() as mp:
        for key, value in app_env.items():
            mp.setenv(key, value)
        t = AzureFunctionsTransport()
        try:
            yield t
        finally:
            sys.modules["azurelib.bootstrap"].router.cache_clear()
            root.setLevel(saved[0])
            for handler, formatter in saved[1]:
                handler.setFormatter(formatter)


@pytest.fixture(params=["http", "inproc"])
def api(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """An authenticated client of ``/api/v1`` through the local host (http) or in-process."""
    headers = {"Authorization": f"Bearer {_token()}"}
    if request.param == "http":
        host: RunningProcess = request.getfixturevalue("host")
        client = httpx.Client(base_url=host.url + "/api/v1", headers=headers, timeout=60)
    else:
        t: AzureFunctionsTransport = request.getfixturevalue("transport")
        client = httpx.Client(base_url="http://azure.inprocess/api/v1", headers=headers, transport=t, timeout=60)
    with client:
        yield client


# ---- the contract's answers, not the host's -----------------------------------------------------


def test_health(api: httpx.Client) -> None:
    r = api.get("/health", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_unknown_paths_get_the_contracts_404(api: httpx.Client) -> None:
    for path in ("/nope", "/catalog/a/b/c/d/e", "/uploads"):
        assert_error(api.get(path), 404, "not_found")
    # outside /api/v1 too: the catch-all route hands everything to core's router
    for path in ("/", "/api", "/api/v2/health", "/index.html", "/admin-ish"):
        assert_error(api.get(api.base_url.copy_with(path=path)), 404, "not_found")


def test_wrong_methods_get_the_contracts_405_with_allow(api: httpx.Client) -> None:
    for method, path, allowed in (
        ("POST", "/health", {"GET"}),
        ("DELETE", "/catalog", {"GET"}),
        ("GET", "/uploads/abc/commit", {"POST"}),
        ("PUT", "/catalog/x/1.0/x86_64", {"GET", "DELETE"}),
        ("OPTIONS", "/health", {"GET"}),
    ):
        r = api.request(method, path)
        assert_error(r, 405, "method_not_allowed")
        assert {m.strip() for m in r.headers["allow"].split(",")} == allowed, (method, path, r.headers)


def test_an_encoded_slash_stays_inside_the_id(api: httpx.Client) -> None:
    cid = f"s-{uuid.uuid4().hex[:10]}"
    empty = Pack({"chunk_size": 4096, "files": []})
    r = begin_push(api, cid, "1.0", "x86_64", empty)
    assert r.status_code == 201, r.text
    put_index(api, r.json(), index_bytes(empty))
    assert commit(api, r.json()["upload_id"]).status_code == 200
    # Decoded before routing, these would read and delete that manifest; as sent, the id is "<cid>/1.0".
    assert_error(api.get(f"/catalog/{cid}%2F1.0/x86_64"), 400, "invalid_input")
    assert_error(api.get(f"/catalog/{cid}%2f1.0%2Fx86_64"), 400, "invalid_input")
    assert_error(api.delete(f"/catalog/{cid}%2F1.0%2Fx86_64"), 400, "invalid_input")
    assert api.get(f"/catalog/{cid}/1.0/x86_64").status_code == 200


def test_push_commit_pull_moves_bytes_through_sas_urls(api: httpx.Client) -> None:
    cid = f"p-{uuid.uuid4().hex[:10]}"
    files = {"disk.hds": os.urandom(3 * 4096) + b"\0" * 4096 + os.urandom(100), "config.pvs": b"<vm/>"}
    pack = build_pack(files)
    r = begin_push(api, cid, "1.0", "arm64", pack)
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["put_headers"] == PUT_HEADERS  # the catalog tells the client what Put Blob needs
    index_url = declare_index(api, session["upload_id"], index_bytes(pack)).json()["index_url"]
    assert "sig=" in index_url and AZURITE_KEY not in index_url and "/staging/" in index_url
    assert plain.put(index_url, content=index_bytes(pack)).status_code == 400  # no blob type: refused
    put_index(api, session, index_bytes(pack))

    asked = ask_chunks(api, session["upload_id"], pack.digests)
    assert asked.status_code == 200, asked.text
    chunks = asked.json()
    assert chunks["stored"] == [] and chunks["put_headers"] == PUT_HEADERS
    assert set(chunks["urls"]) == set(pack.chunks)
    for digest, url in chunks["urls"].items():
        assert "sig=" in url and AZURITE_KEY not in url
        assert "/staging/" in url and "/catalogs/" not in url  # only the server writes verified chunks
        assert plain.put(url, content=b"x").status_code == 400  # a SAS PUT without the blob type is refused
        stored = plain.put(url, content=zstandard.ZstdCompressor().compress(pack.chunks[digest]), headers=PUT_HEADERS)
        assert stored.status_code == 201, stored.text
    verdict = verify(api, session["upload_id"], pack.digests)
    assert verdict.status_code == 200, verdict.text
    assert sorted(verdict.json()["verified"]) == sorted(pack.chunks), verdict.json()
    manifest = commit(api, session["upload_id"]).json()
    assert manifest["status"] == "ready" and manifest["catalog_id"] == cid

    answer = pull(api, cid, "latest", "arm64")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["format"] == "chunks" and "sig=" in body["index_url"]
    index = fetch_index(body)  # checked against the manifest's pack digest
    assert {f["path"] for f in index["files"]} == set(files)
    assert plain.put(body["index_url"], content=b"{}", headers=PUT_HEADERS).status_code == 403  # read-only SAS
    page = pull_urls(api, cid, "1.0", "arm64", pack.digests)
    assert page.status_code == 200, page.text
    urls: dict[str, str] = page.json()["urls"]
    assert set(urls) == set(pack.chunks)
    for digest, url in urls.items():
        assert download_chunk(url) == pack.chunks[digest]
        assert plain.put(url, content=b"overwrite", headers=PUT_HEADERS).status_code == 403  # read-only SAS
    assert api.get(f"/catalog/{cid}/1.0/arm64").json()["download_count"] == 1


# ---- logs -----------------------------------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _assert_logged(text: str, expected: list[tuple[str, int]], token: str) -> None:
    requests = [d for d in _json_lines(text) if d.get("message") == "request"]
    seen = {(d["request_id"], d["status"]) for d in requests}
    assert set(expected) <= seen, (expected, requests[-10:])
    for secret in (*SECRETS, token, "not-a-jwt", "sig="):
        assert secret not in text


def test_the_host_logs_json_with_the_request_id_and_no_secret(host: RunningProcess) -> None:
    token = _token("logger", ("USER",))
    ids = [f"azure-http-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    with httpx.Client(base_url=host.url + "/api/v1", timeout=60) as client:
        r = client.get("/auth/whoami", headers={"Authorization": f"Bearer {token}", "X-Request-Id": ids[0]})
        assert r.status_code == 200 and r.json()["subject"] == "logger"
        r = client.get("/auth/whoami", headers={"Authorization": "Bearer not-a-jwt", "X-Request-Id": ids[1]})
        assert r.status_code == 401 and r.headers["x-request-id"] == ids[1]
        r = client.post(f"/catalog/{uuid.uuid4().hex[:8]}/1/x86_64/pull", headers={
            "Authorization": f"Bearer {token}", "X-Request-Id": ids[2]})  # fmt: skip
        assert r.status_code == 404
    _assert_logged(host.log_path.read_text(), [(ids[0], 200), (ids[1], 401), (ids[2], 404)], token)


def test_in_process_logs_go_through_the_existing_root_handlers_as_json(transport: AzureFunctionsTransport) -> None:
    """In Azure the worker's handler on the root logger ships logs: it must get JSON, not be replaced."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    token = _token("logger", ("USER",))
    ids = [f"azure-inproc-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        sys.modules["azurelib.bootstrap"].router.cache_clear()  # built again, now that this handler is there
        with httpx.Client(base_url="http://azure.inprocess/api/v1", transport=transport) as client:
            headers = {"Authorization": f"Bearer {token}", "X-Request-Id": ids[0]}
            assert client.get("/auth/whoami", headers=headers).json()["subject"] == "logger"
            headers = {"Authorization": "Bearer not-a-jwt", "X-Request-Id": ids[1]}
            assert client.get("/auth/whoami", headers=headers).status_code == 401
    finally:
        root.removeHandler(handler)
    assert isinstance(handler.formatter, JsonFormatter)
    _assert_logged(stream.getvalue(), [(ids[0], 200), (ids[1], 401)], token)


# ---- settings -------------------------------------------------------------------------------------


def _answer_with(env: dict[str, str], transport: AzureFunctionsTransport) -> httpx.Response:
    """One request through the unchanged function with these app settings instead of the fixture's."""
    bootstrap = sys.modules["azurelib.bootstrap"]
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PDCAT_")]:
            mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        bootstrap.router.cache_clear()
        try:
            with httpx.Client(base_url="http://azure.inprocess", transport=transport) as client:
                return client.get("/api/v1/health")
        finally:
            bootstrap.router.cache_clear()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"PDCAT_JWT_SECRET": None}, "PDCAT_JWT_SECRET or PDCAT_JWKS_URL"),
        ({"PDCAT_COSMOS_ENDPOINT": None}, "PDCAT_COSMOS_ENDPOINT is not set"),
        ({"PDCAT_COSMOS_ENDPOINT": "ftp://nowhere"}, "PDCAT_COSMOS_ENDPOINT must be an http(s) URL"),
        ({"PDCAT_BLOB_CONNECTION_STRING": None}, "PDCAT_BLOB_CONNECTION_STRING (account key) or PDCAT_BLOB_ACC"),
        ({"PDCAT_BLOB_ACCOUNT_URL": "https://acct.blob.core.windows.net"}, "not both"),
        ({"PDCAT_COSMOS_VERIFY_TLS": "perhaps"}, "PDCAT_COSMOS_VERIFY_TLS must be true or false"),
        ({"PDCAT_URL_EXPIRY_SECONDS": "soon"}, "PDCAT_URL_EXPIRY_SECONDS must be an integer"),
        ({"PDCAT_BLOB_CONTAINER": "x"}, "container name"),  # refused by the adapter: still not the caller's 400
    ],
)
def test_bad_settings_fail_in_one_clear_line(
    app_env: dict[str, str], transport: AzureFunctionsTransport, change: dict[str, str | None], named: str
) -> None:
    env = {k: v for k, v in {**app_env, **change}.items() if v is not None}
    r = _answer_with(env, transport)
    error = assert_error(r, 500, "misconfigured")
    assert named in error["message"]
    assert "\n" not in error["message"]
    assert r.headers["x-request-id"]
    for secret in SECRETS:
        assert secret not in r.text


KEY_VAULT_REFERENCE = "@Microsoft.KeyVault(VaultName=pdcat-kv-guessable;SecretName=pdcat-jwt-secret)"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"PDCAT_JWT_SECRET": KEY_VAULT_REFERENCE}, "PDCAT_JWT_SECRET is an unresolved Key Vault reference"),
        ({"PDCAT_JWT_SECRET": "  " + KEY_VAULT_REFERENCE.lower()}, "PDCAT_JWT_SECRET is an unresolved Key Vault"),
        ({"PDCAT_JWT_AUDIENCE": KEY_VAULT_REFERENCE}, "PDCAT_JWT_AUDIENCE is an unresolved Key Vault reference"),
        ({"PDCAT_JWT_SECRET": "Q"}, "PDCAT_JWT_SECRET is too short"),
        ({"PDCAT_JWT_SECRET": "short-secret-" + "q" * 18}, "PDCAT_JWT_SECRET is too short"),  # 31 bytes
    ],
)
def test_unsafe_jwt_secrets_refuse_to_start(
    app_env: dict[str, str],
    transport: AzureFunctionsTransport,
    caplog: pytest.LogCaptureFixture,
    change: dict[str, str],
    named: str,
) -> None:
    """A Key Vault reference Functions could not resolve reaches the app as its literal text: signing
    with it would let anyone who guesses the vault's name forge a SUPER_USER token. Refused, as is a
    secret under 32 bytes, in one line naming the setting and never its value."""
    env = {**app_env, **change}
    (value,) = change.values()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyjwt warns about a short HMAC key: that is the point here
        forged = issue_token(value.strip(), "mallory", ["SUPER_USER"], [], 600)[0]
    bootstrap = sys.modules["azurelib.bootstrap"]
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.ERROR):
        for key in [k for k in os.environ if k.startswith("PDCAT_")]:
            mp.delenv(key)
        for key, item in env.items():
            mp.setenv(key, item)
        bootstrap.router.cache_clear()
        try:
            with httpx.Client(base_url="http://azure.inprocess", transport=transport) as client:
                health = client.get("/api/v1/health")
                whoami = client.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {forged}"})
        finally:
            bootstrap.router.cache_clear()
    for r in (health, whoami):
        error = assert_error(r, 500, "misconfigured")
        assert named in error["message"] and "\n" not in error["message"]
        assert value.strip() not in r.text and "pdcat-kv-guessable" not in r.text and forged not in r.text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert named in logged
    assert value.strip() not in logged and "pdcat-kv-guessable" not in logged


def test_a_missing_container_is_unavailable_and_retried(
    app_env: dict[str, str], transport: AzureFunctionsTransport
) -> None:
    r = _answer_with({**app_env, "PDCAT_COSMOS_CONTAINER": "not-there"}, transport)
    assert_error(r, 503, "unavailable")
    assert _answer_with(app_env, transport).status_code == 200  # a failed start is not cached


def test_settings_reprs_hide_keys(app_env: dict[str, str]) -> None:
    settings = sys.modules["azurelib.bootstrap"].load_azure_settings(app_env)
    assert settings.cosmos_key == COSMOS_EMULATOR_KEY
    for secret in (COSMOS_EMULATOR_KEY, AZURITE_KEY):
        assert secret not in repr(settings)


# ---- the local host's request handling, as the Functions host (Kestrel + ASP.NET routing) does it ----


def test_kestrel_path_handling() -> None:
    assert kestrel_path("/api/v1/catalog/a%2Fb/1.0") == "/api/v1/catalog/a%2Fb/1.0"
    assert kestrel_path("/api/v1/catalog/a%2fb") == "/api/v1/catalog/a%2fb"
    assert kestrel_path("/api/v1/x/%C3%A9%20y") == "/api/v1/x/é y"
    assert kestrel_path("/api/v1/%ff/%C3%28") == "/api/v1/%ff/%C3("  # undecodable bytes stay encoded
    assert kestrel_path("/api/v1/catalog/../%2e%2e/health") == "/api/health"
    assert kestrel_path("/../../etc/passwd") == "/etc/passwd"
    assert kestrel_path("/api/v1/catalog/..%2F../x") == "/api/v1/catalog/..%2F../x"  # one segment, not a dot one
    assert kestrel_path("/api/v1/./health/.") == "/api/v1/health/"
    for bad in ("/api/v1/ok/%00/x86_64", "relative"):
        with pytest.raises(BadRequest):
            kestrel_path(bad)
    assert to_uri_component("/api/v1/x/é y/a%2Fb/100%") == "/api/v1/x/%C3%A9%20y/a%2Fb/100%25"


def test_route_templates() -> None:
    catch_all = RouteTemplate.parse("{*path}")
    assert catch_all.match([]) == {}
    assert catch_all.match(["api", "v1", "health"]) == {"path": "api/v1/health"}
    item = RouteTemplate.parse("api/items/{id}/{part?}")
    assert item.match(["API", "Items", "7"]) == {"id": "7"}
    assert item.match(["api", "items", "7", "a"]) == {"id": "7", "part": "a"}
    assert item.match(["api", "items"]) is None
    assert item.match(["api", "items", "7", "a", "b"]) is None
    assert RouteTemplate.parse("api/items/{id}").precedence < catch_all.precedence
    for unsupported in ("api/{id:int}", "api/x{id}", "{*rest}/tail"):
        with pytest.raises(ValueError):
            RouteTemplate.parse(unsupported)


def test_the_host_answers_its_own_400_for_a_nul_before_the_function(transport: AzureFunctionsTransport) -> None:
    """Kestrel refuses a NUL in the path with a bare 400: the function (and its JSON) never sees it."""
    answer = transport.raw("GET", "/api/v1/catalog/ok/%00/x86_64", {}, b"")
    assert answer.status_code == 400 and answer.content == b""


# ---- cold start ---------------------------------------------------------------------------------


def test_cold_import_of_the_function_app_loads_no_azure_sdk() -> None:
    """``python -X importtime -c 'import function_app'`` from azure_app/: SDKs load on the first request."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import function_app"],
        cwd=APP_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    cumulative: dict[str, int] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)", line)
        if match:
            cumulative[match.group(2)] = int(match.group(1))
    for name in cumulative:
        assert not name.startswith(("azure.cosmos", "azure.storage", "azure.identity", "azure.core")), name
        assert name.split(".")[0] not in ("jwt", "cryptography", "zstandard"), name
        assert name not in ("core.service", "core.api", "core.auth", "azurelib.cosmos_store", "azurelib.blob_store")
    total = cumulative["function_app"]
    library = cumulative.get("azure.functions", 0)
    assert total > 0 and library > 0
    print(
        f"cold import of azure_app/function_app.py: {total / 1000:.0f} ms (cumulative, -X importtime), "
        f"of which azure.functions {library / 1000:.0f} ms"
    )


def test_the_app_is_indexed_as_one_anonymous_catch_all_function() -> None:
    """What the worker reports to the host: one HTTP function, every method, route ``{*path}``."""
    (function,) = FunctionsHost.load(APP_DIR).functions
    trigger = next(b for b in function.bindings if b["type"] == "httpTrigger")
    assert trigger["route"] == "{*path}" and trigger["authLevel"] == "ANONYMOUS"
    assert "methods" not in trigger  # no list: the host routes every verb to it
    host_json = json.loads((Path(APP_DIR) / "host.json").read_text())
    assert host_json["extensions"]["http"]["routePrefix"] == ""
