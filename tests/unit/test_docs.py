"""The docs state numbers the code defines; this keeps the two from drifting apart.

Each fact is read from the code, and every sentence listed for it must still say the same number.
When a number changes, this test names every sentence to update. It also keeps the docs inside the
repository: no file may cite a design document that is not in it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from core import limits, pack, wire
from core.local import server as local_server
from core.local import tls as local_tls

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

# (what, the code's value, [(file, a pattern whose group 1 is the number as the doc writes it, unit)])
FACTS: list[tuple[str, int, list[tuple[str, str, int]]]] = [
    (
        "default chunk size",
        pack.DEFAULT_CHUNK_SIZE,
        [
            ("README.md", r"cut on a fixed grid \((\d+) MiB by default", MIB),
            ("bench/README.md", r"Chunks are (\d+) MiB", MIB),
            ("docs/architecture.md", r"each (\d+) MiB cell is read into one of a fixed pool", MIB),
            ("docs/adr-001-chunk-size.md", r"# ADR 001: (\d+) MiB chunks by default", MIB),
        ],
    ),
    (
        "API body budget",
        limits.API_BODY_BUDGET_BYTES,
        [
            ("README.md", r"Every API body stays under (\d+) MiB", MIB),
            ("docs/adr-002-storage-protocol-v2.md", r"far under (\d+) MiB", MIB),
        ],
    ),
    (
        "digests per chunks or pull-urls page",
        wire.CHUNK_PAGE,
        [
            ("README.md", r"a batch of up to (\d+) digests at a time", 1),
            ("docs/adr-002-storage-protocol-v2.md", r"/chunks` with `\{\"digests\": \[≤ (\d+)\]\}`", 1),
            ("docs/adr-002-storage-protocol-v2.md", r"/pull/urls` with `\{\"digests\": \[≤ (\d+)\]\}`", 1),
            ("docs/architecture.md", r"A batch \(up to (\d+) digests\) at a time", 1),
            ("docs/architecture.md", r"a page of (\d+) digests at a time; chunks", 1),
        ],
    ),
    (
        "chunks per verify request",
        wire.VERIFY_PAGE,
        [
            ("README.md", r"(\d+) at\s+a time as they land", 1),
            ("docs/adr-002-storage-protocol-v2.md", r"/verify` with `\{\"digests\": \[≤ (\d+)\]\}`", 1),
            ("docs/architecture.md", r"As they land, a page of up to (\d+) at a time", 1),
        ],
    ),
    (
        "Lambda payload",
        limits.LAMBDA_PAYLOAD_BYTES,
        [("README.md", r"Lambda's (\d+) MB payloads", MIB)],
    ),
    (
        "API Gateway body",
        limits.APIGW_BODY_BYTES,
        [("README.md", r"API Gateway's (\d+) MB body", MIB)],
    ),
    (
        "Functions request",
        limits.FUNCTIONS_REQUEST_BYTES,
        [("README.md", r"the Functions host its (\d+) MB", MIB)],
    ),
    (
        "TLS handshake deadline",
        int(local_server.HANDSHAKE_TIMEOUT_S),
        [("docs/serving.md", r"its own deadline \((\d+) s from the accept", 1)],
    ),
    ("largest TLS write", local_server.TLS_SEND_BYTES, [("docs/serving.md", r"writes of at most (\d+) KiB", 1024)]),
    (
        "self-signed certificate validity",
        local_tls.SELF_SIGNED_DAYS,
        [("docs/serving.md", r"It is valid (\d+) days", 1)],
    ),
    (
        "self-signed certificate renewal",
        local_tls.RENEW_DAYS,
        [("docs/serving.md", r"or it has fewer than (\d+) days left", 1)],
    ),
]


@pytest.mark.parametrize(("what", "value", "places"), FACTS, ids=[fact[0] for fact in FACTS])
def test_the_docs_state_the_codes_numbers(what: str, value: int, places: list[tuple[str, str, int]]) -> None:
    for path, pattern, unit in places:
        text = re.sub(r"\s+", " ", (REPO / path).read_text())
        found = re.findall(re.sub(r"\\s\+", " ", pattern), text)
        assert found, f"{path} no longer says the {what} where this test looks ({pattern!r}): update FACTS"
        for number in found:
            assert int(number) * unit == value, f"{path} says the {what} is {number}; the code says {value // unit}"


def test_no_file_cites_a_design_document_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files", "*.py", "*.md"], cwd=REPO, capture_output=True, text=True, check=True)
    marker = re.compile("DESIGN" + r" ?§|DESIGN\.md")  # split, so this file does not cite itself
    cited = [name for name in files.stdout.split() if marker.search((REPO / name).read_text(errors="replace"))]
    assert cited == [], f"these cite a design document that is not in the repository: {cited}"
