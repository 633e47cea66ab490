"""The CLI's log handler never shows the secret part of a presigned URL (client/cli/logs.py)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from client.cli import mask_signatures
from client.cli.logs import configure_logging

S3 = (
    "https://vms.s3.eu-west-1.amazonaws.com/staging/abc/chunks/0f0f?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLESECRETID%2F20260101%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
    "&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLETOKEN%2B%2F%3D"
    "&X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
)
AZURE = (
    "https://acct.blob.core.windows.net/vms/catalogs/x/chunks/0f0f?sv=2024-11-04&se=2026-01-01T00%3A15%3A00Z"
    "&sr=b&sp=r&sig=AZURESECRET%2Babc%2Fdef%3D"
)
EMBEDDED = "http://127.0.0.1:8080/blobs/catalogs/x/chunks/0f0f?method=GET&expires=1767225600&signature=" + "e" * 64
SECRETS = [
    "AKIAEXAMPLESECRETID",
    "IQoJb3JpZ2luX2VjEXAMPLETOKEN",
    "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
    "AZURESECRET",
    "e" * 64,
]


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)


@pytest.mark.parametrize("url", [S3, AZURE, EMBEDDED])
def test_each_kind_of_presigned_url_keeps_its_shape_but_loses_its_signature(url: str) -> None:
    masked = mask_signatures(f'HTTP Request: GET {url} "HTTP/1.1 200 OK"')
    _clean(masked)
    assert masked.startswith("HTTP Request: GET " + url.split("?")[0] + "?")
    assert masked.endswith('"HTTP/1.1 200 OK"')
    assert "***" in masked


def test_the_parameters_that_are_not_secret_stay() -> None:
    masked = mask_signatures(S3 + " " + AZURE + " " + EMBEDDED)
    for kept in (
        "X-Amz-Date=20260101T000000Z",
        "X-Amz-Expires=900",
        "sp=r",
        "sr=b",
        "method=GET",
        "expires=1767225600",
    ):
        assert kept in masked
    assert masked.count("***") == 5


def test_a_url_quoted_inside_another_one_is_masked_too() -> None:
    quoted = "https://proxy/?next=http%3A%2F%2Fh%2Fb%3Fmethod%3DGET%26signature%3D" + "e" * 64 + "%26x%3D1"
    masked = mask_signatures(quoted)
    _clean(masked)
    assert masked.endswith("%26signature%3D***%26x%3D1")


def test_words_that_merely_contain_the_names_are_left_alone() -> None:
    text = "signature verified for chunk abc; mysig=1 &signatures=2"
    assert mask_signatures(text) == text


@pytest.fixture
def cli_log() -> Iterator[io.StringIO]:
    """The handler ``pdcat --debug`` installs, writing to a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("httpx").level)
    stream = io.StringIO()
    configure_logging(True)
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("httpx").setLevel(saved[2])


def test_the_cli_handler_masks_messages_args_and_exceptions(cli_log: io.StringIO) -> None:
    logging.getLogger("httpx").info('HTTP Request: %s %s "%s %d %s"', "GET", S3, "HTTP/1.1", 200, "OK")
    logging.getLogger("httpcore.http11").debug("send_request_headers.started request=%r", AZURE)
    logging.getLogger("pdcat.transfer").warning(f"refetching {EMBEDDED}")
    try:
        raise RuntimeError(f"failed {S3}")
    except RuntimeError:
        logging.getLogger("pdcat").exception("boom %s", EMBEDDED)
    out = cli_log.getvalue()
    _clean(out)
    assert out.count("***") >= 5 and "amazonaws.com/staging/abc/chunks" in out and "/blobs/catalogs/x" in out


def test_warnings_without_debug_are_masked_too() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("httpx").level)
    stream = io.StringIO()
    try:
        configure_logging(False)
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("pdcat.transfer").warning("retrying %s", AZURE)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("httpx").setLevel(saved[2])
    assert stream.getvalue().startswith("pdcat: warning: retrying https://acct.blob")
    _clean(stream.getvalue())
