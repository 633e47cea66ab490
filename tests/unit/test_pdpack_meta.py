"""``core.pdpack_meta``: the original product's keys and ``.meta`` as the catalog reads them, and how an
imported pack is recorded in a manifest. Pure: no I/O."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

import client.pdpack
import core.pdpack_meta
from core.errors import InvalidInput
from core.identity import RESERVED_CATALOG_IDS
from core.manifest import PACK_FORMAT_PDPACK, Manifest, MinimumRequirements, PackSummary
from core.pdpack_meta import (
    MinimumSpec,
    PackMeta,
    catalog_metadata,
    checksum_algorithm,
    go_normalize,
    meta_key,
    pack_file_key,
    pack_key,
)

MD5 = "9e107d9d372bb6826bd81d3542a419d6"


def meta(**fields: object) -> PackMeta:
    doc = {"catalog_id": "ubuntu", "version": "24.04", "architecture": "arm64", "compressed_checksum": MD5, **fields}
    return PackMeta.from_json(json.dumps(doc).encode())


def test_client_pdpack_re_exports_the_core_model() -> None:
    for name in ("ContentItem", "MinimumSpec", "PackMeta", "catalog_folder", "meta_key", "pack_key", "pack_name"):
        assert getattr(client.pdpack, name) is getattr(core.pdpack_meta, name), name
        assert name in client.pdpack.__all__


def test_pack_file_key_follows_pack_path_within_the_catalog_folder() -> None:
    assert pack_file_key(None, "Ubuntu", "amd64", "1") == pack_key("ubuntu", "x86_64", "1")
    assert pack_key("ubuntu", "x86_64", "1") == "ubuntu/ubuntu-x86_64-1.pdpack"
    assert pack_file_key(meta(pack_path=""), "ubuntu", "arm64", "24.04") == "ubuntu/ubuntu-arm64-24.04.pdpack"
    assert pack_file_key(meta(pack_path="/a/b/copy.pdpack"), "ubuntu", "arm64", "24.04") == "ubuntu/copy.pdpack"
    for bad in ("/a/", "../.hidden", "..", "x\\y.pdpack"):
        with pytest.raises(InvalidInput, match="'pack_path'"):
            pack_file_key(meta(pack_path=bad), "ubuntu", "arm64", "24.04")


@pytest.mark.parametrize(
    ("checksum", "algorithm"),
    [(MD5, "md5"), (MD5.upper(), "md5"), ("a" * 40, "sha1"), ("b" * 64, "sha256"), (f" {MD5} ", "md5"),
     ("", None), ("abc", None), (MD5 + "-3", None), ("g" * 32, None)],
)  # fmt: skip
def test_checksum_algorithm_is_told_by_shape(checksum: str, algorithm: str | None) -> None:
    assert checksum_algorithm(checksum) == algorithm


def test_catalog_metadata_applies_the_catalogs_rules() -> None:
    m = meta(
        description="d",
        tags=["LTS", "ci", "lts"],
        required_roles=["developers"],
        required_claims=None,
        type="PVM",
        minimum_requirements={"cpu": 2, "memory": 4096, "disk": 65536},
    )
    assert catalog_metadata(m) == {
        "description": "d",
        "tags": ["ci", "lts"],
        "required_roles": ["DEVELOPERS"],
        "required_claims": [],
        "vm_type": "pvm",
        "minimum_requirements": MinimumRequirements(cpu=2, memory_mb=4096, disk_mb=65536),
    }
    assert catalog_metadata(meta(type="macvm"))["minimum_requirements"] == MinimumRequirements()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tags": ["not a tag"], "type": "pvm"}, "'tags'"),
        ({"description": "x" * 5000, "type": "pvm"}, "'description'"),
        ({"required_roles": ["a b"], "type": "pvm"}, "'required_roles'"),
        ({"minimum_requirements": {"cpu": 99999}, "type": "pvm"}, "'minimum_requirements'"),
        ({"type": ""}, "'type'"),
        ({"type": "vmx"}, "'type'"),
    ],
)
def test_catalog_metadata_names_the_meta_field_it_refuses(fields: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        catalog_metadata(meta(**fields))
    assert str(caught.value).startswith(f".meta field {named}")


def test_fields_the_importer_gives_are_not_read_from_the_meta() -> None:
    bad = meta(tags=["not a tag"], type="")
    got = catalog_metadata(bad, skip={"tags", "vm_type"})
    assert "tags" not in got and "vm_type" not in got and got["description"] == ""


def test_minimum_spec_stays_in_mib() -> None:
    assert meta(minimum_requirements={"cpu": 1, "memory": 2, "disk": 3}).minimum_requirements == MinimumSpec(1, 2, 3)


def test_a_pdpack_summary_shows_only_its_own_fields_and_survives_a_store_round_trip() -> None:
    summary = PackSummary(
        format=PACK_FORMAT_PDPACK,
        file_count=3,
        key="ubuntu/ubuntu-arm64-24.04.pdpack",
        meta_key="ubuntu/ubuntu-arm64-24.04.meta",
        pack_size=10,
        compressed_checksum=MD5,
        is_compressed=True,
    )
    m = Manifest("ubuntu", "24.04", "arm64", pack=summary, status="ready")
    assert m.pack.is_pdpack
    assert set(m.to_public()["pack"]) == {
        "format", "file_count", "key", "meta_key", "pack_size", "compressed_checksum", "is_compressed",
    }  # fmt: skip
    assert Manifest.from_record(json.loads(json.dumps(m.to_record()))) == m

    native = Manifest("ubuntu", "1", "arm64", pack=PackSummary(digest="d" * 64, chunk_size=4096, chunk_count=2))
    assert not native.pack.is_pdpack
    assert set(native.to_public()["pack"]) == {"digest", "format", "chunk_size", "chunk_count", "file_count"}
    # a record written before pdpack imports existed still loads
    old = native.to_record()
    old["pack"] = {k: old["pack"][k] for k in ("digest", "format", "chunk_size", "chunk_count", "file_count")}
    assert Manifest.from_record(old) == native


_ID_CHARS = string.ascii_lowercase + string.digits + "._-"


@given(
    st.text(_ID_CHARS, min_size=1, max_size=40).filter(lambda s: s[0].isalnum() and s not in RESERVED_CATALOG_IDS),
    st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=40).filter(
        lambda s: s[0].isalnum() and s.lower() != "latest"
    ),
    st.sampled_from(["x86_64", "amd64", "arm64", "aarch64"]),
)
def test_keys_stay_in_their_catalog_folder(cid: str, version: str, arch: str) -> None:
    for key in (pack_key(cid, arch, version), meta_key(cid, arch, version)):
        folder, name = key.split("/")
        assert folder == cid.lower()
        assert not name.startswith(".") and name == go_normalize(name)
        assert set(name) <= set(_ID_CHARS + "_")
