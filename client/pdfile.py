"""PDFile: a line-based recipe for ``pdcat push|pull|run FILE.pdfile`` (the original product's format).

A PDFile says, one keyword per line, what to do with which catalog, so a push or a pull can live in a
repository and run in CI. This module is pure: text (and the environment, for templates) in, a frozen
:class:`PDFile` out, or one :class:`PDFileError` that names every bad line. Nothing is printed;
warnings are returned.

Grammar::

    # a comment (whole lines only: '#' inside a value is part of the value, passwords may hold one)
    KEYWORD [value]          keywords are case-insensitive; values keep their case
    FROM host[:port] | http(s)://host[:port][/prefix]     the catalog to pull from (implies RUN pull)
    TO   host[:port] | http(s)://host[:port][/prefix]     the catalog to push to (implies RUN push)
    RUN|DO push|pull|list|import|import-vm
    INSECURE [bool]                       plain http for a bare host; no TLS verification for https
    AUTHENTICATE USERNAME name | PASSWORD secret | API_KEY key
    CATALOG_ID id    VERSION v    ARCHITECTURE x86_64|arm64 (amd64, aarch64, arm)    DESCRIPTION text
    LOCAL_PATH path  DESTINATION dir  MACHINE_NAME name  OWNER user  START_AFTER_PULL [bool]
    ROLE a,b  CLAIM a,b  TAG a,b         comma lists; repeatable
    PROVIDER NAME aws-s3 | PROVIDER KEY value | PROVIDER provider=aws-s3;bucket=b;...
    CLONE [name]  CLONE_DESTINATION dir  EXECUTE command (repeatable)
    MINIMUM_REQUIREMENT CPU|MEMORY|DISK n        (MEMORY and DISK in MB)
    COMPRESS_PACK [bool]  COMPRESS_PACK_LEVEL best_speed|balanced|best_compression|no_compression|default
    VM_TYPE pvm|macvm  VM_SIZE n[KB|MB|GB|TB|KiB|MiB|GiB|TiB]  VM_REMOTE_PATH path  IS_COMPRESSED [bool]
    FORCE [bool]

A bare boolean keyword means true. ``{{ .Env.NAME }}`` and ``{{ NAME }}`` in a value are replaced from
the environment before the value is read. Templates stand only in values, never in the keyword (or
in the word after AUTHENTICATE, PROVIDER or MINIMUM_REQUIREMENT), so the environment cannot change what
a line means, and a substituted value may not hold a line break: that would smuggle in a new line.
Comment lines are not rendered. Line numbers in errors are those of the file as written.

Secrets (AUTHENTICATE PASSWORD and API_KEY, provider keys that look secret) never appear in a repr,
an error or a warning; writing one literally in the file earns a warning suggesting a template.

Command-line flags override the file (flags > file > pdcat's defaults): see :func:`to_cli_options`
and :func:`apply_flags`.

Identifiers are stored the way the catalog stores them (catalog id, tags lower-case; roles and claims
upper-case; architecture canonical); free text (names, paths, descriptions, commands) is kept as
written.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Final, Literal, Required, TypedDict, cast
from urllib.parse import urlsplit

from core.errors import InvalidInput
from core.identity import (
    normalize_architecture,
    normalize_catalog_id,
    normalize_claim,
    normalize_role,
    normalize_tag,
    normalize_version,
)
from core.manifest import MinimumRequirements

__all__ = [
    "COMPRESS_LEVELS",
    "KEYWORDS",
    "NO_FLAG_YET",
    "OPERATIONS",
    "Authentication",
    "CliOptions",
    "Diagnostic",
    "PDFile",
    "PDFileError",
    "ParseResult",
    "Provider",
    "apply_flags",
    "flag_names",
    "is_secret_key",
    "load",
    "parse",
    "render_template",
    "to_cli_options",
]

Operation = Literal["push", "pull", "list", "import", "import-vm"]
OPERATIONS: Final[tuple[Operation, ...]] = ("push", "pull", "list", "import", "import-vm")
#: COMPRESS_PACK_LEVEL names and the zstd level each one means (None: pdcat's default level).
COMPRESS_LEVELS: Final[Mapping[str, int | None]] = {
    "best_speed": 1,
    "balanced": 3,
    "default": None,
    "best_compression": 19,
    "no_compression": None,
}
MAX_FILE_BYTES: Final = 1024 * 1024
REDACTED: Final = "***"
_MAX_PROBLEMS: Final = 50
_SHOWN_PROBLEMS: Final = 5


# ---- results and errors ------------------------------------------------------------------------
@dataclass(frozen=True)
class Diagnostic:
    """One problem or warning; ``line`` is 1-based in the file as written, None for the whole file."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


class PDFileError(InvalidInput):
    """Every problem found in a PDFile; the message is one line for the CLI.

    Problems come in the order found: bad lines top to bottom, then what is wrong across lines
    (conflicts, half-given credentials), then what is missing. ``line`` is the first one's.
    """

    def __init__(self, problems: Collection[Diagnostic], source: str | None = None) -> None:
        ordered = tuple(problems)
        if not ordered:
            raise ValueError("PDFileError needs at least one problem")
        self.problems: tuple[Diagnostic, ...] = ordered
        self.line: int | None = ordered[0].line
        self.source = source
        body = "; ".join(str(d) for d in ordered[:_SHOWN_PROBLEMS])
        if len(ordered) > _SHOWN_PROBLEMS:
            body += f"; and {len(ordered) - _SHOWN_PROBLEMS} more"
        super().__init__(f"{source}: {body}" if source else body)


@dataclass(frozen=True)
class Authentication:
    """Credentials for the catalog. The repr never shows the password or the API key."""

    username: str | None = None
    password: str | None = None
    api_key: str | None = None

    def __repr__(self) -> str:
        shown = self.to_dict()
        return "Authentication(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def to_dict(self) -> dict[str, str]:
        """Safe to print: secrets replaced by ``***``."""
        out: dict[str, str] = {}
        if self.username is not None:
            out["username"] = self.username
        if self.password is not None:
            out["password"] = REDACTED
        if self.api_key is not None:
            out["api_key"] = REDACTED
        return out


_SECRET_KEY = re.compile(r"secret|password|passwd|token|sas|credential|signature|key$")


def is_secret_key(key: str) -> bool:
    """Provider keys whose values are secrets (``secret_key``, ``storage_account_key``, ``access_key``…)."""
    return bool(_SECRET_KEY.search(key.lower()))


# The connection-string grammar of client.byo.connection, as far as assembling and masking one needs.
_CONN_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_CONN_SPECIAL = re.compile(r'([;"\\])')


def _conn_escape(value: str) -> str:
    """Text put inside a written connection string: ``;``, ``"`` and ``\\`` escaped with a backslash."""
    return _CONN_SPECIAL.sub(r"\\\1", value)


def _conn_quote(value: str) -> str:
    """A whole value, quoted when it holds ``;``, ``"``, ``\\`` or surrounding blanks."""
    if value == value.strip() and not _CONN_SPECIAL.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _conn_unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return re.sub(r"\\(.)", r"\1", value)


def _conn_entries(text: str) -> list[tuple[str, str]]:
    """``key=value`` entries split on ``;`` outside quotes and escapes; values kept as written."""
    pieces: list[str] = []
    start, i, quoted = 0, 0, False
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ";" and not quoted:
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise _LineError("a quoted value in the PROVIDER connection string has no closing quote")
    pieces.append(text[start:])
    entries = []
    for index, piece in enumerate(pieces, start=1):
        if not piece.strip():
            continue
        key, eq, value = piece.partition("=")
        if not eq:  # not echoed: a stray piece may be (part of) a secret
            raise _LineError(f"entry {index} of the PROVIDER connection string is not key=value")
        entries.append((key.strip(), value.strip()))
    return entries


@dataclass(frozen=True)
class Provider:
    """Storage given by the PDFile, as the raw ``provider=NAME;key=value;…`` connection string.

    The strict parsing of that string belongs to ``client.byo.connection``; here it is only assembled
    from PROVIDER lines. The repr shows the provider name and keys with secret values masked.
    """

    name: str
    connection_string: str

    def redacted(self) -> str:
        try:
            entries = _conn_entries(self.connection_string)
        except _LineError:
            return f"provider={self.name};{REDACTED}"
        return ";".join(f"{k}={REDACTED if is_secret_key(k) else v}" for k, v in entries)

    def __repr__(self) -> str:
        return f"Provider({self.redacted()!r})"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "connection_string": self.redacted()}


@dataclass(frozen=True)
class PDFile:
    """A parsed, validated PDFile. ``None`` (or an empty tuple) means the file did not say."""

    operation: Operation
    server: str | None = None
    insecure: bool | None = None
    credentials: Authentication | None = None
    catalog_id: str | None = None
    version: str | None = None
    architecture: str | None = None
    description: str | None = None
    local_path: str | None = None
    destination: str | None = None
    machine_name: str | None = None
    owner: str | None = None
    start_after_pull: bool | None = None
    roles: tuple[str, ...] = ()
    claims: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    provider: Provider | None = None
    clone: bool | None = None
    clone_name: str | None = None
    clone_destination: str | None = None
    execute: tuple[str, ...] = ()
    minimum_requirements: MinimumRequirements | None = None
    compress_pack: bool | None = None
    compress_pack_level: str | None = None
    vm_type: str | None = None
    vm_size: int | None = None
    vm_remote_path: str | None = None
    is_compressed: bool | None = None
    force: bool | None = None
    #: keyword (``VERSION``, ``AUTHENTICATE PASSWORD``, ``PROVIDER bucket``…) -> line it was first given on
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def line_of(self, keyword: str) -> int | None:
        """Where a keyword was given, so later errors (a missing LOCAL_PATH folder…) can point at it."""
        return self.lines.get(keyword.upper()) or self.lines.get(keyword)

    def to_dict(self) -> dict[str, object]:
        """What the file said, JSON-ready and safe to print (secrets masked, unset fields left out)."""
        out: dict[str, object] = {}
        for name in self.__dataclass_fields__:
            if name == "lines":
                continue
            value = getattr(self, name)
            if value is None or value == ():
                continue
            if isinstance(value, Authentication | Provider):
                out[name] = value.to_dict()
            elif isinstance(value, MinimumRequirements):
                out[name] = {k: v for k, v in asdict(value).items() if v}
            elif isinstance(value, tuple):
                out[name] = list(value)
            else:
                out[name] = value
        return out


@dataclass(frozen=True)
class ParseResult:
    pdfile: PDFile
    warnings: tuple[Diagnostic, ...] = ()


# ---- templates ---------------------------------------------------------------------------------
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
_TEMPLATE_NAME = re.compile(r"\s*(?:\.[Ee]nv\.)?([A-Za-z_][A-Za-z0-9_]*)\s*")
# Everything another tool might treat as a line break, plus other control characters.
_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


class _LineError(Exception):
    """A problem with the current line; the caller attaches the line number."""


def _render(fragment: str, env: Mapping[str, str], escape: Callable[[str], str] | None = None) -> tuple[str, bool]:
    """Replace templates in one value. Returns the text and whether any template was used.

    Substituted text is not scanned again, so a value that itself looks like a template stays as is.
    """
    if "{{" not in fragment:
        return fragment, False

    def substitute(match: re.Match[str]) -> str:
        name_match = _TEMPLATE_NAME.fullmatch(match.group(1))
        if name_match is None:
            # Not echoed: a mistyped template may hold what was meant to be in the environment.
            raise _LineError("unsupported template: expected {{ .Env.NAME }} or {{ NAME }}")
        name = name_match.group(1)
        if name not in env:
            raise _LineError(f"environment variable {name} is not set")
        value = env[name]
        if any(c in _BREAKS for c in value):
            raise _LineError(
                f"environment variable {name} holds a line break; a template must not start a new line "
                "(that would inject keywords), so give it a one-line value"
            )
        if _CONTROL.search(value):
            raise _LineError(f"environment variable {name} holds a control character; use plain one-line text")
        return escape(value) if escape else value

    if "{{" in _TEMPLATE.sub("", fragment):
        raise _LineError("'{{' without a closing '}}': templates are {{ .Env.NAME }} or {{ NAME }}")
    return _TEMPLATE.sub(substitute, fragment), True


def _is_comment_or_blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def render_template(text: str, env: Mapping[str, str]) -> str:
    """Replace every ``{{ .Env.NAME }}`` / ``{{ NAME }}`` outside comment lines, keeping every line where it is.

    Text without templates comes back unchanged, byte for byte. Raises :class:`PDFileError` naming
    the line of an unset variable, a bad template, or a value that holds a line break.
    """
    out: list[str] = []
    problems: list[Diagnostic] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if _is_comment_or_blank(line):
            out.append(line)
            continue
        try:
            out.append(_render(line, env)[0])
        except _LineError as exc:
            problems.append(Diagnostic(number, str(exc)))
            out.append(line)
    if problems:
        raise PDFileError(problems)
    return "\n".join(out)


# ---- small value readers -----------------------------------------------------------------------
_TRUE = frozenset({"true", "yes", "on", "1", "t", "y"})
_FALSE = frozenset({"false", "no", "off", "0", "f", "n"})
_DIGITS = re.compile(r"[0-9]{1,18}")
_SIZE = re.compile(r"([0-9]{1,15})\s*([KMGT]i?B|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1}
for _i, _p in enumerate("KMGT", start=1):
    _SIZE_UNITS[f"{_p}B"] = 1000**_i
    _SIZE_UNITS[f"{_p}IB"] = 1024**_i
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _split_word(text: str) -> tuple[str, str]:
    """``"KIND  rest of it"`` -> ``("KIND", "rest of it")``, splitting on any run of blanks."""
    parts = text.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


def _suggest(word: str, choices: Collection[str]) -> str:
    match = difflib.get_close_matches(word.upper(), [c.upper() for c in choices], n=1, cutoff=0.6)
    if not match:
        return ""
    original = next(c for c in choices if c.upper() == match[0])
    return f"; did you mean {original}?"


def _choices(items: Collection[str]) -> str:
    items = list(items)
    return ", ".join(items[:-1]) + f" or {items[-1]}" if len(items) > 1 else items[0]


def _read_bool(keyword: str, value: str) -> bool:
    if not value:
        return True
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _LineError(f"{keyword} takes true or false (or nothing, meaning true), not {value[:32]!r}")


def _read_int(keyword: str, value: str, *, minimum: int, maximum: int, unit: str = "") -> int:
    if not _DIGITS.fullmatch(value):
        raise _LineError(f"{keyword} takes a whole number{unit}, not {value[:32]!r}")
    number = int(value)
    if not minimum <= number <= maximum:
        raise _LineError(f"{keyword} must be between {minimum} and {maximum}{unit}, not {number}")
    return number


def _read_size(keyword: str, value: str) -> int:
    match = _SIZE.fullmatch(value)
    if match is None:
        raise _LineError(f"{keyword} takes a size in bytes, e.g. 68719476736 or 64GiB, not {value[:32]!r}")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()]


def _read_choice(keyword: str, value: str, choices: Collection[str]) -> str:
    low = value.lower()
    if low in choices:
        return low
    shown = f", not {value[:32]!r}" if value else ""
    raise _LineError(f"{keyword} takes {_choices(choices)}{shown}{_suggest(value, choices)}")


def _domain(check: Callable[[str], str], value: str) -> str:
    """Run a core normaliser and turn its InvalidInput into an error on this line."""
    try:
        return check(value)
    except InvalidInput as exc:
        raise _LineError(exc.message) from None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Server:
    scheme: str | None
    netloc: str
    host: str
    path: str

    def url(self, insecure: bool) -> str:
        scheme = self.scheme or ("http" if insecure or _is_loopback(self.host) else "https")
        return f"{scheme}://{self.netloc}{self.path}"


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _read_server(keyword: str, value: str) -> _Server:
    expected = f"{keyword} takes the catalog server: host[:port] or http(s)://host[:port][/prefix]"
    if any(c.isspace() for c in value):
        raise _LineError(f"{expected}, without spaces")
    scheme_match = _SCHEME.match(value)
    scheme = scheme_match.group(1).lower() if scheme_match else None
    if scheme is not None and scheme not in ("http", "https"):
        raise _LineError(f"{expected}; the scheme must be http or https")
    rest = value[scheme_match.end() :] if scheme_match else value
    try:
        parts = urlsplit("//" + rest)
        port = parts.port
    except ValueError:
        raise _LineError(f"{expected}; the host or port is not valid") from None
    if "@" in parts.netloc:
        raise _LineError(f"{keyword}: do not put credentials in the URL; use AUTHENTICATE lines")
    host = parts.hostname or ""
    if not (_HOSTNAME.fullmatch(host) or (":" in host and _is_ip(host))):
        raise _LineError(f"{expected}; the host name is missing or not valid")
    if port == 0:
        raise _LineError(f"{expected}; the port must be 1-65535")
    if parts.query or parts.fragment or "?" in rest or "#" in rest:
        raise _LineError(f"{expected}; no query or fragment")
    path = parts.path.rstrip("/")
    if scheme is None and path:
        raise _LineError(
            f"{expected}; a bare host takes no path. {keyword} names the server, not a VM: "
            "give the VM with CATALOG_ID and VERSION (or write a full http(s):// URL for a prefix)"
        )
    return _Server(scheme, parts.netloc, host, path)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# ---- the keyword table -------------------------------------------------------------------------
@dataclass
class _Line:
    number: int
    keyword: str  # upper-case, as looked up
    written: str  # as typed, for messages
    raw_arg: str  # the rest of the line, stripped, templates not yet rendered
    env: Mapping[str, str]

    def value(self) -> tuple[str, bool]:
        text, templated = _render(self.raw_arg, self.env)
        return text.strip(), templated

    def head(self, kinds: Collection[str], what: str) -> tuple[str, str]:
        """Split ``KIND rest`` for keywords with a sub-keyword; the kind must be written literally.

        The kind is never echoed in a message: for AUTHENTICATE it may be a mistyped secret.
        """
        head, rest = _split_word(self.raw_arg)
        if not head:
            raise _LineError(f"{self.keyword} needs {what}")
        if "{{" in head:
            raise _LineError(f"the word after {self.keyword} must be written out, not a template ({what})")
        kind = head.upper()
        if kind not in kinds:
            raise _LineError(f"{self.keyword} takes {what}{_suggest(kind, kinds)}")
        return kind, rest.strip()


@dataclass
class _State:
    env: Mapping[str, str]
    values: dict[str, object] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    list_lines: dict[str, list[int]] = field(default_factory=dict)
    roles: list[str] = field(default_factory=list)
    claims: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    execute: list[str] = field(default_factory=list)
    provider_pairs: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    suggested: set[str] = field(default_factory=set)  # keywords offered for misspelt ones
    keyword: str = ""  # of the line being read
    failed: set[str] = field(default_factory=set)  # keywords with a bad line: no follow-up errors about them

    def claim(self, slot: str, line: _Line) -> None:
        """Single-valued keywords: a second occurrence is an error, naming the first."""
        first = self.lines.get(slot)
        if first is not None:
            raise _LineError(f"{slot} is given twice (first on line {first}); keep one")
        self.lines[slot] = line.number

    def seen(self, slot: str, line: _Line) -> None:
        self.lines.setdefault(slot, line.number)
        self.list_lines.setdefault(slot, []).append(line.number)

    def warn(self, line: int | None, message: str) -> None:
        self.warnings.append(Diagnostic(line, message))


_Handler = Callable[[_State, _Line], None]


def _need_value(line: _Line, syntax: str) -> tuple[str, bool]:
    value, templated = line.value()
    if not value:
        raise _LineError(f"{line.keyword} needs a value: {syntax}")
    return value, templated


def _server(state: _State, line: _Line) -> None:
    state.claim(line.keyword, line)
    value, _ = _need_value(line, f"{line.keyword} catalog.example.com")
    state.values[f"server:{line.keyword}"] = _read_server(line.keyword, value)


def _text(field_name: str, syntax: str, check: Callable[[str], str] | None = None) -> _Handler:
    def handle(state: _State, line: _Line) -> None:
        state.claim(line.keyword, line)
        value, _ = _need_value(line, syntax)
        state.values[field_name] = _domain(check, value) if check else value

    return handle


def _flag(field_name: str) -> _Handler:
    def handle(state: _State, line: _Line) -> None:
        state.claim(line.keyword, line)
        state.values[field_name] = _read_bool(line.keyword, line.value()[0])

    return handle


def _choice(field_name: str, choices: Collection[str]) -> _Handler:
    def handle(state: _State, line: _Line) -> None:
        state.claim(line.keyword, line)
        state.values[field_name] = _read_choice(line.keyword, line.value()[0], choices)

    return handle


def _comma_list(target: str, check: Callable[[str], str]) -> _Handler:
    def handle(state: _State, line: _Line) -> None:
        state.seen(line.keyword, line)
        value, _ = _need_value(line, f"{line.keyword} a,b,c")
        items = [item.strip() for item in value.split(",")]
        if any(not item for item in items):
            raise _LineError(f"{line.keyword} has an empty item; write {line.keyword} a,b,c")
        collected: list[str] = getattr(state, target)
        for item in items:
            normal = _domain(check, item)
            if normal not in collected:
                collected.append(normal)

    return handle


def _execute(state: _State, line: _Line) -> None:
    state.seen(line.keyword, line)
    value, _ = _need_value(line, "EXECUTE <command to run in the VM>")
    state.execute.append(value)


def _clone(state: _State, line: _Line) -> None:
    state.claim(line.keyword, line)
    state.values["clone"] = True
    name, _ = line.value()
    if name:
        state.values["clone_name"] = name


def _run(state: _State, line: _Line) -> None:
    state.claim("RUN", line)
    value, _ = line.value()
    state.values["operation"] = _read_choice(line.keyword, value, OPERATIONS)


def _vm_size(state: _State, line: _Line) -> None:
    state.claim(line.keyword, line)
    value, _ = _need_value(line, "VM_SIZE <bytes, or e.g. 64GiB>")
    state.values["vm_size"] = _read_size(line.keyword, value)


_AUTH_KINDS = ("USERNAME", "PASSWORD", "API_KEY")
_AUTH_ENV = {"PASSWORD": "PDCAT_PASSWORD", "API_KEY": "PDCAT_API_KEY"}


def _authenticate(state: _State, line: _Line) -> None:
    kind, rest = line.head(_AUTH_KINDS, "USERNAME <name>, PASSWORD <password> or API_KEY <key>")
    slot = f"AUTHENTICATE {kind}"
    state.claim(slot, line)
    value, templated = _render(rest, line.env)
    value = value.strip()
    if not value:
        raise _LineError(f"{slot} needs a value")
    state.values[f"auth:{kind}"] = value
    if kind in _AUTH_ENV and not templated:
        state.warn(
            line.number,
            f"{slot} is written in the file; keep secrets out of it with "
            f"AUTHENTICATE {kind} {{{{ .Env.{_AUTH_ENV[kind]} }}}}",
        )


_REQUIREMENT_KINDS = ("CPU", "MEMORY", "DISK")
_REQUIREMENT_LIMITS = {"CPU": (4096, ""), "MEMORY": (2**40, " (MB)"), "DISK": (2**40, " (MB)")}


def _minimum_requirement(state: _State, line: _Line) -> None:
    kind, rest = line.head(_REQUIREMENT_KINDS, "CPU <count>, MEMORY <MB> or DISK <MB>")
    slot = f"MINIMUM_REQUIREMENT {kind}"
    state.claim(slot, line)
    state.seen("MINIMUM_REQUIREMENT", line)
    value = _render(rest, line.env)[0].strip()
    maximum, unit = _REQUIREMENT_LIMITS[kind]
    state.values[f"min:{kind}"] = _read_int(slot, value, minimum=1, maximum=maximum, unit=unit)


def _provider(state: _State, line: _Line) -> None:
    """``PROVIDER KEY value``, ``PROVIDER provider=NAME;key=value;…``, or ``PROVIDER {{ .Env.CONN }}``.

    Entries are kept in the connection-string grammar of ``client.byo.connection``: a value from a
    ``PROVIDER KEY value`` line is quoted when it needs to be, and text a template puts inside a
    written-out string is escaped, so neither can add keys (``;``) or break the quoting.
    """
    state.seen("PROVIDER", line)
    raw = line.raw_arg
    syntax = "PROVIDER NAME <name>, PROVIDER <KEY> <value>, or PROVIDER provider=<name>;<key>=<value>;..."
    if not raw:
        raise _LineError(f"PROVIDER needs a value: {syntax}")
    entries: list[tuple[str, str, bool]] = []  # key, value as written in the grammar, from a template
    if _TEMPLATE.fullmatch(raw):  # a whole connection string from the environment, used as it is
        text, _ = _render(raw, line.env)
        entries = [(key, value, True) for key, value in _conn_entries(text)]
    elif "=" in raw.split(None, 1)[0]:
        for key, value in _conn_entries(raw):
            if "{{" in key:
                raise _LineError(f"PROVIDER keys must be written out, not templates; {syntax}")
            rendered, templated = _render(value, line.env, escape=_conn_escape)
            entries.append((key, rendered.strip(), templated))
    else:
        key, rest = _split_word(raw)
        if "{{" in key:
            raise _LineError(f"the key after PROVIDER must be written out, not a template; {syntax}")
        if not rest:
            raise _LineError(f"a PROVIDER <KEY> line needs a value after the key; {syntax}")
        value, templated = _render(rest, line.env)
        entries.append((key, _conn_quote(value.strip()), templated))
    literal_secrets: list[str] = []
    for key, value, templated in entries:
        if not _CONN_KEY.fullmatch(key):
            raise _LineError(f"PROVIDER keys are words like bucket or secret_key (letters, digits, _); {syntax}")
        name = key.lower()
        name = "provider" if name == "name" else name
        state.claim(f"PROVIDER {name}", line)
        if not _conn_unquote(value):
            raise _LineError(f"PROVIDER {name.upper()} needs a value")
        if name == "provider":
            provider_name = _conn_unquote(value)
            if not _PROVIDER_NAME.fullmatch(provider_name):
                raise _LineError(f"PROVIDER NAME takes a provider name such as aws-s3, not {provider_name[:32]!r}")
            state.values["provider_name"] = provider_name
            continue
        if not templated and is_secret_key(name):
            literal_secrets.append(name)
        state.provider_pairs.append((name, value))
    for name in literal_secrets:
        state.warn(
            line.number,
            f"PROVIDER {name.upper()} is written in the file; keep secrets out of it with "
            f"PROVIDER {name.upper()} {{{{ .Env.{name.upper()} }}}}",
        )


_HANDLERS: Final[dict[str, _Handler]] = {
    "FROM": _server,
    "TO": _server,
    "RUN": _run,
    "DO": _run,
    "INSECURE": _flag("insecure"),
    "AUTHENTICATE": _authenticate,
    "CATALOG_ID": _text("catalog_id", "CATALOG_ID <id>", normalize_catalog_id),
    "VERSION": _text("version", "VERSION <version>", lambda v: normalize_version(v, allow_latest=True)),
    "ARCHITECTURE": _text("architecture", "ARCHITECTURE x86_64|arm64", normalize_architecture),
    "DESCRIPTION": _text("description", "DESCRIPTION <text>"),
    "LOCAL_PATH": _text("local_path", "LOCAL_PATH <path to the .pvm or .macvm bundle>"),
    "DESTINATION": _text("destination", "DESTINATION <folder>"),
    "MACHINE_NAME": _text("machine_name", "MACHINE_NAME <name>"),
    "OWNER": _text("owner", "OWNER <user>"),
    "ROLE": _comma_list("roles", normalize_role),
    "CLAIM": _comma_list("claims", normalize_claim),
    "TAG": _comma_list("tags", normalize_tag),
    "PROVIDER": _provider,
    "START_AFTER_PULL": _flag("start_after_pull"),
    "CLONE": _clone,
    "CLONE_DESTINATION": _text("clone_destination", "CLONE_DESTINATION <folder>"),
    "EXECUTE": _execute,
    "MINIMUM_REQUIREMENT": _minimum_requirement,
    "COMPRESS_PACK": _flag("compress_pack"),
    "COMPRESS_PACK_LEVEL": _choice("compress_pack_level", tuple(COMPRESS_LEVELS)),
    "VM_TYPE": _choice("vm_type", ("pvm", "macvm")),
    "VM_SIZE": _vm_size,
    "VM_REMOTE_PATH": _text("vm_remote_path", "VM_REMOTE_PATH <path in the storage>"),
    "IS_COMPRESSED": _flag("is_compressed"),
    "FORCE": _flag("force"),
}
KEYWORDS: Final[tuple[str, ...]] = tuple(_HANDLERS)


# Which operations use each keyword; any other operation ignores it (with a warning).
_ALL: Final = frozenset(OPERATIONS)
_USED_BY: Final[dict[str, frozenset[str]]] = {
    "VERSION": frozenset({"push", "pull", "import", "import-vm"}),
    "DESCRIPTION": frozenset({"push", "import-vm"}),
    "LOCAL_PATH": frozenset({"push"}),
    **dict.fromkeys(
        ("DESTINATION", "MACHINE_NAME", "OWNER", "START_AFTER_PULL", "CLONE", "CLONE_DESTINATION", "EXECUTE"),
        frozenset({"pull"}),
    ),
    **dict.fromkeys(("ROLE", "CLAIM", "FORCE"), frozenset({"push", "import", "import-vm"})),
    "TAG": frozenset({"push", "list", "import", "import-vm"}),
    "PROVIDER": frozenset({"push", "pull", "import", "import-vm"}),
    "MINIMUM_REQUIREMENT": frozenset({"push", "import-vm"}),
    **dict.fromkeys(("COMPRESS_PACK", "COMPRESS_PACK_LEVEL"), frozenset({"push"})),
    "VM_TYPE": frozenset({"push", "import-vm"}),
    **dict.fromkeys(("VM_SIZE", "VM_REMOTE_PATH", "IS_COMPRESSED"), frozenset({"import-vm"})),
}
# What each operation cannot do without: (slot, how to write it, the CLI option that can stand in).
_REQUIRED: Final[dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]]] = {
    "push": (
        ("LOCAL_PATH", "LOCAL_PATH <path to the .pvm or .macvm bundle>", ("path",)),
        ("CATALOG_ID", "CATALOG_ID <id>", ("catalog",)),
        ("VERSION", "VERSION <version>", ("version",)),
    ),
    "pull": (("CATALOG_ID", "CATALOG_ID <id>", ("catalog", "ref")),),
    "list": (),
    "import": (
        ("CATALOG_ID", "CATALOG_ID <id>", ("catalog",)),
        ("VERSION", "VERSION <version>", ("version",)),
        ("ARCHITECTURE", "ARCHITECTURE x86_64|arm64", ("arch",)),
        ("PROVIDER", "PROVIDER NAME <name> (and its keys)", ("provider",)),
    ),
}
_REQUIRED["import-vm"] = (
    *_REQUIRED["import"],
    ("VM_REMOTE_PATH", "VM_REMOTE_PATH <path in the storage>", ("vm_remote_path",)),
    ("VM_TYPE", "VM_TYPE pvm|macvm", ("vm_type",)),
)
# Which of FROM / TO each operation talks to.
_SERVER_KEYWORDS: Final[dict[str, tuple[str, ...]]] = {
    "push": ("TO",),
    "pull": ("FROM",),
    "list": ("FROM", "TO"),
    "import": ("TO",),
    "import-vm": ("TO",),
}


# ---- parsing -----------------------------------------------------------------------------------
_SPLIT = re.compile(r"(\S+)(?:\s+(.*))?", re.DOTALL)


def parse(
    text: str, env: Mapping[str, str], *, supplied: Collection[str] = (), source: str | None = None
) -> ParseResult:
    """Parse and validate a PDFile.

    ``supplied`` names the :class:`CliOptions` keys the command line gives (see :func:`flag_names`),
    so a file may leave out what a flag provides (``pdcat push x.pdfile --version 2``).
    ``source`` (a file name) prefixes the error message.
    """
    unknown = set(supplied) - _OPTION_KEYS
    if unknown:
        raise ValueError(f"supplied names unknown options: {sorted(unknown)}")
    problems: list[Diagnostic] = []
    state = _State(env)
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, raw in enumerate(text.split("\n"), start=1):
        if len(problems) >= _MAX_PROBLEMS:
            break
        line_text = raw[:-1] if raw.endswith("\r") else raw
        if _is_comment_or_blank(line_text):
            continue
        try:
            _parse_line(state, number, line_text.strip())
        except _LineError as exc:
            problems.append(Diagnostic(number, str(exc)))
            state.failed.add(state.keyword)
    pdfile = _finish(state, problems, frozenset(supplied))
    if problems or pdfile is None:
        raise PDFileError(problems or [Diagnostic(None, "the PDFile is not valid")], source)
    return ParseResult(pdfile, tuple(sorted(state.warnings, key=lambda d: (d.line is None, d.line or 0))))


def _parse_line(state: _State, number: int, stripped: str) -> None:
    bad = _CONTROL.search(stripped)
    if bad:
        raise _LineError(
            f"control character U+{ord(bad.group()):04X} in the line; a PDFile is plain text, one keyword per line"
        )
    match = _SPLIT.fullmatch(stripped)
    assert match is not None  # stripped is non-empty
    written, raw_arg = match.group(1), (match.group(2) or "").strip()
    if "{{" in written:
        raise _LineError("a keyword cannot come from a template; templates stand only in values")
    keyword = state.keyword = written.upper()
    handler = _HANDLERS.get(keyword)
    if handler is None:
        hint = _suggest(keyword, KEYWORDS)
        if hint:
            state.suggested.add(hint.removeprefix("; did you mean ").removesuffix("?"))
        else:
            hint = f"; expected a keyword such as {', '.join(KEYWORDS[:6])}, …"
        raise _LineError(f"unknown keyword {written[:32]!r}{hint}")
    handler(state, _Line(number, keyword, written, raw_arg, state.env))


def _finish(state: _State, problems: list[Diagnostic], supplied: frozenset[str]) -> PDFile | None:
    """Checks across lines: the operation, its server, credentials, provider, required keywords."""
    lines = state.lines
    values = state.values

    def problem(line: int | None, message: str) -> None:
        problems.append(Diagnostic(line, message))

    # The operation: RUN/DO, else FROM (pull) or TO (push); never both FROM and TO.
    from_line, to_line, run_line = lines.get("FROM"), lines.get("TO"), lines.get("RUN")
    if from_line is not None and to_line is not None:
        later = max(from_line, to_line)
        problem(
            later,
            f"FROM (line {from_line}) and TO (line {to_line}) together: a PDFile either pulls FROM a catalog "
            "or pushes TO one; keep one of them",
        )
        return None
    operation = cast("Operation | None", values.get("operation"))
    if operation is None and run_line is None:
        operation = "pull" if from_line is not None else "push" if to_line is not None else None
    if operation is None:
        if run_line is None and not problems:  # with bad lines, the operation is likely on one of them
            empty = not lines
            what = "the PDFile is empty" if empty else "no operation"
            problem(None, f"{what}: add FROM <catalog> to pull, TO <catalog> to push, or RUN list|import|import-vm")
        return None
    op_line = run_line if run_line is not None else from_line if from_line is not None else to_line
    allowed = _SERVER_KEYWORDS[operation]
    for keyword, line in (("FROM", from_line), ("TO", to_line)):
        if line is not None and keyword not in allowed and run_line is not None:
            implied = "pull" if keyword == "FROM" else "push"
            problem(
                max(line, run_line),
                f"RUN {operation} (line {run_line}) conflicts with {keyword} (line {line}), which means {implied}; "
                f"{operation} needs {' or '.join(allowed)} <catalog server>",
            )

    # The server, now that INSECURE is known.
    insecure = cast("bool | None", values.get("insecure"))
    server: str | None = None
    server_spec = values.get("server:FROM") or values.get("server:TO")
    if isinstance(server_spec, _Server):
        server = server_spec.url(bool(insecure))
        if insecure and not _is_loopback(server_spec.host):
            state.warn(
                lines.get("INSECURE"),
                "INSECURE: the catalog connection is not protected (plain http or no certificate check); "
                "do not use it outside a test setup",
            )
    elif from_line is None and to_line is None and "server" not in supplied and not {"FROM", "TO"} & state.suggested:
        problem(
            op_line, f"{operation} needs {' or '.join(allowed)} <catalog server>, e.g. {allowed[0]} catalog.example.com"
        )

    credentials = None if "AUTHENTICATE" in state.failed else _credentials(state, problem)
    provider = None if "PROVIDER" in state.failed else _compose_provider(state, problem)

    if values.get("clone_destination") is not None and values.get("clone") is None:
        problem(lines["CLONE_DESTINATION"], "CLONE_DESTINATION needs a CLONE line (CLONE [name])")
    level = cast("str | None", values.get("compress_pack_level"))
    compress = cast("bool | None", values.get("compress_pack"))
    if level is not None and compress is not None and compress != (level != "no_compression"):
        problem(
            max(lines["COMPRESS_PACK"], lines["COMPRESS_PACK_LEVEL"]),
            f"COMPRESS_PACK {str(compress).lower()} (line {lines['COMPRESS_PACK']}) contradicts "
            f"COMPRESS_PACK_LEVEL {level} (line {lines['COMPRESS_PACK_LEVEL']}); keep one",
        )
    version = cast("str | None", values.get("version"))
    if version == "latest" and operation in ("push", "import", "import-vm"):
        problem(
            lines["VERSION"], f"VERSION latest is an alias for the newest version and cannot be given to {operation}"
        )
    if operation == "list" and len(state.tags) > 1:
        problem(state.list_lines["TAG"][0], f"RUN list filters by one TAG, but the file gives {len(state.tags)}")

    missing = [
        syntax
        for slot, syntax, options in _REQUIRED[operation]
        if slot not in lines and not {slot} & (state.suggested | state.failed) and not supplied.intersection(options)
    ]
    if missing:
        listed = ", ".join(missing[:-1]) + f" and {missing[-1]}" if len(missing) > 1 else missing[0]
        problem(op_line, f"{operation} needs {listed}; add {'those lines' if len(missing) > 1 else 'that line'}")

    for slot, line in sorted(lines.items(), key=lambda item: item[1]):
        keyword = slot.split(" ", 1)[0]
        if operation not in _USED_BY.get(keyword, _ALL):
            for number in state.list_lines.get(slot, [line]):
                state.warn(number, f"{keyword} is ignored by {operation}")

    if problems:
        return None
    requirements = None
    if any(f"min:{kind}" in values for kind in _REQUIREMENT_KINDS):
        requirements = MinimumRequirements(
            cpu=cast(int, values.get("min:CPU", 0)),
            memory_mb=cast(int, values.get("min:MEMORY", 0)),
            disk_mb=cast(int, values.get("min:DISK", 0)),
        )
    plain = {name: values.get(name) for name in _PLAIN_FIELDS}
    return PDFile(
        operation=operation,
        server=server,
        credentials=credentials,
        roles=tuple(state.roles),
        claims=tuple(state.claims),
        tags=tuple(state.tags),
        provider=provider,
        execute=tuple(state.execute),
        minimum_requirements=requirements,
        lines=dict(lines),
        **plain,  # type: ignore[arg-type]
    )


_PLAIN_FIELDS: Final = (
    "insecure",
    "catalog_id",
    "version",
    "architecture",
    "description",
    "local_path",
    "destination",
    "machine_name",
    "owner",
    "start_after_pull",
    "clone",
    "clone_name",
    "clone_destination",
    "compress_pack",
    "compress_pack_level",
    "vm_type",
    "vm_size",
    "vm_remote_path",
    "is_compressed",
    "force",
)


def _credentials(state: _State, problem: Callable[[int | None, str], None]) -> Authentication | None:
    given = {kind: state.lines[f"AUTHENTICATE {kind}"] for kind in _AUTH_KINDS if f"AUTHENTICATE {kind}" in state.lines}
    if not given:
        return None
    user, password, key = given.get("USERNAME"), given.get("PASSWORD"), given.get("API_KEY")
    if key is not None and (user is not None or password is not None):
        other = min(line for line in (user, password) if line is not None)
        problem(
            max(key, other),  # where the second kind first appears
            "AUTHENTICATE API_KEY and USERNAME/PASSWORD together: use either API_KEY alone or USERNAME and PASSWORD",
        )
    elif user is not None and password is None:
        problem(user, "AUTHENTICATE USERNAME needs AUTHENTICATE PASSWORD too (or use AUTHENTICATE API_KEY alone)")
    elif password is not None and user is None:
        problem(password, "AUTHENTICATE PASSWORD needs AUTHENTICATE USERNAME too (or use AUTHENTICATE API_KEY alone)")
    return Authentication(
        username=cast("str | None", state.values.get("auth:USERNAME")),
        password=cast("str | None", state.values.get("auth:PASSWORD")),
        api_key=cast("str | None", state.values.get("auth:API_KEY")),
    )


def _compose_provider(state: _State, problem: Callable[[int | None, str], None]) -> Provider | None:
    if "PROVIDER" not in state.lines:
        return None
    name = cast("str | None", state.values.get("provider_name"))
    if name is None:
        if "PROVIDER provider" not in state.lines:  # not a bad-name line already reported
            problem(
                state.lines["PROVIDER"], "PROVIDER lines need the provider's name: PROVIDER NAME aws-s3 (or provider=…)"
            )
        return None
    return Provider(name, ";".join([f"provider={_conn_quote(name)}", *(f"{k}={v}" for k, v in state.provider_pairs)]))


def load(path: str | PathLike[str], env: Mapping[str, str], *, supplied: Collection[str] = ()) -> ParseResult:
    """Read and parse a PDFile; errors are prefixed with the file name."""
    name = Path(path).name
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PDFileError([Diagnostic(None, f"cannot read the PDFile: {exc.strerror or exc}")], name) from exc
    if len(data) > MAX_FILE_BYTES:
        raise PDFileError([Diagnostic(None, f"larger than {MAX_FILE_BYTES} bytes: not a PDFile")], name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PDFileError([Diagnostic(line, "not UTF-8 text; save the PDFile as UTF-8")], name) from None
    return parse(text, env, supplied=supplied, source=name)


# ---- mapping onto the command line -------------------------------------------------------------
class CliOptions(TypedDict, total=False):
    """A PDFile as ``pdcat`` options, keyed by the argparse ``dest`` names of ``client/cli.py``.

    Only what the file says is present. Keys in :data:`NO_FLAG_YET` have no ``pdcat`` flag today.
    ``command`` is the ``pdcat`` subcommand: push, pull, ls, import or import-vm.
    """

    command: Required[str]
    server: str
    insecure: bool
    credentials: Authentication
    # push (and import, import-vm)
    path: str
    catalog: str
    version: str
    arch: str
    role: list[str]
    claim: list[str]
    tag: list[str]
    description: str
    force: bool
    level: int
    compress: bool
    # pull
    ref: str
    dest: str
    name: str
    start: bool
    owner: str
    clone: str  # as ``pdcat pull --clone [NAME]``: "" clones under the default name
    clone_dest: str
    execute: list[str]
    # ls
    id: str
    # storage, requirements, import-vm
    provider: Provider
    min_cpu: int
    min_memory_mb: int
    min_disk_mb: int
    vm_type: str
    vm_size: int
    vm_remote_path: str
    is_compressed: bool


_OPTION_KEYS: Final = frozenset(CliOptions.__optional_keys__ | CliOptions.__required_keys__) - {"command"}
#: Options that ``pdcat`` has no flag for today: the caller wires them (or refuses them) itself.
NO_FLAG_YET: Final = frozenset(
    {
        "insecure",
        "credentials",
        "provider",  # --to / --from CONNECTION (dest "storage"): client.recipes maps it
        "min_cpu",
        "min_memory_mb",
        "min_disk_mb",
        "vm_size",
    }
)
# Positionals of ``pdcat push|pull|ls`` hold the PDFile's own path there, so they never override.
_POSITIONALS: Final = frozenset({"path", "ref", "id"})
_LIST_KEYS: Final = frozenset({"role", "claim", "tag", "execute"})
_COMMANDS: Final = {"push": "push", "pull": "pull", "list": "ls", "import": "import", "import-vm": "import-vm"}


def to_cli_options(pdfile: PDFile) -> CliOptions:
    """The ``pdcat`` options equivalent to a PDFile, for keywords its operation uses.

    Precedence is flags > file > ``pdcat``'s own defaults: merge command-line flags with
    :func:`apply_flags`, and parse with ``supplied=flag_names(flags)`` so a required keyword that a
    flag gives may be left out of the file.
    """
    op = pdfile.operation
    out: dict[str, object] = {"command": _COMMANDS[op]}

    def put(key: str, value: object) -> None:
        if value is not None and value != ():
            out[key] = list(value) if isinstance(value, tuple) else value

    put("server", pdfile.server)
    put("insecure", pdfile.insecure)
    put("credentials", pdfile.credentials)
    put("arch", pdfile.architecture)
    if op == "pull":
        if pdfile.catalog_id is not None:
            put("ref", pdfile.catalog_id + (f":{pdfile.version}" if pdfile.version else ""))
        put("dest", pdfile.destination)
        put("name", pdfile.machine_name)
        put("start", pdfile.start_after_pull)
        put("owner", pdfile.owner)
        if pdfile.clone:
            put("clone", pdfile.clone_name or "")
        put("clone_dest", pdfile.clone_destination)
        put("execute", pdfile.execute)
        put("provider", pdfile.provider)
        return cast(CliOptions, out)
    if op == "list":
        put("id", pdfile.catalog_id)
        put("tag", pdfile.tags)
        return cast(CliOptions, out)
    put("catalog", pdfile.catalog_id)
    put("version", pdfile.version)
    put("role", pdfile.roles)
    put("claim", pdfile.claims)
    put("tag", pdfile.tags)
    put("force", pdfile.force)
    put("provider", pdfile.provider)
    if op in ("push", "import-vm"):
        put("description", pdfile.description)
        put("vm_type", pdfile.vm_type)
        reqs = pdfile.minimum_requirements
        if reqs is not None:
            put("min_cpu", reqs.cpu or None)
            put("min_memory_mb", reqs.memory_mb or None)
            put("min_disk_mb", reqs.disk_mb or None)
    if op == "push":
        put("path", pdfile.local_path)
        if pdfile.compress_pack_level is not None:
            put("level", COMPRESS_LEVELS[pdfile.compress_pack_level])
            if pdfile.compress_pack_level == "no_compression":
                put("compress", False)
        put("compress", pdfile.compress_pack)
    if op == "import-vm":
        put("vm_size", pdfile.vm_size)
        put("vm_remote_path", pdfile.vm_remote_path)
        put("is_compressed", pdfile.is_compressed)
    return cast(CliOptions, out)


def _given(value: object) -> bool:
    """Whether an argparse value was given: not its default None, False (store_true) or [] (append)."""
    return value is not None and value is not False and not (isinstance(value, list | tuple) and not value)


def flag_names(flags: Mapping[str, object]) -> frozenset[str]:
    """The option names a command line gave (``vars(args)`` of ``pdcat push|pull|ls``), positionals excluded."""
    return frozenset(k for k, v in flags.items() if k in _OPTION_KEYS and k not in _POSITIONALS and _given(v))


def apply_flags(options: CliOptions, flags: Mapping[str, object]) -> CliOptions:
    """Flags > file: every option the command line gave replaces the file's value.

    A repeatable flag (``--tag``) replaces the file's whole list rather than adding to it, and a
    ``store_true`` flag that was not given leaves the file's value alone (so a file's ``FORCE`` or
    ``START_AFTER_PULL`` cannot be switched off from the command line: edit the file).
    """
    merged: dict[str, object] = dict(options)
    for key in flag_names(flags):
        value = flags[key]
        if key in _LIST_KEYS and isinstance(value, str):  # `pdcat ls --tag` takes one
            value = [value]
        merged[key] = list(value) if isinstance(value, list | tuple) else value
    return cast(CliOptions, merged)
