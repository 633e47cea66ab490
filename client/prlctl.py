"""All Parallels work goes through here: argv is built by pure functions, one runner executes it.

``PDCAT_PRLCTL`` overrides the executable; tests put a fake ``prlctl`` first on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core.errors import PdcatError

__all__ = ["Prlctl", "PrlctlError", "find_prlctl", "register_argv", "set_name_argv"]


class PrlctlError(PdcatError):
    """prlctl failed; the message carries its own words."""


def find_prlctl() -> str | None:
    override = os.environ.get("PDCAT_PRLCTL")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("prlctl")


def register_argv(exe: str, bundle: Path) -> list[str]:
    """A fresh UUID, so two pulls of one version can be registered side by side."""
    return [exe, "register", str(bundle), "--regenerate-src-uuid"]


def set_name_argv(exe: str, vm: str, name: str) -> list[str]:
    return [exe, "set", vm, "--name", name]


@dataclass(frozen=True)
class Prlctl:
    exe: str
    timeout: float = 600.0

    def run(self, argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PrlctlError(f"could not run prlctl: {exc}") from exc
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise PrlctlError(f"prlctl {argv[1]} failed: {reason[-1] if reason else f'exit {done.returncode}'}")
        return done.stdout

    def register(self, bundle: Path) -> str:
        """Register and return the new VM's id (found by its home folder)."""
        self.run(register_argv(self.exe, bundle))
        return self.find_by_home(bundle)

    def find_by_home(self, bundle: Path) -> str:
        try:
            vms = json.loads(self.run([self.exe, "list", "-a", "-i", "--json"]))
        except ValueError as exc:
            raise PrlctlError("prlctl list did not answer JSON") from exc
        wanted = str(bundle.resolve()).rstrip("/")
        for vm in vms if isinstance(vms, list) else []:
            home = str(vm.get("Home") or vm.get("home") or "").rstrip("/")
            if home and Path(home).resolve() == Path(wanted):
                return str(vm.get("ID") or vm.get("uuid"))
        raise PrlctlError(f"prlctl registered {bundle} but does not list it")

    def set_name(self, vm: str, name: str) -> None:
        self.run(set_name_argv(self.exe, vm, name))

    def start(self, vm: str) -> None:
        self.run([self.exe, "start", vm])
