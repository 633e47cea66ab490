"""PDFile recipes and bring-your-own storage through the real ``pdcat`` command.

Recipes authenticate with an API key from the environment (``{{ .Env.X }}``), which every backend
supports. Bring-your-own storage uses the ``local`` provider here; the providers themselves (S3/MinIO on
moto, Azurite, the Artifactory fake) are proven in ``tests/integration/test_byo_storage.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import CHUNK_SIZE, Pdcat, assert_same_tree, make_bundle

ARCH = "x86_64"


@pytest.fixture
def api_key(backend: Any) -> str:
    with backend.client(roles=["ADMIN"], subject="recipe-admin") as api:
        created = api.create_api_key(roles=["ADMIN"], description="recipes e2e")
    key: str = created["key"]
    return key


def _recipe(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.every_backend
def test_push_and_pull_recipes(pdcat_bare: Pdcat, backend: Any, api_key: str, cid: str, tmp_path: Path) -> None:
    pdcat = pdcat_bare  # no stored login: the recipes carry their own credentials
    env = {"CATALOG_URL": backend.url, "CATALOG_KEY": api_key}
    bundle = make_bundle(tmp_path / "src")
    push_file = _recipe(
        tmp_path,
        "push.pdfile",
        f"""# push the sample VM
TO {{{{ .Env.CATALOG_URL }}}}
AUTHENTICATE API_KEY {{{{ .Env.CATALOG_KEY }}}}
CATALOG_ID {cid}
VERSION 1.0
ARCHITECTURE {ARCH}
LOCAL_PATH {bundle}
TAG lts, recipe
DESCRIPTION pushed by a recipe
""",
    )
    pushed = pdcat.ok("push", str(push_file), "--json", "--chunk-size", str(CHUNK_SIZE), env=env).json()
    m = pushed["manifest"]
    assert (m["catalog_id"], m["version"], m["architecture"]) == (cid, "1.0", ARCH)
    assert sorted(m["tags"]) == ["lts", "recipe"] and m["description"] == "pushed by a recipe"

    dest = tmp_path / "vms"
    pull_file = _recipe(
        tmp_path,
        "pull.pdfile",
        f"""FROM {{{{ .Env.CATALOG_URL }}}}
AUTHENTICATE API_KEY {{{{ .Env.CATALOG_KEY }}}}
CATALOG_ID {cid}
VERSION 1.0
ARCHITECTURE {ARCH}
DESTINATION {dest}
MACHINE_NAME from-recipe
START_AFTER_PULL
""",
    )
    out = pdcat.ok("pull", str(pull_file), env=env).out
    assert_same_tree(bundle, dest / "from-recipe.pvm")
    [vm] = json.loads(pdcat.fake_prlctl("list", "-a", "--json"))
    assert vm["home"] == str(dest / "from-recipe.pvm") and vm["status"] == "running" and "started" in out

    # flags override the file; `pdcat run` runs any recipe
    pdcat.ok("pull", str(pull_file), "--name", "flag-wins", "--no-register", env=env)
    assert (dest / "flag-wins.pvm").is_dir()
    listed = pdcat.ok(
        "run",
        str(_recipe(tmp_path, "ls.pdfile", f"RUN list\nFROM {backend.url}\nAUTHENTICATE API_KEY {api_key}\n")),
        "--json",
        env=env,
    )
    assert any(item["catalog_id"] == cid for item in listed.json()["items"])
    assert "warning" in listed.err and "{{ .Env." in listed.err  # a literal key in a file earns a hint


def test_bad_recipes_fail_with_the_line(pdcat_bare: Pdcat, tmp_path: Path) -> None:
    broken = _recipe(tmp_path, "broken.pdfile", "TO http://127.0.0.1:9\nCATALOG_ID x\nVERSON 1.0\n")
    line = pdcat_bare.fail("push", str(broken))
    assert "line 3" in line and "VERSION" in line  # names the line and suggests the keyword
    pull_recipe = _recipe(tmp_path, "pull.pdfile", "FROM http://127.0.0.1:9\nCATALOG_ID x\n")
    line = pdcat_bare.fail("push", str(pull_recipe))
    assert "pull recipe" in line and "pdcat run" in line
    missing = _recipe(tmp_path, "env.pdfile", "FROM http://127.0.0.1:9\nCATALOG_ID {{ .Env.PDCAT_NOPE }}\n")
    line = pdcat_bare.fail("run", str(missing))
    assert "line 2" in line and "PDCAT_NOPE" in line


def test_bring_your_own_storage_round_trip(pdcat: Pdcat, backend: Any, cid: str, tmp_path: Path) -> None:
    """Export in the original format, pull it back, import it into the catalog, pull that: all identical."""
    bundle = make_bundle(tmp_path / "src")
    store = tmp_path / "my-bucket"
    conn = f"provider=local;catalog_path={store}"
    exported = pdcat.json("push", str(bundle), "--catalog", cid, "--version", "2.0", "--arch", ARCH, "--to", conn)
    assert (store / exported["pack"]).is_file() or any(store.rglob("*.pdpack"))
    assert any(store.rglob("*.meta"))

    pdcat.ok("pull", f"{cid}:2.0", "--arch", ARCH, "--from", conn, "--dest", str(tmp_path / "own"), "--no-register")
    assert_same_tree(bundle, tmp_path / "own" / f"{cid}.pvm")

    pdcat.ok("import", f"{cid}:2.0", "--arch", ARCH, "--from", conn, "--tag", "imported")
    shown = pdcat.json("show", f"{cid}:2.0", "--arch", ARCH)
    assert shown["tags"] == ["imported"]
    pdcat.ok("pull", f"{cid}:2.0", "--arch", ARCH, "--dest", str(tmp_path / "cat"), "--no-register")
    assert_same_tree(bundle, tmp_path / "cat" / f"{cid}.pvm")

    # a secret in the connection string never reaches the output, even on failure
    line = pdcat.fail("pull", f"{cid}:9.9", "--arch", ARCH, "--from", conn + ";bogus=hunter2-secret")
    assert "hunter2-secret" not in line and "bogus" in line


def test_import_vm_from_a_folder_in_your_storage(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    store = tmp_path / "bucket"
    bundle = make_bundle(store / "vms", "Old VM")
    # a bucket holds objects: no empty folders, no symlinks
    (bundle / "Snapshots").rmdir()
    (bundle / "disk.link").unlink()
    conn = f"provider=local;catalog_path={store}"
    pdcat.ok("import-vm", f"{cid}:1.0", "--arch", ARCH, "--from", conn, "--remote-path", "vms/Old VM.pvm")
    pdcat.ok("pull", f"{cid}:1.0", "--arch", ARCH, "--dest", str(tmp_path / "out"), "--no-register")
    pulled = tmp_path / "out" / f"{cid}.pvm"
    # objects carry bytes, not modes: compare every file's content
    files = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(pulled) for p in pulled.rglob("*") if p.is_file())
    for relative in files:
        assert (bundle / relative).read_bytes() == (pulled / relative).read_bytes(), relative
