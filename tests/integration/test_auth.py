"""core.auth against real pyjwt, real keys and a real JWKS endpoint on loopback; no mocks.

The attack cases are the point: each one is a token or header a hostile client can send, and each
must end in ``Unauthenticated`` (401), never a 500 and never a Principal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from core.auth import (
    AuthConfig,
    Authenticator,
    LoginThrottle,
    TokenVerifier,
    hash_secret,
    issue_token,
    new_api_key,
    parse_api_key,
)
from core.config import SettingsError, load_settings
from core.errors import Conflict, PdcatError, TooManyRequests, Unauthenticated, Unavailable, error_for_status
from core.manifest import now_iso
from core.passwords import hash_password, verify_password
from core.ports import ApiKeyRecord, ApiKeyStore
from core.rbac import Principal
from tests.loopback_http import serving

SECRET = "s" * 48  # >= 32 bytes, so pyjwt does not warn about a short HMAC key
OTHER_SECRET = "o" * 48
ISSUER = "https://idp.example.test/"
AUDIENCE = "pdcat-api"


# --------------------------------------------------------------------------- fakes and fixtures


class InMemoryApiKeyStore(ApiKeyStore):
    def __init__(self) -> None:
        self._records: dict[str, ApiKeyRecord] = {}

    def create(self, record: ApiKeyRecord) -> None:
        if record.key_id in self._records:
            raise Conflict(f"API key {record.key_id} exists")
        self._records[record.key_id] = record

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._records.get(key_id)

    def put(self, record: ApiKeyRecord) -> None:
        self._records[record.key_id] = record

    def list(self) -> list[ApiKeyRecord]:
        return sorted(self._records.values(), key=lambda r: r.key_id)


class Keys:
    """The IdP's private keys; the JWKS server publishes the public halves."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa_public_pem = self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        ec_jwk = ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        return {
            "keys": [
                {**rsa_jwk, "kid": "rsa1", "alg": "RS256", "use": "sig"},
                {**ec_jwk, "kid": "ec1", "alg": "ES256", "use": "sig"},
            ]
        }


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def jwks_base(keys: Keys) -> Iterator[str]:
    """A real HTTP JWKS endpoint on 127.0.0.1; also serves broken answers under other paths."""
    jwks = keys.jwks()
    body = json.dumps(jwks).encode()
    answers = {
        "/jwks.json": (200, "application/json", body),
        "/junk": (200, "text/html", b"<html>not json</html>"),
        "/empty": (200, "application/json", b'{"keys": []}'),
        "/array": (200, "application/json", b"[]"),
        "/nokid": (
            200,
            "application/json",
            json.dumps({"keys": [{**jwks["keys"][0], "kid": None}]}).encode(),
        ),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, ctype, payload = answers.get(self.path, (404, "text/plain", b"no"))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as base:
        yield base


@pytest.fixture(scope="module")
def jwks_verifier(jwks_base: str) -> TokenVerifier:
    return TokenVerifier(AuthConfig(jwks_url=f"{jwks_base}/jwks.json", issuer=ISSUER, audience=AUDIENCE))


@pytest.fixture(scope="module")
def hs_verifier() -> TokenVerifier:
    return TokenVerifier(AuthConfig(jwt_secret=SECRET))


def claims_for(sub: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + 600, **extra}


def idp_claims(**extra: Any) -> dict[str, Any]:
    return claims_for(iss=ISSUER, aud=AUDIENCE, **extra)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """A JWT assembled by hand, for tokens pyjwt refuses to produce."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64url(signature)}"


# --------------------------------------------------------------------------- configuration


def test_config_needs_exactly_one_key_source() -> None:
    with pytest.raises(ValueError):
        AuthConfig()
    with pytest.raises(ValueError):
        AuthConfig(jwt_secret=SECRET, jwks_url="https://idp.example.test/jwks")
    with pytest.raises(ValueError):
        AuthConfig(jwks_url="file:///etc/passwd")


def test_config_refuses_a_short_hs_secret() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        AuthConfig(jwt_secret="x" * 31)
    assert AuthConfig(jwt_secret="é" * 16).jwt_secret  # 32 bytes of UTF-8


def test_config_repr_hides_the_secret() -> None:
    assert SECRET not in repr(AuthConfig(jwt_secret=SECRET))


# --------------------------------------------------------------------------- happy paths


def test_hs256_token_from_issue_token(hs_verifier: TokenVerifier) -> None:
    token, expires_at = issue_token(SECRET, "alice", ["publisher"], ["manage_api_keys"], ttl_seconds=120)
    principal = hs_verifier.verify(token)
    assert principal == Principal("alice", frozenset({"PUBLISHER"}), frozenset({"MANAGE_API_KEYS"}), "token")
    expiry = datetime.strptime(expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(seconds=100) < expiry - datetime.now(UTC) <= timedelta(seconds=121)


def test_rs256_via_jwks(jwks_verifier: TokenVerifier, keys: Keys) -> None:
    token = jwt.encode(idp_claims(roles=["admin"]), keys.rsa, algorithm="RS256", headers={"kid": "rsa1"})
    principal = jwks_verifier.verify(token)
    assert principal.subject == "alice"
    assert principal.roles == {"ADMIN"}
    assert principal.via == "token"


def test_es256_via_jwks(jwks_verifier: TokenVerifier, keys: Keys) -> None:
    token = jwt.encode(idp_claims(roles=["user"]), keys.ec, algorithm="ES256", headers={"kid": "ec1"})
    assert jwks_verifier.verify(token).roles == {"USER"}


def test_cognito_groups_field(jwks_base: str, keys: Keys) -> None:
    verifier = TokenVerifier(AuthConfig(jwks_url=f"{jwks_base}/jwks.json", issuer=ISSUER, roles_field="cognito:groups"))
    payload = {**claims_for(iss=ISSUER), "cognito:groups": ["publisher", "user"]}
    token = jwt.encode(payload, keys.rsa, algorithm="RS256", headers={"kid": "rsa1"})
    assert verifier.verify(token).roles == {"PUBLISHER", "USER"}


def test_dotted_roles_field_and_string_claims() -> None:
    verifier = TokenVerifier(AuthConfig(jwt_secret=SECRET, roles_field="realm_access.roles", claims_field="scope"))
    payload = claims_for(
        realm_access={"roles": ["admin"]},
        scope="list_catalog_manifest  pull_catalog_manifest,push_catalog_manifest",
    )
    principal = verifier.verify(jwt.encode(payload, SECRET, algorithm="HS256"))
    assert principal.roles == {"ADMIN"}
    assert principal.claims == {"LIST_CATALOG_MANIFEST", "PULL_CATALOG_MANIFEST", "PUSH_CATALOG_MANIFEST"}


def test_missing_roles_and_claims_are_empty(hs_verifier: TokenVerifier) -> None:
    principal = hs_verifier.verify(jwt.encode(claims_for(), SECRET, algorithm="HS256"))
    assert principal.roles == frozenset() and principal.claims == frozenset()


def test_expiry_within_leeway_is_accepted(hs_verifier: TokenVerifier) -> None:
    payload = claims_for(exp=int(time.time()) - 5)
    assert hs_verifier.verify(jwt.encode(payload, SECRET, algorithm="HS256")).subject == "alice"


# --------------------------------------------------------------------------- attacks on tokens


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b", "a.b.c", "a.b.c.d", "!!!.###.$$$", "é.é.é", "eyJhbGciOiJIUzI1NiJ9..", "x" * 20000],
)
def test_garbage_tokens(hs_verifier: TokenVerifier, jwks_verifier: TokenVerifier, token: str) -> None:
    for verifier in (hs_verifier, jwks_verifier):
        with pytest.raises(Unauthenticated) as err:
            verifier.verify(token)
        assert token not in err.value.message or not token


def test_bad_signature(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims_for(), OTHER_SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="signature"):
        hs_verifier.verify(token)


def test_expired_beyond_leeway(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims_for(exp=int(time.time()) - 120), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="expired"):
        hs_verifier.verify(token)


def test_alg_none(hs_verifier: TokenVerifier, jwks_verifier: TokenVerifier) -> None:
    token = hand_made({"alg": "none", "typ": "JWT"}, idp_claims(roles=["super_user"]))
    for verifier in (hs_verifier, jwks_verifier):
        with pytest.raises(Unauthenticated):
            verifier.verify(token)
    with pytest.raises(Unauthenticated):
        jwks_verifier.verify(hand_made({"alg": "none", "kid": "rsa1"}, idp_claims()))


def test_hs256_signed_with_rsa_public_key(jwks_verifier: TokenVerifier, keys: Keys) -> None:
    """Classic key confusion: the public key, which anyone has, used as an HMAC secret."""

    def sign(data: bytes) -> bytes:
        return hmac.new(keys.rsa_public_pem, data, hashlib.sha256).digest()

    token = hand_made({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}, idp_claims(roles=["admin"]), sign)
    with pytest.raises(Unauthenticated, match="algorithm"):
        jwks_verifier.verify(token)


def test_rs256_against_hs_verifier(hs_verifier: TokenVerifier, keys: Keys) -> None:
    token = jwt.encode(claims_for(), keys.rsa, algorithm="RS256", headers={"kid": "rsa1"})
    with pytest.raises(Unauthenticated, match="algorithm"):
        hs_verifier.verify(token)


def test_header_alg_must_match_key_family(jwks_verifier: TokenVerifier, keys: Keys) -> None:
    token = jwt.encode(idp_claims(), keys.ec, algorithm="ES256", headers={"kid": "rsa1"})
    with pytest.raises(Unauthenticated, match="does not match"):
        jwks_verifier.verify(token)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iss": "https://evil.example.test/"}, "issuer"),
        ({"aud": "someone-else"}, "audience"),
        ({"exp": None}, "'exp'"),
        ({"sub": None}, "'sub'"),
        ({"iss": None}, "'iss'"),
    ],
)
def test_claims_checked(jwks_verifier: TokenVerifier, keys: Keys, change: dict[str, Any], message: str) -> None:
    payload = {k: v for k, v in {**idp_claims(), **change}.items() if v is not None}
    token = jwt.encode(payload, keys.rsa, algorithm="RS256", headers={"kid": "rsa1"})
    with pytest.raises(Unauthenticated, match=message):
        jwks_verifier.verify(token)


def test_missing_exp_and_sub_with_hs(hs_verifier: TokenVerifier) -> None:
    with pytest.raises(Unauthenticated, match="'exp'"):
        hs_verifier.verify(jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"))
    with pytest.raises(Unauthenticated, match="'sub'"):
        hs_verifier.verify(jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"))


def test_unexpected_audience_rejected_when_none_configured(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims_for(aud="another-app"), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="audience"):
        hs_verifier.verify(token)


def test_roles_of_wrong_shape(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims_for(roles={"admin": True}), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="roles"):
        hs_verifier.verify(token)


def test_unknown_kid(jwks_verifier: TokenVerifier, keys: Keys) -> None:
    token = jwt.encode(idp_claims(), keys.rsa, algorithm="RS256", headers={"kid": "nope"})
    with pytest.raises(Unauthenticated, match="unknown key"):
        jwks_verifier.verify(token)
    no_kid = jwt.encode(idp_claims(), keys.rsa, algorithm="RS256")
    with pytest.raises(Unauthenticated, match="key id"):
        jwks_verifier.verify(no_kid)


# --------------------------------------------------------------------------- IdP failures


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_jwks_is_unavailable(keys: Keys) -> None:
    verifier = TokenVerifier(AuthConfig(jwks_url=f"http://127.0.0.1:{closed_port()}/jwks.json"))
    token = jwt.encode(claims_for(), keys.rsa, algorithm="RS256", headers={"kid": "rsa1"})
    with pytest.raises(Unavailable):
        verifier.verify(token)


@pytest.mark.parametrize("path", ["/junk", "/empty", "/array", "/nokid", "/missing"])
def test_broken_jwks_is_unavailable(jwks_base: str, keys: Keys, path: str) -> None:
    verifier = TokenVerifier(AuthConfig(jwks_url=f"{jwks_base}{path}"))
    token = jwt.encode(claims_for(), keys.rsa, algorithm="RS256", headers={"kid": "rsa1"})
    with pytest.raises(Unavailable):
        verifier.verify(token)


# --------------------------------------------------------------------------- API keys and headers


class KeyFixture:
    def __init__(self) -> None:
        self.store = InMemoryApiKeyStore()
        self.now = datetime.now(UTC)
        self.auth = Authenticator(TokenVerifier(AuthConfig(jwt_secret=SECRET)), self.store, clock=lambda: self.now)

    def add(self, **overrides: Any) -> str:
        key_id, secret, full_key = new_api_key()
        record = ApiKeyRecord(
            key_id=key_id,
            secret_hash=hash_secret(secret),
            subject="ci-bot",
            roles=["publisher"],
            claims=["manage_api_keys"],
            created_by="admin",
            created_at=now_iso(),
        )
        self.store.create(replace(record, **overrides))
        return full_key


@pytest.fixture
def kf() -> KeyFixture:
    return KeyFixture()


def test_new_api_key_shape() -> None:
    key_id, secret, full_key = new_api_key()
    assert len(key_id) == 16 and int(key_id, 16) >= 0
    assert len(secret) == 43
    assert full_key == f"pdcat_{key_id}_{secret}"
    assert parse_api_key(full_key) == (key_id, secret)
    assert hash_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()


def test_store_holds_only_the_hash(kf: KeyFixture) -> None:
    full_key = kf.add()
    _, secret = parse_api_key(full_key)
    (record,) = kf.store.list()
    assert secret not in repr(record.to_public()) and record.secret_hash != secret


def test_api_key_authenticates(kf: KeyFixture) -> None:
    principal = kf.auth.authenticate({"X-Api-Key": kf.add()})
    assert principal == Principal("ci-bot", frozenset({"PUBLISHER"}), frozenset({"MANAGE_API_KEYS"}), "api_key")


def test_header_names_are_case_insensitive(kf: KeyFixture) -> None:
    assert kf.auth.authenticate({"x-api-key": kf.add()}).via == "api_key"
    assert kf.auth.authenticate({"X-API-KEY": f"  {kf.add()}  "}).via == "api_key"
    token, _ = issue_token(SECRET, "alice", ["user"])
    assert kf.auth.authenticate({"authorization": f"Bearer {token}"}).subject == "alice"
    assert kf.auth.authenticate({"AUTHORIZATION": f"bearer {token}"}).subject == "alice"


def test_wrong_secret_and_unknown_id_look_the_same(kf: KeyFixture) -> None:
    full_key = kf.add()
    key_id, secret = parse_api_key(full_key)
    wrong_secret = f"pdcat_{key_id}_{'A' * 43}"
    unknown_id = f"pdcat_{'0' * 16}_{secret}"
    messages = []
    for key in (wrong_secret, unknown_id):
        with pytest.raises(Unauthenticated) as err:
            kf.auth.authenticate({"X-Api-Key": key})
        messages.append(err.value.message)
    assert messages == ["invalid API key", "invalid API key"]


def test_revoked_key(kf: KeyFixture) -> None:
    full_key = kf.add(revoked=True, revoked_at=now_iso(), revoked_by="admin")
    with pytest.raises(Unauthenticated, match="revoked"):
        kf.auth.authenticate({"X-Api-Key": full_key})


def test_revocation_not_revealed_without_the_secret(kf: KeyFixture) -> None:
    key_id, _ = parse_api_key(kf.add(revoked=True))
    with pytest.raises(Unauthenticated, match="invalid API key"):
        kf.auth.authenticate({"X-Api-Key": f"pdcat_{key_id}_{'A' * 43}"})


# Fixed past dates (not "now minus x"), so test ids are the same in every pytest-xdist worker.
@pytest.mark.parametrize(
    "expires_at",
    [
        "2020-01-02T03:04:05.678901Z",  # now_iso() format
        "2020-01-02T03:04:05Z",
        "2020-01-02T03:04:05+00:00",
        "not a date",  # unreadable expiry fails closed
    ],
)
def test_expired_key(kf: KeyFixture, expires_at: str) -> None:
    full_key = kf.add(expires_at=expires_at)
    with pytest.raises(Unauthenticated, match="expired"):
        kf.auth.authenticate({"X-Api-Key": full_key})


def test_key_with_future_expiry_works(kf: KeyFixture) -> None:
    future = (kf.now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    full_key = kf.add(expires_at=future)
    assert kf.auth.authenticate({"X-Api-Key": full_key}).subject == "ci-bot"
    kf.now += timedelta(hours=2)  # the injected clock decides
    with pytest.raises(Unauthenticated, match="expired"):
        kf.auth.authenticate({"X-Api-Key": full_key})


@pytest.mark.parametrize(
    "key",
    [
        "",
        "pdcat_",
        "pdcat_zzzzzzzzzzzzzzzz_" + "a" * 43,
        "pdcat_0123456789abcdef_short",
        "other_0123456789abcdef_" + "a" * 43,
        "pdcat_0123456789abcdef_" + "a" * 43 + "\n",
        "pdcat_0123456789ABCDEF_" + "a" * 43,
    ],
)
def test_malformed_api_key(kf: KeyFixture, key: str) -> None:
    with pytest.raises(Unauthenticated, match="malformed API key"):
        parse_api_key(key)
    if key.strip() == key and key:  # the authenticator strips header whitespace first
        with pytest.raises(Unauthenticated, match="malformed API key"):
            kf.auth.authenticate({"X-Api-Key": key})


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "application/json"}, {"Authorization": "   "}, {"X-Api-Key": ""}],
)
def test_no_credentials(kf: KeyFixture, headers: dict[str, str]) -> None:
    with pytest.raises(Unauthenticated, match="authentication required"):
        kf.auth.authenticate(headers)


def test_other_schemes_rejected_without_echo(kf: KeyFixture) -> None:
    for value in ("Basic YWxpY2U6cGFzc3dvcmQ=", "Token abc", "Bearer", "Bearer   "):
        with pytest.raises(Unauthenticated):
            kf.auth.authenticate({"Authorization": value})
    token, _ = issue_token(SECRET, "alice", ["user"])
    with pytest.raises(Unauthenticated) as err:
        kf.auth.authenticate({"Authorization": token})  # forgot "Bearer "
    assert token not in err.value.message


def test_both_credentials_rejected(kf: KeyFixture) -> None:
    token, _ = issue_token(SECRET, "alice", ["user"])
    with pytest.raises(Unauthenticated, match="not both"):
        kf.auth.authenticate({"Authorization": f"Bearer {token}", "X-Api-Key": kf.add()})


def test_conflicting_duplicate_headers_rejected(kf: KeyFixture) -> None:
    with pytest.raises(Unauthenticated, match="conflicting"):
        kf.auth.authenticate({"X-Api-Key": kf.add(), "x-api-key": kf.add()})


def test_bad_bearer_token_through_authenticator(kf: KeyFixture) -> None:
    token = jwt.encode(claims_for(), OTHER_SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated) as err:
        kf.auth.authenticate({"Authorization": f"Bearer {token}"})
    assert token not in err.value.message


# --------------------------------------------------------------------------- passwords


def test_password_round_trip() -> None:
    encoded = hash_password("correct horse battery staple")
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")  # OWASP's minimum for argon2id
    assert "correct horse" not in encoded
    assert hash_password("correct horse battery staple") != encoded  # a fresh salt every time
    assert verify_password("correct horse battery staple", encoded)
    assert not verify_password("Correct horse battery staple", encoded)
    assert not verify_password("\ud800", encoded)  # not UTF-8: refused, not raised


def test_hashes_of_earlier_versions_still_verify() -> None:
    """Users whose password was set before argon2id keep logging in (scrypt, as core.auth made it)."""
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"an old password!", salt=salt, n=2**14, r=8, p=1, maxmem=64 << 20, dklen=32)
    encoded = "$".join(
        ("scrypt", "16384", "8", "1", base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    )
    assert verify_password("an old password!", encoded)
    assert not verify_password("an old password?", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "bcrypt$16384$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$16384$8$1$!!!$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$x$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$1000$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # n not a power of two
        "scrypt$1073741824$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # hostile cost
        "scrypt$16384$8$1$c2FsdHNhbHQ=",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",  # no hash
        "$argon2id$v=19$m=x,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",  # 4 GiB: hostile cost
        "$argon2id$v=19$m=19456,t=100000,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",  # hostile time
        "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",  # another variant
    ],
)
def test_malformed_password_encoding(encoded: str) -> None:
    started = time.perf_counter()
    assert verify_password("anything", encoded) is False
    assert time.perf_counter() - started < 5  # refused before any work of the size it asks for


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_parse_api_key_only_raises_unauthenticated(text: str) -> None:
    try:
        key_id, secret = parse_api_key(text)
    except Unauthenticated:
        return
    assert text == f"pdcat_{key_id}_{secret}"


segment = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40).map(b64url),
    st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "b64", "sub", "exp", "roles", "aud", "iss"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=10),
            st.sampled_from(["none", "HS256", "RS256", "ES256", "rsa1", "ec1"]),
            st.lists(st.text(max_size=5), max_size=3),
        ),
        max_size=5,
    ).map(lambda d: b64url(json.dumps(d).encode())),
)
almost_jwt = st.tuples(segment, segment, segment).map(".".join)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(), almost_jwt))
def test_verify_only_raises_unauthenticated(
    hs_verifier: TokenVerifier, jwks_verifier: TokenVerifier, text: str
) -> None:
    for verifier in (hs_verifier, jwks_verifier):
        with pytest.raises(Unauthenticated):
            verifier.verify(text)


# --------------------------------------------------------------------------- time claims must be numbers


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("kind", ["string", "true", "false", "list"])
def test_time_claims_that_are_not_numbers_are_refused(
    hs_verifier: TokenVerifier, jwks_verifier: TokenVerifier, keys: Keys, claim: str, kind: str
) -> None:
    """pyjwt coerces with int(): a string exp far in the future was accepted, a bool iat/nbf too."""
    now = int(time.time())
    good = {"exp": now + 600, "nbf": now - 10, "iat": now}[claim]
    value = {"string": str(good), "true": True, "false": False, "list": [good]}[kind]
    hs_token = jwt.encode(claims_for(**{claim: value}), SECRET, algorithm="HS256")
    rs_token = jwt.encode(idp_claims(**{claim: value}), keys.rsa, algorithm="RS256", headers={"kid": "rsa1"})
    for verifier, token in ((hs_verifier, hs_token), (jwks_verifier, rs_token)):
        with pytest.raises(Unauthenticated):
            verifier.verify(token)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_a_string_time_claim_says_so(hs_verifier: TokenVerifier, claim: str) -> None:
    now = int(time.time())
    value = str({"exp": now + 600, "nbf": now - 10, "iat": now}[claim])
    with pytest.raises(Unauthenticated, match=f"'{claim}' must be a number"):
        hs_verifier.verify(jwt.encode(claims_for(**{claim: value}), SECRET, algorithm="HS256"))


def test_fractional_time_claims_are_numbers(
    hs_verifier: TokenVerifier, jwks_verifier: TokenVerifier, keys: Keys
) -> None:
    now = time.time()
    payload = {"exp": now + 600.5, "nbf": now - 10.25, "iat": now}
    assert hs_verifier.verify(jwt.encode(claims_for(**payload), SECRET, algorithm="HS256")).subject == "alice"
    rs = jwt.encode(idp_claims(**payload), keys.rsa, algorithm="RS256", headers={"kid": "rsa1"})
    assert jwks_verifier.verify(rs).subject == "alice"


# --------------------------------------------------------------------------- secrets refused at start-up

KEY_VAULT_REFERENCE = "@Microsoft.KeyVault(VaultName=pdcat-kv-guessable;SecretName=pdcat-jwt-secret)"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PDCAT_JWT_SECRET": "x"}, "PDCAT_JWT_SECRET is too short"),
        ({"PDCAT_JWT_SECRET": "y" * 31}, "PDCAT_JWT_SECRET is too short"),
        ({"PDCAT_JWT_SECRET": KEY_VAULT_REFERENCE}, "PDCAT_JWT_SECRET is an unresolved Key Vault reference"),
        ({"PDCAT_JWT_SECRET": KEY_VAULT_REFERENCE.upper()}, "PDCAT_JWT_SECRET is an unresolved Key Vault"),
        ({"PDCAT_JWKS_URL": KEY_VAULT_REFERENCE}, "PDCAT_JWKS_URL is an unresolved Key Vault reference"),
        ({"PDCAT_JWT_SECRET": SECRET, "PDCAT_JWT_ISSUER": KEY_VAULT_REFERENCE}, "PDCAT_JWT_ISSUER is an unresolved"),
    ],
)
def test_load_settings_refuses_unsafe_secrets(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(env)
    message = str(refused.value)
    assert named in message and "\n" not in message
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, PdcatError)
    for value in env.values():
        assert value not in message or value == SECRET
    assert "pdcat-kv-guessable" not in message


def test_load_settings_accepts_a_32_byte_secret_and_other_settings_that_mention_key_vault() -> None:
    settings = load_settings({"PDCAT_JWT_SECRET": "z" * 32, "OTHER": KEY_VAULT_REFERENCE})
    assert settings.auth is not None and settings.auth.jwt_secret == "z" * 32


def _serve(data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``pdcat serve`` as a user runs it; with a refused secret it must exit before serving anything."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PDCAT_")}
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "serve", "--data", str(data), "--port", "0"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PDCAT_JWT_SECRET": "1"}, "PDCAT_JWT_SECRET is too short"),
        ({"PDCAT_JWT_SECRET": KEY_VAULT_REFERENCE}, "PDCAT_JWT_SECRET is an unresolved Key Vault reference"),
        ({"PDCAT_ADMIN_PASSWORD": KEY_VAULT_REFERENCE}, "PDCAT_ADMIN_PASSWORD is an unresolved Key Vault reference"),
    ],
)
def test_the_embedded_server_refuses_unsafe_secrets_in_one_line(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    done = _serve(tmp_path / "catalog", env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "serving on" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    (value,) = env.values()
    assert value not in done.stdout + done.stderr and "pdcat-kv-guessable" not in done.stderr


def test_the_embedded_server_refuses_a_short_secret_file(tmp_path: Path) -> None:
    data = tmp_path / "catalog"
    data.mkdir()
    (data / "jwt-secret").write_text("tiny\n")
    done = _serve(data, {})
    assert done.returncode == 1 and "jwt-secret is too short" in done.stderr, done.stderr
    assert "tiny" not in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- password login backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _locked_for(throttle: LoginThrottle, key: str) -> int | None:
    try:
        throttle.check(key)
    except TooManyRequests as exc:
        assert exc.status == 429 and exc.code == "too_many_requests"
        return exc.retry_after
    return None


def test_throttle_locks_after_max_failures_per_key() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=5, window_seconds=900, lockout_seconds=2, max_lockout_seconds=60, clock=clock)
    for _ in range(4):
        throttle.failed("alice")
        assert _locked_for(throttle, "alice") is None
    throttle.failed("alice")
    assert _locked_for(throttle, "alice") == 2
    assert _locked_for(throttle, "bob") is None  # per key
    clock.now += 1.5
    assert _locked_for(throttle, "alice") == 1  # whole seconds, rounded up
    clock.now += 0.5
    assert _locked_for(throttle, "alice") is None  # over


def test_throttle_doubles_while_failures_keep_coming() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_seconds=300, lockout_seconds=1, max_lockout_seconds=30, clock=clock)
    for _ in range(3):
        throttle.failed("k")
    seen = [_locked_for(throttle, "k")]
    for _ in range(7):
        clock.now += seen[-1] or 0  # the lockout is over: the next guess fails again
        assert _locked_for(throttle, "k") is None
        throttle.failed("k")
        seen.append(_locked_for(throttle, "k"))
    assert seen == [1, 2, 4, 8, 16, 30, 30, 30]


def test_throttle_success_resets_and_a_quiet_window_forgives() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_seconds=60, lockout_seconds=5, clock=clock)
    throttle.failed("k")
    throttle.failed("k")
    throttle.succeeded("k")
    throttle.failed("k")
    throttle.failed("k")
    assert _locked_for(throttle, "k") is None  # the success forgot the first two
    clock.now += 61
    throttle.failed("k")
    assert _locked_for(throttle, "k") is None  # more than a window since the last failure
    throttle.failed("k")
    throttle.failed("k")
    assert _locked_for(throttle, "k") == 5


def test_throttle_keeps_a_bounded_number_of_keys() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=1, window_seconds=10, lockout_seconds=100, max_keys=50, clock=clock)
    for i in range(500):
        throttle.failed(f"user-{i}")
    assert len(throttle._strikes) <= 50
    assert _locked_for(throttle, "user-499") == 100
    assert "user-499" not in repr(throttle._strikes)  # keys are stored hashed
    throttle.failed("\ud800 lone surrogate")  # any JSON string is a possible user name


def test_429_is_a_core_error_the_client_rebuilds() -> None:
    err = error_for_status(429, "too_many_requests", "slow down")
    assert isinstance(err, TooManyRequests) and err.status == 429 and err.message == "slow down"
    assert isinstance(error_for_status(429, None, "slow down"), TooManyRequests)
    assert TooManyRequests("x", retry_after=0).retry_after == 1


def test_a_token_may_not_claim_a_service_account_subject() -> None:
    """svc:<creator>/<name> is what API keys minted for a robot act as: no token may take it."""
    import pytest as _pytest

    from core.auth import AuthConfig, TokenVerifier, issue_token
    from core.errors import Unauthenticated

    secret = "s" * 40
    verifier = TokenVerifier(AuthConfig(jwt_secret=secret))
    assert verifier.verify(issue_token(secret, "carol", ["USER"], [], 60)[0]).subject == "carol"
    for subject in ("svc:alice/ci-bot", "SVC:alice/ci-bot", " svc:x/y"):
        with _pytest.raises(Unauthenticated, match="svc:"):
            verifier.verify(issue_token(secret, subject, ["ADMIN"], [], 60)[0])
