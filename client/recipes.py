"""PDFile recipes and bring-your-own storage on the command line, kept out of the CLI's wiring.

A PDFile becomes the typed options its own command line would give (``client.options``: flags > file >
``pdcat``'s defaults), so ``pdcat push|pull|run FILE.pdfile`` runs exactly the code a typed command runs.

Bring-your-own storage moves packs in the original product's format (``client.pdpack``) through the
original connection strings (``client.byo``), for users who hold their own bucket credentials:
``pdcat push PATH --to CONN`` exports, ``pdcat pull ID:VERSION --from CONN`` imports, and
``pdcat import ID:VERSION --from CONN`` brings such a pack into the catalog (a normal push, so it is
chunked, deduplicated and verified like any other). Without ``--from``, ``pdcat import`` asks the
catalog to register an original pack that already sits in the catalog's own storage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from client import pdfile
from client.byo.connection import parse_connection_string
from client.byo.providers import Storage, open_storage
from client.options import COMMANDS, Options, given
from client.pdpack import PackMeta, export_pack, import_pack_with_stats, meta_key, unpack_pack
from core.errors import Conflict, InvalidInput
from core.identity import ManifestKey

__all__ = [
    "fetch_remote_vm",
    "fetch_storage_pack",
    "open_byo",
    "push_to_storage",
    "recipe_options",
    "staging_dir",
]

# zstd levels the PDFile's COMPRESS_PACK_LEVEL names map to (client.pdfile), back to the names the
# original pack format's gzip levels use.
_LEVEL_NAMES = {level: name for name, level in pdfile.COMPRESS_LEVELS.items() if level is not None}


def recipe_options(
    path: str, flags: Mapping[str, object], expected: str | None, warn: Callable[[str], None]
) -> Options:
    """The options of the recipe at ``path``, with the command line's ``flags`` on top (flags > file >
    defaults; ``flags`` leaves out the positional that named the recipe).

    ``expected`` is the command the recipe was run with (``push``/``pull``), or None for ``pdcat run``.
    """
    supplied = given(COMMANDS[expected] if expected is not None else Options, flags)
    result = pdfile.load(path, os.environ, supplied=supplied)
    for warning in result.warnings:
        where = f"{path}:{warning.line}" if warning.line else path
        warn(f"{where}: {warning.message}")
    options = pdfile.to_options(result.pdfile, flags)
    command = options.command
    if expected is not None and command != expected:
        raise InvalidInput(f"{path} is a {command} recipe: run it with 'pdcat {command} {path}' or 'pdcat run {path}'")
    return options


def open_byo(connection: str) -> Storage:
    """A user's own storage from an original connection string (secrets are never echoed)."""
    return open_storage(parse_connection_string(connection))


@contextmanager
def staging_dir(near: Path) -> Iterator[Path]:
    """A private scratch folder on the destination's file system (so renames stay cheap), always removed."""
    near.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".pdcat-staging-", dir=near))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def push_to_storage(
    storage: Storage,
    bundle: Path,
    key: ManifestKey,
    metadata: dict[str, Any],
    *,
    compress: bool,
    level: int | None,
) -> PackMeta:
    """Export ``bundle`` as ``<id>/<id>-<arch>-<version>.pdpack`` + ``.meta``, as the original tools do."""
    meta_fields: dict[str, Any] = {
        "vm_type": metadata.get("vm_type", "pvm"),
        "tags": metadata.get("tags", []),
        "required_roles": metadata.get("roles", []),
        "required_claims": metadata.get("claims", []),
    }
    if metadata.get("description"):
        meta_fields["description"] = metadata["description"]
    if level is not None and level not in _LEVEL_NAMES:
        raise InvalidInput(f"the original pack format has no level {level}: use one of {sorted(_LEVEL_NAMES)}")
    level_name = _LEVEL_NAMES.get(level, "default") if level is not None else "default"
    return export_pack(
        storage, bundle, key.catalog_id, key.version, key.architecture, meta_fields, compress=compress, level=level_name
    )


def fetch_storage_pack(storage: Storage, key: ManifestKey, dest_dir: Path, name: str | None) -> tuple[Path, PackMeta]:
    """Download and safely unpack an original pack into ``dest_dir/<name>.<vm_type>``; nothing is left
    behind on failure. Needs an explicit version: a bucket has no catalog to resolve ``latest``."""
    if key.version == "latest":
        raise InvalidInput("pulling from your own storage needs an explicit version (ID:VERSION)")
    mkey = meta_key(key.catalog_id, key.architecture, key.version)
    meta = PackMeta.from_json(storage.get_bytes(mkey))
    vm_type = meta.vm_type if meta.vm_type in ("pvm", "macvm") else "pvm"
    final = dest_dir / f"{name or key.catalog_id}.{vm_type}"
    if final.exists():
        raise Conflict(f"{final} already exists; pick another --name or remove it first")
    dest_dir.mkdir(parents=True, exist_ok=True)
    _meta, stats = import_pack_with_stats(storage, key.catalog_id, key.version, key.architecture, final)
    return stats.dest, meta


def fetch_remote_vm(storage: Storage, remote_path: str, bundle: Path, *, compressed: bool) -> Path:
    """A VM kept in the user's storage as a folder of files, or as one tar(.gz) file (``compressed``),
    copied into ``bundle`` (which must not exist yet), unpacked safely."""
    remote = remote_path.strip("/")
    if not remote:
        raise InvalidInput("VM_REMOTE_PATH is empty")
    if compressed:
        with storage.open_read(remote) as stream:
            unpack_pack(stream, bundle, compressed=None)
        return bundle
    keys = [k for k in storage.list(remote + "/")]
    if not keys:
        raise InvalidInput(f"nothing in your storage under {remote}/")
    for key in keys:
        relative = Path(key[len(remote) + 1 :])
        if relative.is_absolute() or ".." in relative.parts:
            raise InvalidInput(f"refusing a stored file outside {remote}/: {key}")
        target = bundle / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        storage.get_file(key, target)
    return bundle
