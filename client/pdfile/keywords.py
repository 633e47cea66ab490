"""The PDFile's keywords: what each one reads from its line, and which operations need or use it.

Every keyword is one handler in :data:`_HANDLERS`; a handler reads its line into :class:`_State`
and raises :class:`~client.pdfile.lexer._LineError` for a bad one. What holds across lines (the
operation, credentials, required keywords) is checked afterwards, in ``client.pdfile.validate``.
The keywords themselves are described in ``docs/pdfile.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from client.byo.connection import SECRET_KEYS, ConnectionStringError, Entry, is_key, lex
from client.pdfile.lexer import (
    _PROVIDER_NAME,
    _TEMPLATE,
    _domain,
    _LineError,
    _read_bool,
    _read_choice,
    _read_int,
    _read_server,
    _read_size,
    _render,
    _split_word,
    _suggest,
)
from client.pdfile.model import COMPRESS_LEVELS, OPERATIONS, Diagnostic
from core.identity import (
    normalize_architecture,
    normalize_catalog_id,
    normalize_claim,
    normalize_role,
    normalize_tag,
    normalize_version,
)

__all__ = ["KEYWORDS"]


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

    A written-out string is read with ``client.byo.connection``'s lexer *before* its templates are
    rendered, and the pairs are written back with its quoting: text from the environment stays one
    value and cannot add keys (``;``) or break the quoting.
    """
    state.seen("PROVIDER", line)
    raw = line.raw_arg
    syntax = "PROVIDER NAME <name>, PROVIDER <KEY> <value>, or PROVIDER provider=<name>;<key>=<value>;..."
    if not raw:
        raise _LineError(f"PROVIDER needs a value: {syntax}")
    entries: list[tuple[str, str, bool]] = []  # key, value, whether a template gave it
    if _TEMPLATE.fullmatch(raw):  # a whole connection string from the environment
        entries = [(e.key, e.value, True) for e in _lex_provider(_render(raw, line.env)[0], syntax)]
    elif "=" in raw.split(None, 1)[0]:
        for entry in _lex_provider(raw, syntax):
            rendered, templated = _render(entry.value, line.env)
            entries.append((entry.key, rendered if entry.quoted else rendered.strip(), templated))
    else:
        key, rest = _split_word(raw)
        if "{{" in key:
            raise _LineError(f"the key after PROVIDER must be written out, not a template; {syntax}")
        if not rest:
            raise _LineError(f"a PROVIDER <KEY> line needs a value after the key; {syntax}")
        if not is_key(key):
            raise _LineError(f"PROVIDER keys are words like bucket or secret_key (letters, digits, _); {syntax}")
        value, templated = _render(rest, line.env)
        entries.append((key.lower(), value.strip(), templated))
    literal_secrets: list[str] = []
    for key, value, templated in entries:
        name = "provider" if key == "name" else key
        state.claim(f"PROVIDER {name}", line)
        if not value:
            raise _LineError(f"PROVIDER {name.upper()} needs a value")
        if name == "provider":
            if not _PROVIDER_NAME.fullmatch(value):
                raise _LineError(f"PROVIDER NAME takes a provider name such as aws-s3, not {value[:32]!r}")
            state.values["provider_name"] = value
            continue
        if not templated and name in SECRET_KEYS:
            literal_secrets.append(name)
        state.provider_pairs.append((name, value))
    for name in literal_secrets:
        state.warn(
            line.number,
            f"PROVIDER {name.upper()} is written in the file; keep secrets out of it with "
            f"PROVIDER {name.upper()} {{{{ .Env.{name.upper()} }}}}",
        )


_TEMPLATE_IN_KEY = re.compile(r"(?:^|;)[^=;]*\{\{")


def _lex_provider(text: str, syntax: str) -> list[Entry]:
    """The entries of a connection string on a PROVIDER line, as ``client.byo.connection`` reads them."""
    try:
        return lex(text)
    except ConnectionStringError as exc:
        if _TEMPLATE_IN_KEY.search(text):
            raise _LineError(f"PROVIDER keys must be written out, not templates; {syntax}") from None
        raise _LineError(f"in the PROVIDER connection string, {exc.message}") from None


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
        ("PROVIDER", "PROVIDER NAME <name> (and its keys)", ("storage",)),
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
