"""The Parallels adapter: every ``prlctl`` call pdcat makes goes through here (DESIGN §6).

Argv is built by pure functions (``*_argv``); one runner (``Prlctl.run``) executes it and turns any
failure into a one-line ``PrlctlError`` carrying prlctl's own words. ``setup_pulled_vm`` is the one
use case: after a pull it registers the bundle, names it, gives it fresh MACs, hands it to its owner,
clones it, starts it and runs commands in the guest, in that order, and on any failure undoes what it
did (but never deletes the pulled bundle, so the verified download survives).

``PDCAT_PRLCTL`` overrides the executable and ``PDCAT_SUDO`` the ``sudo`` used to act as another user;
tests put a fake ``prlctl`` (``tests/fakes/prlctl``) first on PATH and a fake ``sudo`` next to it.

Syntax, as in Parallels Desktop's command-line reference and ``prlctl --help``:

- ``prlctl register PATH --regenerate-src-uuid``: a fresh source UUID, so two pulls of one version can be
  registered side by side.
- ``prlctl set VM --device-set netN --mac auto``: "auto" makes Parallels generate a new MAC address
  (``--mac <addr|auto>`` among the network adapter options; also the ``prlctl`` usage text of
  OpenVZ/prlctl). Without it both copies of a pulled VM would answer on one MAC address.
- ``prlctl clone VM --name N [--dst DIR] --regenerate-src-uuid`` (as vagrant-parallels clones its boxes),
  ``prlctl exec VM CMD`` (run through the guest's shell), ``prlctl stop VM --kill``, ``prlctl unregister VM``
  (keeps the files), ``prlctl delete VM`` (removes them), ``prlctl list -a [-i] --json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.errors import InvalidInput, PdcatError

__all__ = [
    "Completed",
    "ExecResult",
    "Prlctl",
    "PrlctlError",
    "PrlctlTimeout",
    "SetupResult",
    "VmInfo",
    "VmSetup",
    "adapter_macs",
    "check_vm_setup",
    "clone_argv",
    "delete_argv",
    "exec_argv",
    "find_prlctl",
    "find_sudo",
    "info_argv",
    "list_argv",
    "manual_steps",
    "net_adapters",
    "parse_vm_list",
    "regenerate_mac_argv",
    "register_argv",
    "resolve_names",
    "set_name_argv",
    "setup_pulled_vm",
    "start_argv",
    "stop_argv",
    "sudo_argv",
    "unregister_argv",
]

log = logging.getLogger(__name__)

READY_PROBE = ("echo", "pdcat-ready")  # any guest shell (sh, cmd.exe) answers this
_NET = re.compile(r"net\d+")


class PrlctlError(PdcatError):
    """prlctl (or setting a VM up through it) failed; the message carries prlctl's own words."""


class PrlctlTimeout(PrlctlError):
    """prlctl did not finish in time (and was killed)."""


def find_prlctl() -> str | None:
    override = os.environ.get("PDCAT_PRLCTL")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("prlctl")


def find_sudo() -> str | None:
    override = os.environ.get("PDCAT_SUDO")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("sudo")


# ---- argv (pure) ------------------------------------------------------------------------------
def register_argv(exe: str, bundle: Path) -> list[str]:
    """A fresh UUID, so two pulls of one version can be registered side by side."""
    return [exe, "register", str(bundle), "--regenerate-src-uuid"]


def set_name_argv(exe: str, vm: str, name: str) -> list[str]:
    return [exe, "set", vm, "--name", name]


def regenerate_mac_argv(exe: str, vm: str, adapter: str = "net0") -> list[str]:
    return [exe, "set", vm, "--device-set", adapter, "--mac", "auto"]


def clone_argv(exe: str, vm: str, name: str, destination: Path | None = None) -> list[str]:
    dst = ["--dst", str(destination)] if destination is not None else []
    return [exe, "clone", vm, "--name", name, *dst, "--regenerate-src-uuid"]


def start_argv(exe: str, vm: str) -> list[str]:
    return [exe, "start", vm]


def stop_argv(exe: str, vm: str, *, kill: bool = False) -> list[str]:
    return [exe, "stop", vm, *(["--kill"] if kill else [])]


def exec_argv(exe: str, vm: str, command: str | Sequence[str]) -> list[str]:
    """One string runs through the guest's shell, as typed; a sequence is passed as separate words."""
    words = [command] if isinstance(command, str) else list(command)
    return [exe, "exec", vm, *words]


def unregister_argv(exe: str, vm: str) -> list[str]:
    return [exe, "unregister", vm]


def delete_argv(exe: str, vm: str) -> list[str]:
    return [exe, "delete", vm]


def list_argv(exe: str, *, info: bool = False) -> list[str]:
    return [exe, "list", "-a", *(["-i"] if info else []), "--json"]


def info_argv(exe: str, vm: str) -> list[str]:
    return [exe, "list", "-i", "--json", vm]


def sudo_argv(sudo: str, user: str, argv: Sequence[str]) -> list[str]:
    """``-n``: fail at once instead of asking for a password nobody will type."""
    return [sudo, "-n", "-u", user, "--", *argv]


# ---- answers (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VmInfo:
    """One VM as ``prlctl list`` shows it (home and adapters only in the ``-i`` form)."""

    id: str
    name: str
    status: str
    home: str
    adapters: tuple[str, ...] = ()


def parse_vm_list(text: str) -> list[VmInfo]:
    """Rows of ``prlctl list -a --json`` (uuid/name/status) or ``list -i --json`` (ID/Name/State/Home)."""
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise PrlctlError("prlctl list did not answer JSON") from exc
    out = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        vm_id = str(row.get("ID") or row.get("uuid") or "")
        name = str(row.get("Name") or row.get("name") or "")
        status = str(row.get("State") or row.get("status") or "")
        home = str(row.get("Home") or row.get("home") or "")
        if vm_id:
            out.append(VmInfo(vm_id, name, status, home, tuple(net_adapters(row))))
    return out


def net_adapters(info: Mapping[str, Any]) -> list[str]:
    """The network adapters (net0, net1, ...) of one ``prlctl list -i --json`` row."""
    hardware = info.get("Hardware")
    if not isinstance(hardware, dict):
        return []
    return sorted((k for k in hardware if _NET.fullmatch(k)), key=lambda k: int(k[3:]))


def adapter_macs(info: Mapping[str, Any]) -> dict[str, str]:
    """Adapter -> MAC address of one ``prlctl list -i --json`` row."""
    hardware = info.get("Hardware")
    out = {}
    for adapter in net_adapters(info):
        nic = hardware[adapter] if isinstance(hardware, dict) else None
        out[adapter] = str(nic.get("mac", "")) if isinstance(nic, dict) else ""
    return out


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(str(a).rstrip("/") or "/").resolve() == Path(str(b).rstrip("/") or "/").resolve()


# ---- the runner -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Completed:
    code: int
    stdout: str
    stderr: str


def _last_words(done: Completed) -> str:
    """The last line prlctl (or the guest command) printed: its own words for what went wrong."""
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class Prlctl:
    """One ``prlctl`` executable, optionally run as another user through ``sudo -n -u USER``.

    ``user`` is how a VM gets an owner: see ``setup_pulled_vm``.
    """

    exe: str
    timeout: float = 600.0
    user: str | None = None
    sudo: str | None = None

    def as_user(self, user: str | None) -> Prlctl:
        if user is None or user == self.user:
            return self
        sudo = self.sudo or find_sudo()
        if sudo is None:
            raise PrlctlError(f"acting as {user} needs sudo, which was not found")
        return replace(self, user=user, sudo=sudo)

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None) -> Completed:
        full = list(argv)
        if self.user is not None:
            full = sudo_argv(self.sudo or "sudo", self.user, full)
        limit = self.timeout if timeout is None else timeout
        log.debug("running %s", shlex.join(full))
        try:
            proc = subprocess.run(
                full, capture_output=True, text=True, timeout=limit, check=False, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise PrlctlTimeout(f"prlctl {argv[1]} did not finish within {limit:g}s") from exc
        except OSError as exc:
            raise PrlctlError(f"could not run prlctl: {exc}") from exc
        done = Completed(proc.returncode, proc.stdout or "", proc.stderr or "")
        if check and done.code != 0:
            raise PrlctlError(f"prlctl {argv[1]} failed: {_last_words(done) or f'exit {done.code}'}")
        return done

    # -- reads
    def list_vms(self) -> list[VmInfo]:
        return parse_vm_list(self.run(list_argv(self.exe)).stdout)

    def info(self, vm: str) -> dict[str, Any]:
        done = self.run(info_argv(self.exe, vm))
        try:
            rows = json.loads(done.stdout)
        except ValueError as exc:
            raise PrlctlError("prlctl list did not answer JSON") from exc
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            raise PrlctlError(f"prlctl list -i does not know {vm}")
        return dict(rows[0])

    def list_info(self) -> list[VmInfo]:
        """Every VM with its home folder and adapters (``list -a -i``; the short list has neither)."""
        return parse_vm_list(self.run(list_argv(self.exe, info=True)).stdout)

    def registered(self, bundle: Path) -> VmInfo:
        for vm in self.list_info():
            if vm.home and _same_path(vm.home, bundle):
                return vm
        raise PrlctlError(f"prlctl registered {bundle} but does not list it")

    def find_by_home(self, bundle: Path) -> str:
        return self.registered(bundle).id

    # -- changes
    def register(self, bundle: Path) -> str:
        """Register and return the new VM's id (found by its home folder)."""
        self.run(register_argv(self.exe, bundle))
        return self.find_by_home(bundle)

    def set_name(self, vm: str, name: str) -> None:
        self.run(set_name_argv(self.exe, vm, name))

    def regenerate_macs(self, vm: str, adapters: Sequence[str] | None = None) -> dict[str, str]:
        """A new MAC on every network adapter; returns adapter -> new MAC (as prlctl then lists it)."""
        if adapters is None:
            adapters = net_adapters(self.info(vm))
        for adapter in adapters:
            self.run(regenerate_mac_argv(self.exe, vm, adapter))
        return adapter_macs(self.info(vm)) if adapters else {}

    def clone(self, vm: str, name: str, destination: Path | None = None) -> None:
        self.run(clone_argv(self.exe, vm, name, destination))

    def start(self, vm: str) -> None:
        self.run(start_argv(self.exe, vm))

    def stop(self, vm: str, *, kill: bool = False) -> None:
        self.run(stop_argv(self.exe, vm, kill=kill))

    def unregister(self, vm: str) -> None:
        self.run(unregister_argv(self.exe, vm))

    def delete(self, vm: str) -> None:
        self.run(delete_argv(self.exe, vm))

    def exec(self, vm: str, command: str | Sequence[str], *, timeout: float | None = None) -> Completed:
        """Run in the guest; the guest command's exit code comes back as is (no raise)."""
        return self.run(exec_argv(self.exe, vm, command), check=False, timeout=timeout)

    def wait_for_guest(
        self,
        vm: str,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> int:
        """Poll ``prlctl exec VM echo`` with backoff until the guest answers; returns the probes it took.

        A booting guest answers only once its Parallels Tools run, so "not yet" is normal and only the
        deadline turns it into an error (with prlctl's last words).
        """
        deadline = clock() + timeout
        delay, probes, last = 0.2, 0, "no answer"
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                raise PrlctlError(f"the guest of {vm} did not answer within {timeout:g}s (last: {last})")
            probes += 1
            try:
                done = self.exec(vm, READY_PROBE, timeout=max(remaining, 0.5))
            except PrlctlTimeout as exc:
                last = last if probes > 1 else exc.message  # a probe cut by the deadline says less than the last
            except PrlctlError as exc:
                last = exc.message
            else:
                if done.code == 0:
                    return probes
                last = _last_words(done) or f"exit {done.code}"
            remaining = deadline - clock()
            if remaining <= 0:
                continue
            sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)


# ---- the use case -----------------------------------------------------------------------------
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
            lambda: _remove(acting, [vm for vm in acting.list_info() if _same_path(vm.home, bundle)], delete=False),
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
                    if vm.name == clone_name and vm.id not in before and not _same_path(vm.home, bundle)
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
                    words = _last_words(done)
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
