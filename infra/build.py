#!/usr/bin/env python3
"""Stage each cloud app with ``core`` bundled in, ready to package and deploy.

The repository keeps exactly one copy of ``core``; the app folders (``aws_app``, ``azure_app``)
import it but never hold it. This step copies an app into a staging folder and puts ``core`` where
the platform's packager picks it up, without the embedded server (``core/local``: SQLite store, file
blob store, WSGI app), which no cloud runs; the import-linter contracts in ``pyproject.toml`` keep
every other ``core`` module and both apps from importing it, so the bundle is complete without it:

* ``aws``: ``<out>/aws-app`` is the Chalice project with ``core`` under ``vendor/`` (Chalice unpacks
  ``vendor/`` at the root of the deployment zip), then ``chalice package --merge-template
  infra/aws/template.yaml`` writes ``<out>/package/{sam.yaml,deployment.zip}``.
* ``azure``: ``<out>/azure-app`` holds ``function_app.py``, ``host.json``, ``requirements.txt``,
  ``azurelib/`` and ``core/`` side by side, zipped (reproducibly) into ``<out>/pdcat-azure.zip`` for
  ``az functionapp deployment source config-zip`` (the platform's remote build installs
  ``requirements.txt``).

Usage: ``python infra/build.py aws|azure --out DIR [--stage prod] [--no-package]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AZURE_FILES",
    "EMBEDDED_ONLY",
    "MERGE_TEMPLATE",
    "REPO",
    "AwsBuild",
    "AzureBuild",
    "BuildError",
    "build_aws",
    "build_azure",
    "find_chalice",
    "main",
]

REPO = Path(__file__).resolve().parents[1]
MERGE_TEMPLATE = REPO / "infra" / "aws" / "template.yaml"
MARKER = ".pdcat-build"
# What the Function App needs at its root (azure_app's __init__.py and local settings stay behind).
AZURE_FILES = ("function_app.py", "host.json", "requirements.txt")
AZURE_DIRS = ("azurelib",)
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache")
# The parts of core only the embedded server (`pdcat serve`) needs: never shipped to a cloud.
EMBEDDED_ONLY = ("local",)
# Chalice's own caches and outputs inside the app folder: never part of a new build.
_AWS_SKIP = {"deployments", "deployed", "venv"}
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class BuildError(Exception):
    """A build that cannot go on; the message is one line for the user."""


@dataclass(frozen=True)
class AwsBuild:
    app_dir: Path
    template: Path | None
    """``sam.yaml`` (None with ``package=False``)."""
    bundle: Path | None
    """``deployment.zip`` (None with ``package=False``)."""


@dataclass(frozen=True)
class AzureBuild:
    app_dir: Path
    bundle: Path


def _prepare_out(out: Path) -> Path:
    """An empty folder, or one this script made before (emptied): never someone else's files."""
    out = out.resolve()
    if out.exists():
        if not out.is_dir():
            raise BuildError(f"--out {out} exists and is not a folder")
        entries = list(out.iterdir())
        if entries and not (out / MARKER).exists():
            raise BuildError(f"--out {out} is not empty and was not made by infra/build.py; choose another folder")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by infra/build.py; emptied on the next build into this folder\n")
    return out


def _ignore_core(folder: str, names: list[str]) -> set[str]:
    ignored = set(_JUNK(folder, names))
    if Path(folder) == REPO / "core":
        ignored |= set(EMBEDDED_ONLY) & set(names)
    return ignored


def _copy_core(dest: Path) -> None:
    """``core`` as the clouds run it: everything but the embedded server."""
    shutil.copytree(REPO / "core", dest, ignore=_ignore_core)


def _ignore_aws(folder: str, names: list[str]) -> set[str]:
    ignored = set(_JUNK(folder, names))
    here = Path(folder)
    if here.name == ".chalice":
        ignored |= _AWS_SKIP & set(names)
    if here == REPO / "aws_app":
        ignored |= {"vendor", "__init__.py"} & set(names)  # the repo's package marker is not part of the app
    return ignored


def find_chalice() -> Path:
    """The ``chalice`` of the running interpreter's environment, else the first on PATH."""
    beside = Path(sys.executable).with_name("chalice")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("chalice")
    if found:
        return Path(found)
    raise BuildError("chalice is not installed: run `make` (installs pdcat[aws]) or `pip install chalice==1.34.0`")


def chalice_package_command(app_dir: Path, package_dir: Path, stage: str, chalice: Path | None = None) -> list[str]:
    """The exact ``chalice package`` call: CloudFormation (SAM) YAML merged with our template."""
    return [
        str(chalice or find_chalice()),
        "--project-dir",
        str(app_dir),
        "package",
        "--stage",
        stage,
        "--pkg-format",
        "cloudformation",
        "--template-format",
        "yaml",
        "--merge-template",
        str(MERGE_TEMPLATE),
        str(package_dir),
    ]


def build_aws(out: Path, *, stage: str = "prod", package: bool = True, region: str | None = None) -> AwsBuild:
    """Stage ``aws_app`` with ``core`` under ``vendor/`` and (by default) run ``chalice package``."""
    out = _prepare_out(out)
    app_dir = out / "aws-app"
    shutil.copytree(REPO / "aws_app", app_dir, ignore=_ignore_aws)
    _copy_core(app_dir / "vendor" / "core")
    if not package:
        return AwsBuild(app_dir, None, None)
    package_dir = out / "package"
    command = chalice_package_command(app_dir, package_dir, stage)
    # chalice package needs a region and nothing else (no credentials, no network but PyPI).
    env = {**os.environ, "AWS_DEFAULT_REGION": region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise BuildError(f"chalice package failed: {detail[-1] if detail else 'exit ' + str(done.returncode)}")
    template, bundle = package_dir / "sam.yaml", package_dir / "deployment.zip"
    if not template.is_file() or not bundle.is_file():
        raise BuildError(f"chalice package did not write {template.name} and {bundle.name} in {package_dir}")
    return AwsBuild(app_dir, template, bundle)


def _files_under(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def _write_zip(root: Path, bundle: Path) -> None:
    """Sorted entries, fixed timestamps and modes: the same sources give the same bytes."""
    with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in _files_under(root):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())


def build_azure(out: Path) -> AzureBuild:
    """Stage the Function App with ``core`` beside ``function_app.py`` and zip it."""
    source = REPO / "azure_app"
    missing = [name for name in (*AZURE_FILES, *AZURE_DIRS) if not (source / name).exists()]
    if missing:
        raise BuildError(f"azure_app is incomplete: missing {', '.join(missing)}")
    out = _prepare_out(out)
    app_dir = out / "azure-app"
    app_dir.mkdir()
    for name in AZURE_FILES:
        shutil.copy2(source / name, app_dir / name)
    for name in AZURE_DIRS:
        shutil.copytree(source / name, app_dir / name, ignore=_JUNK)
    _copy_core(app_dir / "core")
    bundle = out / "pdcat-azure.zip"
    _write_zip(app_dir, bundle)
    return AzureBuild(app_dir, bundle)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infra/build.py", description="Stage a cloud app with core bundled in (and package it)."
    )
    parser.add_argument("cloud", choices=["aws", "azure"])
    parser.add_argument("--out", required=True, type=Path, help="staging folder (empty, or made by this script)")
    parser.add_argument("--stage", default="prod", help="aws: the chalice stage to package (default: prod)")
    parser.add_argument("--region", default=None, help="aws: region for chalice package (default: AWS_DEFAULT_REGION)")
    parser.add_argument("--no-package", action="store_true", help="aws: stage only, do not run chalice package")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cloud == "aws":
            aws = build_aws(args.out, stage=args.stage, package=not args.no_package, region=args.region)
            print(f"staged {aws.app_dir}")
            if aws.template is not None:
                print(f"template {aws.template}\nbundle {aws.bundle}")
        else:
            azure = build_azure(args.out)
            print(f"staged {azure.app_dir}\nbundle {azure.bundle}")
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
