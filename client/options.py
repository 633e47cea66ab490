"""What ``pdcat ls|push|pull|import|import-vm`` were asked to do, as typed, frozen values.

Two places build them: argparse (``client.cli.parser``: the field names are its ``dest`` names) and a
PDFile (``client.pdfile.to_options``). Which value wins is decided in one place, :func:`resolve`:
flags > file > the defaults declared here. A flag counts as given when its value differs from the
field's default, so a flag that was not typed never hides the file's value, and a repeatable flag
(``--tag``) replaces the file's whole list.

A few fields have no flag and come only from a PDFile: ``insecure``, ``credentials`` (AUTHENTICATE)
and ``min_cpu``/``min_memory_mb``/``min_disk_mb`` (MINIMUM_REQUIREMENT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from client.pdfile.model import Authentication

__all__ = [
    "COMMANDS",
    "OPTION_NAMES",
    "ImportOptions",
    "ImportVmOptions",
    "ListOptions",
    "Options",
    "PullOptions",
    "PushOptions",
    "given",
    "resolve",
]


@dataclass(frozen=True, kw_only=True)
class Options:
    """What every command shares: which catalog, how to log in to it, how much to print."""

    command: ClassVar[str] = ""

    server: str | None = None
    insecure: bool = False  # a PDFile's INSECURE: no TLS verification
    credentials: Authentication | None = None  # a PDFile's AUTHENTICATE lines (the repr masks secrets)
    json: bool = False
    quiet: bool = False


@dataclass(frozen=True, kw_only=True)
class ListOptions(Options):
    command: ClassVar[str] = "ls"

    id: str | None = None
    tag: str | None = None
    arch: str | None = None
    format: str | None = None


@dataclass(frozen=True, kw_only=True)
class _ManifestOptions(Options):
    """What a push or an import records about the version (``manifest_flags`` in the parser)."""

    arch: str | None = None
    role: tuple[str, ...] = ()
    claim: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()
    description: str | None = None
    force: bool = False
    workers: int | None = None
    #: a connection string (``--to``/``--from``, a PDFile's PROVIDER): it holds secrets, so no repr
    storage: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class PushOptions(_ManifestOptions):
    command: ClassVar[str] = "push"

    path: str = ""
    catalog: str | None = None
    version: str | None = None
    compress: bool = True
    chunk_size: int | None = None
    level: int | None = None
    base: str | None = None
    allow_any_folder: bool = False
    vm_type: str | None = None
    min_cpu: int | None = None
    min_memory_mb: int | None = None
    min_disk_mb: int | None = None


@dataclass(frozen=True, kw_only=True)
class PullOptions(Options):
    command: ClassVar[str] = "pull"

    ref: str = ""
    storage: str | None = field(default=None, repr=False)
    arch: str | None = None
    dest: str | None = None
    name: str | None = None
    no_register: bool = False
    start: bool = False
    owner: str | None = None
    clone: str | None = None  # "" clones under the default name, as ``--clone`` without a NAME
    clone_dest: str | None = None
    execute: tuple[str, ...] = ()
    exec_timeout: float = 300.0
    no_cache: bool = False
    workers: int | None = None


@dataclass(frozen=True, kw_only=True)
class ImportOptions(_ManifestOptions):
    command: ClassVar[str] = "import"

    ref: str = ""


@dataclass(frozen=True, kw_only=True)
class ImportVmOptions(ImportOptions):
    command: ClassVar[str] = "import-vm"

    vm_remote_path: str | None = None
    is_compressed: bool = False
    vm_type: str | None = None


COMMANDS: Mapping[str, type[Options]] = {
    cls.command: cls for cls in (ListOptions, PushOptions, PullOptions, ImportOptions, ImportVmOptions)
}
#: Every option name of every command (what ``client.pdfile.parse(supplied=...)`` accepts).
OPTION_NAMES = frozenset(f.name for cls in COMMANDS.values() for f in dataclasses.fields(cls))

_T = TypeVar("_T", bound=Options)


def given(cls: type[Options], values: Mapping[str, object]) -> dict[str, Any]:
    """The options ``values`` sets for ``cls``: its fields whose value differs from the default.

    Keys that are not fields of ``cls`` (argparse's ``command``, ``debug``...) are left out, and lists
    (argparse's ``append``) become tuples.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            value = values[f.name]
            value = tuple(value) if isinstance(value, list) else value
            if value != f.default:
                out[f.name] = value
    return out


def resolve(
    cls: type[_T], *, file: Mapping[str, object] | None = None, flags: Mapping[str, object] | None = None
) -> _T:
    """The one place precedence is decided: flags > file > the defaults of ``cls``."""
    return cls(**{**given(cls, file or {}), **given(cls, flags or {})})
