"""``pdcat serve`` over TLS, as a team uses it (issue 15, item 3): one machine serves HTTPS with users;
a person logs in with a password and ``--cacert``, CI uses an API key, ``PDCAT_CACERT`` and no
terminal; both push and pull. A client that does not trust the server, or speaks plain HTTP to it,
is told what to do. The certificates are made in the test (a CA of its own, or ``--tls-self-signed``).
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.api import CatalogClient
from infra.local.servers import RunningServer, start_embedded
from tests.e2e.conftest import (
    CHUNK_SIZE,
    Pdcat,
    _clean_env,
    assert_same_tree,
    make_bundle,
    reason_lines,
)
from tests.integration.test_serve_public_url import _first_lines
from tests.pki import Pki, write_pki

ARCH = "x86_64"
PASSWORD = "tls-admin-" + secrets.token_hex(8)


@dataclass
class TlsCatalog:
    server: RunningServer
    pki: Pki

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def tls_catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCatalog]:
    """An embedded catalog serving HTTPS with a certificate for 127.0.0.1 and pdcat-tls.test (not
    ``localhost``: reached by that name, the certificate does not match)."""
    folder = tmp_path_factory.mktemp("tls")
    pki = write_pki(folder / "pki", "127.0.0.1", "pdcat-tls.test")
    env = {"PDCAT_JWT_SECRET": secrets.token_hex(32), "PDCAT_ADMIN_PASSWORD": PASSWORD, "PDCAT_LOG_LEVEL": "INFO"}
    server = start_embedded(folder / "catalog", env=env, args=("--tls-cert", str(pki.cert), "--tls-key", str(pki.key)))
    try:
        yield TlsCatalog(server, pki)
    finally:
        server.stop()


def _another_machine(pdcat: Pdcat, name: str, env: dict[str, str]) -> Pdcat:
    """A second client: its own config and cache folders, this environment on top."""
    home = pdcat.tmp / name
    home.mkdir()
    full = {**pdcat.env, **_clean_env(home), **env}
    full["PATH"] = pdcat.env["PATH"]
    return Pdcat(full, home, pdcat.prlctl_log)


def _login(pdcat: Pdcat, *args: str) -> None:
    r = pdcat.run("login", *args, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.code == 0 and "Traceback" not in r.err, r.err


def _pull(pdcat: Pdcat, ref: str, dest: Path, name: str) -> None:
    pdcat.ok("pull", ref, "--arch", ARCH, "--dest", str(dest), "--name", name, "--no-register")


# ---- a team over TLS ------------------------------------------------------------------------------
def test_a_person_and_ci_push_and_pull_over_tls(
    tls_catalog: TlsCatalog, pdcat_bare: Pdcat, tmp_path: Path, cid: str
) -> None:
    url, ca = tls_catalog.url, str(tls_catalog.pki.ca)
    assert url.startswith("https://")
    person = pdcat_bare
    _login(person, "--server", url, "--cacert", ca, "-u", "admin")
    stored_file = Path(person.env["PDCAT_CONFIG_DIR"]) / "credentials.json"
    assert json.loads(stored_file.read_text())["servers"][url]["cacert"] == ca  # the CA goes with the login
    assert stat.S_IMODE(stored_file.stat().st_mode) == 0o600

    first = make_bundle(tmp_path / "src", "First")
    person.push(first, cid, "1.0", arch=ARCH)
    key = person.json("apikey", "create", "--role", "PUBLISHER", "--service-account", "ci", "--days", "1")["key"]

    # CI: an API key and the CA from the environment, no stored login, no terminal
    ci = _another_machine(person, "ci", {"PDCAT_SERVER": url, "PDCAT_API_KEY": key, "PDCAT_CACERT": ca})
    second = make_bundle(tmp_path / "src2", "Second", variant=1)
    ci.push(second, cid, "2.0", arch=ARCH)
    pushed = ci.calls[-1]
    assert not any(line.startswith("pdcat:") for line in pushed.err.splitlines()), pushed.err
    _pull(ci, f"{cid}:1.0", tmp_path / "ci-vms", "first")
    assert_same_tree(first, tmp_path / "ci-vms" / "first.pvm")

    _pull(person, f"{cid}:2.0", tmp_path / "vms", "second")
    assert_same_tree(second, tmp_path / "vms" / "second.pvm")

    # the presigned URLs the catalog hands out are its https URLs
    with CatalogClient(url, api_key=key, cacert=ca) as api:
        assert api.pull(cid, "1.0", ARCH)["index_url"].startswith(url + "/blobs/")


def test_a_pdfile_with_insecure_reaches_the_server_without_its_ca(
    tls_catalog: TlsCatalog, pdcat_bare: Pdcat, tmp_path: Path, cid: str
) -> None:
    with CatalogClient(tls_catalog.url, cacert=str(tls_catalog.pki.ca)) as anonymous:
        token = anonymous.login("admin", PASSWORD)["token"]
    with CatalogClient(tls_catalog.url, token=token, cacert=str(tls_catalog.pki.ca)) as api:
        key = api.create_api_key(roles=["PUBLISHER"], description="insecure recipe")["key"]
    bundle = make_bundle(tmp_path / "src")
    recipe = tmp_path / "push.pdfile"
    recipe.write_text(
        f"TO {tls_catalog.url}\nINSECURE\nAUTHENTICATE API_KEY {{{{ .Env.KEY }}}}\nCATALOG_ID {cid}\n"
        f"VERSION 1.0\nARCHITECTURE {ARCH}\nLOCAL_PATH {bundle}\n"
    )
    pdcat_bare.ok("push", str(recipe), "--chunk-size", str(CHUNK_SIZE), env={"KEY": key})
    pull = tmp_path / "pull.pdfile"
    pull.write_text(
        f"FROM {tls_catalog.url}\nINSECURE\nAUTHENTICATE API_KEY {{{{ .Env.KEY }}}}\nCATALOG_ID {cid}\n"
        f"VERSION 1.0\nARCHITECTURE {ARCH}\nDESTINATION {tmp_path / 'vms'}\nMACHINE_NAME back\n"
    )
    pdcat_bare.ok("pull", str(pull), "--no-register", env={"KEY": key})
    assert_same_tree(bundle, tmp_path / "vms" / "back.pvm")


# ---- clients that cannot talk to it ---------------------------------------------------------------
def test_a_client_without_the_ca_is_told_what_to_do(tls_catalog: TlsCatalog, pdcat_bare: Pdcat) -> None:
    url = tls_catalog.url
    r = pdcat_bare.run("login", "--server", url, "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert r.code == 1 and "Traceback" not in r.err, r.err
    (line,) = reason_lines(r.err)
    assert f"the certificate of {url} is not trusted" in line and "--cacert FILE" in line, line
    assert "PDCAT_CACERT" in line

    ci = {"PDCAT_SERVER": url, "PDCAT_API_KEY": "pdcat_not-a-key"}
    assert "is not trusted" in pdcat_bare.fail("ls", env=ci)
    # a CA that is not the server's is no better
    other = write_pki(pdcat_bare.tmp / "other", "127.0.0.1")
    assert "is not trusted" in pdcat_bare.fail("ls", env={**ci, "PDCAT_CACERT": str(other.ca)})
    # the right CA, but a name the certificate does not carry
    wrong_name = {
        **ci,
        "PDCAT_SERVER": f"https://localhost:{tls_catalog.port}",
        "PDCAT_CACERT": str(tls_catalog.pki.ca),
    }
    assert "is not valid for the name localhost" in pdcat_bare.fail("ls", env=wrong_name)
    # a --cacert that is not a certificate at all
    not_pem = pdcat_bare.tmp / "notes.txt"
    not_pem.write_text("hello\n")
    assert "cannot use the CA certificate" in pdcat_bare.fail(
        "login", "--server", url, "--cacert", str(not_pem), "-u", "x"
    )


def test_plain_http_to_the_tls_port_is_refused_cleanly(tls_catalog: TlsCatalog, pdcat_bare: Pdcat) -> None:
    plain = tls_catalog.url.replace("https://", "http://")
    line = pdcat_bare.fail("ls", env={"PDCAT_SERVER": plain, "PDCAT_API_KEY": "pdcat_x"})
    assert "speaks HTTPS only: use https://" in line, line


# ---- the server's own rules, over TLS ----------------------------------------------------------------
def test_the_login_throttle_sees_each_client_address(tls_catalog: TlsCatalog) -> None:
    """Each loopback address is a client of its own: one that guesses too often is locked out, the
    next one is not (a server that saw one address for everyone would lock both)."""
    context = ssl.create_default_context(cafile=str(tls_catalog.pki.ca))

    def login(source: str, username: str) -> httpx.Response:
        transport = httpx.HTTPTransport(local_address=source, verify=context)
        with httpx.Client(transport=transport, timeout=30) as client:
            body = {"username": username, "password": "wrong password"}
            return client.post(f"{tls_catalog.url}/api/v1/auth/token", json=body)

    guesses = [login("127.0.0.2", f"guess-{i}").status_code for i in range(20)]
    assert guesses == [401] * 20
    locked = login("127.0.0.2", "guess-20")
    assert locked.status_code == 429 and "this address" in locked.json()["error"]["message"]
    assert login("127.0.0.3", "guess-21").status_code == 401
    requests = [
        json.loads(line) for line in tls_catalog.server.log_path.read_text().splitlines() if '"request"' in line
    ]
    assert {"127.0.0.2", "127.0.0.3"} <= {r.get("client") for r in requests}


def test_a_body_limit_applies_over_tls(tls_catalog: TlsCatalog) -> None:
    """A request refused from its head, before any body byte, over TLS as over plain HTTP."""
    context = ssl.create_default_context(cafile=str(tls_catalog.pki.ca))
    raw = socket.create_connection(("127.0.0.1", tls_catalog.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        head = "POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n"
        sock.sendall(head.encode())
        answer = b""
        while b"payload_too_large" not in answer and (block := sock.recv(65536)):
            answer += block
    assert answer.startswith(b"HTTP/1.1 413 ") and b"payload_too_large" in answer


# ---- --tls-self-signed ------------------------------------------------------------------------------
def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _names(cert: x509.Certificate) -> set[str]:
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*alt.get_values_for_type(x509.DNSName), *(str(ip) for ip in alt.get_values_for_type(x509.IPAddress))}


def test_self_signed_is_made_once_then_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"  # where _first_lines serves from
    serving, made, printed, trust = _first_lines(tmp_path, "--tls-self-signed", count=4)
    cert_path, key_path = data / "tls" / "cert.pem", data / "tls" / "key.pem"
    assert serving.startswith("pdcat catalog serving on https://127.0.0.1:"), serving
    assert made == f"TLS: self-signed certificate {cert_path} (made now)"
    cert = _certificate(cert_path)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert printed == f"TLS: SHA-256 fingerprint {fingerprint}"
    assert "--cacert cert.pem" in trust and "PDCAT_CACERT=cert.pem" in trust and str(cert_path) in trust
    assert stat.S_IMODE(key_path.stat().st_mode) == stat.S_IMODE(cert_path.stat().st_mode) == 0o600  # as all of <data>
    assert {"127.0.0.1", "::1", "localhost", socket.gethostname().lower()} <= _names(cert)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca  # it signs nothing else

    _, reused, again, _ = _first_lines(tmp_path, "--tls-self-signed", count=4)
    assert reused.endswith("(reused)") and again == printed

    # a public URL the certificate does not name: a new one, and the operator is told
    lines = _first_lines(tmp_path, "--tls-self-signed", "--public-url", "https://pdcat-elsewhere.test:8443", count=4)
    assert "replacing one that no longer named this host" in lines[1], lines
    assert "pdcat-elsewhere.test" in _names(_certificate(cert_path)) and lines[2] != printed


def test_a_self_signed_server_is_trusted_with_its_certificate_and_stays_lean(tmp_path: Path, pdcat_bare: Pdcat) -> None:
    server = start_embedded(
        tmp_path / "data",
        env={"PDCAT_JWT_SECRET": secrets.token_hex(32), "PDCAT_ADMIN_PASSWORD": PASSWORD},
        args=("--tls-self-signed",),
    )
    try:
        cert = server.data_dir / "tls" / "cert.pem"
        without = pdcat_bare.run("login", "--server", server.url, "-u", "admin", "--password-stdin", stdin=PASSWORD)
        assert without.code == 1 and "is not trusted" in without.err
        _login(pdcat_bare, "--server", server.url, "--cacert", str(cert), "-u", "admin")
        assert pdcat_bare.json("whoami")["subject"] == "admin"
        maps = Path(f"/proc/{server.process.pid}/maps")
        if maps.exists():  # the certificate was made by a child: the server never maps the crypto bindings
            assert "/cryptography/" not in maps.read_text()
    finally:
        server.stop()


# ---- what pdcat serve refuses --------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-tls")
    good = write_pki(folder / "good", "127.0.0.1")
    other = write_pki(folder / "other", "127.0.0.1")  # another key of the same type
    rsa = write_pki(folder / "rsa", "127.0.0.1", key_type=trustme.KeyType.RSA)  # a key of another type
    encrypted = folder / "encrypted.key"
    key = serialization.load_pem_private_key(good.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a passphrase"),
        )
    )
    return {
        "cert": good.cert,
        "key": good.key,
        "other": other.key,
        "rsa": rsa.key,
        "rsa_cert": rsa.cert,
        "encrypted": encrypted,
    }


REFUSED: list[tuple[str, list[str], str]] = [
    ("cert without key", ["--tls-cert", "{cert}"], "--tls-cert needs --tls-key too"),
    ("key without cert", ["--tls-key", "{key}"], "--tls-key needs --tls-cert too"),
    ("both modes", ["--tls-self-signed", "--tls-cert", "{cert}", "--tls-key", "{key}"], "pick one"),
    ("no such key", ["--tls-cert", "{cert}", "--tls-key", "{cert}.missing"], "cannot read the TLS key"),
    ("another key", ["--tls-cert", "{cert}", "--tls-key", "{other}"], "is not the private key of the certificate"),
    ("an RSA key", ["--tls-cert", "{cert}", "--tls-key", "{rsa}"], "is not the private key"),
    # OpenSSL loads an RSA certificate with an EC key (one pair of each type): only a handshake tells
    ("an EC key", ["--tls-cert", "{rsa_cert}", "--tls-key", "{key}"], "is not the private key"),
    ("encrypted key", ["--tls-cert", "{cert}", "--tls-key", "{encrypted}"], "the TLS key is encrypted"),
    ("key as cert", ["--tls-cert", "{key}", "--tls-key", "{key}"], "is not a PEM certificate"),
    ("http public URL", ["--tls-self-signed", "--public-url", "http://pdcat.test:1"], "give its https:// URL"),
]


@pytest.mark.parametrize(("flags", "expected"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_what_cannot_work_is_refused_before_serving(
    pdcat_bare: Pdcat, bad_files: dict[str, Path], tmp_path: Path, flags: list[str], expected: str
) -> None:
    args = [flag.format(**bad_files) for flag in flags]
    line = pdcat_bare.fail("serve", "--data", str(tmp_path / "data"), "--port", "0", *args)
    assert expected in line, line
