"""Reading a PDFile's text: templates, and the small values keywords take (booleans, numbers, sizes,
choices, catalog servers). Pure functions; a bad value raises :class:`_LineError`, to which the parser
attaches the line number. The format is in ``docs/pdfile.md``.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from client.pdfile.model import Diagnostic, PDFileError
from core.errors import InvalidInput

__all__ = ["render_template"]


_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
_TEMPLATE_NAME = re.compile(r"\s*(?:\.[Ee]nv\.)?([A-Za-z_][A-Za-z0-9_]*)\s*")
# Everything another tool might treat as a line break, plus other control characters.
_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


class _LineError(Exception):
    """A problem with the current line; the caller attaches the line number."""


def _render(fragment: str, env: Mapping[str, str]) -> tuple[str, bool]:
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
        return value

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
