"""The real ``pdcat`` command, end to end: login, push, list, show, pull + register, state changes,
removal, API keys, and every failure a user is likely to meet, each with a one-line reason.

Parallels cannot run here, so ``tests/fakes/prlctl`` stands in for it, first on PATH.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    DISK_REL,
    FAKE_PRLCTL,
    MIB,
    REPO,
    Pdcat,
    admin_password,
    assert_same_tree,
    assert_sparse,
    listing,
    make_bundle,
    needs_embedded,
    path_without_prlctl,
    reason_lines,
    token_env,
)
from tests.e2e.fault_helpers import chunk_dir
from tests.fakes.file_keyring import read_secrets

ARCH = "x86_64"
MANIFEST_FIELDS = {"catalog_id", "version", "architecture", "size", "stored_size", "pack", "status", "tainted"}


def pull_args(ref: str, dest: Path, name: str, *extra: str) -> list[str]:
    return ["pull", ref, "--arch", ARCH, "--dest", str(dest), "--name", name, *extra]


def push_args(bundle: Path, catalog: str, version: str) -> list[str]:
    return ["push", str(bundle), "--catalog", catalog, "--version", version, "--arch", ARCH, "--chunk-size", "65536"]


def assert_not_found(line: str) -> None:
    # a version that does not exist says "not found"; an id with no usable version (asked for
    # ID or ID:latest) says "no usable version of ID for ARCH" (both are HTTP 404)
    assert line.startswith("pdcat: ") and ("not found" in line or "no usable version" in line), line


def registers(pdcat: Pdcat) -> list[list[str]]:
    return [argv for argv in pdcat.prlctl_calls() if argv[:1] == ["register"]]


# ---- the installed command ------------------------------------------------------------------------
def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("pdcat")
    assert script.is_file() and os.access(script, os.X_OK), f"{script} missing: is pdcat installed in the venv?"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("push", "pull", "ls", "login"):
        assert command in done.stdout


def test_fake_prlctl_answers_like_the_real_one(tmp_path: Path) -> None:
    assert os.access(FAKE_PRLCTL, os.X_OK)
    log = tmp_path / "log.jsonl"
    env = {**os.environ, "PDCAT_FAKE_PRLCTL_LOG": str(log), "PATH": path_without_prlctl()}
    env.pop("PDCAT_FAKE_PRLCTL_STATE", None)
    env.pop("PDCAT_FAKE_PRLCTL_FAIL", None)

    def prlctl(*args: str, fail: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"PDCAT_FAKE_PRLCTL_FAIL": fail} if fail else {}
        return subprocess.run([str(FAKE_PRLCTL), *args], env={**env, **extra}, capture_output=True, text=True)

    bundle = make_bundle(tmp_path, "Fake VM")
    done = prlctl("register", str(bundle), "--regenerate-src-uuid")
    assert done.returncode == 0 and "successfully registered" in done.stdout
    assert prlctl("register", str(bundle)).returncode == 1  # already registered
    bad = prlctl("register", str(tmp_path / "nope.pvm"))
    assert bad.returncode == 1 and bad.stderr.startswith("Failed to register the VM")
    [vm] = json.loads(prlctl("list", "-a", "--json").stdout)
    assert (vm["name"], vm["status"], vm["home"]) == ("Fake VM", "stopped", str(bundle))
    assert vm["uuid"] in prlctl("list", "-a").stdout
    assert prlctl("set", vm["uuid"], "--name", "Renamed").returncode == 0
    assert prlctl("start", "Renamed").returncode == 0
    assert json.loads(prlctl("list", "-j").stdout)[0]["status"] == "running"
    assert prlctl("stop", vm["uuid"].strip("{}")).returncode == 0
    missing = prlctl("start", "no-such-vm")
    assert missing.returncode == 1 and "could not be found" in missing.stderr
    assert prlctl("start", "Renamed", fail="start").returncode == 1
    assert prlctl("frobnicate").returncode == 1
    assert prlctl("unregister", "Renamed").returncode == 0 and bundle.is_dir()  # unregister keeps files
    assert prlctl("list", "-a", "--json").stdout.strip() == "[]"
    calls = [json.loads(line)["argv"] for line in log.read_text().splitlines()]
    assert calls[0] == ["register", str(bundle), "--regenerate-src-uuid"] and calls[-1] == ["list", "-a", "--json"]
    assert (tmp_path / "prlctl-state.json").is_file()  # state next to the log by default


# ---- login ------------------------------------------------------------------------------------
def test_login_stores_a_token_not_the_password(
    backend, pdcat_bare: Pdcat, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    needs_embedded(backend, "the built-in admin user and its bootstrap password")
    password = admin_password(request.config)
    out = pdcat_bare.ok("login", "--server", backend.url, "-u", "admin", "-p", password).out
    assert "Logged in" in out and "admin" in out
    creds = tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    text = creds.read_text()
    assert password not in text
    saved = json.loads(text)
    assert saved["current"] == backend.url and saved["servers"][backend.url]["username"] == "admin"
    [token] = read_secrets(tmp_path / "keychain.json")[f"pdcat {tmp_path / 'config'}"].values()  # the test's keychain
    assert token and token not in text and password not in (tmp_path / "keychain.json").read_text()
    left = {p.name for p in creds.parent.iterdir()} - {"credentials.json", ".credentials.lock"}
    assert not left, f"temp files left behind: {left}"
    # the stored login is used by later commands (no PDCAT_SERVER / PDCAT_TOKEN in this environment)
    assert pdcat_bare.json("whoami")["subject"] == "admin"
    assert "items" in pdcat_bare.json("ls")


def test_login_with_a_wrong_password(backend, pdcat_bare: Pdcat, tmp_path: Path) -> None:
    needs_embedded(backend, "the built-in admin user")
    line = pdcat_bare.fail("login", "--server", backend.url, "-u", "admin", "-p", "not-the-password")
    assert "invalid username or password" in line
    assert not (tmp_path / "config" / "credentials.json").exists()


def test_not_logged_in_hints_at_login(backend, pdcat_bare: Pdcat) -> None:
    assert "pdcat login" in pdcat_bare.fail("ls")
    # a server but no credential for it
    assert "pdcat login" in pdcat_bare.fail("ls", env={"PDCAT_SERVER": backend.url})


def test_credentials_in_the_environment_replace_the_stored_login(
    backend, pdcat_bare: Pdcat, request: pytest.FixtureRequest
) -> None:
    """As GH_TOKEN does for gh: with a stored login, PDCAT_API_KEY (or PDCAT_TOKEN) is used alone."""
    needs_embedded(backend, "the built-in admin user")
    pdcat_bare.ok("login", "--server", backend.url + "/", "-u", "admin", "-p", admin_password(request.config))
    key = pdcat_bare.json("apikey", "create", "--role", "USER", "--description", "ci")["key"]
    me = pdcat_bare.json("whoami", env={"PDCAT_API_KEY": key})
    assert me["via"] == "api_key", me
    assert pdcat_bare.json("whoami", env={"PDCAT_SERVER": backend.url + "//"})["subject"] == "admin"  # one URL
    both = pdcat_bare.fail("whoami", env={"PDCAT_API_KEY": key, "PDCAT_TOKEN": "x"})
    assert "PDCAT_TOKEN and PDCAT_API_KEY are both set" in both
    assert "check PDCAT_API_KEY" in pdcat_bare.fail("whoami", env={"PDCAT_API_KEY": "pdk_wrong"})

    assert "Logged out" in pdcat_bare.ok("logout").out
    assert "pdcat login" in pdcat_bare.fail("ls")
    assert "nothing to remove" in pdcat_bare.ok("logout").out

    # CI logs in without a password on its command line: an API key (from stdin), stored like a token
    done = pdcat_bare.run("login", "--server", backend.url, "--api-key", "-", stdin=key + "\n")
    assert done.code == 0 and "with an API key" in done.out, done.err
    assert pdcat_bare.json("whoami")["via"] == "api_key"
    assert "check PDCAT_API_KEY" in pdcat_bare.fail("login", "--server", backend.url, "--api-key", "pdk_wrong")
    password = admin_password(request.config)
    done = pdcat_bare.run("login", "--server", backend.url, "-u", "admin", "--password-stdin", stdin=password + "\n")
    assert done.code == 0 and "Logged in" in done.out, done.err
    assert pdcat_bare.json("whoami")["via"] != "api_key"


def test_a_super_user_manages_the_servers_users(
    backend, pdcat_bare: Pdcat, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Issue 15, item 4: users besides admin, with roles; passwords their owners change; the rules that
    keep one super user from locking out another."""
    needs_embedded(backend, "the embedded server's own users")
    admin = admin_password(request.config)
    pdcat_bare.ok("login", "--server", backend.url, "-u", "admin", "-p", admin)
    bob = f"bob-{secrets.token_hex(4)}"
    first, second = "bob-password-1", "bob-password-2"
    assert "Added" in pdcat_bare.run("user", "add", bob, "--role", "USER", "--password-stdin", stdin=first + "\n").out
    assert bob in {u["username"] for u in pdcat_bare.json("user", "ls")["items"]}
    again = pdcat_bare.run("user", "add", bob, "--password-stdin", stdin=first + "\n")
    assert again.code == 1 and "already exists" in again.err

    as_bob = {"PDCAT_CONFIG_DIR": str(tmp_path / "bob")}
    pdcat_bare.ok("login", "--server", backend.url, "-u", bob, "-p", first, env=as_bob)
    assert pdcat_bare.json("whoami", env=as_bob)["roles"] == ["USER"]
    assert "SUPER_USER" in pdcat_bare.fail("user", "ls", env=as_bob)
    pdcat_bare.ok("user", "set-roles", bob, "--role", "PUBLISHER")
    pdcat_bare.ok("login", "--server", backend.url, "-u", bob, "-p", first, env=as_bob)  # roles from the next login
    assert pdcat_bare.json("whoami", env=as_bob)["roles"] == ["PUBLISHER"]
    done = pdcat_bare.run("user", "passwd", bob, "--password-stdin", env=as_bob, stdin=f"wrong-current-pw\n{second}\n")
    assert done.code == 1 and "current password" in done.err
    done = pdcat_bare.run("user", "passwd", bob, "--password-stdin", env=as_bob, stdin=f"{first}\n{second}\n")
    assert done.code == 0, done.err
    assert "invalid username or password" in pdcat_bare.fail("login", "--server", backend.url, "-u", bob, "-p", first)

    assert "cannot remove yourself" in pdcat_bare.fail("user", "rm", "admin")
    assert "Removed" in pdcat_bare.ok("user", "rm", bob).out
    assert "invalid username or password" in pdcat_bare.fail("login", "--server", backend.url, "-u", bob, "-p", second)


def test_messages_say_what_to_do_next(backend, pdcat_bare: Pdcat, tmp_path: Path) -> None:
    assert pdcat_bare.ok("--version").out.startswith("pdcat ")
    no_scheme = backend.url.split("://", 1)[1]
    line = pdcat_bare.fail("login", "--server", no_scheme, "-u", "a", "-p", "b")
    assert "is not a catalog URL" in line and "http://" in line and "Traceback" not in line
    line = pdcat_bare.fail("ls", "--server", "http://127.0.0.1:9", env={"PDCAT_TOKEN": "t"})
    assert "cannot reach the catalog at http://127.0.0.1:9" in line and "Is the catalog running" in line
    assert "ConnectError" not in line
    stale = token_env(backend, ["USER"], "e2e-stale")
    line = pdcat_bare.fail("ls", env={**stale, "PDCAT_TOKEN": stale["PDCAT_TOKEN"] + "x"})
    assert "log in again: pdcat login --server" in line


def test_a_missing_version_or_architecture_names_what_exists(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    pdcat.push(make_bundle(tmp_path / "src"), cid, "1.0")
    line = pdcat.fail("show", f"{cid}:1.0", "--arch", "arm64")
    assert "exists for x86_64" in line and "--arch" in line
    line = pdcat.fail(*pull_args(f"{cid}:2.0", tmp_path / "vms", "v"))
    assert f"{cid} has versions 1.0" in line
    assert "no VM" in pdcat.fail("show", f"{cid}-nope:1.0", "--arch", ARCH)


def test_push_refuses_a_folder_that_is_not_a_vm(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("abc")
    line = pdcat.fail(*push_args(folder, cid, "1.0"))
    assert "does not look like a Parallels VM" in line and "config.pvs" in line and "--allow-any-folder" in line
    renamed = tmp_path / "notes.pvm"
    folder.rename(renamed)
    assert "it has no config.pvs" in pdcat.fail(*push_args(renamed, cid, "1.0"))
    pushed = pdcat.json(*push_args(renamed, cid, "1.0"), "--allow-any-folder", "--json")
    assert pushed["manifest"]["size"] == 3


# ---- push, list, show, pull -----------------------------------------------------------------------
@pytest.mark.every_backend
def test_push_list_show_pull_register(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    pushed = pdcat.push(src, cid, "1.0", "--tag", "e2e", "--description", "an e2e VM")
    assert {"manifest", "uploaded_chunks", "uploaded_bytes", "reused_bytes", "chunks", "seconds"} <= set(pushed)
    m = pushed["manifest"]
    assert set(m) >= MANIFEST_FIELDS
    assert (m["catalog_id"], m["version"], m["architecture"], m["status"]) == (cid, "1.0", ARCH, "ready")
    assert pushed["chunks"] > 8 and pushed["uploaded_chunks"] == pushed["chunks"]
    assert pushed["uploaded_bytes"] > 0 and m["tags"] == ["e2e"] and m["description"] == "an e2e VM"

    table = pdcat.ok("ls").out
    row = next(line for line in table.splitlines() if cid in line)
    assert "1.0" in row and ARCH in row and "e2e" in row
    items = pdcat.json("ls")["items"]
    listed = next(i for i in items if i["catalog_id"] == cid)
    assert {k: listed[k] for k in MANIFEST_FIELDS} == {k: m[k] for k in MANIFEST_FIELDS}
    shown = pdcat.json("show", f"{cid}:1.0", "--arch", ARCH)
    assert shown["pack"]["digest"] == m["pack"]["digest"] and shown["size"] == m["size"]
    assert cid in pdcat.ok("show", f"{cid}:1.0", "--arch", "amd64").out  # alias of x86_64

    dest = tmp_path / "vms"
    out = pdcat.ok(*pull_args(cid, dest, "My VM")).out
    vm = dest / "My VM.pvm"
    assert "registered with Parallels Desktop" in out and str(vm) in out
    assert listing(dest) == ["My VM.pvm"]  # no partial folder or journal left
    assert_same_tree(src, vm)
    assert_sparse(vm / DISK_REL)
    assert (vm / "disk.link").is_symlink() and os.readlink(vm / "disk.link") == DISK_REL
    assert registers(pdcat) == [["register", str(vm), "--regenerate-src-uuid"]]
    known = json.loads(pdcat.fake_prlctl("list", "-a", "--json"))
    assert [(v["name"], v["home"]) for v in known] == [("My VM", str(vm))]


@pytest.mark.every_backend
def test_pull_json_and_latest(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    pdcat.push(make_bundle(tmp_path / "a"), cid, "1.0")
    v2 = make_bundle(tmp_path / "b", variant=1)
    pdcat.push(v2, cid, "2.0")
    dest = tmp_path / "vms"
    expected_cache = {"plain": "miss", "latest": "hit"}  # the second pull of one version comes from the cache
    for ref, name in ((cid, "plain"), (f"{cid}:latest", "latest")):
        got = pdcat.json(*pull_args(ref, dest, name))
        assert {"path", "manifest", "registered", "downloaded_chunks", "downloaded_bytes", "resumed_chunks"} <= set(got)
        assert got["manifest"]["version"] == "2.0" and got["registered"] is True
        assert got["path"] == str(dest / f"{name}.pvm") and got["resumed_chunks"] == 0
        assert got["cache"] == expected_cache[name] and got["seconds"] >= 0
        if got["cache"] == "miss":
            assert got["downloaded_chunks"] > 0 and got["downloaded_bytes"] > 0
        else:
            # cloned from a cached bundle, or decompressed from the cache's chunks (no copy-on-write here)
            methods = ("reflink", "sparse-copy", "clonefile", "decompress")
            assert got["downloaded_chunks"] == 0 and got["clone_method"] in methods
        assert_same_tree(v2, dest / f"{name}.pvm")
    # latest means the newest *usable* version
    pdcat.ok("taint", f"{cid}:2.0", "--arch", ARCH)
    got = pdcat.json(*pull_args(cid, dest, "after-taint", "--no-register"))
    assert got["manifest"]["version"] == "1.0" and got["registered"] is False


def test_pull_register_and_start(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    pdcat.push(make_bundle(tmp_path / "src"), cid, "1.0")
    dest = tmp_path / "vms"
    out = pdcat.ok(*pull_args(cid, dest, "run-me", "--start")).out
    [vm] = json.loads(pdcat.fake_prlctl("list", "-a", "--json"))
    assert vm["home"] == str(dest / "run-me.pvm") and vm["status"] == "running"
    assert vm["uuid"] in out and "started" in out
    assert ["start", vm["uuid"]] in pdcat.prlctl_calls()

    # the start fails: exit 1, everything undone (the new VM unregistered), the verified bundle kept
    r = pdcat.run(*pull_args(cid, dest, "no-start", "--start"), env={"PDCAT_FAKE_PRLCTL_FAIL": "start"})
    assert r.code == 1 and "Traceback" not in r.err
    [line] = reason_lines(r.err)
    bundle = dest / "no-start.pvm"
    assert "NOT registered: prlctl start failed" in line and "undone: unregistered {" in line
    assert f"the verified bundle stays at {bundle}" in line and "finish by hand: prlctl register" in line
    homes = {v["home"]: v["status"] for v in json.loads(pdcat.fake_prlctl("list", "-a", "--json"))}
    assert homes == {str(dest / "run-me.pvm"): "running"} and bundle.is_dir()


def test_pull_without_prlctl_and_with_no_register(
    pdcat: Pdcat, cid: str, tmp_path: Path, no_prlctl: dict[str, str | None]
) -> None:
    src = make_bundle(tmp_path / "src")
    pdcat.push(src, cid, "1.0")
    dest = tmp_path / "vms"
    out = pdcat.ok(*pull_args(cid, dest, "a"), env=no_prlctl).out
    assert "prlctl not found" in out and "not registered" in out
    assert_same_tree(src, dest / "a.pvm")

    out = pdcat.ok(*pull_args(cid, dest, "c", "--no-register")).out  # the fake prlctl is on PATH here
    assert "not registered (--no-register)" in out
    assert_same_tree(src, dest / "c.pvm")
    assert pdcat.prlctl_calls() == []


def test_register_failure_keeps_the_bundle_and_fails(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    pdcat.push(src, cid, "1.0")
    dest = tmp_path / "vms"
    vm = dest / "n.pvm"
    r = pdcat.run(*pull_args(cid, dest, "n"), env={"PDCAT_FAKE_PRLCTL_FAIL": "register"})
    assert r.code == 1 and "Traceback" not in r.err
    assert "NOT registered" in r.out and str(vm) in r.out
    [line] = reason_lines(r.err)
    assert "NOT registered" in line and str(vm) in line and "prlctl register" in line
    assert_same_tree(src, vm)  # the verified bundle stays
    assert listing(dest) == ["n.pvm"]
    assert registers(pdcat) == [["register", str(vm), "--regenerate-src-uuid"]]


# ---- versions ---------------------------------------------------------------------------------
def test_push_same_version_twice_then_force(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    first = make_bundle(tmp_path / "a")
    second = make_bundle(tmp_path / "b", seed=2)
    pdcat.push(first, cid, "1.0")
    assert "already exists" in pdcat.fail(*push_args(second, cid, "1.0"))
    forced = pdcat.push(second, cid, "1.0", "--force")["manifest"]
    assert forced["version"] == "1.0"
    dest = tmp_path / "vms"
    got = pdcat.json(*pull_args(f"{cid}:1.0", dest, "n", "--no-register"))
    assert got["manifest"]["pack"]["digest"] == forced["pack"]["digest"]
    assert_same_tree(second, dest / "n.pvm")


@pytest.mark.every_backend
def test_second_version_uploads_only_changed_chunks(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    first = pdcat.push(make_bundle(tmp_path / "a"), cid, "1.0")
    v2 = make_bundle(tmp_path / "b", variant=1)
    second = pdcat.push(v2, cid, "2.0")
    assert 0 < second["uploaded_chunks"] <= 3 < second["chunks"]
    assert second["reused_bytes"] > 0
    assert second["uploaded_bytes"] < first["uploaded_bytes"]
    assert second["manifest"]["pack"]["digest"] != first["manifest"]["pack"]["digest"]
    dest = tmp_path / "vms"
    pdcat.ok(*pull_args(f"{cid}:2.0", dest, "v2", "--no-register"))
    assert_same_tree(v2, dest / "v2.pvm")


@pytest.mark.every_backend
def test_incremental_push_and_pull_move_only_the_changed_blocks(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    """Index format 3 on the default 4 MiB grid: a few 4 KiB writes cost a 128 KiB block each, both
    ways, and the pulled VM is byte-identical (docs/adr-004-incremental-chunking.md)."""
    bundle = make_bundle(tmp_path / "src")
    plain_push = ["push", str(bundle), "--catalog", cid, "--arch", ARCH, "--json"]
    first = pdcat.json(*plain_push, "--version", "1.0")
    assert first["manifest"]["pack"]["format"] == 3  # format 2 named with BLAKE3 (ADR 005)
    dest = tmp_path / "vms"
    pdcat.ok(*pull_args(f"{cid}:1.0", dest, "v1", "--no-register"))  # v1's objects are in the cache now
    rng = random.Random(5)
    with (bundle / DISK_REL).open("r+b") as disk:
        for offset in (4096, 3 * MIB + 8192, 40 * MIB + 4096):  # inside three separate data regions
            disk.seek(offset)
            disk.write(rng.randbytes(4096))
    second = pdcat.json(*plain_push, "--version", "2.0")
    block = 128 * 1024
    assert second["uploaded_bytes"] <= 3 * block * 1.01 + 1024, second  # three blocks, packed, compressed
    pulled = pdcat.json(*pull_args(f"{cid}:2.0", dest, "v2", "--no-register", "--json"))
    assert pulled["downloaded_bytes"] == second["uploaded_bytes"]
    assert_same_tree(bundle, dest / "v2.pvm")
    assert_same_tree(make_bundle(tmp_path / "again"), dest / "v1.pvm")
    third = pdcat.json(*plain_push, "--version", "3.0", "--base", "1.0")  # against v1: the same blocks again
    assert third["uploaded_chunks"] == 0 and third["uploaded_bytes"] == 0  # ...which v2 already stored
    fourth = pdcat.run(*plain_push, "--version", "4.0", "--base", "9.9")  # no such base: a whole push, and a warning
    assert fourth.code == 0 and "offers no version 9.9 to build on" in fourth.err, fourth.err


# ---- taint, untaint, revoke ---------------------------------------------------------------------
def test_taint_untaint_revoke(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    pdcat.push(src, cid, "1.0")
    ref = f"{cid}:1.0"
    dest = tmp_path / "vms"
    dest.mkdir()
    (dest / "other.txt").write_text("keep me")

    assert pdcat.json("taint", ref, "--arch", ARCH)["tainted"] is True
    assert "tainted" in pdcat.ok("ls", cid).out
    assert "tainted" in pdcat.fail(*pull_args(ref, dest, "n"))
    assert listing(dest) == ["other.txt"]  # nothing new: no bundle, no .partial, no journal

    assert "untainted" in pdcat.ok("untaint", ref, "--arch", ARCH).out
    pdcat.ok(*pull_args(ref, dest, "n"))
    assert_same_tree(src, dest / "n.pvm")

    assert pdcat.json("revoke", ref, "--arch", ARCH)["revoked"] is True
    assert "revoked" in pdcat.fail(*pull_args(ref, dest, "m"))
    assert "revoked" in pdcat.fail("untaint", ref, "--arch", ARCH)
    assert listing(dest) == ["n.pvm", "other.txt"]
    assert len(registers(pdcat)) == 1


# ---- removal ----------------------------------------------------------------------------------
def test_rm_arch_version_id_and_purge(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    a, b, c = f"{cid}-a", f"{cid}-b", f"{cid}-c"
    pdcat.push(src, a, "1.0")
    pdcat.push(src, a, "1.0", arch="arm64")
    pdcat.push(src, b, "1.0")
    pdcat.push(src, b, "2.0")
    pdcat.push(src, c, "1.0")

    assert "Removed" in pdcat.ok("rm", f"{a}:1.0", "--arch", "aarch64").out
    line = pdcat.fail("rm", b)  # a whole id, without a terminal to ask on: refused, nothing removed
    assert "every version of" in line and "2 version-architecture pairs" in line and "--yes" in line
    assert {i["version"] for i in pdcat.json("ls", b)["items"]} == {"1.0", "2.0"}
    pdcat.ok("rm", b, "--yes")
    assert "reclaimed" in pdcat.ok("rm", c, "--purge", "-y").out
    remaining = {(i["catalog_id"], i["version"], i["architecture"]) for i in pdcat.json("ls")["items"]}
    assert remaining & {(a, "1.0", "arm64"), (b, "1.0", ARCH), (b, "2.0", ARCH), (c, "1.0", ARCH)} == set()
    assert (a, "1.0", ARCH) in remaining

    dest = tmp_path / "vms"
    assert "not found" in pdcat.fail("pull", f"{a}:1.0", "--arch", "arm64", "--dest", str(dest))
    assert "not found" in pdcat.fail("pull", f"{b}:2.0", "--arch", ARCH, "--dest", str(dest))
    assert_not_found(pdcat.fail("pull", f"{c}:latest", "--arch", ARCH, "--dest", str(dest)))
    assert listing(dest) == []
    assert "needs ID:VERSION" in pdcat.fail("rm", a, "--arch", ARCH)


def test_ls_for_scripts_ids_only_or_a_template(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    pdcat.push(src, cid, "1.0")
    pdcat.push(src, cid, "1.0", arch="arm64")
    pdcat.push(src, cid, "2.0")
    assert sorted(pdcat.ok("ls", cid, "-q").out.split()) == [f"{cid}:1.0", f"{cid}:2.0"]  # one line each
    lines = pdcat.ok("ls", cid, "--format", "{catalog_id}:{version} {architecture}").out.splitlines()
    assert sorted(lines) == sorted([f"{cid}:1.0 x86_64", f"{cid}:1.0 arm64", f"{cid}:2.0 x86_64"])
    line = pdcat.fail("ls", cid, "--format", "{nope}")
    assert "--format" in line and "catalog_id" in line


def test_tags_are_added_and_removed_from_the_cli(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    pdcat.push(make_bundle(tmp_path / "src"), cid, "1.0", "--tag", "old")
    assert "tags: lts, old, stable" in pdcat.ok("tag", f"{cid}:1.0", "lts", "stable", "--arch", ARCH).out  # sorted
    assert pdcat.json("tag", f"{cid}:1.0", "old", "--rm", "--arch", ARCH)["tags"] == ["lts", "stable"]
    assert {m["version"] for m in pdcat.json("ls", "--tag", "lts")["items"] if m["catalog_id"] == cid} == {"1.0"}
    assert "exists for x86_64" in pdcat.fail("tag", f"{cid}:1.0", "x", "--arch", "arm64")


def test_pull_by_digest_pins_the_exact_pack(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    v1, v2 = make_bundle(tmp_path / "a"), make_bundle(tmp_path / "b", variant=1)
    first = pdcat.push(v1, cid, "1.0")["manifest"]["pack"]["digest"]
    pdcat.push(v2, cid, "2.0")
    dest = tmp_path / "vms"
    got = pdcat.json(*pull_args(f"{cid}@sha256:{first[:12]}", dest, "pinned", "--no-register"))
    assert (got["manifest"]["version"], got["manifest"]["pack"]["digest"]) == ("1.0", first)
    assert_same_tree(v1, dest / "pinned.pvm")
    assert "sha256:DIGEST" in pdcat.fail(*pull_args(f"{cid}@sha256:abc", dest, "x"))
    assert "no version of" in pdcat.fail(*pull_args(f"{cid}@sha256:{'0' * 64}", dest, "x"))


# ---- failures a user meets ----------------------------------------------------------------------
def test_unknown_id_and_missing_path(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    dest = tmp_path / "vms"
    assert_not_found(pdcat.fail("pull", "nothere-xyz", "--dest", str(dest)))
    assert "not found" in pdcat.fail("show", "nothere-xyz:1.0", "--arch", ARCH)
    assert listing(dest) == []
    missing = tmp_path / "no-such.pvm"
    assert "does not exist" in pdcat.fail("push", str(missing), "--catalog", cid, "--version", "1.0")
    plain_file = tmp_path / "disk.img"
    plain_file.write_bytes(b"x")
    assert "not a" in pdcat.fail("push", str(plain_file), "--catalog", cid, "--version", "1.0")
    assert "invalid" in pdcat.fail("pull", "Bad/Id", "--dest", str(dest)).lower()


def test_destination_exists_is_left_untouched(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    pdcat.push(make_bundle(tmp_path / "src"), cid, "1.0")
    dest = tmp_path / "vms"
    existing = dest / "n.pvm"
    existing.mkdir(parents=True)
    (existing / "mine.txt").write_text("precious")
    assert "already exists" in pdcat.fail(*pull_args(cid, dest, "n"))
    assert listing(existing) == ["mine.txt"] and (existing / "mine.txt").read_text() == "precious"
    assert listing(dest) == ["n.pvm"]
    assert registers(pdcat) == []


def test_corrupt_chunk_in_storage(backend, pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    needs_embedded(backend, "the server's data folder (to corrupt a stored chunk)")
    pdcat.push(make_bundle(tmp_path / "src"), cid, "1.0")
    chunks = [p for p in chunk_dir(backend.server.data_dir, cid).iterdir() if p.is_file()]
    assert len(chunks) > 8, "no stored chunks found for this catalog id"
    victim = max(chunks, key=lambda p: p.stat().st_size)
    with victim.open("r+b") as f:
        f.seek(victim.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))

    dest = tmp_path / "vms"
    r = pdcat.run(*pull_args(cid, dest, "n"))
    assert r.code == 1 and "Traceback" not in r.err
    # the last line is the reason; before it the client may log that it fetched the chunk once more
    reason = reason_lines(r.err)[-1]
    assert reason.startswith("pdcat: ") and "chunk" in reason and "corrupt" in reason
    assert listing(dest) == []  # no bundle, no .partial folder, no journal
    assert registers(pdcat) == []


# ---- API keys ---------------------------------------------------------------------------------
def test_api_key_lifecycle(backend, pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    pdcat.push(src, cid, "1.0")
    created = pdcat.json("apikey", "create", "--role", "USER", "--description", "e2e reader")
    assert created["key"] and created["id"] and "USER" in created["roles"]
    key_env: dict[str, str | None] = {"PDCAT_TOKEN": None, "PDCAT_API_KEY": created["key"]}

    items = pdcat.json("ls", env=key_env)["items"]
    assert cid in {i["catalog_id"] for i in items}
    line = pdcat.fail(*push_args(src, cid, "2.0"), env=key_env)
    assert "PUSH_CATALOG_MANIFEST" in line and "claim" in line
    listed = {k["id"]: k for k in pdcat.json("apikey", "ls")["items"]}
    assert created["id"] in listed and "key" not in listed[created["id"]]

    # as `gh auth token` does: stdout holds only the key, so KEY=$(pdcat apikey create ...) is usable as is
    plain = pdcat.ok("apikey", "create", "--role", "USER")
    assert "Shown only once" in plain.err and re.fullmatch(r"pdcat_\S+\n", plain.out)
    quiet = pdcat.ok("apikey", "create", "--role", "USER", "-q")
    assert quiet.err == "" and re.fullmatch(r"pdcat_\S+\n", quiet.out)
    assert cid in {
        i["catalog_id"]
        for i in pdcat.json("ls", env={"PDCAT_TOKEN": None, "PDCAT_API_KEY": quiet.out.strip()})["items"]
    }

    assert "Revoked" in pdcat.ok("apikey", "revoke", created["id"]).out
    assert "revoked" in pdcat.fail("ls", env=key_env)
    # a USER may not hand out keys
    user = token_env(backend, ["USER"], "e2e-user")
    assert "MANAGE_API_KEYS" in pdcat.fail("apikey", "create", "--role", "USER", env=dict(user))
