"""Parsing a PDFile: every line through its keyword's handler, then the checks across lines (the
operation and its server, credentials, the provider, what each operation needs).

Pure: text and the environment in, a :class:`ParseResult` out, or one :class:`PDFileError` that names
every bad line. Nothing is printed; warnings are returned. The format is in ``docs/pdfile.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from os import PathLike
from pathlib import Path
from typing import Final, cast

from client.byo.connection import format_entries
from client.options import OPTION_NAMES
from client.pdfile.keywords import (
    _ALL,
    _AUTH_KINDS,
    _HANDLERS,
    _REQUIRED,
    _REQUIREMENT_KINDS,
    _SERVER_KEYWORDS,
    _USED_BY,
    KEYWORDS,
    _Line,
    _State,
)
from client.pdfile.lexer import _CONTROL, _is_comment_or_blank, _is_loopback, _LineError, _Server, _suggest
from client.pdfile.model import Authentication, Diagnostic, Operation, ParseResult, PDFile, PDFileError, Provider
from core.manifest import MinimumRequirements

__all__ = ["MAX_FILE_BYTES", "load", "parse"]

MAX_FILE_BYTES: Final = 1024 * 1024
_MAX_PROBLEMS: Final = 50
_SPLIT = re.compile(r"(\S+)(?:\s+(.*))?", re.DOTALL)


def parse(
    text: str, env: Mapping[str, str], *, supplied: Collection[str] = (), source: str | None = None
) -> ParseResult:
    """Parse and validate a PDFile.

    ``supplied`` names the options (``client.options`` field names) the command line gives, so a file
    may leave out what a flag provides (``pdcat push x.pdfile --version 2``).
    ``source`` (a file name) prefixes the error message.
    """
    unknown = set(supplied) - OPTION_NAMES
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
    return Provider(name, format_entries([("provider", name), *state.provider_pairs]))


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
