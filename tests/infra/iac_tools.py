"""The IaC validators (checkov, cfn-lint, pycep), run from their own virtualenv.

checkov pins boto3/botocore 1.35, packaging 23.2 and networkx 2.x, which conflict with the app's
pins, so the validators live in ``.venv-iac`` (or ``$PDCAT_IAC_VENV``), installed exactly from
``infra/requirements-iac.txt``. :func:`ensure_iac_venv` creates or refreshes it when the
requirements change (a content hash in ``.venv-iac/.installed``), under a file lock so parallel test
workers install it once. ``python tests/infra/iac_tools.py`` does the same from the command line
(for a Makefile target).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = [
    "CHECKOV_VERSION",
    "REPO",
    "CheckovReport",
    "ensure_iac_venv",
    "iac_venv_dir",
    "parse_bicep",
    "run_cfn_lint",
    "run_checkov",
]

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "infra" / "requirements-iac.txt"
RUN_CHECKOV = Path(__file__).with_name("run_checkov.py")
CHECKOV_VERSION = "3.3.30"
_INSTALL_TIMEOUT = 900


def iac_venv_dir() -> Path:
    return Path(os.environ.get("PDCAT_IAC_VENV") or REPO / ".venv-iac")


def _base_python() -> str:
    """The interpreter this venv was made from (a venv of a venv would inherit nothing useful)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if Path(base).exists() else (shutil.which("python3.11") or sys.executable)


def ensure_iac_venv() -> Path:
    """The tools venv, installed from ``infra/requirements-iac.txt`` if missing or stale."""
    venv = iac_venv_dir()
    stamp = venv / ".installed"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    lock_name = "pdcat-iac-" + hashlib.sha256(str(venv.resolve()).encode()).hexdigest()[:16] + ".lock"
    with FileLock(str(Path(tempfile.gettempdir()) / lock_name)):
        python = venv / "bin" / "python"
        if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
            return venv
        log = []
        steps = [
            [_base_python(), "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT, check=False)
            log.append(done.stdout + done.stderr)
            if done.returncode != 0:
                tail = "\n".join("".join(log).splitlines()[-30:])
                raise RuntimeError(f"could not install the IaC tools into {venv} ({' '.join(step[:4])}):\n{tail}")
        stamp.write_text(wanted + "\n")
    return venv


def _tool(venv: Path, name: str) -> str:
    return str(venv / "bin" / name)


def run_cfn_lint(venv: Path, template: Path) -> subprocess.CompletedProcess[str]:
    """cfn-lint's verdict: exit 0 and no output when the template is clean."""
    return subprocess.run(
        [_tool(venv, "cfn-lint"), "--format", "parseable", "--", str(template)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class CheckovReport:
    """checkov's JSON report of one framework, with the check ids by outcome and by file."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.summary: dict[str, Any] = raw["summary"]
        results = raw["results"]
        self.passed: list[dict[str, Any]] = results.get("passed_checks", [])
        self.failed: list[dict[str, Any]] = results.get("failed_checks", [])
        self.skipped: list[dict[str, Any]] = results.get("skipped_checks", [])

    def of_file(self, name: str) -> CheckovReport:
        """Only the results of the file whose path ends with ``name``."""

        def mine(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [c for c in items if str(c.get("file_path", "")).endswith(name)]

        results = {
            "passed_checks": mine(self.passed),
            "failed_checks": mine(self.failed),
            "skipped_checks": mine(self.skipped),
        }
        return CheckovReport({"summary": self.summary, "results": results})

    @staticmethod
    def ids(items: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """(check id, resource logical name) pairs."""
        return {(str(c["check_id"]), str(c["resource"]).rsplit(".", 1)[-1]) for c in items}


def run_checkov(venv: Path, framework: str, *targets: str) -> dict[str, CheckovReport]:
    """checkov --skip-download on ``targets`` (``-f FILE`` / ``-d DIR`` pairs), one report per framework."""
    done = subprocess.run(
        [
            str(venv / "bin" / "python"),
            str(RUN_CHECKOV),
            "--skip-download",
            "--framework",
            framework,
            "--output",
            "json",
            *targets,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode not in (0, 1) or not done.stdout.strip().startswith(("{", "[")):
        raise RuntimeError(f"checkov did not run (exit {done.returncode}):\n{(done.stderr or done.stdout)[-4000:]}")
    parsed = json.loads(done.stdout)
    reports = parsed if isinstance(parsed, list) else [parsed]
    return {str(r["check_type"]): CheckovReport(r) for r in reports}


_PARSE_BICEP = """
import json, sys
from pathlib import Path
from pycep import BicepParser
print(json.dumps(BicepParser().parse(file_path=Path(sys.argv[1])), default=str))
"""


def parse_bicep(venv: Path, path: Path) -> dict[str, Any]:
    """The Bicep file as pycep (checkov's parser) reads it."""
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _PARSE_BICEP, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pycep could not parse {path}:\n{done.stderr[-4000:]}")
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


if __name__ == "__main__":
    print(ensure_iac_venv())
