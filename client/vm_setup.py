"""The use case after a pull: set a pulled bundle up in Parallels Desktop, all of it or none of it.

``setup_pulled_vm`` registers the bundle, names it, gives it fresh MACs, hands it to its owner, clones it,
starts it and runs commands in the guest, in that order, and on any failure undoes what it did, last
first (but never deletes the pulled bundle, so the verified download survives). Every ``prlctl`` call
goes through the adapter, ``client.prlctl``; what pdcat passes and reads is in docs/prlctl.md.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.prlctl import Prlctl, PrlctlError, VmInfo, last_words, register_argv, same_path
from core.errors import InvalidInput, PdcatError

__all__ = [
    "ExecResult",
    "SetupResult",
    "VmSetup",
    "check_vm_setup",
    "manual_steps",
    "resolve_names",
    "setup_pulled_vm",
]


@dataclass(frozen=True)
class VmSetup:
    """What to do with a pulled bundle (the ``pdcat pull`` options and PDFile keywords).

    ``name`` defaults to the bundle's folder name, ``clone_name`` to ``<name>-clone``. With a clone, the
    pulled VM stays stopped as a pristine copy and ``start``/``execute`` apply to the clone (as the
    original product does). ``execute`` starts the VM if needed, waits up to ``exec_timeout`` seconds for
    the guest to answer, and leaves it running.
    """

    name: str | None = None
    owner: str | None = None
    start: bool = False
    clone: bool = False
    clone_name: str | None = None
    clone_destination: Path | None = None
    execute: tuple[str, ...] = ()
    exec_timeout: float = 300.0

    def __post_init__(self) -> None:
        if (self.clone_name or self.clone_destination) and not self.clone:
            raise InvalidInput("a clone name or destination needs clone=True")
        if not self.exec_timeout > 0:
            raise InvalidInput(f"the exec timeout must be more than 0 seconds, not {self.exec_timeout:g}")
        for label, value in (("VM name", self.name), ("clone name", self.clone_name), ("owner", self.owner)):
            if value is not None and (not value.strip() or "\n" in value or "/" in value):
                raise InvalidInput(f"invalid {label}: {value!r}")

    @property
    def needs_more_than_registering(self) -> bool:
        return bool(self.owner or self.start or self.clone or self.execute)


@dataclass(frozen=True)
class ExecResult:
    command: str
    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class SetupResult:
    vm_id: str
    name: str
    macs: Mapping[str, str]
    owner: str | None = None
    clone_id: str | None = None
    clone_name: str | None = None
    clone_macs: Mapping[str, str] = field(default_factory=dict)
    started: str | None = None  # the id of the VM that was started (the clone when there is one)
    outputs: tuple[ExecResult, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.vm_id,
            "name": self.name,
            "macs": dict(self.macs),
            "owner": self.owner,
            "clone": {"id": self.clone_id, "name": self.clone_name, "macs": dict(self.clone_macs)}
            if self.clone_id
            else None,
            "started": self.started,
            "executed": [{"command": o.command, "exit_code": o.code, "stdout": o.stdout} for o in self.outputs],
        }


def resolve_names(setup: VmSetup, default_name: str) -> tuple[str, str | None]:
    """The VM's name and its clone's (None without a clone)."""
    name = setup.name or default_name
    if not setup.clone:
        return name, None
    return name, setup.clone_name or f"{name}-clone"


def _owner_ids(owner: str) -> tuple[int, int]:
    import pwd  # POSIX only (imported here so the module loads anywhere); Parallels runs only on macOS

    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise InvalidInput(f"no such user: {owner}") from None
    return entry.pw_uid, entry.pw_gid


def _acting(prlctl: Prlctl, owner: str | None) -> Prlctl:
    """The runner that acts for ``owner`` (itself when the owner is whoever runs pdcat)."""
    if owner is None or _owner_ids(owner)[0] == os.geteuid():
        return prlctl
    return prlctl.as_user(owner)


def check_vm_setup(prlctl: Prlctl, setup: VmSetup, *, default_name: str) -> list[VmInfo]:
    """Refuse, before anything is downloaded or changed, what ``setup_pulled_vm`` could not finish.

    Parallels happily registers two VMs with one name; pdcat does not, so a name (or clone name) that the
    owner's Parallels already lists is refused here. Returns the VMs the owner has now.
    """
    name, clone_name = resolve_names(setup, default_name)
    if clone_name is not None and clone_name == name:
        raise InvalidInput(f"the clone needs a name other than {name!r}")
    if setup.owner is not None:
        uid, _ = _owner_ids(setup.owner)
        if uid != os.geteuid() and os.geteuid() != 0:
            raise InvalidInput(f"handing the VM to {setup.owner} needs root: run pdcat with sudo")
    if setup.clone_destination is not None:
        if not setup.clone_destination.is_dir():
            raise InvalidInput(f"clone destination {setup.clone_destination} is not a folder")
        taken = [p for p in (setup.clone_destination / f"{clone_name}{s}" for s in (".pvm", ".macvm")) if p.exists()]
        if taken:
            raise InvalidInput(f"{taken[0]} already exists; pick another clone name or destination")
    vms = _acting(prlctl, setup.owner).list_vms()
    existing = {vm.name: vm.id for vm in vms}
    for wanted in (name, clone_name):
        if wanted is not None and wanted in existing:
            raise InvalidInput(
                f"a VM named {wanted!r} already exists in Parallels Desktop ({existing[wanted]}); pick another name"
            )
    return vms


def _hand_over(bundle: Path, owner: str) -> None:
    """``chown -R OWNER:`` (the owner's primary group), symlinks themselves rather than their targets."""
    uid, gid = _owner_ids(owner)
    try:
        os.chown(bundle, uid, gid, follow_symlinks=False)
        for root, dirs, files in os.walk(bundle):
            for entry in dirs + files:
                os.chown(os.path.join(root, entry), uid, gid, follow_symlinks=False)
    except OSError as exc:
        raise PrlctlError(f"could not hand {bundle} to {owner}: {exc.strerror}") from exc


def manual_steps(bundle: Path, setup: VmSetup, *, default_name: str) -> str:
    """How to finish by hand what ``setup_pulled_vm`` would have done, as one line of shell."""
    name, clone_name = resolve_names(setup, default_name)
    as_owner = f"sudo -u {shlex.quote(setup.owner)} " if setup.owner else ""
    steps = []
    if setup.owner:
        steps.append(f"sudo chown -R {shlex.quote(setup.owner)} {shlex.quote(str(bundle))}")
    steps.append(f"{as_owner}prlctl register {shlex.quote(str(bundle))} --regenerate-src-uuid")
    then = [
        f"{as_owner}prlctl set UUID --name {shlex.quote(name)}",
        f"{as_owner}prlctl set UUID --device-set net0 --mac auto",
    ]
    target = "UUID"
    if clone_name is not None:
        dst = f" --dst {shlex.quote(str(setup.clone_destination))}" if setup.clone_destination else ""
        then.append(f"{as_owner}prlctl clone UUID --name {shlex.quote(clone_name)}{dst} --regenerate-src-uuid")
        target = shlex.quote(clone_name)
    if setup.start or setup.execute:
        then.append(f"{as_owner}prlctl start {target}")
    if setup.execute:
        then.append(f"{as_owner}prlctl exec {target} ... (each --exec command)")
    return "; ".join(steps) + ", then with the UUID that 'prlctl list -a' shows for it: " + "; ".join(then)


class _Undo:
    """What was done so far, undone last-first on failure (s3transfer's failure cleanups).

    Each action returns what it did ("" for nothing), so the error can say exactly what was undone.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], str]]] = []
        self.done: list[str] = []
        self.failed: list[str] = []

    def push(self, what: str, action: Callable[[], str]) -> None:
        self._steps.append((what, action))

    def run(self) -> None:
        while self._steps:
            what, action = self._steps.pop()
            try:
                did = action()
            except PdcatError as exc:
                self.failed.append(f"{what} ({exc.message})")
            else:
                if did:
                    self.done.append(did)


def _remove(prlctl: Prlctl, found: list[VmInfo], *, delete: bool) -> str:
    """Stop (hard) what is running, then unregister it (keeping its files) or delete it."""
    did = []
    for vm in found:
        if vm.status and vm.status != "stopped":
            prlctl.stop(vm.id, kill=True)
            did.append(f"stopped {vm.id}")
        if delete:
            prlctl.delete(vm.id)
            did.append(f"deleted {vm.name!r} ({vm.id})")
        else:
            prlctl.unregister(vm.id)
            did.append(f"unregistered {vm.id} (its files stay)")
    return ", ".join(did)


def setup_pulled_vm(prlctl: Prlctl, bundle: Path, setup: VmSetup) -> SetupResult:
    """Register a pulled bundle and set it up as ``setup`` says; all of it, or none of it but the bundle.

    Steps, in order: check (names free, owner known), hand the bundle to its owner, register it with a
    fresh UUID, rename it, regenerate its MACs, clone it (fresh MACs too), start the VM (the clone when there
    is one), wait for its guest and run the commands. A failure at any step undoes the earlier ones, last
    first: the started VM is stopped, the clone deleted, the registration removed (``unregister`` keeps the
    files); the pulled bundle itself is never deleted. The ``PrlctlError`` then says what failed, what was
    undone, and how to finish by hand.

    Ownership: Parallels Desktop keeps one VM list per macOS user and has no "owner" setting to change
    (``prlctl set`` has no such option). A VM belongs to a user when its bundle's files are theirs and it is
    registered in their list, which is what the original product does (``chown`` the folder, then
    ``sudo -u OWNER prlctl register``). So with ``owner`` set the bundle is ``chown -R``-ed to the owner
    (root only) and every prlctl call, the cleanup included, runs as ``sudo -n -u OWNER prlctl ...``. An
    owner who is the user running pdcat changes nothing.
    """
    name, clone_name = resolve_names(setup, bundle.stem)
    acting = prlctl
    undo = _Undo()
    step = "checking"
    vm_id = ""
    try:
        if not bundle.is_dir():
            raise PrlctlError(f"{bundle} is not a VM bundle folder")
        before = {vm.id for vm in check_vm_setup(prlctl, setup, default_name=bundle.stem)}
        acting = _acting(prlctl, setup.owner)
        if acting is not prlctl and setup.owner is not None:
            step = f"handing the bundle to {setup.owner}"
            _hand_over(bundle, setup.owner)

        step = "registering"
        undo.push(
            "unregister the VM",
            lambda: _remove(acting, [vm for vm in acting.list_info() if same_path(vm.home, bundle)], delete=False),
        )
        acting.run(register_argv(acting.exe, bundle))
        registered = acting.registered(bundle)
        vm_id = registered.id
        step = "naming the VM"
        acting.set_name(vm_id, name)
        step = "regenerating the MAC address"
        macs = acting.regenerate_macs(vm_id, registered.adapters)

        target, clone_id, clone_macs = vm_id, None, {}
        if clone_name is not None:
            step = "cloning"

            def clones() -> list[VmInfo]:
                """What this clone made (never the pulled bundle: that one is only ever unregistered)."""
                return [
                    vm
                    for vm in acting.list_info()
                    if vm.name == clone_name and vm.id not in before and not same_path(vm.home, bundle)
                ]

            undo.push(f"delete the clone {clone_name!r}", lambda: _remove(acting, clones(), delete=True))
            acting.clone(vm_id, clone_name, setup.clone_destination)
            made = clones()
            if len(made) != 1:
                raise PrlctlError(f"prlctl cloned {vm_id} but lists {len(made)} new VMs named {clone_name!r}")
            target = clone_id = made[0].id
            step = "regenerating the clone's MAC address"
            clone_macs = acting.regenerate_macs(clone_id, made[0].adapters)

        started = None
        if setup.start or setup.execute:
            step = "starting"
            acting.start(target)
            started = target

        outputs: list[ExecResult] = []
        if setup.execute:
            step = "waiting for the guest"
            acting.wait_for_guest(target, setup.exec_timeout)
            for i, command in enumerate(setup.execute, 1):
                step = f"running command {i} of {len(setup.execute)} in the guest"
                done = acting.exec(target, command)
                outputs.append(ExecResult(command, done.code, done.stdout, done.stderr))
                if done.code != 0:
                    words = last_words(done)
                    raise PrlctlError(f"it exited {done.code}" + (f": {words}" if words else ""))
    except BaseException as exc:
        undo.run()
        if not isinstance(exc, PdcatError):
            raise  # Ctrl-C and bugs go on, after the cleanup
        raise PrlctlError(_failure_message(step, exc.message, undo, bundle, setup)) from exc
    return SetupResult(
        vm_id=vm_id,
        name=name,
        macs=macs,
        owner=setup.owner,
        clone_id=clone_id,
        clone_name=clone_name,
        clone_macs=clone_macs,
        started=started,
        outputs=tuple(outputs),
    )


def _failure_message(step: str, reason: str, undo: _Undo, bundle: Path, setup: VmSetup) -> str:
    if step == "checking":  # nothing was done
        return f"NOT registered: {reason}; the verified bundle stays at {bundle}"
    head = "NOT set up" if undo.failed else "NOT registered"  # a failed undo may leave it registered
    parts = [f"{head}: {reason} (while {step})"]
    if undo.done:
        parts.append("undone: " + ", ".join(undo.done))
    if undo.failed:
        parts.append("could NOT " + ", ".join(undo.failed) + ": remove it by hand")
    parts.append(f"the verified bundle stays at {bundle}")
    parts.append("finish by hand: " + manual_steps(bundle, setup, default_name=bundle.stem))
    return "; ".join(parts)
