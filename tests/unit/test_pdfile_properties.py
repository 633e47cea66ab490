"""PDFile parser properties (hypothesis): it only ever fails with PDFileError, its line numbers are
those of the file as written whatever the line endings, BOM or templates, a file built from a spec
reads back as that spec, secrets never leak, and rendering text without templates changes nothing.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.byo.connection import parse_connection_string
from client.pdfile import KEYWORDS, ParseResult, PDFileError, parse, render_template

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENV = {"HOST": "catalog.example.com", "VERSION": "2.0", "ARCH": "arm64", "PW": "env-pw-secret", "EMPTY": ""}
# Words that appear in values of the grammar, including a few that are wrong on purpose.
VALUE_WORDS = [
    "",
    "true",
    "false",
    "maybe",
    "1",
    "0",
    "-3",
    "64GiB",
    "arm64",
    "amd64",
    "sparc",
    "pvm",
    "macvm",
    "push",
    "pull",
    "list",
    "import-vm",
    "deploy",
    "USERNAME root",
    "PASSWORD p",
    "API_KEY k",
    "CPU 2",
    "MEMORY x",
    "NAME aws-s3",
    "BUCKET b",
    "provider=aws-s3;bucket=b;secret_key=s",
    "a;b",
    "catalog.example.com",
    "http://127.0.0.1:8080",
    "ftp://x",
    "host/path",
    "a,b",
    "a,,b",
    "best_speed",
    "latest",
    "{{ HOST }}",
    "{{ .Env.VERSION }}",
    "{{ UNSET }}",
    "{{ .Nope }}",
    "{{ open",
    "{{ EMPTY }}",
    "/Users/x/My VM.pvm",
]
keyword_case = st.sampled_from(KEYWORDS).flatmap(
    lambda k: st.sampled_from([k, k.lower(), k.capitalize(), k.swapcase()])
)
grammar_line = st.one_of(
    st.tuples(keyword_case, st.sampled_from(VALUE_WORDS)).map(lambda kv: f"{kv[0]} {kv[1]}".rstrip()),
    st.sampled_from(["", "   ", "# comment", "  # {{ UNSET }} in a comment", "\t"]),
    st.text(alphabet=string.ascii_letters + string.digits + " _{}#=;:/.-\t", max_size=30),
)
newline = st.sampled_from(["\n", "\r\n"])


def _outcome(text: str, env: Mapping[str, str]) -> ParseResult | PDFileError:
    try:
        return parse(text, env)
    except PDFileError as exc:
        return exc


def _check_lines(outcome: ParseResult | PDFileError, lines: list[str]) -> None:
    """Every reported line exists and holds something (a keyword line, not a blank or a comment)."""
    diagnostics = outcome.problems if isinstance(outcome, PDFileError) else outcome.warnings
    for d in diagnostics:
        if d.line is None:
            continue
        assert 1 <= d.line <= len(lines), d
        content = lines[d.line - 1].lstrip("\ufeff").strip()
        assert content and not content.startswith("#"), d


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_raises_pdfile_error(text: str) -> None:
    outcome = _outcome(text, ENV)
    _check_lines(outcome, text.split("\n"))
    if isinstance(outcome, PDFileError):
        assert outcome.message and "\n" not in outcome.message


@SETTINGS
@given(st.lists(grammar_line, max_size=25), newline, st.booleans())
def test_grammar_lines_only_ever_raise_pdfile_error_with_real_line_numbers(
    lines: list[str], end: str, bom: bool
) -> None:
    text = ("\ufeff" if bom else "") + end.join(lines)
    outcome = _outcome(text, ENV)
    _check_lines(outcome, text.split("\n"))


BASE = ["FROM {{ HOST }}", "CATALOG_ID ubuntu", "VERSION {{ .Env.VERSION }}", "ARCHITECTURE {{ARCH}}"]
BROKEN = [
    ("FRMO x", "unknown keyword"),
    ("ARCHITECTUR arm64", "did you mean ARCHITECTURE?"),
    ("START_AFTER_PULL perhaps", "true or false"),
    ("MACHINE_NAME {{ .Env.NOT_SET }}", "NOT_SET is not set"),
    ("DESTINATION {{ .Values.x }}", "unsupported template"),
    ("TAG a,,b", "empty item"),
    ("CLONE_DESTINATION {{ BAD_NEWLINE }}", "line break"),
    ("{{ HOST }} value", "keyword cannot come from a template"),
    ("AUTHENTICATE PASSWRD {{ PW }}", "AUTHENTICATE takes"),
]
padding = st.lists(st.sampled_from(["", "# note", "   ", "\t# indented {{ NOT_SET }}"]), max_size=4)


@SETTINGS
@given(
    st.permutations(BASE),
    st.sampled_from(BROKEN),
    st.integers(min_value=0, max_value=len(BASE)),
    padding,
    padding,
    newline,
    st.booleans(),
)
def test_the_error_names_the_broken_line(
    base: list[str],
    broken: tuple[str, str],
    where: int,
    before: list[str],
    after: list[str],
    end: str,
    bom: bool,
) -> None:
    lines = [*before, *base[:where], broken[0], *base[where:], *after]
    text = ("\ufeff" if bom else "") + end.join(lines) + end
    env = {**ENV, "BAD_NEWLINE": "a\nTO evil.example.com"}
    outcome = _outcome(text, env)
    assert isinstance(outcome, PDFileError)
    assert outcome.line == len(before) + where + 1, outcome.message
    assert broken[1] in outcome.problems[0].message
    assert "evil" not in outcome.message


secret_text = st.text(alphabet=string.ascii_letters + string.digits + "!$%&*+-./:<>?@^_~", min_size=6, max_size=24)


@SETTINGS
@given(
    secret_text.map(lambda s: "Zq9-" + s),
    st.booleans(),
    st.sampled_from(["PASSWORD", "API_KEY"]),
    st.sampled_from([None, *[b for b, _ in BROKEN]]),
)
def test_secrets_never_leak(secret: str, templated: bool, kind: str, broken: str | None) -> None:
    value = "{{ .Env.SECRET }}" if templated else secret
    lines = ["FROM catalog.example.com", "CATALOG_ID ubuntu", f"AUTHENTICATE {kind} {value}"]
    if kind == "PASSWORD":
        lines.insert(2, "AUTHENTICATE USERNAME u")
    lines.append(f"PROVIDER provider=aws-s3;bucket=b;secret_key={value}")
    if broken:
        lines.append(broken)
    outcome = _outcome("\n".join(lines), {**ENV, "SECRET": secret})
    if isinstance(outcome, PDFileError):
        shown = outcome.message + repr(outcome) + " ".join(str(p) for p in outcome.problems)
    else:
        shown = repr(outcome) + str(outcome.pdfile.to_dict()) + " ".join(str(w) for w in outcome.warnings)
        creds = outcome.pdfile.credentials
        assert creds is not None and secret in (creds.password, creds.api_key)
        assert len(outcome.warnings) == (0 if templated else 2)
    assert secret not in shown


def _word(first: str, rest: str, max_size: int) -> st.SearchStrategy[str]:
    return st.builds(lambda a, b: a + b, st.sampled_from(first), st.text(alphabet=rest, max_size=max_size))


LOWER = string.ascii_lowercase + string.digits
catalog_ids = _word(LOWER, LOWER + "._-", 20)
versions = _word(string.ascii_letters + string.digits, string.ascii_letters + string.digits + "._+-", 15).filter(
    lambda v: v.lower() != "latest"
)
tags = st.lists(_word(LOWER, LOWER + "._:+-", 10), min_size=1, max_size=3)
free_text = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="{}\x85"),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)


@SETTINGS
@given(catalog_ids, versions, st.lists(tags, max_size=3), free_text, free_text, st.booleans(), newline)
def test_a_file_written_from_a_spec_reads_back_as_that_spec(
    catalog_id: str,
    version: str,
    tag_lines: list[list[str]],
    description: str,
    path: str,
    via_env: bool,
    end: str,
) -> None:
    env = {"V": version, "D": description}
    lines = [
        "TO catalog.example.com",
        f"catalog_id {catalog_id.upper()}",
        "VERSION {{ V }}" if via_env else f"VERSION {version}",
        "DESCRIPTION {{ .Env.D }}" if via_env else f"DESCRIPTION {description}",
        f"LOCAL_PATH {path}",
        *(f"TAG {', '.join(t)}" for t in tag_lines),
    ]
    pdfile = parse(end.join(lines), env).pdfile
    assert (pdfile.operation, pdfile.catalog_id, pdfile.version) == ("push", catalog_id, version)
    assert (pdfile.description, pdfile.local_path) == (description, path)
    assert pdfile.tags == tuple(dict.fromkeys(t for line in tag_lines for t in line))


@SETTINGS
@given(st.text(max_size=300).filter(lambda t: "{{" not in t))
def test_rendering_text_without_templates_changes_nothing(text: str) -> None:
    assert render_template(text, {}) == text


TEMPLATED_LINES = ["A {{ X }}", "B {{ .Env.Y }} c", "# {{ UNSET }}", "plain", "", "{{X}}{{Y}}"]


@SETTINGS
@given(
    st.lists(st.sampled_from(TEMPLATED_LINES), max_size=8),
    st.text(alphabet=string.printable.replace("\n", "").replace("\r", "").replace("\x0b", "").replace("\x0c", "")),
    st.text(alphabet=string.ascii_letters + " {}", max_size=10),
)
def test_rendering_is_idempotent_and_keeps_the_line_count(lines: list[str], x: str, y: str) -> None:
    text = "\n".join(lines)
    once = render_template(text, {"X": x, "Y": y})
    assert len(once.split("\n")) == len(text.split("\n"))
    if "{{" not in x + y:
        assert render_template(once, {"X": x, "Y": y}) == once


@SETTINGS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30))
def test_any_provider_value_reaches_the_connection_parser_as_one_value(password: str) -> None:
    """Whatever a templated value holds (';', quotes, backslashes, '='), it stays one value: no key is added."""
    head = "TO h.example.com\nCATALOG_ID x\nVERSION 1\nLOCAL_PATH /p\n"
    forms = [
        "PROVIDER NAME artifactory\nPROVIDER URL https://a.example.com\nPROVIDER REPO r\nPROVIDER USERNAME ci\n"
        "PROVIDER PASSWORD {{ PW }}\n",
        'PROVIDER provider=artifactory;url=https://a.example.com;repo=r;username=ci;password="{{ PW }}"\n',
    ]
    for form in forms:
        outcome = _outcome(head + form, {"PW": password})
        if isinstance(outcome, PDFileError):  # only an all-blank value is refused
            assert not password.strip() and "PROVIDER PASSWORD needs a value" in outcome.message
            continue
        assert outcome.pdfile.provider is not None
        connection = parse_connection_string(outcome.pdfile.provider.connection_string)
        assert connection.secrets() == (password.strip() if form.startswith("PROVIDER NAME") else password,)
