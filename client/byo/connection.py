r"""Bring-your-own storage: the original product's connection strings, parsed strictly.

A connection string names a storage provider and the keys it needs, as ``key=value`` entries
separated by ``;``. The original parser split on every ``;`` and matched keys by substring, so a
secret containing ``;`` (or a key named ``my_bucket=``) silently produced a wrong connection. This
one has a grammar, refuses anything it does not understand, and never repeats a secret.

The grammar, the keys of each provider and the examples are in ``docs/connection-strings.md``.
This module holds the one lexer of that grammar and the one list of secret keys (:data:`SECRET_KEYS`):
``client.pdfile`` assembles and masks its ``PROVIDER`` lines with :func:`lex`, :func:`format_entries`
and :func:`redact` rather than parsing connection strings itself.

``ConnectionString.format()`` is the inverse of :func:`parse_connection_string` (it *does* contain
the secrets; ``str()`` is the redacted form meant for messages and logs).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import SplitResult, urlsplit

from core.errors import InvalidInput

__all__ = [
    "PROVIDERS",
    "SECRET_KEYS",
    "ArtifactoryConnection",
    "AwsS3Connection",
    "AzureStorageConnection",
    "ConnectionString",
    "ConnectionStringError",
    "Entry",
    "LocalConnection",
    "MinioConnection",
    "connection_from_pairs",
    "format_entries",
    "is_key",
    "lex",
    "parse_connection_string",
    "redact",
]

MAX_LENGTH = 16 * 1024
#: The keys whose values are secrets, for every provider: masked by ``str``/``repr``/:func:`redact`,
#: never quoted in an error, and a PDFile that writes one out literally earns a warning.
SECRET_KEYS = frozenset(
    {"access_key", "secret_key", "session_token", "storage_account_key", "password", "access_token"}
)
REDACTED = "***"

_WS = " \t\r\n"
_ESCAPABLE = ';="\\'
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_SHOWN = 40  # how much of a non-secret value an error message may quote


class ConnectionStringError(InvalidInput):
    """A connection string that does not parse or does not make sense; the message holds no secret."""


# ---- the per-provider values ---------------------------------------------------------------------


def _text(*, required: bool = False) -> Any:
    meta = {"kind": "text"}
    return field(metadata=meta) if required else field(default=None, metadata=meta)


def _flag() -> Any:
    return field(default=None, metadata={"kind": "flag"})


def _number() -> Any:
    return field(default=None, metadata={"kind": "number"})


def _show(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


@dataclass(frozen=True, kw_only=True, repr=False)
class ConnectionString:
    """One parsed connection string; subclasses hold one provider's keys as fields of the same name."""

    provider: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["kind"] == "text" and value is not None:
                if not isinstance(value, str) or not value:
                    raise ConnectionStringError(f"{f.name} must be non-empty text")
                _check_chars(f.name, value)
        self._validate()

    def _validate(self) -> None:
        """Cross-field and format rules of one provider; raise :class:`ConnectionStringError`."""

    # ---- text forms ------------------------------------------------------------------------
    def entries(self) -> Iterator[tuple[str, str, bool]]:
        """``(key, value as text, is_secret)`` for every key that is set, in canonical order."""
        yield "provider", self.provider, False
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            yield f.name, text, f.name in SECRET_KEYS

    def format(self) -> str:
        """The canonical connection string, secrets included: the inverse of the parser."""
        return format_entries((key, value) for key, value, _ in self.entries())

    def __str__(self) -> str:
        return ";".join(f"{key}={REDACTED if secret else _quote(value)}" for key, value, secret in self.entries())

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={REDACTED if f.name in SECRET_KEYS else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        )
        return f"{type(self).__name__}({shown})"

    def secrets(self) -> tuple[str, ...]:
        """Every secret value set, so adapters can scrub third-party text before showing it."""
        return tuple(value for _, value, secret in self.entries() if secret)

    @property
    def description(self) -> str:
        """A short, secret-free name of the place, for messages (``aws-s3 bucket 'vms'``)."""
        return self.provider


@dataclass(frozen=True, kw_only=True, repr=False)
class AwsS3Connection(ConnectionString):
    """An AWS S3 bucket. Without keys, boto3's default chain (environment, ~/.aws, role) is used."""

    provider: ClassVar[str] = "aws-s3"
    aliases: ClassVar[tuple[str, ...]] = ()

    bucket: str = _text(required=True)
    region: str = _text(required=True)
    access_key: str | None = _text()
    secret_key: str | None = _text()
    session_token: str | None = _text()
    use_environment_authentication: bool | None = _flag()

    def _validate(self) -> None:
        _check_bucket(self.bucket)
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,31}", self.region):
            raise ConnectionStringError(f"region {_show(self.region)} is not an AWS region name (like us-east-1)")
        _check_key_pair(self.access_key, self.secret_key, self.session_token, self.use_environment_authentication)

    @property
    def description(self) -> str:
        return f"aws-s3 bucket '{self.bucket}'"


@dataclass(frozen=True, kw_only=True, repr=False)
class MinioConnection(ConnectionString):
    """A bucket on MinIO or any S3-compatible server (path-style addressing, SigV4)."""

    provider: ClassVar[str] = "minio"
    aliases: ClassVar[tuple[str, ...]] = ()

    endpoint: str = _text(required=True)
    bucket: str = _text(required=True)
    access_key: str | None = _text()
    secret_key: str | None = _text()
    use_ssl: bool | None = _flag()
    ignore_cert: bool | None = _flag()
    region: str | None = _text()
    use_environment_authentication: bool | None = _flag()

    def _validate(self) -> None:
        _check_bucket(self.bucket)
        _refuse_credentials("endpoint", self.endpoint)
        parts = urlsplit(self.endpoint if "://" in self.endpoint else "//" + self.endpoint)
        try:
            parts.port  # noqa: B018 (raises on a malformed port)
        except ValueError:
            raise ConnectionStringError(f"endpoint {_show(self.endpoint)} has an invalid port") from None
        if parts.scheme not in ("", "http", "https") or not parts.hostname:
            raise ConnectionStringError(f"endpoint {_show(self.endpoint)} must be host[:port] or http(s)://host[:port]")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ConnectionStringError(f"endpoint {_show(self.endpoint)} must be only a host and port")
        if parts.scheme and self.use_ssl is not None and (parts.scheme == "https") != self.use_ssl:
            raise ConnectionStringError(f"endpoint says {parts.scheme} but use_ssl is {str(self.use_ssl).lower()}")
        if self.region is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.region):
            raise ConnectionStringError(f"region {_show(self.region)} is not a region name")
        _check_key_pair(self.access_key, self.secret_key, None, self.use_environment_authentication)

    @property
    def url(self) -> str:
        """The endpoint URL: the scheme from the endpoint if it has one, else from use_ssl (default on)."""
        if "://" in self.endpoint:
            return self.endpoint.rstrip("/")
        return ("http://" if self.use_ssl is False else "https://") + self.endpoint.rstrip("/")

    @property
    def description(self) -> str:
        return f"minio bucket '{self.bucket}' at {self.url}"


@dataclass(frozen=True, kw_only=True, repr=False)
class AzureStorageConnection(ConnectionString):
    """A container of an Azure Storage account, authorised with the account key."""

    provider: ClassVar[str] = "azure-storage-account"
    aliases: ClassVar[tuple[str, ...]] = ()

    storage_account_name: str = _text(required=True)
    container_name: str = _text(required=True)
    storage_account_key: str = _text(required=True)
    endpoint: str | None = _text()

    def _validate(self) -> None:
        if not re.fullmatch(r"[a-z0-9]{3,24}", self.storage_account_name):
            raise ConnectionStringError(
                f"storage_account_name {_show(self.storage_account_name)} must be 3-24 lower-case letters and digits"
            )
        if self.container_name != "$root" and not re.fullmatch(
            r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]", self.container_name
        ):
            raise ConnectionStringError(
                f"container_name {_show(self.container_name)} must be 3-63 lower-case letters, digits and "
                "single hyphens"
            )
        try:
            base64.b64decode(self.storage_account_key, validate=True)
        except (binascii.Error, ValueError):
            raise ConnectionStringError("storage_account_key is not valid base64") from None
        if self.endpoint is not None:
            _check_http_url("endpoint", self.endpoint)

    @property
    def account_url(self) -> str:
        return (self.endpoint or f"https://{self.storage_account_name}.blob.core.windows.net").rstrip("/")

    @property
    def description(self) -> str:
        return f"azure-storage-account container '{self.container_name}' of account '{self.storage_account_name}'"


@dataclass(frozen=True, kw_only=True, repr=False)
class ArtifactoryConnection(ConnectionString):
    """A JFrog Artifactory repository (generic repositories hold the packs)."""

    provider: ClassVar[str] = "artifactory"
    aliases: ClassVar[tuple[str, ...]] = ()

    url: str = _text(required=True)
    repo: str = _text(required=True)
    port: int | None = _number()
    access_key: str | None = _text()
    access_token: str | None = _text()
    username: str | None = _text()
    password: str | None = _text()

    def _validate(self) -> None:
        parts = _check_http_url("url", self.url)
        if self.port is not None:
            if not 1 <= self.port <= 65535:
                raise ConnectionStringError("port must be between 1 and 65535")
            if parts.port is not None and parts.port != self.port:
                raise ConnectionStringError(f"url has port {parts.port} but port is {self.port}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.repo):
            raise ConnectionStringError(f"repo {_show(self.repo)} is not an Artifactory repository key")
        modes = [self.access_key is not None, self.access_token is not None, self.username is not None]
        if sum(modes) != 1:
            raise ConnectionStringError(
                "give exactly one of access_key, access_token, or username with password for artifactory"
            )
        if (self.username is None) != (self.password is None):
            raise ConnectionStringError("username and password go together")

    @property
    def base_url(self) -> str:
        """``<scheme>://<host>[:<port>]/<context>/artifactory`` (``/artifactory`` added unless there)."""
        parts = urlsplit(self.url)
        netloc = parts.netloc
        if self.port is not None and parts.port is None:
            netloc = f"{netloc}:{self.port}"
        path = parts.path.rstrip("/")
        if not path.endswith("/artifactory"):
            path += "/artifactory"
        return f"{parts.scheme}://{netloc}{path}"

    @property
    def description(self) -> str:
        return f"artifactory repo '{self.repo}' at {self.base_url}"


@dataclass(frozen=True, kw_only=True, repr=False)
class LocalConnection(ConnectionString):
    """A folder on this machine (or a mounted share) that holds the packs."""

    provider: ClassVar[str] = "local"
    aliases: ClassVar[tuple[str, ...]] = ("local-storage",)

    catalog_path: str = _text(required=True)

    @property
    def description(self) -> str:
        return f"local folder {self.catalog_path!r}"


PROVIDERS: dict[str, type[ConnectionString]] = {
    cls.provider: cls
    for cls in (AwsS3Connection, AzureStorageConnection, ArtifactoryConnection, MinioConnection, LocalConnection)
}
_ALL_KEYS = frozenset({"provider"} | {f.name for cls in PROVIDERS.values() for f in dataclasses.fields(cls)})
_BY_NAME: dict[str, type[ConnectionString]] = {
    name: cls for cls in PROVIDERS.values() for name in (cls.provider, *cls.aliases)
}


# ---- field rules ---------------------------------------------------------------------------------


def _check_chars(key: str, value: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConnectionStringError(f"the value of {key} contains a control character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConnectionStringError(f"the value of {key} is not valid Unicode text") from None


def _check_bucket(bucket: str) -> None:
    # Permissive on purpose: old us-east-1 buckets may hold upper case and underscores.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}", bucket):
        raise ConnectionStringError(f"bucket {_show(bucket)} is not a bucket name")


def _check_key_pair(access: str | None, secret: str | None, token: str | None, from_env: bool | None) -> None:
    if (access is None) != (secret is None):
        raise ConnectionStringError(
            "access_key and secret_key go together: give both, or neither to use the environment"
        )
    if token is not None and access is None:
        raise ConnectionStringError("session_token needs access_key and secret_key")
    if from_env and access is not None:
        raise ConnectionStringError("use_environment_authentication=true cannot be combined with access_key/secret_key")


def _refuse_credentials(key: str, value: str) -> None:
    if "@" in value:
        # Not quoted: the text before '@' would be a credential.
        raise ConnectionStringError(f"{key} must not contain '@' or credentials: use the credential keys instead")


def _check_http_url(key: str, value: str) -> SplitResult:
    _refuse_credentials(key, value)
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        raise ConnectionStringError(f"{key} {_show(value)} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectionStringError(f"{key} {_show(value)} must be an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ConnectionStringError(f"{key} {_show(value)} must not have a query or fragment")
    return parts


# ---- text -> entries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One ``key=value`` of a connection string: the key lower-cased, the value with quotes and escapes undone."""

    key: str
    value: str
    index: int  # 1-based, for messages
    after_secret: str | None  # the secret key this entry follows: its text may be a piece of that secret
    quoted: bool = False  # written in double quotes (so kept exactly, blanks included)


def is_key(text: str) -> bool:
    """Whether ``text`` is a key of the grammar (letters, digits and ``_``, starting with a letter)."""
    return _KEY.fullmatch(text) is not None


def _quote(value: str) -> str:
    if value and value == value.strip(_WS) and not any(c in value for c in ';"\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_entries(pairs: Iterable[tuple[str, str]]) -> str:
    """``key=value;...`` with each value quoted when it needs to be: :func:`lex` gives the pairs back."""
    return ";".join(f"{key}={_quote(value)}" for key, value in pairs)


def redact(text: str) -> str:
    """``text`` safe to show: every secret value (and whatever follows a secret) replaced by ``***``.

    Text that does not lex is shown as ``***`` alone: where a secret ends cannot be known.
    """
    try:
        entries = lex(text)
    except ConnectionStringError:
        return REDACTED
    return ";".join(f"{e.key}={REDACTED if _hides_secret(e) else _quote(e.value)}" for e in entries)


def _hides_secret(entry: Entry) -> bool:
    """A secret, or an unknown key right after one (it may be the rest of that secret, split at a ';')."""
    return entry.key in SECRET_KEYS or (entry.after_secret is not None and entry.key not in _ALL_KEYS)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _split_secret_hint(index: int, secret_key: str) -> str:
    return (
        f"entry {index} follows {secret_key} and is not a valid entry: if the {secret_key} value contains ';', "
        'quote the value ("...") or escape it as \\;'
    )


def _read_value(text: str, i: int, key: str, quoted: bool) -> tuple[str, int]:
    """The value starting at ``i`` (after the opening quote if ``quoted``) and where it ended."""
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n or text[i + 1] not in _ESCAPABLE:
                raise ConnectionStringError(
                    f'bad escape in the value of {key}: a backslash must be followed by ; = " or \\'
                )
            out.append(text[i + 1])
            i += 2
            continue
        if quoted and c == '"':
            return "".join(out), i + 1
        if not quoted and c == ";":
            break
        if not quoted and c == '"':
            raise ConnectionStringError(f'a " in the value of {key} must be escaped as \\" (or quote the whole value)')
        out.append(c)
        i += 1
    if quoted:
        raise ConnectionStringError(f"the quoted value of {key} has no closing quote")
    return "".join(out).strip(_WS), i


def lex(text: str) -> list[Entry]:
    """The entries of a connection string, in order, as the grammar reads them; nothing is checked
    against a provider (:func:`parse_connection_string` does that). Raises :class:`ConnectionStringError`."""
    entries: list[Entry] = []
    after_secret: str | None = None
    i, n = 0, len(text)
    while True:
        i = _skip_ws(text, i)
        if i >= n:
            return entries
        index = len(entries) + 1
        j = i
        while j < n and text[j] not in "=;":
            j += 1
        raw_key = text[i:j].strip(_WS)
        if j >= n or text[j] == ";":
            if not raw_key:
                raise ConnectionStringError(f"entry {index} is empty (two ';' in a row, or a leading ';')")
            if after_secret:
                raise ConnectionStringError(_split_secret_hint(index, after_secret))
            # Not quoted: a stray piece of text may well be a credential pasted in the wrong place.
            raise ConnectionStringError(f"entry {index} is not key=value (it has no '=')")
        if not _KEY.fullmatch(raw_key):
            if after_secret:
                raise ConnectionStringError(_split_secret_hint(index, after_secret))
            if not raw_key:
                raise ConnectionStringError(f"entry {index} has no key before '='")
            raise ConnectionStringError(
                f"entry {index} has an invalid key {_show(raw_key)}: keys are letters, digits and '_'"
            )
        key = raw_key.lower()
        i = _skip_ws(text, j + 1)
        quoted = i < n and text[i] == '"'
        if quoted:
            value, i = _read_value(text, i + 1, key, quoted=True)
            i = _skip_ws(text, i)
            if i < n and text[i] != ";":
                raise ConnectionStringError(f"unexpected text after the closing quote of the value of {key}")
        else:
            value, i = _read_value(text, i, key, quoted=False)
        if not value:
            raise ConnectionStringError(f"{key} has an empty value: give a value or leave the key out")
        _check_chars(key, value)
        entries.append(Entry(key, value, index, after_secret, quoted))
        # An unknown key right after a secret may be the rest of that secret, and so may what follows it.
        after_secret = key if key in SECRET_KEYS else (after_secret if key not in _ALL_KEYS else None)
        i += 1  # past the ';' (or past the end)


# ---- entries -> value ----------------------------------------------------------------------------


def _suggest(word: str, choices: list[str]) -> str:
    import difflib  # only on the error path

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _convert(entry: Entry, kind: str) -> object:
    if kind == "flag":
        lowered = entry.value.lower()
        if lowered not in ("true", "false"):
            raise ConnectionStringError(f"{entry.key} must be true or false, not {_show(entry.value)}")
        return lowered == "true"
    if kind == "number":
        if not re.fullmatch(r"[0-9]{1,5}", entry.value):
            raise ConnectionStringError(f"{entry.key} must be a whole number, not {_show(entry.value)}")
        return int(entry.value)
    return entry.value


def parse_connection_string(text: str) -> ConnectionString:
    """Parse one connection string (``docs/connection-strings.md``); :class:`ConnectionStringError` if bad."""
    if not isinstance(text, str):
        raise ConnectionStringError("a connection string must be text")
    if len(text) > MAX_LENGTH:
        raise ConnectionStringError(f"the connection string is longer than {MAX_LENGTH} characters")
    entries = lex(text)
    if not entries:
        raise ConnectionStringError("the connection string is empty")
    return _build(entries)


def connection_from_pairs(pairs: Iterable[tuple[str, str]]) -> ConnectionString:
    """The same checks for keys and values that arrive already split (a PDFile's ``PROVIDER`` lines).

    Values are taken as they are (no quotes or escapes to undo); ``("name", ...)`` is accepted for
    ``provider``, as the PDFile writes ``PROVIDER NAME aws-s3``.
    """
    entries: list[Entry] = []
    for index, (raw_key, raw_value) in enumerate(pairs, start=1):
        key = str(raw_key).strip(_WS).lower()
        key = "provider" if key == "name" else key
        if not _KEY.fullmatch(key):
            raise ConnectionStringError(f"entry {index} has an invalid key {_show(key)}")
        value = str(raw_value).strip(_WS)
        if not value:
            raise ConnectionStringError(f"{key} has an empty value: give a value or leave the key out")
        _check_chars(key, value)
        entries.append(Entry(key, value, index, None))
    if not entries:
        raise ConnectionStringError("no provider settings were given")
    return _build(entries)


def _build(entries: list[Entry]) -> ConnectionString:
    seen: dict[str, Entry] = {}
    for entry in entries:
        if entry.key in seen:
            raise ConnectionStringError(
                f"key {entry.key} is given twice (entries {seen[entry.key].index} and {entry.index})"
            )
        seen[entry.key] = entry
    known = ", ".join(PROVIDERS)
    provider = seen.pop("provider", None)
    if provider is None:
        raise ConnectionStringError(f"the connection string has no provider= (one of {known})")
    cls = _BY_NAME.get(provider.value.lower())
    if cls is None:
        hint = _suggest(provider.value.lower(), list(_BY_NAME))
        raise ConnectionStringError(f"unknown provider {_show(provider.value)}{hint} (known: {known})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    for key, entry in seen.items():
        f = fields.get(key)
        if f is None:
            if entry.after_secret:
                raise ConnectionStringError(_split_secret_hint(entry.index, entry.after_secret))
            hint = _suggest(key, list(fields))
            raise ConnectionStringError(f"unknown key {key} for provider {cls.provider}{hint}")
        values[key] = _convert(entry, f.metadata["kind"])
    missing = [name for name, f in fields.items() if f.default is dataclasses.MISSING and name not in values]
    if missing:
        raise ConnectionStringError(f"missing {', '.join(missing)} for provider {cls.provider}")
    return cls(**values)
