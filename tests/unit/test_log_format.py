"""The server's log formats (core.logs) and their setting: one line per event whatever a client put in
its path, secret-looking fields masked in both formats, and a bad setting refused by name."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest

from core.config import SettingsError, load_settings
from core.logs import JsonFormatter, TextFormatter, configure_logging, log_access, shown_query


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield stream, logging.getLogger("pdcat.test")
    root.handlers[:], root.level = saved


def _access(logger: logging.Logger, path: str, **extra: object) -> None:
    log_access(
        logger,
        method="GET",
        path=path,
        query=shown_query({"tag": "a", "sig": "s3cr3t"}, {"tag"}),
        status=404,
        size=10,
        started=time.perf_counter(),
        client="10.0.0.7",
        subject="bob",
        error=("not_found", "no such route: " + path),
        **extra,  # type: ignore[arg-type]
    )


# A path that tries to end its line and forge the next one, then erase it on a terminal.
FORGED = '/api/v1/x\n2026-01-01 00:00:00 127.0.0.1 admin "DELETE /api/v1/catalog/all" 204\x1b[2K'
ESCAPED = FORGED.replace("\n", "\\n").replace("\x1b", "\\x1b")


def test_a_text_line_stays_one_line_whatever_the_path_holds(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, logger = captured
    configure_logging("INFO", stream, "text")
    _access(logger, FORGED)
    (line,) = stream.getvalue().splitlines()
    target = ESCAPED.replace('"', "%22") + "?tag=a&sig=***"
    assert f'10.0.0.7 bob "GET {target}" 404 10B ' in line
    assert line.endswith(" not_found: no such route: " + ESCAPED)
    assert "\x1b" not in line and "s3cr3t" not in line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secret_looking_fields_are_masked_in_both_formats(
    captured: tuple[io.StringIO, logging.Logger], log_format: str
) -> None:
    stream, logger = captured
    configure_logging("INFO", stream, log_format)
    logger.info("login", extra={"user_password": "hunter2-hunter2", "api_key": "pk_live", "who": "alice"})
    text = stream.getvalue()
    assert "hunter2" not in text and "pk_live" not in text and "alice" in text


def test_auto_is_json_for_a_stream_that_is_not_a_terminal(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, _ = captured
    configure_logging("INFO", stream)
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    configure_logging("INFO", stream, "text")
    assert isinstance(logging.getLogger().handlers[0].formatter, TextFormatter)


def test_the_json_access_line_has_every_field(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, logger = captured
    configure_logging("INFO", stream, "json")
    _access(logger, "/api/v1/nope", request_id="r-1")
    doc = json.loads(stream.getvalue())
    assert {k: doc[k] for k in ("message", "client", "subject", "method", "path", "query", "status", "bytes")} == {
        "message": "request", "client": "10.0.0.7", "subject": "bob", "method": "GET", "path": "/api/v1/nope",
        "query": "tag=a&sig=***", "status": 404, "bytes": 10,
    }  # fmt: skip
    assert doc["error"] == "not_found" and doc["request_id"] == "r-1"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PDCAT_LOG_FORMAT": "xml"}, "PDCAT_LOG_FORMAT must be one of auto, json, text, not 'xml'"),
        ({"PDCAT_LOG_LEVEL": "verbose"}, "PDCAT_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not 'verbose'"),
    ],
)
def test_a_bad_log_setting_is_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(env)
    assert str(refused.value) == named


def test_log_settings_are_read_case_insensitively() -> None:
    settings = load_settings({"PDCAT_LOG_FORMAT": "TEXT", "PDCAT_LOG_LEVEL": "debug"})
    assert (settings.log_format, settings.log_level) == ("text", "DEBUG")
    assert load_settings({}).log_format == "auto"


def test_a_secret_where_a_name_or_a_declared_value_goes_is_masked() -> None:
    declared = {"method", "expires", "tag", "cursor"}
    # a double-encoded URL smuggles the signature into a declared value
    assert shown_query({"method": "GET&signature=5ec7e7", "expires": "1700000000"}, declared) == (
        "method=***&expires=1700000000"
    )
    # a token or key pasted as the whole query is a name with no value; a long name is no parameter's
    assert shown_query({"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln": ""}, declared) == "***=***"
    assert shown_query({"pdcat_0123456789abcdef_" + "s" * 43: "x"}, declared) == "***=***"
    # what an operator needs stays: declared words and numbers, empty ones, undeclared short names
    assert shown_query({"tag": "lts", "cursor": "", "api_key": "k"}, declared) == "tag=lts&cursor=&api_key=***"
