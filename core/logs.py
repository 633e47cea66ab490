"""Server logs: JSON lines for machines, one short line per event for a person at a terminal.

``PDCAT_LOG_FORMAT`` picks the format: ``json``, ``text``, or (unset: ``auto``) text when the log
goes to a terminal and JSON otherwise, so a person running ``pdcat serve`` by hand reads lines, while
journald, a launchd log file, Lambda and the Functions host get lines a log shipper can parse.

Every request is one access line (:func:`log_access`): time, client address, who, method, path,
status, bytes, duration, and for a refusal its error code and message. Its query string shows only
the parameters the route declares (``?tag=lts``): any other value is ``***``, so a signature, a
token, an API key or a password put in a URL never reaches a log (:func:`shown_query`).

Nothing secret is ever passed to a logger (tokens, keys, signed URL queries, connection strings);
as a second line of defence, fields whose name looks secret are masked here, in both formats.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "formatter_for",
    "log_access",
    "shown_query",
]

LOG_FORMATS = ("auto", "json", "text")
ACCESS_MESSAGE = "request"
"""The message of every access line (machines select them by it)."""

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_SECRET_WORDS = ("password", "secret", "token", "signature", "authorization", "api_key", "key_material")
_MAX_PATH = 512


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own fields (``extra=``), secret-looking ones masked."""
    return {
        name: "***" if any(word in name.lower() for word in _SECRET_WORDS) else value
        for name, value in record.__dict__.items()
        if name not in _STANDARD and not name.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, with its UTC offset), level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso_time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """One short line per event, for a person: an access line per request, ``message key=value...``
    for anything else. Control and other unprintable characters are escaped, so a crafted path cannot
    forge or hide a line."""

    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record, "%Y-%m-%d %H:%M:%S")
        fields = _fields(record)
        message = record.getMessage()
        if message == ACCESS_MESSAGE and "status" in fields:
            line = f"{when} {_access_text(fields)}"
        else:
            level = "" if record.levelno == logging.INFO else f"{record.levelname} "
            pairs = "".join(f" {_clean(name)}={_value(value)}" for name, value in fields.items())
            line = f"{when} {level}{_clean(message)}{pairs}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _access_text(fields: Mapping[str, Any]) -> str:
    """``127.0.0.1 alice "GET /api/v1/catalog?tag=lts" 200 1234B 2.1ms`` (+ the refusal, or the
    request id of a server error, which is what its answer names)."""
    target = str(fields.get("path", ""))
    if fields.get("query"):
        target += "?" + str(fields["query"])
    line = (
        f"{_clean(fields.get('client') or '-')} {_clean(fields.get('subject') or '-')} "
        f'"{_clean(fields.get("method", ""))} {_clean(target).replace(chr(34), "%22")}" '
        f"{fields.get('status')} {fields.get('bytes', '-')}B {fields.get('ms', '-')}ms"
    )
    if fields.get("error"):
        line += f" {_clean(fields['error'])}: {_clean(fields.get('detail', ''))}"
    status = fields.get("status")
    if isinstance(status, int) and status >= 500 and fields.get("request_id"):
        line += f" (request id {_clean(fields['request_id'])})"
    return line


def _clean(value: object) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def _value(value: object) -> str:
    text = _clean(value)
    return json.dumps(text) if (" " in text or '"' in text or "=" in text or not text) else text


def _iso_time(record: logging.LogRecord) -> str:
    local = time.localtime(record.created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{int(record.msecs):03d}"
    offset = time.strftime("%z", local)
    return f"{stamp}{offset[:3]}:{offset[3:]}" if len(offset) == 5 else stamp


_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._:+/-]{0,256}")
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")


def shown_query(query: Mapping[str, str], declared: Collection[str]) -> str:
    """The query as logged: a declared parameter's value when it reads as one (letters, digits and
    ``._:+/-``), every other value ``***``; an undeclared parameter's name only when it is a short name
    that has a value (``api_key=***``).

    A client that double-encodes a URL smuggles ``&signature=...`` into a declared value
    (``method=GET%26signature%3D...``), and one that pastes a token or a key as the whole query
    (``?eyJ...``) makes the secret a parameter's name: both are ``***``.
    """
    shown = []
    for name, value in query.items():
        if name in declared:
            shown_name, plain = quote(name, safe=""), bool(_PLAIN_VALUE.fullmatch(value))
        else:
            shown_name, plain = (quote(name, safe="") if value and _PLAIN_NAME.fullmatch(name) else "***"), False
        shown.append(f"{shown_name}={quote(value, safe='') if plain else '***'}")
    return "&".join(shown)


def log_access(
    logger: logging.Logger,
    *,
    method: str,
    path: str,
    query: str,
    status: int,
    size: int,
    started: float,
    client: str | None,
    subject: str | None = None,
    request_id: str | None = None,
    error: tuple[str, str] | None = None,
    level: int = logging.INFO,
) -> None:
    """The access line of one request. ``query`` comes from :func:`shown_query`; ``size`` is the body
    sent, or for an upload the body received; ``started`` is ``time.perf_counter()`` at its start."""
    fields: dict[str, Any] = {
        "request_id": request_id,
        "client": client,
        "subject": subject,
        "method": method,
        "path": path if len(path) <= _MAX_PATH else path[:_MAX_PATH] + "...",
        "query": query or None,
        "status": status,
        "bytes": size,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if error is not None:
        fields["error"], fields["detail"] = error[0], error[1][:300]
    logger.log(level, ACCESS_MESSAGE, extra={k: v for k, v in fields.items() if v is not None})


def formatter_for(log_format: str, stream: Any) -> logging.Formatter:
    """``auto``: text for a terminal, JSON for anything else (a file, a pipe, a platform's collector)."""
    if log_format == "auto":
        try:
            log_format = "text" if stream is not None and stream.isatty() else "json"
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            log_format = "json"
    return TextFormatter() if log_format == "text" else JsonFormatter()


def configure_logging(level: str = "INFO", stream: Any = None, log_format: str = "auto") -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter_for(log_format, stream))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
