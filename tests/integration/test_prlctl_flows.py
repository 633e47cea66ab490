"""client.vm_setup and client.prlctl against the fake ``prlctl`` executable (tests/fakes): the whole set-up of
a pulled VM, two pulls side by side, refused names, a failure at every step (nothing left registered, the
bundle kept), ownership through sudo, and waiting for the guest.

The owner tests hand a bundle to the ``nobody`` user with a real ``chown``, so they need root (as the
reflink tests in test_clone.py do): they fail, never skip, when run without it.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from client.prlctl import Prlctl, PrlctlError
from client.vm_setup import VmSetup, check_vm_setup, setup_pulled_vm
from core.errors import InvalidInput

REPO = Path(__file__).resolve().parents[2]
FAKE_PRLCTL = REPO / "tests" / "fakes" / "prlctl"
FAKE_SUDO = REPO / "tests" / "fakes" / "sudo"
TRANSCRIPTS = REPO / "tests" / "data" / "prlctl"  # derived from prl-devops-service: see README.md there
BUNDLE_MAC = "001C42AB12CD"
OTHER = "nobody"


def make_bundle(parent: Path, folder: str, vm_name: str = "Golden", macs: tuple[str, ...] = (BUNDLE_MAC,)) -> Path:
    """A small VM bundle as Parallels leaves it: config.pvs naming the VM and its adapters' MACs."""
    bundle = parent / f"{folder}.pvm"
    (bundle / "harddisk.hdd").mkdir(parents=True)
    adapters = "".join(f"<NetworkAdapter id='{i}'><MAC>{mac}</MAC></NetworkAdapter>" for i, mac in enumerate(macs))
    (bundle / "config.pvs").write_text(
        f"<ParallelsVirtualMachine><Identification><VmName>{vm_name}</VmName></Identification>"
        f"<Hardware>{adapters}</Hardware></ParallelsVirtualMachine>\n"
    )
    (bundle / "harddisk.hdd" / "disk.hds").write_bytes(os.urandom(4096))
    (bundle / "disk.link").symlink_to("harddisk.hdd/disk.hds")
    return bundle


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: file bytes, symlink targets, "dir" for folders."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = os.readlink(path) if path.is_symlink() else ("dir" if path.is_dir() else path.read_bytes())
    return out


@dataclass
class Parallels:
    """What the fake Parallels knows, read back through the fake itself."""

    tmp: Path
    log: Path

    def prlctl(self) -> Prlctl:
        return Prlctl(str(FAKE_PRLCTL), timeout=60, sudo=str(FAKE_SUDO))

    def ask(self, *args: str, user: str | None = None) -> Any:
        env = {**os.environ, "PDCAT_FAKE_PRLCTL_LOG": str(self.tmp / "inspect.log")}
        env.pop("PDCAT_FAKE_PRLCTL_FAIL", None)
        if user:
            env["PDCAT_FAKE_PRLCTL_USER"] = user
        done = subprocess.run([str(FAKE_PRLCTL), *args], env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    def vms(self, user: str | None = None) -> list[dict[str, Any]]:
        """``prlctl list -a -i --json``: every VM of that user, with its state, home and adapters."""
        rows: list[dict[str, Any]] = self.ask("list", "-a", "-i", "--json", user=user)
        return rows

    def users_and_calls(self) -> list[tuple[str | None, list[str]]]:
        """Every prlctl call: the user it acted for (None: whoever ran it) and its argv after ``prlctl``."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [(entry.get("user"), entry["argv"]) for entry in map(json.loads, lines)]

    def calls(self) -> list[list[str]]:
        return [argv for _, argv in self.users_and_calls()]


@pytest.fixture
def parallels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Parallels]:
    for name in (
        "PDCAT_FAKE_PRLCTL_FAIL",
        "PDCAT_FAKE_PRLCTL_BOOT_SECONDS",
        "PDCAT_FAKE_PRLCTL_USER",
        "PDCAT_FAKE_PRLCTL_BULK_HOME_EMPTY",
        "PDCAT_SUDO",
    ):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "parallels"
    state.mkdir()
    monkeypatch.setenv("PDCAT_FAKE_PRLCTL_STATE", str(state / "state.json"))
    monkeypatch.setenv("PDCAT_FAKE_PRLCTL_LOG", str(state / "calls.jsonl"))
    yield Parallels(state, state / "calls.jsonl")


def mac_of(vm: dict[str, Any]) -> str:
    return str(vm["Hardware"]["net0"]["mac"])


def needs_root() -> None:
    assert os.geteuid() == 0, "handing a VM to another user needs root: run this test as root (CI does)"


# ---- the happy paths ------------------------------------------------------------------------------
def test_every_option_at_once(parallels: Parallels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_root()
    monkeypatch.setenv("PDCAT_FAKE_PRLCTL_BOOT_SECONDS", "2")
    bundle = make_bundle(tmp_path / "vms", "ubuntu", macs=(BUNDLE_MAC, "001C42AB12CE"))
    clones = tmp_path / "clones"
    clones.mkdir()
    setup = VmSetup(
        name="ci runner",
        owner=OTHER,
        start=True,
        clone=True,
        clone_name="ci runner work",
        clone_destination=clones,
        execute=("echo hello > greeting.txt", "cat greeting.txt"),
        exec_timeout=15,
    )
    began = time.monotonic()
    got = setup_pulled_vm(parallels.prlctl(), bundle, setup)
    assert time.monotonic() - began >= 2  # it waited for the guest to boot

    assert parallels.vms() == []  # nothing in root's own list: the VMs are the owner's
    vms = {vm["ID"]: vm for vm in parallels.vms(user=OTHER)}
    assert set(vms) == {got.vm_id, got.clone_id}
    vm, clone = vms[got.vm_id], vms[str(got.clone_id)]
    assert (vm["Name"], vm["State"], vm["Home"]) == ("ci runner", "stopped", f"{bundle}/")
    assert (clone["Name"], clone["State"]) == ("ci runner work", "running")  # the clone runs, the pulled VM rests
    assert clone["Home"] == f"{clones}/ci runner work.pvm/"
    old = {BUNDLE_MAC, "001C42AB12CE"}
    vm_macs = {vm["Hardware"][n]["mac"] for n in ("net0", "net1")}
    clone_macs = {clone["Hardware"][n]["mac"] for n in ("net0", "net1")}
    assert len(vm_macs | clone_macs | old) == 6  # every adapter of both got a MAC of its own
    assert dict(got.macs) == {"net0": vm["Hardware"]["net0"]["mac"], "net1": vm["Hardware"]["net1"]["mac"]}
    assert dict(got.clone_macs) == {"net0": clone["Hardware"]["net0"]["mac"], "net1": clone["Hardware"]["net1"]["mac"]}
    assert (got.name, got.clone_name, got.owner, got.started) == ("ci runner", "ci runner work", OTHER, got.clone_id)
    assert [(o.command, o.code, o.stdout) for o in got.outputs] == [
        ("echo hello > greeting.txt", 0, ""),
        ("cat greeting.txt", 0, "hello\n"),  # the second command saw what the first one left in the guest
    ]

    owner = pwd.getpwnam(OTHER)
    for path in [bundle, *bundle.rglob("*")]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (owner.pw_uid, owner.pw_gid), path

    calls = parallels.calls()
    assert {user for user, _ in parallels.users_and_calls()} == {OTHER}  # every call ran as the owner
    subcommands = [argv[0] for argv in calls]
    assert subcommands.index("register") < subcommands.index("clone") < subcommands.index("start")
    assert calls[subcommands.index("register")] == ["register", str(bundle), "--regenerate-src-uuid"]
    assert ["set", got.vm_id, "--name", "ci runner"] in calls
    for vm_id in (got.vm_id, got.clone_id):
        for adapter in ("net0", "net1"):
            assert ["set", vm_id, "--device-set", adapter, "--mac", "auto"] in calls
    assert ["clone", got.vm_id, "--name", "ci runner work", "--dst", str(clones), "--regenerate-src-uuid"] in calls
    assert ["start", got.clone_id] in calls and ["start", got.vm_id] not in calls
    probes = [argv for argv in calls if argv == ["exec", got.clone_id, "echo", "pdcat-ready"]]
    assert len(probes) >= 2  # the first probe came before the guest was up
    assert calls[-2:] == [["exec", got.clone_id, setup.execute[0]], ["exec", got.clone_id, "cat greeting.txt"]]


def test_two_pulls_of_one_version_side_by_side(parallels: Parallels, tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "one", "ubuntu")
    b = make_bundle(tmp_path / "two", "ubuntu")
    assert (a / "config.pvs").read_bytes() == (b / "config.pvs").read_bytes()  # same VM, same MAC inside
    first = setup_pulled_vm(parallels.prlctl(), a, VmSetup(name="ubuntu 1"))
    second = setup_pulled_vm(parallels.prlctl(), b, VmSetup())  # the name defaults to the folder's
    vms = {vm["ID"]: vm for vm in parallels.vms()}
    assert len(vms) == 2 and first.vm_id != second.vm_id
    assert (vms[first.vm_id]["Name"], vms[second.vm_id]["Name"]) == ("ubuntu 1", "ubuntu")
    macs = {mac_of(vm) for vm in vms.values()}
    assert len(macs) == 2 and BUNDLE_MAC not in macs
    assert {first.macs["net0"], second.macs["net0"]} == macs
    assert first.started is None and first.clone_id is None and first.outputs == ()
    assert all(vm["State"] == "stopped" for vm in vms.values())
    assert not any(argv[0] in ("start", "clone", "exec") for argv in parallels.calls())


def test_execute_alone_starts_the_vm_and_leaves_it_running(parallels: Parallels, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "vm")
    got = setup_pulled_vm(parallels.prlctl(), bundle, VmSetup(execute=("uname -s",), exec_timeout=10))
    [vm] = parallels.vms()
    assert vm["State"] == "running" and got.started == got.vm_id == vm["ID"]
    assert [o.stdout.strip() for o in got.outputs] == [os.uname().sysname]


def test_clone_without_a_name_is_named_after_the_vm(parallels: Parallels, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "base")
    got = setup_pulled_vm(parallels.prlctl(), bundle, VmSetup(name="base", clone=True))
    assert got.clone_name == "base-clone"
    names = {vm["Name"]: vm["Home"] for vm in parallels.vms()}
    assert names == {"base": f"{bundle}/", "base-clone": f"{tmp_path}/base-clone.pvm/"}  # next to it, in the fake


# ---- refusals before anything is done -------------------------------------------------------------
def test_a_name_in_use_is_refused_before_anything_is_done(parallels: Parallels, tmp_path: Path) -> None:
    prlctl = parallels.prlctl()
    first = setup_pulled_vm(prlctl, make_bundle(tmp_path / "a", "x"), VmSetup(name="taken"))
    before = parallels.calls()
    bundle = make_bundle(tmp_path / "b", "x")
    kept = tree(bundle)
    for setup in (VmSetup(name="taken"), VmSetup(name="free", clone=True, clone_name="taken")):
        with pytest.raises(InvalidInput) as refused:
            check_vm_setup(prlctl, setup, default_name="x")
        said = refused.value.message
        assert said.startswith(f"a VM named 'taken' already exists in Parallels Desktop ({first.vm_id})")
        with pytest.raises(PrlctlError) as caught:
            setup_pulled_vm(prlctl, bundle, setup)
        line = caught.value.message
        assert line.startswith("NOT registered: a VM named 'taken' already exists") and str(bundle) in line
        assert "\n" not in line and "finish by hand" not in line  # nothing to finish: pick another name
    assert [vm["ID"] for vm in parallels.vms()] == [first.vm_id]
    assert {argv[0] for argv in parallels.calls()[len(before) :]} == {"list"}  # only looked
    assert tree(bundle) == kept


def test_other_setups_that_cannot_work_are_refused_up_front(parallels: Parallels, tmp_path: Path) -> None:
    prlctl = parallels.prlctl()
    with pytest.raises(InvalidInput, match="clone needs a name other than 'n'"):
        check_vm_setup(prlctl, VmSetup(name="n", clone=True, clone_name="n"), default_name="x")
    with pytest.raises(InvalidInput, match="no such user: no-such-user-pdcat"):
        check_vm_setup(prlctl, VmSetup(owner="no-such-user-pdcat"), default_name="x")
    with pytest.raises(InvalidInput, match="is not a folder"):
        check_vm_setup(prlctl, VmSetup(clone=True, clone_destination=tmp_path / "nope"), default_name="x")
    (tmp_path / "x-clone.pvm").mkdir()
    with pytest.raises(InvalidInput, match=r"x-clone\.pvm already exists"):
        check_vm_setup(prlctl, VmSetup(clone=True, clone_destination=tmp_path), default_name="x")
    assert parallels.calls() == []  # refused without asking Parallels anything


# ---- a failure at any step leaves nothing behind but the bundle ---------------------------------
FULL = {"name": "vm", "clone": True, "clone_name": "work", "start": True, "execute": ("true", "exit 3")}


@pytest.mark.parametrize(
    ("fail", "setup", "words", "undone"),
    [
        ("register", {"name": "vm"}, "prlctl register failed: Failed to register the VM: simulated", []),
        ("set:--name", {"name": "vm"}, "prlctl set failed: Failed to set the VM: simulated", ["unregistered"]),
        ("set:--mac", {"name": "vm"}, "(while regenerating the MAC address)", ["unregistered"]),
        ("clone", FULL, "prlctl clone failed: Failed to clone the VM: simulated", ["unregistered"]),
        ("set:--mac#2", FULL, "(while regenerating the clone's MAC address)", ["deleted 'work'", "unregistered"]),
        ("start", FULL, "prlctl start failed: Failed to start the VM: simulated", ["deleted 'work'", "unregistered"]),
        ("", FULL, "it exited 3 (while running command 2 of 2 in the guest)", ["stopped", "deleted", "unregistered"]),
    ],
)
def test_a_failure_midway_is_undone_and_the_bundle_kept(
    parallels: Parallels,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail: str,
    setup: dict[str, Any],
    words: str,
    undone: list[str],
) -> None:
    bundle = make_bundle(tmp_path / "vms", "vm")
    kept = tree(bundle)
    clones = tmp_path / "clones"
    clones.mkdir()
    if setup.get("clone"):
        setup = {**setup, "clone_destination": clones}
    monkeypatch.setenv("PDCAT_FAKE_PRLCTL_FAIL", fail)
    with pytest.raises(PrlctlError) as caught:
        setup_pulled_vm(parallels.prlctl(), bundle, VmSetup(**setup))
    line = caught.value.message
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("NOT registered: ") and words in line, line
    assert f"the verified bundle stays at {bundle}" in line
    assert f"finish by hand: prlctl register {bundle} --regenerate-src-uuid" in line
    said = line.split("undone: ")[1].split(";")[0] if "undone: " in line else ""
    assert [w for w in undone if w in said] == undone, said
    assert ("undone: " in line) == bool(undone) and "could NOT" not in line

    assert parallels.vms() == []  # nothing registered, nothing running
    assert tree(bundle) == kept  # the verified download is untouched
    assert list(clones.iterdir()) == []  # the clone is gone with its files


def test_a_cleanup_that_fails_is_reported_not_hidden(
    parallels: Parallels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = make_bundle(tmp_path, "vm")
    monkeypatch.setenv("PDCAT_FAKE_PRLCTL_FAIL", "set:--name,unregister")
    with pytest.raises(PrlctlError) as caught:
        setup_pulled_vm(parallels.prlctl(), bundle, VmSetup(name="vm"))
    line = caught.value.message
    assert line.startswith("NOT set up: prlctl set failed")
    assert "could NOT unregister the VM (prlctl unregister failed: Failed to unregister the VM: simulated" in line
    assert "remove it by hand" in line and "undone: " not in line
    [left] = parallels.vms()
    assert left["Home"] == f"{bundle}/"  # honestly reported: it is still registered
    assert bundle.is_dir()


def test_ctrl_c_midway_is_cleaned_up_too(parallels: Parallels, tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Interrupted(Prlctl):
        def start(self, vm: str) -> None:
            raise KeyboardInterrupt

    bundle = make_bundle(tmp_path, "vm")
    with pytest.raises(KeyboardInterrupt):
        setup_pulled_vm(Interrupted(str(FAKE_PRLCTL)), bundle, VmSetup(start=True))
    assert parallels.vms() == [] and bundle.is_dir()


# ---- waiting for the guest ----------------------------------------------------------------------
def test_exec_waits_for_the_guest_then_times_out_cleanly(
    parallels: Parallels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDCAT_FAKE_PRLCTL_BOOT_SECONDS", "30")
    bundle = make_bundle(tmp_path, "slow")
    began = time.monotonic()
    with pytest.raises(PrlctlError) as caught:
        setup_pulled_vm(parallels.prlctl(), bundle, VmSetup(execute=("touch ran",), exec_timeout=3))
    took = time.monotonic() - began
    line = caught.value.message
    assert "did not answer within 3s (last: Failed to execute the command: Parallels Tools are not running" in line
    assert "(while waiting for the guest)" in line and "undone: stopped {" in line and "unregistered {" in line
    assert 3 <= took < 40  # the deadline holds (the rest is the cleanup, slow only on a loaded machine)
    assert parallels.vms() == [] and bundle.is_dir()
    probes = [argv for argv in parallels.calls() if argv[0] == "exec"]
    assert 2 <= len(probes) <= 8 and all(argv[2:] == ["echo", "pdcat-ready"] for argv in probes)  # backoff, no spin


def shape(value: Any) -> Any:
    """The keys (in order) and value types of a JSON answer, without the values."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def test_the_fake_answers_with_the_keys_of_the_transcripts(parallels: Parallels, tmp_path: Path) -> None:
    """The fake's ``list`` rows have the shape of tests/data/prlctl (prl-devops-service's Go structs)."""
    prlctl = parallels.prlctl()
    vm = prlctl.register(make_bundle(tmp_path, "vm"))
    [row] = parallels.ask("list", "-a", "-i", "--json")
    stopped = json.loads((TRANSCRIPTS / "list-a-i-json.json").read_text())[1]  # one adapter, stopped, no IP
    assert stopped["State"] == "stopped" and shape(row) == shape(stopped)
    assert [row] == parallels.ask("list", vm, "-a", "-i", "--json")  # one VM: the same row
    assert row["Home"] == f"{tmp_path}/vm.pvm/" and row["Home path"] == f"{tmp_path}/vm.pvm/config.pvs"

    [short] = parallels.ask("list", "-a", "--json")
    [real_short, _] = json.loads((TRANSCRIPTS / "list-a-json.json").read_text())
    assert list(short)[:4] == list(real_short) and list(short)[4:] == ["home"]  # "home": the fake's own, for tests
    assert (short["uuid"], short["status"], short["name"]) == (vm, "stopped", "Golden")


def test_a_bulk_list_without_home_still_finds_the_registered_vm(
    parallels: Parallels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDCAT_FAKE_PRLCTL_BULK_HOME_EMPTY", "1")
    bundle = make_bundle(tmp_path, "vm")
    got = setup_pulled_vm(parallels.prlctl(), bundle, VmSetup(name="found", clone=True))
    rows = parallels.ask("list", "-a", "-i", "--json")
    assert {r["Home"] for r in rows} == {""} and len(rows) == 2  # the bulk list still hides both
    vms = {vm["ID"]: vm for vm in (parallels.ask("list", r["ID"], "-a", "-i", "--json")[0] for r in rows)}
    assert vms[got.vm_id]["Name"] == "found" and vms[got.vm_id]["Home"] == f"{bundle}/"
    assert vms[str(got.clone_id)]["Home"] == f"{tmp_path}/found-clone.pvm/"
    assert ["list", got.vm_id, "-a", "-i", "--json"] in parallels.calls()  # asked for the VM alone


def test_the_fake_exec_behaves_like_the_real_one(parallels: Parallels, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "vm")
    prlctl = parallels.prlctl()
    vm = prlctl.register(bundle)
    stopped = prlctl.exec(vm, "true")
    assert stopped.code == 1 and "The virtual machine is not running" in stopped.stderr
    prlctl.start(vm)
    ran = prlctl.exec(vm, "echo out; echo err >&2; exit 7")
    assert (ran.code, ran.stdout, ran.stderr.strip()) == (7, "out\n", "err")
    with pytest.raises(PrlctlError, match="prlctl start failed: Failed to start the VM: The virtual machine is alr"):
        prlctl.start(vm)
    with pytest.raises(PrlctlError, match=r"prlctl unregister failed: .*running; stop it first"):
        prlctl.unregister(vm)


# ---- ownership ----------------------------------------------------------------------------------
def test_the_owner_sees_the_vm_and_runs_its_cleanup(
    parallels: Parallels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_root()
    bundle = make_bundle(tmp_path, "theirs")
    monkeypatch.setenv("PDCAT_FAKE_PRLCTL_FAIL", "start")
    with pytest.raises(PrlctlError) as caught:
        setup_pulled_vm(parallels.prlctl(), bundle, VmSetup(owner=OTHER, start=True))
    line = caught.value.message
    assert "undone: unregistered {" in line
    assert f"finish by hand: sudo chown -R {OTHER} {bundle}; sudo -u {OTHER} prlctl register {bundle}" in line
    assert parallels.vms(user=OTHER) == [] and parallels.vms() == []
    unregisters = [(user, argv[0]) for user, argv in parallels.users_and_calls() if argv[0] == "unregister"]
    assert unregisters == [(OTHER, "unregister")]  # cleaned up as the owner
    assert bundle.stat().st_uid == pwd.getpwnam(OTHER).pw_uid  # kept, and already handed over for the retry

    # the owner's own name space: a name only root uses is free for them, and theirs is refused
    root_vm = setup_pulled_vm(parallels.prlctl(), make_bundle(tmp_path / "r", "mine"), VmSetup(name="shared"))
    monkeypatch.delenv("PDCAT_FAKE_PRLCTL_FAIL")
    theirs = setup_pulled_vm(parallels.prlctl(), bundle, VmSetup(name="shared", owner=OTHER))
    assert [vm["ID"] for vm in parallels.vms()] == [root_vm.vm_id]
    assert [vm["ID"] for vm in parallels.vms(user=OTHER)] == [theirs.vm_id]
    with pytest.raises(InvalidInput, match="a VM named 'shared' already exists"):
        check_vm_setup(parallels.prlctl(), VmSetup(name="shared", owner=OTHER), default_name="x")


def test_an_owner_who_is_the_caller_needs_no_sudo(parallels: Parallels, tmp_path: Path) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    bundle = make_bundle(tmp_path, "mine")
    got = setup_pulled_vm(Prlctl(str(FAKE_PRLCTL), sudo="/nonexistent/sudo"), bundle, VmSetup(owner=me))
    assert got.owner == me and [vm["ID"] for vm in parallels.vms()] == [got.vm_id]
    assert {user for user, _ in parallels.users_and_calls()} == {None}  # no sudo
