"""PDFile parser: the corpus in tests/data/pdfiles, then the behaviour the corpus cannot show.

Adding a case needs no code: drop ``name.pdfile`` and ``name.json`` into ``valid/`` or ``invalid/``.

valid sidecar: ``env`` (templates), ``supplied`` (option names given by flags), ``pdfile`` (exactly
``PDFile.to_dict()``), ``options`` (exactly what ``to_options`` sets: the command and every option that
differs from its default, credentials as their ``to_dict()``, the connection string redacted),
``warnings`` (``[line, phrase]`` each, all of them), ``secrets`` (kept in the PDFile, shown nowhere).
invalid sidecar: ``env``, ``line`` (of the first problem; null for the whole file), ``contains``
(phrases of the message), ``secrets`` (in no message), ``problems`` (how many, when it matters).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from client.byo.connection import parse_connection_string, redact
from client.options import COMMANDS, ListOptions, Options, PullOptions, PushOptions, given
from client.pdfile import (
    KEYWORDS,
    Authentication,
    Diagnostic,
    PDFile,
    PDFileError,
    Provider,
    load,
    parse,
    render_template,
    to_options,
)
from core.errors import InvalidInput, PdcatError

CORPUS = Path(__file__).resolve().parent.parent / "data" / "pdfiles"
VALID = sorted((CORPUS / "valid").glob("*.pdfile"))
INVALID = sorted((CORPUS / "invalid").glob("*.pdfile"))


def _sidecar(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    return data


def _shown(options: Options) -> dict[str, object]:
    """What ``options`` sets, JSON-ready and safe to print, as the corpus sidecars spell it."""
    values = given(type(options), {f.name: getattr(options, f.name) for f in dataclasses.fields(options)})
    out: dict[str, object] = {"command": options.command}
    for name, value in values.items():
        if isinstance(value, Authentication):
            value = value.to_dict()
        elif name == "storage":
            value = redact(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def _kept_secrets(pdfile: PDFile) -> str:
    """Where a PDFile keeps its secrets, so a test can show they were read, not lost."""
    creds = pdfile.credentials or Authentication()
    return " ".join(
        filter(None, [creds.password, creds.api_key, pdfile.provider.connection_string if pdfile.provider else None])
    )


def test_corpus_is_big_enough_and_every_case_has_its_sidecar() -> None:
    assert len(VALID) >= 15 and len(INVALID) >= 25
    for folder in ("valid", "invalid"):
        pdfiles = {p.stem for p in (CORPUS / folder).glob("*.pdfile")}
        sidecars = {p.stem for p in (CORPUS / folder).glob("*.json")}
        assert pdfiles == sidecars, f"{folder}: unpaired {sorted(pdfiles ^ sidecars)}"


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_corpus(path: Path) -> None:
    expected = _sidecar(path)
    result = load(path, expected.get("env", {}), supplied=expected.get("supplied", ()))
    assert result.pdfile.to_dict() == expected["pdfile"]
    options = to_options(result.pdfile)
    assert _shown(options) == expected["options"]
    got = [(w.line, w.message) for w in result.warnings]
    assert len(got) == len(expected["warnings"]), got
    for (line, message), (want_line, phrase) in zip(got, expected["warnings"], strict=True):
        assert line == want_line and phrase in message, (line, message)
    shown = " ".join(
        [repr(result), str(result.warnings), repr(options), json.dumps(result.pdfile.to_dict()), str(options)]
    )
    for secret in expected.get("secrets", []):
        assert secret not in shown
        assert secret in _kept_secrets(result.pdfile)
    if result.pdfile.provider is not None:  # what the lead hands on is what client.byo reads
        connection = parse_connection_string(result.pdfile.provider.connection_string)
        assert connection.provider == result.pdfile.provider.name
        assert str(connection) == result.pdfile.provider.redacted()


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_corpus(path: Path) -> None:
    expected = _sidecar(path)
    with pytest.raises(PDFileError) as caught:
        load(path, expected.get("env", {}))
    err = caught.value
    assert isinstance(err, InvalidInput) and isinstance(err, PdcatError)
    assert err.line == expected["line"], str(err)
    assert err.message.startswith(f"{path.name}: ")
    assert "\n" not in err.message
    for phrase in expected["contains"]:
        assert phrase in err.message
    if "problems" in expected:
        assert len(err.problems) == expected["problems"], err.message
    shown = " ".join([err.message, repr(err), *(str(p) for p in err.problems)])
    for secret in expected.get("secrets", []):
        assert secret not in shown


# ---- keywords, operations, servers --------------------------------------------------------------
def test_every_keyword_of_the_issue_is_known() -> None:
    wanted = " ".join(
        (
            "FROM TO INSECURE AUTHENTICATE CATALOG_ID VERSION ARCHITECTURE DESCRIPTION LOCAL_PATH DESTINATION",
            "MACHINE_NAME OWNER ROLE CLAIM TAG PROVIDER START_AFTER_PULL CLONE CLONE_DESTINATION EXECUTE",
            "MINIMUM_REQUIREMENT COMPRESS_PACK COMPRESS_PACK_LEVEL VM_TYPE VM_SIZE VM_REMOTE_PATH IS_COMPRESSED",
            "FORCE RUN DO",
        )
    ).split()
    assert set(wanted) == set(KEYWORDS)


def test_from_implies_pull_and_to_implies_push() -> None:
    assert parse("FROM h.example.com\nCATALOG_ID x", {}).pdfile.operation == "pull"
    push = parse("TO h.example.com\nCATALOG_ID x\nVERSION 1\nLOCAL_PATH /p", {}).pdfile
    assert push.operation == "push"
    assert parse("RUN list\nTO h.example.com", {}).pdfile.operation == "list"


@pytest.mark.parametrize(
    ("written", "insecure", "url"),
    [
        ("catalog.example.com", "", "https://catalog.example.com"),
        ("catalog.example.com:8443", "INSECURE true", "http://catalog.example.com:8443"),
        ("catalog.example.com", "INSECURE false", "https://catalog.example.com"),
        ("localhost:8080", "", "http://localhost:8080"),
        ("127.0.0.1:8080", "", "http://127.0.0.1:8080"),
        ("[::1]:8080", "", "http://[::1]:8080"),
        ("HTTPS://catalog.example.com/", "INSECURE", "https://catalog.example.com"),
        ("http://10.1.2.3:9000/a/b/", "", "http://10.1.2.3:9000/a/b"),
    ],
)
def test_server_forms(written: str, insecure: str, url: str) -> None:
    # INSECURE may come after FROM: the scheme is decided once the whole file is read.
    pdfile = parse(f"FROM {written}\nCATALOG_ID x\n{insecure}\n", {}).pdfile
    assert pdfile.server == url


def test_insecure_warns_only_off_loopback() -> None:
    assert parse("FROM 127.0.0.1:8080\nINSECURE\nCATALOG_ID x", {}).warnings == ()
    (warning,) = parse("FROM catalog.example.com\nINSECURE\nCATALOG_ID x", {}).warnings
    assert warning.line == 2 and "not protected" in warning.message


def test_keywords_are_case_insensitive_and_values_keep_their_case() -> None:
    result = parse("fRoM h.example.com\ncatalog_id x\nmachine_NAME Mixed Case Name\nowner BoB\n", {})
    assert result.pdfile.machine_name == "Mixed Case Name" and result.pdfile.owner == "BoB"


def test_lines_remember_where_each_keyword_was() -> None:
    text = "# c\nFROM h.example.com\n\nCATALOG_ID x\nAUTHENTICATE API_KEY {{ K }}\nTAG a\nTAG b\n"
    pdfile = parse(text, {"K": "k"}).pdfile
    assert pdfile.line_of("from") == 2
    assert pdfile.line_of("CATALOG_ID") == 4
    assert pdfile.line_of("AUTHENTICATE API_KEY") == 5
    assert pdfile.line_of("TAG") == 6
    assert pdfile.line_of("VERSION") is None


def test_pdfile_is_a_hashable_value() -> None:
    text = "FROM h.example.com\nCATALOG_ID x\nAUTHENTICATE API_KEY {{ K }}\nMINIMUM_REQUIREMENT CPU 2\n"
    a = parse(text, {"K": "k1"}).pdfile
    b = parse("\n" + text, {"K": "k1"}).pdfile  # other line numbers, same content
    assert a == b and hash(a) == hash(b)
    assert a != parse(text, {"K": "k2"}).pdfile


def test_sizes_and_units() -> None:
    base = (
        "RUN import-vm\nTO h.example.com\nCATALOG_ID x\nVERSION 1\nARCHITECTURE arm64\nPROVIDER provider=s3;bucket=b\n"
        "VM_TYPE pvm\nVM_REMOTE_PATH /r\nVM_SIZE {}\n"
    )
    for written, size in (("512", 512), ("1KB", 1000), ("1 KiB", 1024), ("64GiB", 64 * 2**30), ("2tb", 2 * 10**12)):
        assert parse(base.format(written), {}).pdfile.vm_size == size
    for bad in ("-1", "1.5GB", "1 PB", "١٢", "9" * 40):
        with pytest.raises(PDFileError, match="VM_SIZE takes a size in bytes"):
            parse(base.format(bad), {})


# ---- secrets ------------------------------------------------------------------------------------
def test_secrets_never_show_in_reprs_errors_or_warnings() -> None:
    env = {"PW": "pw-f00-secret", "KEY": "key-b4r-secret"}
    text = (
        "TO h.example.com\nCATALOG_ID x\nVERSION 1\nLOCAL_PATH /p\n"
        "AUTHENTICATE USERNAME u\nAUTHENTICATE PASSWORD {{ .Env.PW }}\n"
        "PROVIDER NAME aws-s3\nPROVIDER SECRET_KEY {{ KEY }}\nPROVIDER ACCESS_KEY literal-4cc3ss-secret\n"
    )
    result = parse(text, env)
    assert result.pdfile.credentials == Authentication("u", "pw-f00-secret")
    assert result.pdfile.provider is not None
    assert result.pdfile.provider.connection_string == (
        "provider=aws-s3;secret_key=key-b4r-secret;access_key=literal-4cc3ss-secret"
    )
    shown = repr(result) + repr(to_options(result.pdfile)) + str(result.pdfile.to_dict())
    for secret in ("pw-f00-secret", "key-b4r-secret", "literal-4cc3ss-secret"):
        assert secret not in shown
    (warning,) = result.warnings
    assert warning.line == 9 and "{{ .Env.ACCESS_KEY }}" in warning.message
    with pytest.raises(PDFileError) as caught:
        parse(text + "AUTHENTICATE API_KEY {{ KEY }}\n", env)
    assert "key-b4r-secret" not in str(caught.value) and caught.value.line == 10


@pytest.mark.parametrize(
    ("line", "warned"),
    [
        ("AUTHENTICATE PASSWORD hunter2", True),
        ("AUTHENTICATE PASSWORD {{ .Env.PW }}", False),
        ("AUTHENTICATE PASSWORD prefix-{{ PW }}", False),
        ("AUTHENTICATE PASSWORD {{PW}}", False),
    ],
)
def test_literal_password_earns_a_warning(line: str, warned: bool) -> None:
    result = parse(f"FROM h.example.com\nCATALOG_ID x\nAUTHENTICATE USERNAME u\n{line}\n", {"PW": "x"})
    assert [w.line for w in result.warnings] == ([4] if warned else [])
    if warned:
        assert "{{ .Env.PDCAT_PASSWORD }}" in result.warnings[0].message
        assert "hunter2" not in result.warnings[0].message


def test_literal_api_key_earns_a_warning() -> None:
    (warning,) = parse("FROM h.example.com\nCATALOG_ID x\nAUTHENTICATE API_KEY abc\n", {}).warnings
    assert warning.line == 3 and "{{ .Env.PDCAT_API_KEY }}" in warning.message


@pytest.mark.parametrize(
    "password",
    ['pa;ss "1"', "back\\slash;", " padded ", 'x";secret_key=y', "a=b==", "{{ not a template }}"],
)
def test_provider_values_reach_the_connection_parser_exactly(password: str) -> None:
    """A value with ';', quotes or backslashes cannot add keys: it arrives as one value, whichever form."""
    head = "TO h.example.com\nCATALOG_ID x\nVERSION 1\nLOCAL_PATH /p\n"
    forms = [  # (PROVIDER lines, whether the value is quoted: unquoted values are trimmed, as the grammar says)
        (
            "PROVIDER NAME artifactory\nPROVIDER URL https://a.example.com\nPROVIDER REPO r\n"
            "PROVIDER USERNAME ci\nPROVIDER PASSWORD {{ PW }}\n",
            False,
        ),
        ("PROVIDER provider=artifactory;url=https://a.example.com;repo=r;username=ci;password={{ PW }}\n", False),
        ('PROVIDER provider=artifactory;url=https://a.example.com;repo=r;username=ci;password="{{ PW }}"\n', True),
        ("PROVIDER {{ CONN }}\n", True),
    ]
    quoted = '"' + password.replace("\\", "\\\\").replace('"', '\\"') + '"'
    env = {
        "PW": password,
        "CONN": f"provider=artifactory;url=https://a.example.com;repo=r;username=ci;password={quoted}",
    }
    for form, exact in forms:
        provider = parse(head + form, env).pdfile.provider
        assert provider is not None
        connection = parse_connection_string(provider.connection_string)
        assert connection.secrets() == ((password if exact else password.strip()),)
        assert password.strip() not in repr(provider)


def test_authentication_and_provider_reprs_are_redacted() -> None:
    auth = Authentication("root", "pw-zz", "key-zz")
    assert "pw-zz" not in repr(auth) and "key-zz" not in repr(auth) and "root" in repr(auth)
    provider = Provider("azure", "provider=azure;storage_account_name=acct;storage_account_key=abc==")
    assert repr(provider) == "Provider('provider=azure;storage_account_name=acct;storage_account_key=***')"


# ---- templates ----------------------------------------------------------------------------------
def test_render_template_replaces_both_forms_and_keeps_lines() -> None:
    text = "FROM {{ .Env.HOST }}\r\n# {{ .Env.UNSET }} stays\r\nVERSION {{VERSION}}-{{ VERSION }}\r\n"
    out = render_template(text, {"HOST": "h.example.com", "VERSION": "7"})
    assert out == "FROM h.example.com\r\n# {{ .Env.UNSET }} stays\r\nVERSION 7-7\r\n"


def test_render_template_errors_name_the_line_and_variable() -> None:
    with pytest.raises(PDFileError) as caught:
        render_template("A\nB {{ .Env.ONE }}\nC\nD {{ TWO }}\n", {})
    assert [(p.line, "ONE" in p.message or "TWO" in p.message) for p in caught.value.problems] == [
        (2, True),
        (4, True),
    ]
    with pytest.raises(PDFileError, match="line 1: environment variable X holds a line break"):
        render_template("A {{ X }}", {"X": "1\r2"})


def test_env_values_are_not_rendered_again() -> None:
    assert render_template("A {{ X }}", {"X": "{{ Y }}", "Y": "no"}) == "A {{ Y }}"


def test_sub_keywords_cannot_come_from_templates() -> None:
    env = {"KIND": "PASSWORD", "KEY": "bucket"}
    for line in ("AUTHENTICATE {{ KIND }} x", "PROVIDER {{ KEY }} x", "MINIMUM_REQUIREMENT {{ KIND }} 2"):
        with pytest.raises(PDFileError) as caught:
            parse(f"TO h.example.com\n{line}\n", env)
        assert caught.value.line == 2 and "template" in caught.value.message


# ---- options and precedence ---------------------------------------------------------------------
PUSH_FILE = (
    "TO h.example.com\nCATALOG_ID ubuntu\nVERSION 1\nLOCAL_PATH /vms/u.pvm\nTAG a,b\nFORCE\nDESCRIPTION from file\n"
)


def test_flags_override_the_file() -> None:
    # What argparse gives for `pdcat push x.pdfile --version 2 --tag c`, the positional (the file) left
    # out: flags that were not typed hold their defaults.
    flags: dict[str, object] = {
        "command": "push",
        "catalog": None,
        "version": "2",
        "arch": None,
        "role": [],
        "claim": [],
        "tag": ["c"],
        "description": None,
        "force": False,
        "compress": True,
        "level": None,
        "json": False,
        "workers": None,
    }
    pdfile = parse(PUSH_FILE, {}).pdfile
    assert to_options(pdfile, flags) == PushOptions(
        server="https://h.example.com",
        path="/vms/u.pvm",
        catalog="ubuntu",
        version="2",
        tag=("c",),  # a repeated flag replaces the file's list
        force=True,  # a switch not given: the file's value stands
        description="from file",
    )
    assert to_options(pdfile) == dataclasses.replace(to_options(pdfile, flags), version="1", tag=("a", "b"))
    assert set(given(PushOptions, flags)) == {"version", "tag"}


def test_supplied_flags_stand_in_for_required_keywords() -> None:
    text = "RUN push\nCATALOG_ID ubuntu\nLOCAL_PATH /p\n"
    with pytest.raises(PDFileError) as caught:
        parse(text, {})
    assert [p.message.split(";")[0] for p in caught.value.problems] == [
        "push needs TO <catalog server>, e.g. TO catalog.example.com",
        "push needs VERSION <version>",
    ]
    pdfile = parse(text, {}, supplied={"server", "version"}).pdfile
    assert pdfile.server is None and pdfile.version is None
    with pytest.raises(ValueError, match="unknown options"):
        parse(text, {}, supplied={"verison"})


def test_clone_without_a_name_is_the_clone_flag_without_one() -> None:
    """As ``pdcat pull --clone`` (argparse const ""): clone under the default name."""
    pdfile = parse("FROM h.example.com\nCATALOG_ID x\nCLONE\n", {}).pdfile
    options = to_options(pdfile)
    assert isinstance(options, PullOptions) and options.clone == ""
    assert dataclasses.replace(options, clone=None) == to_options(
        parse("FROM h.example.com\nCATALOG_ID x\n", {}).pdfile
    )
    assert to_options(pdfile, {"clone": "mine"}) == dataclasses.replace(options, clone="mine")


def test_ls_tag_flag_is_one_string() -> None:
    pdfile = parse("RUN list\nFROM h.example.com\nTAG a\n", {}).pdfile
    assert to_options(pdfile) == ListOptions(server="https://h.example.com", tag="a")
    assert to_options(pdfile, {"tag": "b"}) == ListOptions(server="https://h.example.com", tag="b")


#: Options only a PDFile gives: ``pdcat`` has no flag for them.
FILE_ONLY = {"insecure", "credentials", "min_cpu", "min_memory_mb", "min_disk_mb"}


def test_options_are_the_argparse_dests_of_their_command() -> None:
    """Every option of pdcat ls/push/pull/import/import-vm is an argparse dest of that command (or file-only),
    and every dest is an option: argparse builds the options, field for field."""
    from client.cli.parser import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, cls in COMMANDS.items():
        dests = {a.dest for a in subparsers.choices[command]._actions} - {"help"}
        names = {f.name for f in dataclasses.fields(cls)}
        assert dests <= names, command
        assert names - dests <= FILE_ONLY | {"vm_type"}, command  # push reads VM_TYPE from a file only


# ---- errors -------------------------------------------------------------------------------------
def test_error_lists_every_problem_in_line_order_on_one_line() -> None:
    text = "FROM h.example.com\nCATALOG_ID x\n" + "".join(f"BAD{i} x\n" for i in range(8))
    with pytest.raises(PDFileError) as caught:
        parse(text, {}, source="ci.pdfile")
    err = caught.value
    assert [p.line for p in err.problems] == list(range(3, 11))
    assert err.message.startswith("ci.pdfile: line 3: unknown keyword 'BAD0'")
    assert err.message.endswith("; and 3 more") and "\n" not in err.message


def test_diagnostic_text() -> None:
    assert str(Diagnostic(3, "m")) == "line 3: m" and str(Diagnostic(None, "m")) == "m"


def test_load_reports_unreadable_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(PDFileError, match="cannot read the PDFile") as caught:
        load(tmp_path / "missing.pdfile", {})
    assert caught.value.line is None
    big = tmp_path / "big.pdfile"
    big.write_bytes(b"# " + b"x" * (1024 * 1024))
    with pytest.raises(PDFileError, match="not a PDFile"):
        load(big, {})
