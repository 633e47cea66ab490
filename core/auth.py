"""Authentication: who is calling, from a bearer JWT or an API key. No RBAC decisions here.

Two credentials reach the same :class:`~core.rbac.Principal`, so tokens and API keys go through the
same RBAC afterwards:

* ``Authorization: Bearer <jwt>``: HS256 with a shared secret (the embedded server signs its own),
  or RS256/ES256 against an IdP's JWKS (Cognito, Entra ID, any OIDC provider). The algorithm list is
  fixed per mode and never taken from the token, which is what defeats ``alg: none`` and HS/RS key
  confusion.
* ``X-Api-Key: pdcat_<key_id>_<secret>``: looked up by id, the secret compared by hash in constant
  time. Only the hash is ever stored.

Every failure a caller can cause is :class:`Unauthenticated` with a short message that never
contains the credential; an identity provider we cannot reach is :class:`Unavailable` (503), because
the caller's credential may be perfectly fine. Password logins (the embedded server's users) are
slowed down by :class:`LoginThrottle` (429 with a retry time).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import jwt

from core.errors import TooManyRequests, Unauthenticated, Unavailable
from core.ports import ApiKeyRecord, ApiKeyStore
from core.rbac import SERVICE_ACCOUNT_PREFIX, Principal

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = [
    "API_KEY_PREFIX",
    "MIN_HS_SECRET_BYTES",
    "AuthConfig",
    "Authenticator",
    "LoginThrottle",
    "TokenVerifier",
    "bearer_token",
    "hash_secret",
    "issue_token",
    "new_api_key",
    "parse_api_key",
]

log = logging.getLogger(__name__)

API_KEY_PREFIX = "pdcat_"
_API_KEY_RE = re.compile(r"pdcat_([0-9a-f]{16})_([A-Za-z0-9_-]{43})", re.ASCII)
_HS_ALGORITHMS = ("HS256",)
# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output. Anything shorter is
# refused at start-up, whatever the backend: a short or guessable secret lets anyone mint tokens.
MIN_HS_SECRET_BYTES = 32
# NumericDate claims (RFC 7519 §2): JSON numbers. pyjwt coerces strings and booleans with int(), so a
# string "exp" would otherwise be accepted; we check the types ourselves.
_TIME_CLAIMS = ("exp", "nbf", "iat")
# Header alg -> the JWK key type that may verify it. The JWK's own algorithm must match too.
_JWKS_ALGORITHMS: dict[str, str] = {"RS256": "RSA", "ES256": "EC"}
# Real JWTs are a few KiB at most; a bound keeps garbage from costing base64/JSON work.
_MAX_TOKEN_CHARS = 16 * 1024
_JWKS_TIMEOUT_SECONDS = 5.0
_MISSING_CREDENTIALS = "authentication required: send 'Authorization: Bearer <token>' or 'X-Api-Key'"
_INVALID_API_KEY = "invalid API key"


@dataclass(frozen=True)
class AuthConfig:
    """How bearer tokens are verified. Exactly one of ``jwt_secret`` / ``jwks_url``.

    ``roles_field`` / ``claims_field`` / ``subject_field`` name where an IdP puts them: a top-level
    key (``"cognito:groups"``, or a namespaced ``"https://example.com/roles"``), or a dotted path
    into nested objects (``"realm_access.roles"``). An exact top-level key wins over the dotted walk.

    A token that carries ``aud`` is rejected unless ``audience`` is configured and matches (pyjwt's
    rule): otherwise a token an IdP issued for another application would be accepted here.
    """

    jwt_secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    roles_field: str = "roles"
    claims_field: str = "claims"
    subject_field: str = "sub"
    leeway_seconds: int = 30

    def __post_init__(self) -> None:
        if bool(self.jwt_secret) == bool(self.jwks_url):
            raise ValueError("AuthConfig needs exactly one of jwt_secret or jwks_url")
        if self.jwt_secret and len(self.jwt_secret.encode("utf-8", "surrogatepass")) < MIN_HS_SECRET_BYTES:
            raise ValueError(f"AuthConfig.jwt_secret must be at least {MIN_HS_SECRET_BYTES} bytes")
        if self.jwks_url and not self.jwks_url.lower().startswith(("https://", "http://")):
            raise ValueError("AuthConfig.jwks_url must be an http(s) URL")
        if self.leeway_seconds < 0:
            raise ValueError("AuthConfig.leeway_seconds must not be negative")
        for name in ("roles_field", "claims_field", "subject_field"):
            if not getattr(self, name):
                raise ValueError(f"AuthConfig.{name} must not be empty")


class TokenVerifier:
    """Turns a bearer JWT into a :class:`Principal`, or raises :class:`Unauthenticated`.

    In JWKS mode the key set is fetched on first use and cached for five minutes, so key rotation
    at the IdP is picked up without a restart and a withdrawn key stops working within that time.
    pyjwt's per-kid key cache (``cache_keys=True``) is deliberately not used: it never expires, so
    a key the IdP withdrew would be trusted until the process restarts.
    """

    def __init__(self, config: AuthConfig) -> None:
        self._config = config
        self._jwks_client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()
        self._options: Options = {"require": ["exp"]}

    @property
    def config(self) -> AuthConfig:
        return self._config

    def verify(self, token: str) -> Principal:
        return self._principal(self.claims(token))

    def claims(self, token: str) -> dict[str, object]:
        """The token's payload once its signature, algorithm and times are checked (``verify`` without
        the :class:`Principal`), for a caller that needs a claim pdcat does not map, such as ``auth_time``."""
        if (
            not isinstance(token, str)
            or not token
            or len(token) > _MAX_TOKEN_CHARS
            or not token.isascii()
            or token.count(".") != 2
        ):
            raise Unauthenticated("malformed token")
        if self._config.jwt_secret:
            return self._decode(token, self._config.jwt_secret, _HS_ALGORITHMS)
        return self._decode(token, self._jwks_key(token), tuple(_JWKS_ALGORITHMS))

    def _decode(self, token: str, key: str | jwt.PyJWK, algorithms: tuple[str, ...]) -> dict[str, object]:
        cfg = self._config
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                options=self._options,
                issuer=cfg.issuer,
                audience=cfg.audience,
                leeway=cfg.leeway_seconds,
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("token not yet valid") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("token issuer not accepted") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("token audience not accepted") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token is missing the {exc.claim!r} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("token signature is invalid") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise Unauthenticated("token algorithm not accepted") from exc
        except jwt.DecodeError as exc:
            raise Unauthenticated("malformed token") from exc
        except jwt.PyJWTError as exc:
            # Includes InvalidKeyError (e.g. a PEM used as an HMAC secret), which is not an
            # InvalidTokenError but still means "this token does not authenticate anyone".
            raise Unauthenticated("invalid token") from exc
        if not isinstance(payload, dict):
            raise Unauthenticated("malformed token")
        for name in _TIME_CLAIMS:
            if name in payload and not _is_numeric_date(payload[name]):
                raise Unauthenticated(f"token claim {name!r} must be a number")
        return payload

    def _jwks_key(self, token: str) -> jwt.PyJWK:
        """The JWK that may verify ``token``: chosen by ``kid``, and of the family ``alg`` names."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _JWKS_ALGORITHMS:
            raise Unauthenticated("token algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("token has no key id")
        client = self._client()
        # Fetch (or reuse) the key set first, on its own, so that a broken IdP (503) is told apart
        # from a token naming a kid the IdP never issued (401): pyjwt raises PyJWKClientError for both.
        with _jwks_errors(unknown_kid=False):
            client.get_signing_keys()
        with _jwks_errors(unknown_kid=True):
            # Not in the cached set -> one refresh, rate-limited by pyjwt's cooldown.
            key = client.get_signing_key(kid)
        if key.key_type != _JWKS_ALGORITHMS[alg] or key.algorithm_name != alg:
            raise Unauthenticated("token algorithm does not match its key")
        return key

    def _client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._jwks_client is None:
                assert self._config.jwks_url is not None
                self._jwks_client = jwt.PyJWKClient(
                    self._config.jwks_url,
                    cache_keys=False,
                    cache_jwk_set=True,
                    lifespan=300,
                    timeout=_JWKS_TIMEOUT_SECONDS,
                )
            return self._jwks_client

    def _principal(self, payload: Mapping[str, object]) -> Principal:
        cfg = self._config
        subject = _lookup(payload, cfg.subject_field)
        if not isinstance(subject, str) or not subject.strip():
            raise Unauthenticated(f"token is missing the {cfg.subject_field!r} claim")
        if subject.strip().lower().startswith(SERVICE_ACCOUNT_PREFIX):
            # svc:<creator>/<name> belongs to API keys a creator minted: no token may act as one
            raise Unauthenticated(f"a token's subject may not start with {SERVICE_ACCOUNT_PREFIX!r}")
        roles = _string_list(_lookup(payload, cfg.roles_field), cfg.roles_field)
        claims = _string_list(_lookup(payload, cfg.claims_field), cfg.claims_field)
        return Principal.of(subject.strip(), roles, claims, via="token")


def _is_numeric_date(value: object) -> bool:
    """A JSON number: ``int`` or finite ``float``, and not ``bool`` (which is an ``int`` to Python)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


@contextmanager
def _jwks_errors(*, unknown_kid: bool) -> Iterator[None]:
    """Translate PyJWKClient failures: unreachable or unusable key set -> 503, unknown kid -> 401."""
    try:
        yield
    except jwt.PyJWKClientConnectionError as exc:
        raise Unavailable("the identity provider's key set cannot be fetched") from exc
    except (jwt.PyJWKSetError, ValueError) as exc:
        # ValueError: the endpoint answered something that is not JSON at all.
        raise Unavailable("the identity provider's key set is unusable") from exc
    except jwt.PyJWKClientError as exc:
        if unknown_kid:
            raise Unauthenticated("token signed with an unknown key") from exc
        raise Unavailable("the identity provider's key set is unusable") from exc


def _lookup(payload: Mapping[str, object], path: str) -> object:
    """``payload[path]`` if that key exists, else walk ``a.b.c`` through nested objects."""
    if path in payload:
        return payload[path]
    node: object = payload
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


_SEPARATORS = re.compile(r"[\s,]+")


def _string_list(value: object, name: str) -> list[str]:
    """Roles/claims as IdPs send them: a JSON list of strings, or one space/comma separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in _SEPARATORS.split(value) if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise Unauthenticated(f"token field {name!r} must be a list of strings or a string")


def issue_token(
    secret: str,
    subject: str,
    roles: Iterable[str],
    claims: Iterable[str] = (),
    ttl_seconds: int = 3600,
    *,
    auth_time: float | None = None,
    password_mark: str | None = None,
) -> tuple[str, str]:
    """An HS256 token for the embedded server's own users; returns ``(token, expires_at)``.

    ``auth_time`` (OIDC's claim: when the user gave their password) marks a password login's session,
    the only kind ``POST /auth/refresh`` renews; it travels unchanged from token to refreshed token, as
    does ``password_mark`` (``pw_mark``), which names the password the session began with
    (``core.local.logins``).
    """
    if not secret:
        raise ValueError("issue_token needs a secret")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    if isinstance(roles, str) or isinstance(claims, str):
        raise TypeError("roles and claims must be iterables of strings, not a string")
    now = int(time.time())
    exp = now + ttl_seconds
    payload: dict[str, object] = {"sub": subject, "roles": list(roles), "claims": list(claims), "iat": now, "exp": exp}
    if auth_time is not None:
        payload["auth_time"] = auth_time
    if password_mark is not None:
        payload["pw_mark"] = password_mark
    token = jwt.encode(payload, secret, algorithm="HS256")
    return token, datetime.fromtimestamp(exp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_api_key() -> tuple[str, str, str]:
    """A fresh ``(key_id, secret, full_key)``. Show ``full_key`` once; store only the secret's hash."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{API_KEY_PREFIX}{key_id}_{secret}"


def parse_api_key(text: str) -> tuple[str, str]:
    """Split a full key into ``(key_id, secret)``; anything else is ``Unauthenticated``."""
    match = _API_KEY_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise Unauthenticated("malformed API key")
    return match.group(1), match.group(2)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of an API key secret.

    A fast hash is right here, unlike for passwords: the secret is 256 bits from ``secrets``, so
    there is no dictionary to try and brute force over 2**256 is hopeless whatever the hash costs.
    Slow KDFs exist to protect low-entropy human passwords; on every API request they would only
    cost CPU and make a denial of service cheaper.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _parse_instant(text: str) -> datetime:
    """ISO-8601 as stored (``now_iso()``: fraction and ``Z``), also without fraction or with an offset."""
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Authenticator:
    """Picks the credential from request headers and returns the caller's :class:`Principal`."""

    def __init__(
        self,
        verifier: TokenVerifier,
        api_keys: ApiKeyStore,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._verifier = verifier
        self._api_keys = api_keys
        self._clock = clock

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        normalised = _normalise_headers(headers)
        authorization = normalised.get("authorization", "")
        api_key = normalised.get("x-api-key", "")
        if authorization and api_key:
            # Two identities in one request is ambiguous; refusing beats silently picking one.
            raise Unauthenticated("send either 'Authorization' or 'X-Api-Key', not both")
        if authorization:
            return self._verifier.verify(bearer_token(authorization))
        if api_key:
            return self._authenticate_api_key(api_key)
        raise Unauthenticated(_MISSING_CREDENTIALS)

    def _authenticate_api_key(self, text: str) -> Principal:
        key_id, secret = parse_api_key(text)
        record = self._api_keys.get(key_id)
        presented = hash_secret(secret).encode("ascii")
        if record is None:
            # Same work as a real comparison, so timing says little about which ids exist.
            hmac.compare_digest(presented, presented)
            raise Unauthenticated(_INVALID_API_KEY)
        if not hmac.compare_digest(presented, record.secret_hash.encode("utf-8")):
            raise Unauthenticated(_INVALID_API_KEY)
        if record.revoked:
            raise Unauthenticated("API key revoked")
        if self._expired(record):
            raise Unauthenticated("API key expired")
        return Principal.of(record.subject, record.roles, record.claims, via="api_key")

    def _expired(self, record: ApiKeyRecord) -> bool:
        if not record.expires_at:
            return False
        try:
            expires_at = _parse_instant(record.expires_at)
        except ValueError:
            # A stored expiry we cannot read must not become "never expires".
            log.warning("API key %s has an unreadable expires_at; treating it as expired", record.key_id)
            return True
        now = self._clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now >= expires_at


def _normalise_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased names, stripped values; blank values count as absent."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        key = name.lower()
        if key not in ("authorization", "x-api-key"):
            continue
        value = value.strip()
        if not value:
            continue
        if key in out and out[key] != value:
            raise Unauthenticated(f"conflicting {key!r} headers")
        out[key] = value
    return out


def bearer_token(value: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header's value."""
    scheme, _, token = value.partition(" ")
    # Never echo the scheme: a client that forgot "Bearer " would have us print its token.
    if scheme.lower() != "bearer":
        raise Unauthenticated("unsupported Authorization scheme: use 'Bearer <token>'")
    token = token.strip()
    if not token:
        raise Unauthenticated("empty bearer token")
    return token


@dataclass
class _Strikes:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Exponential backoff for password guesses, per key (a user name, a client address).

    After ``max_failures`` failures in a row, each close to the last (within ``window_seconds``,
    counted from the end of the last lockout), the key is locked for ``lockout_seconds``; every
    further failure doubles the lockout, up to ``max_lockout_seconds``. While locked, :meth:`check`
    raises :class:`TooManyRequests` with the seconds left, before any password is looked at, so a
    locked key costs no hashing. :meth:`succeeded` forgets a key. Unknown user names are tracked like
    known ones (a lockout says nothing about who exists). Keys are stored hashed and at most
    ``max_keys`` are kept: the quiet ones go first, then the oldest.
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_seconds: float = 900.0,
        lockout_seconds: float = 1.0,
        max_lockout_seconds: float = 900.0,
        max_keys: int = 10_000,
        what: str = "this account",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or lockout_seconds <= 0 or max_lockout_seconds < lockout_seconds or max_keys < 1:
            raise ValueError("LoginThrottle needs max_failures >= 1, 0 < lockout_seconds <= max_lockout_seconds")
        self._max_failures = max_failures
        self._window = window_seconds
        self._lockout = lockout_seconds
        self._max_lockout = max_lockout_seconds
        self._max_keys = max_keys
        self._what = what
        self._clock = clock
        self._strikes: dict[bytes, _Strikes] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()

    def check(self, key: str) -> None:
        """Raise :class:`TooManyRequests` (with ``retry_after``) while ``key`` is locked."""
        with self._lock:
            strikes = self._strikes.get(self._key(key))
            left = 0.0 if strikes is None else strikes.locked_until - self._clock()
        if left > 0:
            raise TooManyRequests(
                f"too many failed logins for {self._what}: try again in {math.ceil(left)} s",
                retry_after=math.ceil(left),
            )

    def failed(self, key: str) -> None:
        """Count one failure; lock the key once it has failed too often."""
        now = self._clock()
        hashed = self._key(key)
        with self._lock:
            strikes = self._strikes.get(hashed)
            if strikes is None:
                self._make_room(now)
                strikes = self._strikes[hashed] = _Strikes()
            elif now - max(strikes.last_failure, strikes.locked_until) > self._window:
                strikes.failures = 0  # a quiet window forgives
            strikes.failures += 1
            strikes.last_failure = now
            over = strikes.failures - self._max_failures
            if over >= 0:
                lockout = min(self._lockout * 2 ** min(over, 40), self._max_lockout)
                strikes.locked_until = max(strikes.locked_until, now + lockout)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._strikes.pop(self._key(key), None)

    def _make_room(self, now: float) -> None:
        if len(self._strikes) < self._max_keys:
            return
        quiet = [k for k, v in self._strikes.items() if now - max(v.last_failure, v.locked_until) > self._window]
        for k in quiet:
            del self._strikes[k]
        while len(self._strikes) >= self._max_keys:
            del self._strikes[next(iter(self._strikes))]
