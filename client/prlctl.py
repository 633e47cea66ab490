"""The Parallels adapter: every ``prlctl`` call pdcat makes goes through here (docs/prlctl.md).

Argv is built by pure functions (``*_argv``), answers are parsed by pure functions (``parse_vm_list``,
``net_adapters``, ``adapter_macs``), and one runner (``Prlctl.run``) executes argv and turns any failure
into a one-line ``PrlctlError`` carrying prlctl's own words. What to do with a pulled VM (register, name,
MACs, owner, clone, start, exec, undo) is the use case in ``client.vm_setup``, which uses only this.
``PDCAT_PRLCTL`` overrides the executable and ``PDCAT_SUDO`` the ``sudo`` used to act as another user.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import PdcatError

__all__ = [
    "Completed",
    "Prlctl",
    "PrlctlError",
    "PrlctlTimeout",
    "VmInfo",
    "adapter_macs",
    "clone_argv",
    "delete_argv",
    "exec_argv",
    "find_prlctl",
    "find_sudo",
    "info_argv",
    "last_words",
    "list_argv",
    "net_adapters",
    "parse_vm_list",
    "regenerate_mac_argv",
    "register_argv",
    "same_path",
    "set_name_argv",
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
    """One VM in full: the argv prl-devops-service runs to get a VM's ``Home`` (docs/prlctl.md)."""
    return [exe, "list", vm, "-a", "-i", "--json"]


def sudo_argv(sudo: str, user: str, argv: Sequence[str]) -> list[str]:
    """``-n``: fail at once instead of asking for a password nobody will type."""
    return [sudo, "-n", "-u", user, "--", *argv]


# ---- answers (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VmInfo:
    """One VM as ``prlctl list`` shows it (home and adapters only in the ``-i`` form).

    ``home`` may be empty even in the ``-i`` form: a bulk ``list -a -i`` can leave ``Home`` out
    (``Prlctl.list_info`` then asks for that VM alone).
    """

    id: str
    name: str
    status: str
    home: str
    adapters: tuple[str, ...] = ()


def parse_vm_list(text: str) -> list[VmInfo]:
    """Rows of ``prlctl list -a --json`` (uuid/name/status) or ``list -i --json`` (ID/Name/State/Home).

    Missing or null keys read as empty; a row without an id is skipped. ``Home`` falls back to the folder
    of ``Home path`` (its ``config.pvs``) when only that is there.
    """
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
        home = str(row.get("Home") or "")
        config = str(row.get("Home path") or "")
        if not home and config.endswith("/config.pvs"):
            home = config[: -len("config.pvs")]
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
        out[adapter] = str(nic.get("mac") or "") if isinstance(nic, dict) else ""
    return out


def same_path(a: str | Path, b: str | Path) -> bool:
    """One folder, however written: prlctl lists ``Home`` with a trailing slash."""
    return Path(str(a).rstrip("/") or "/").resolve() == Path(str(b).rstrip("/") or "/").resolve()


# ---- the runner -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Completed:
    code: int
    stdout: str
    stderr: str


def last_words(done: Completed) -> str:
    """The last line prlctl (or the guest command) printed: its own words for what went wrong."""
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class Prlctl:
    """One ``prlctl`` executable, optionally run as another user through ``sudo -n -u USER``.

    ``user`` is how a VM gets an owner: see ``client.vm_setup.setup_pulled_vm``.
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
            raise PrlctlError(f"prlctl {argv[1]} failed: {last_words(done) or f'exit {done.code}'}")
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
        """Every VM with its home folder and adapters (``list -a -i``; the short list has neither).

        A bulk ``list -a -i`` can answer an empty ``Home`` (prl-devops-service works around this Parallels
        Desktop bug the same way): such a VM is asked for alone with ``list VM -a -i``. A VM that vanished in
        between keeps its empty home.
        """
        vms = parse_vm_list(self.run(list_argv(self.exe, info=True)).stdout)
        return [vm if vm.home else self._with_home(vm) for vm in vms]

    def _with_home(self, vm: VmInfo) -> VmInfo:
        try:
            alone = parse_vm_list(self.run(info_argv(self.exe, vm.id)).stdout)
        except PrlctlError as exc:
            log.debug("prlctl list %s: %s", vm.id, exc.message)
            return vm
        return next((found for found in alone if found.id == vm.id and found.home), vm)

    def registered(self, bundle: Path) -> VmInfo:
        for vm in self.list_info():
            if vm.home and same_path(vm.home, bundle):
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
                last = last_words(done) or f"exit {done.code}"
            remaining = deadline - clock()
            if remaining <= 0:
                continue
            sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)
