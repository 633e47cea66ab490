"""The Parallels adapter's pure half (argv builders, answer parsers, the wait-for-the-guest backoff on a fake
clock) and the pure parts of the VM-setup use case (names, the finish-by-hand line). No process is started here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import client.prlctl as prlctl_module
import client.vm_setup as vm_setup_module
from client.prlctl import (
    Completed,
    Prlctl,
    PrlctlError,
    adapter_macs,
    clone_argv,
    delete_argv,
    exec_argv,
    info_argv,
    list_argv,
    net_adapters,
    parse_vm_list,
    regenerate_mac_argv,
    register_argv,
    set_name_argv,
    start_argv,
    stop_argv,
    sudo_argv,
    unregister_argv,
)
from client.vm_setup import VmSetup, manual_steps, resolve_names
from core.errors import InvalidInput, PdcatError

EXE = "/Applications/Parallels Desktop.app/Contents/MacOS/prlctl"
TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "prlctl"  # their source: README.md there
VM = "{0b1e7a52-6c1d-4c2f-9a53-0d0c8a1b2c3d}"


def test_argv_follows_the_real_prlctl_syntax() -> None:
    bundle = Path("/Users/me/VMs/My VM.pvm")
    assert register_argv(EXE, bundle) == [EXE, "register", "/Users/me/VMs/My VM.pvm", "--regenerate-src-uuid"]
    assert set_name_argv(EXE, VM, "build agent 1") == [EXE, "set", VM, "--name", "build agent 1"]
    assert regenerate_mac_argv(EXE, VM) == [EXE, "set", VM, "--device-set", "net0", "--mac", "auto"]
    assert regenerate_mac_argv(EXE, VM, "net2")[3:5] == ["--device-set", "net2"]
    assert clone_argv(EXE, VM, "work") == [EXE, "clone", VM, "--name", "work", "--regenerate-src-uuid"]
    assert clone_argv(EXE, VM, "work", Path("/Volumes/fast")) == [
        EXE, "clone", VM, "--name", "work", "--dst", "/Volumes/fast", "--regenerate-src-uuid",
    ]  # fmt: skip
    assert start_argv(EXE, VM) == [EXE, "start", VM]
    assert stop_argv(EXE, VM) == [EXE, "stop", VM]
    assert stop_argv(EXE, VM, kill=True) == [EXE, "stop", VM, "--kill"]
    assert unregister_argv(EXE, VM) == [EXE, "unregister", VM]
    assert delete_argv(EXE, VM) == [EXE, "delete", VM]
    assert list_argv(EXE) == [EXE, "list", "-a", "--json"]
    assert list_argv(EXE, info=True) == [EXE, "list", "-a", "-i", "--json"]
    assert info_argv(EXE, VM) == [EXE, "list", VM, "-a", "-i", "--json"]  # as prl-devops-service asks


def test_exec_passes_a_shell_line_as_one_word_and_a_sequence_as_words() -> None:
    assert exec_argv(EXE, VM, "cd /tmp && ls -la 'a b'") == [EXE, "exec", VM, "cd /tmp && ls -la 'a b'"]
    assert exec_argv(EXE, VM, ("echo", "pdcat-ready")) == [EXE, "exec", VM, "echo", "pdcat-ready"]


def test_sudo_never_prompts_and_ends_its_options() -> None:
    inner = register_argv(EXE, Path("/v/a.pvm"))
    assert sudo_argv("/usr/bin/sudo", "alice", inner) == ["/usr/bin/sudo", "-n", "-u", "alice", "--", *inner]


def test_parse_vm_list_reads_both_list_shapes() -> None:
    short = json.dumps([{"uuid": VM, "status": "running", "ip_configured": "-", "name": "A"}])
    hardware = {"net1": {"mac": "001C42000001"}, "net0": {"mac": "001C42000000"}, "hdd0": {}}
    info = json.dumps([{"ID": VM, "Name": "A", "State": "stopped", "Home": "/v/a.pvm/", "Hardware": hardware}])
    assert [(v.id, v.name, v.status, v.home, v.adapters) for v in parse_vm_list(short)] == [
        (VM, "A", "running", "", ())
    ]
    assert [(v.id, v.name, v.status, v.home, v.adapters) for v in parse_vm_list(info)] == [
        (VM, "A", "stopped", "/v/a.pvm/", ("net0", "net1"))
    ]
    assert parse_vm_list("[]") == [] and parse_vm_list("{}") == [] and parse_vm_list('[1, {"name": "no id"}]') == []
    with pytest.raises(PrlctlError, match="did not answer JSON"):
        parse_vm_list("Failed to get VM config")


def transcript(name: str) -> str:
    return (TRANSCRIPTS / name).read_text()


def test_parse_the_transcripts_derived_from_prl_devops_service() -> None:
    macos, ubuntu = "{5c3a0d36-8f4e-4a8e-9b0a-6f3f2d1c9e71}", "{0b1e7a52-6c1d-4c2f-9a53-0d0c8a1b2c3d}"
    full = parse_vm_list(transcript("list-a-i-json.json"))
    assert [(v.id, v.name, v.status, v.home, v.adapters) for v in full] == [
        (macos, "macOS 15 runner", "running", "/Users/ci/Parallels/macOS 15 runner.pvm/", ("net0",)),
        (ubuntu, "ubuntu 24.04", "stopped", "/Users/ci/Parallels/ubuntu.pvm/", ("net0",)),
    ]
    rows = json.loads(transcript("list-a-i-json.json"))
    assert [adapter_macs(row) for row in rows] == [{"net0": "001C42A1B2C3"}, {"net0": "001C42D4E5F6"}]
    short = parse_vm_list(transcript("list-a-json.json"))
    assert [(v.id, v.name, v.status, v.home, v.adapters) for v in short] == [
        (macos, "macOS 15 runner", "running", "", ()),
        (ubuntu, "ubuntu 24.04", "stopped", "", ()),
    ]
    bulk = parse_vm_list(transcript("list-a-i-json-home-missing.json"))
    assert [(v.id, v.home) for v in bulk] == [(macos, ""), (ubuntu, "")]  # the bulk fetch without Home
    [alone] = parse_vm_list(transcript("list-vm-a-i-json.json"))
    assert (alone.id, alone.home) == (ubuntu, "/Users/ci/Parallels/ubuntu.pvm/")


def test_home_falls_back_to_the_folder_of_home_path_and_lowercase_home_is_not_read() -> None:
    row = {"ID": VM, "Name": "A", "State": "stopped", "Home": "", "Home path": "/v/a.pvm/config.pvs"}
    assert [v.home for v in parse_vm_list(json.dumps([row]))] == ["/v/a.pvm/"]
    short = {"uuid": VM, "status": "stopped", "ip_configured": "-", "name": "A", "home": "/v/a.pvm"}
    assert [v.home for v in parse_vm_list(json.dumps([short]))] == [""]  # no real list has "home"
    nulls = {"ID": VM, "Name": None, "State": None, "Home": None, "Hardware": None}
    assert [(v.name, v.status, v.home, v.adapters) for v in parse_vm_list(json.dumps([nulls]))] == [("", "", "", ())]


@dataclass(frozen=True)
class ScriptedList(Prlctl):
    """A Prlctl whose ``run`` answers ``list`` from the transcripts (and fails for a VM it is told is gone)."""

    gone: tuple[str, ...] = ()
    calls: list[list[str]] = field(default_factory=list)

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None) -> Completed:
        self.calls.append(list(argv[1:]))
        if list(argv) == list_argv(EXE, info=True):
            return Completed(0, transcript("list-a-i-json-home-missing.json"), "")
        vm = argv[2]
        if vm in self.gone:
            raise PrlctlError("prlctl list failed: Failed to get VM config: The virtual machine could not be found.")
        rows = [row for row in json.loads(transcript("list-a-i-json.json")) if row["ID"] == vm]
        return Completed(0, json.dumps(rows), "")


def test_list_info_asks_for_each_vm_whose_home_the_bulk_list_left_out() -> None:
    macos, ubuntu = "{5c3a0d36-8f4e-4a8e-9b0a-6f3f2d1c9e71}", "{0b1e7a52-6c1d-4c2f-9a53-0d0c8a1b2c3d}"
    prlctl = ScriptedList(EXE, gone=(macos,))
    got = prlctl.list_info()
    assert [(v.id, v.home) for v in got] == [(macos, ""), (ubuntu, "/Users/ci/Parallels/ubuntu.pvm/")]
    assert prlctl.calls == [["list", "-a", "-i", "--json"], info_argv(EXE, macos)[1:], info_argv(EXE, ubuntu)[1:]]
    assert prlctl.registered(Path("/Users/ci/Parallels/ubuntu.pvm")).id == ubuntu


def test_network_adapters_and_their_macs_in_numeric_order() -> None:
    row = {
        "Hardware": {
            "cpu": {"cpus": 2},
            "net10": {"mac": "001C420000AA"},
            "net2": {"mac": "001C420000BB"},
            "net0": {"mac": "001C420000CC", "type": "shared"},
            "hdd0": {},
            "netx": {},
        }
    }
    assert net_adapters(row) == ["net0", "net2", "net10"]
    assert adapter_macs(row) == {"net0": "001C420000CC", "net2": "001C420000BB", "net10": "001C420000AA"}
    assert net_adapters({}) == [] and net_adapters({"Hardware": "n/a"}) == [] and adapter_macs({}) == {}


def test_names_default_to_the_bundle_and_the_clone_to_name_clone() -> None:
    assert resolve_names(VmSetup(), "ubuntu") == ("ubuntu", None)
    assert resolve_names(VmSetup(name="dev"), "ubuntu") == ("dev", None)
    assert resolve_names(VmSetup(name="dev", clone=True), "ubuntu") == ("dev", "dev-clone")
    assert resolve_names(VmSetup(clone=True, clone_name="work"), "ubuntu") == ("ubuntu", "work")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"clone_name": "x"}, "needs clone=True"),
        ({"clone_destination": Path("/tmp")}, "needs clone=True"),
        ({"exec_timeout": 0}, "more than 0 seconds"),
        ({"exec_timeout": -1.5}, "more than 0 seconds"),
        ({"name": "  "}, "invalid VM name"),
        ({"name": "a/b"}, "invalid VM name"),
        ({"clone": True, "clone_name": "x\ny"}, "invalid clone name"),
        ({"owner": ""}, "invalid owner"),
    ],
)
def test_a_setup_that_cannot_work_is_refused_up_front(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        VmSetup(**kwargs)  # type: ignore[arg-type]


def test_needs_more_than_registering() -> None:
    assert not VmSetup(name="n").needs_more_than_registering
    for setup in (VmSetup(start=True), VmSetup(owner="bob"), VmSetup(clone=True), VmSetup(execute=("true",))):
        assert setup.needs_more_than_registering


def test_manual_steps_say_how_to_finish_by_hand() -> None:
    bundle = Path("/v/My VM.pvm")
    plain = manual_steps(bundle, VmSetup(), default_name="My VM")
    assert plain.startswith("prlctl register '/v/My VM.pvm' --regenerate-src-uuid, then")
    assert "prlctl set UUID --name 'My VM'" in plain and "prlctl set UUID --device-set net0 --mac auto" in plain
    assert "start" not in plain and "clone" not in plain and "sudo" not in plain

    full = VmSetup(
        name="dev", owner="alice", clone=True, clone_destination=Path("/w"), start=True, execute=("echo secret-ish",)
    )
    steps = manual_steps(bundle, full, default_name="My VM")
    assert steps.startswith("sudo chown -R alice '/v/My VM.pvm'; sudo -u alice prlctl register '/v/My VM.pvm'")
    assert "sudo -u alice prlctl clone UUID --name dev-clone --dst /w --regenerate-src-uuid" in steps
    assert "sudo -u alice prlctl start dev-clone" in steps and "prlctl exec dev-clone" in steps
    assert "secret-ish" not in steps  # commands are not echoed back: they may carry credentials


# ---- waiting for the guest, on a fake clock -----------------------------------------------------
@dataclass(frozen=True)
class ScriptedGuest(Prlctl):
    """A Prlctl whose ``exec`` answers from a script (a fake that subclasses the port)."""

    answers: list[Completed | PrlctlError] = field(default_factory=list)
    calls: list[tuple[str, tuple[str, ...], float | None]] = field(default_factory=list)

    def exec(self, vm: str, command: str | Sequence[str], *, timeout: float | None = None) -> Completed:
        self.calls.append((vm, tuple([command] if isinstance(command, str) else command), timeout))
        answer = self.answers.pop(0) if self.answers else Completed(1, "", "Parallels Tools are not running")
        if isinstance(answer, PdcatError):
            raise answer
        return answer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_for_guest_polls_with_backoff_until_the_guest_answers() -> None:
    not_yet = Completed(1, "", "Failed to execute the command: Parallels Tools are not running.")
    guest = ScriptedGuest(EXE, answers=[not_yet, PrlctlError("prlctl exec did not finish"), not_yet, not_yet,
                                        Completed(0, "pdcat-ready\n", "")])  # fmt: skip
    clock = FakeClock()
    assert guest.wait_for_guest(VM, 60, clock=clock, sleep=clock.sleep) == 5
    assert clock.sleeps == [0.2, 0.4, 0.8, 1.6]
    assert all(call[:2] == (VM, ("echo", "pdcat-ready")) for call in guest.calls)
    assert all(t is not None and 0 < t <= 60 for _, _, t in guest.calls)  # no probe outlives the deadline


def test_wait_for_guest_caps_the_backoff_and_times_out_with_prlctls_last_words() -> None:
    guest = ScriptedGuest(EXE)
    clock = FakeClock()
    with pytest.raises(PrlctlError) as caught:
        guest.wait_for_guest(VM, 20, clock=clock, sleep=clock.sleep)
    last = "Parallels Tools are not running"
    assert caught.value.message == f"the guest of {VM} did not answer within 20s (last: {last})"
    assert max(clock.sleeps) == 5.0 and clock.now == pytest.approx(1020.0)  # never sleeps past the deadline
    assert len(guest.calls) == len(clock.sleeps) == 8  # a probe, then a pause, until the deadline


def test_public_names_are_pinned() -> None:
    adapter = {"Prlctl", "PrlctlError", "find_prlctl", "register_argv", "set_name_argv"}
    use_case = {"VmSetup", "SetupResult", "setup_pulled_vm", "check_vm_setup", "manual_steps"}
    assert adapter <= set(prlctl_module.__all__)
    assert use_case <= set(vm_setup_module.__all__)
    assert not use_case & set(prlctl_module.__all__)  # the adapter's surface is the adapter
    for module in (prlctl_module, vm_setup_module):
        for name in module.__all__:
            assert hasattr(module, name), name
