"""Identity rules (docs/architecture.md, "Identity"): normalisation, validation, aliases, and no path traversal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidInput
from core.identity import (
    LATEST,
    ManifestKey,
    normalize_architecture,
    normalize_catalog_id,
    normalize_role,
    normalize_tag,
    normalize_version,
    parse_reference,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Ubuntu", "ubuntu"), ("  macos-15.1_beta ", "macos-15.1_beta"), ("A" * 128, "a" * 128), ("0", "0")],
)
def test_catalog_ids_are_case_insensitive_and_stored_lower_case(raw: str, expected: str) -> None:
    assert normalize_catalog_id(raw) == expected


@pytest.mark.parametrize("raw", ["", "-x", ".hidden", "a/b", "..", "a b", "a" * 129, "ümlaut", "a\x00", "a%2Fb"])
def test_invalid_catalog_ids_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_catalog_id(raw)


@pytest.mark.parametrize("raw", ["1.0", "v2.3.4+build.7", "24.04-LTS", "Sonoma_14"])
def test_versions_keep_their_case(raw: str) -> None:
    assert normalize_version(raw) == raw


@pytest.mark.parametrize("raw", ["", ".1", "1/2", "..", "a b", "x" * 129, "1.0?", "1.0\n2"])
def test_invalid_versions_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_version(raw)


def test_latest_is_an_alias_that_cannot_be_pushed() -> None:
    assert normalize_version("Latest", allow_latest=True) == LATEST
    with pytest.raises(InvalidInput, match="alias"):
        normalize_version("latest")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("arm64", "arm64"), ("aarch64", "arm64"), ("arm", "arm64")],
)
def test_architecture_aliases(raw: str, expected: str) -> None:
    assert normalize_architecture(raw) == expected


@pytest.mark.parametrize("raw", ["sparc", "", "x86", "arm64/../x"])
def test_unknown_architectures_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput, match="architecture"):
        normalize_architecture(raw)


def test_roles_and_tags_normalise() -> None:
    assert normalize_role("developers") == "DEVELOPERS"
    assert normalize_tag("LTS") == "lts"
    with pytest.raises(InvalidInput):
        normalize_role("has space")


def test_reference_parsing() -> None:
    assert parse_reference("Ubuntu") == ("ubuntu", LATEST)
    assert parse_reference("ubuntu:24.04") == ("ubuntu", "24.04")
    with pytest.raises(InvalidInput):
        parse_reference("ubuntu:../x")


def test_manifest_key_prefix_is_built_from_normalised_parts() -> None:
    key = ManifestKey.parse("Ubuntu", "1.0", "aarch64")
    assert key.prefix == "catalogs/ubuntu/1.0/arm64"


@given(st.text(max_size=200))
def test_normalisers_only_ever_raise_invalid_input(text: str) -> None:
    for normalise in (normalize_catalog_id, normalize_version, normalize_architecture, normalize_tag, normalize_role):
        try:
            value = normalise(text)
        except InvalidInput:
            continue
        assert "/" not in value and "\\" not in value and not value.startswith(".")
        assert value == value.strip() and "\x00" not in value


@given(st.one_of(st.integers(), st.none(), st.lists(st.text()), st.binary()))
def test_non_strings_are_invalid_input(value: object) -> None:
    with pytest.raises(InvalidInput):
        normalize_catalog_id(value)
