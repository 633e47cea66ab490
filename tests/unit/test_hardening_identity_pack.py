"""Security hardening of the pure rules: identities are ASCII before any case folding, and an index
cannot declare absurd sizes or chunk counts (core.identity, core.pack)."""

from __future__ import annotations

import pytest

import core.pack
from core.errors import InvalidInput
from core.identity import (
    ManifestKey,
    normalize_architecture,
    normalize_catalog_id,
    normalize_claim,
    normalize_role,
    normalize_tag,
    normalize_version,
    parse_reference,
)
from core.manifest import parse_roles, parse_tags
from core.pack import MAX_CHUNKS, MAX_FILE_SIZE, MAX_PACK_SIZE, PackIndex

KELVIN = "\u212a"  # KELVIN SIGN: lower-cases to ASCII 'k'
DOTLESS_I = "\u0131"  # LATIN SMALL LETTER DOTLESS I: upper-cases to ASCII 'I'
LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S: upper-cases to ASCII 'S'
DIGEST = "ab" * 32
EIB = 1024**6
TIB = 1024**4


# ---- identity: no Unicode case folding into ASCII ----------------------------------------------
def test_the_folds_this_guards_against_are_real() -> None:
    assert KELVIN.lower() == "k" and DOTLESS_I.upper() == "I" and LONG_S.upper() == "S"


@pytest.mark.parametrize(
    "raw",
    [f"{KELVIN}ube", f"ubuntu{KELVIN}", f" {KELVIN} ", "\u0130stanbul", "ﬁle", "ubuntu\u00a0", "\u3000ubuntu"],
)
def test_catalog_ids_with_non_ascii_are_refused_not_folded(raw: str) -> None:
    with pytest.raises(InvalidInput, match="ASCII"):
        normalize_catalog_id(raw)


@pytest.mark.parametrize("raw", [f"1.0-{KELVIN}", "1.0\u00a0", "\uff11.0", f"{LONG_S}onoma"])
def test_versions_with_non_ascii_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput, match="ASCII"):
        normalize_version(raw)


@pytest.mark.parametrize("raw", [f"x86_64{KELVIN}", "\uff41rm64", f"{KELVIN}86_64", "arm64\u00a0"])
def test_architectures_with_non_ascii_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput, match="ASCII"):
        normalize_architecture(raw)


@pytest.mark.parametrize("raw", [f"{KELVIN}ube", f"lt{LONG_S}", "\u00e9t\u00e9"])
def test_tags_with_non_ascii_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput, match="ASCII"):
        normalize_tag(raw)


@pytest.mark.parametrize("raw", [f"adm{DOTLESS_I}n", f"{LONG_S}UPER_U{LONG_S}ER", f"PUBLI{LONG_S}HER", "r\u00f4le"])
def test_roles_and_claims_with_non_ascii_are_refused_not_folded(raw: str) -> None:
    with pytest.raises(InvalidInput, match="ASCII"):
        normalize_role(raw)
    with pytest.raises(InvalidInput, match="ASCII"):
        normalize_claim(raw)


def test_lists_and_references_refuse_non_ascii_too() -> None:
    with pytest.raises(InvalidInput, match="ASCII"):
        parse_roles([f"adm{DOTLESS_I}n"])
    with pytest.raises(InvalidInput, match="ASCII"):
        parse_tags(["ok", f"{KELVIN}"])
    with pytest.raises(InvalidInput, match="ASCII"):
        parse_reference(f"{KELVIN}ube:1.0")
    with pytest.raises(InvalidInput, match="ASCII"):
        ManifestKey.parse(f"{KELVIN}ube", "1.0", "x86_64")


def test_ascii_identities_still_normalise_as_before() -> None:
    assert normalize_catalog_id(" Kube ") == "kube"
    assert normalize_role("admin") == "ADMIN"
    assert normalize_tag("LTS") == "lts"
    assert normalize_architecture("AARCH64") == "arm64"


# ---- pack index: bounded sizes and chunk counts ------------------------------------------------
def _index(*files: dict[str, object], chunk_size: int = 4096) -> dict[str, object]:
    return {"format": 1, "compression": "zstd", "chunk_size": chunk_size, "files": list(files)}


def _file(path: str, size: int, chunks: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {"path": path, "type": "file", "mode": 0o644, "size": size, "chunks": chunks or []}


def test_the_bounds_are_the_documented_ones() -> None:
    assert (MAX_FILE_SIZE, MAX_PACK_SIZE, MAX_CHUNKS) == (16 * TIB, 64 * TIB, 10_000_000)


def test_a_file_of_4_eib_is_refused_naming_the_file() -> None:
    with pytest.raises(InvalidInput) as info:
        PackIndex.parse(_index(_file("disk.hdd/huge.hds", 4 * EIB)))
    assert "disk.hdd/huge.hds" in info.value.message and str(MAX_FILE_SIZE) in info.value.message


def test_a_file_one_byte_over_16_tib_is_refused_and_16_tib_is_accepted() -> None:
    with pytest.raises(InvalidInput, match=r"big\.hds"):
        PackIndex.parse(_index(_file("big.hds", MAX_FILE_SIZE + 1)))
    last = {"offset": MAX_FILE_SIZE - 4096, "size": 4096, "digest": DIGEST}
    index = PackIndex.parse(_index(_file("big.hds", MAX_FILE_SIZE, [last])))
    assert index.size == MAX_FILE_SIZE


def test_a_huge_size_with_a_chunk_past_it_is_still_refused_by_size() -> None:
    chunk = {"offset": 4 * EIB - 4096, "size": 4096, "digest": DIGEST}
    with pytest.raises(InvalidInput, match="huge"):
        PackIndex.parse(_index(_file("huge", 4 * EIB, [chunk])))


def test_the_total_size_is_bounded_and_the_error_names_the_file_that_crosses_it() -> None:
    files = [_file(f"disk{i}.hds", MAX_FILE_SIZE) for i in range(4)]
    assert PackIndex.parse(_index(*files)).size == MAX_PACK_SIZE
    with pytest.raises(InvalidInput) as info:
        PackIndex.parse(_index(*files, _file("one-more.hds", 1)))
    assert "one-more.hds" in info.value.message and "64 TiB" in info.value.message


def test_a_file_naming_more_chunk_entries_than_the_bound_is_refused_before_they_are_read() -> None:
    # the same dict 10 million + 1 times: cheap to build, and refused by its count, before any is parsed
    entries = [{"not": "even a chunk"}] * (MAX_CHUNKS + 1)
    with pytest.raises(InvalidInput) as info:
        PackIndex.parse(_index(_file("many.hds", MAX_FILE_SIZE, entries)))
    assert "many.hds" in info.value.message and str(MAX_CHUNKS) in info.value.message


def test_the_chunk_count_is_bounded_across_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.pack, "MAX_CHUNKS", 5)

    def chunks(n: int) -> list[dict[str, object]]:
        return [{"offset": i * 4096, "size": 4096, "digest": f"{i:064x}"} for i in range(n)]

    ok = PackIndex.parse(_index(_file("a", 3 * 4096, chunks(3)), _file("b", 2 * 4096, chunks(2))))
    assert len(list(ok.chunks())) == 5
    with pytest.raises(InvalidInput) as info:
        PackIndex.parse(_index(_file("a", 3 * 4096, chunks(3)), _file("b", 3 * 4096, chunks(3))))
    assert "'b'" in info.value.message and "5 chunk entries" in info.value.message


def test_from_bytes_applies_the_same_bounds() -> None:
    doc = b'{"chunk_size":4096,"files":[{"path":"x","type":"file","mode":420,"size":4611686018427387904,"chunks":[]}]}'
    with pytest.raises(InvalidInput, match="'x'"):
        PackIndex.from_bytes(doc)
