"""A PDFile as the typed options of the ``pdcat`` command it stands for (``client.options``).

The file gives one layer of values, keyed by option name; :func:`client.options.resolve` puts the
command line's flags on top (flags > file > defaults). Only keywords the operation uses become options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from client.options import COMMANDS, Options, resolve
from client.pdfile.model import COMPRESS_LEVELS, PDFile

__all__ = ["to_options"]

#: The flags that override a PDFile: those that stand for a keyword, and the output switches. Flags with
#: no keyword (--workers, --chunk-size, --no-register, --no-cache, --exec-timeout) are not applied to a
#: recipe, as before typed options: an e2e test passes --no-register with a START_AFTER_PULL recipe.
_OVERRIDES: Final = frozenset(
    {
        *("server", "json", "quiet", "arch", "storage", "role", "claim", "tag", "description", "force"),
        *("path", "catalog", "version", "level", "compress", "vm_type", "vm_remote_path", "is_compressed"),
        *("ref", "dest", "name", "start", "owner", "clone", "clone_dest", "execute", "id"),
    }
)
#: The ``pdcat`` command of each PDFile operation.
_COMMAND: Final = {"push": "push", "pull": "pull", "list": "ls", "import": "import", "import-vm": "import-vm"}


def to_options(pdfile: PDFile, flags: Mapping[str, object] | None = None) -> Options:
    """The options of ``pdfile``'s command, with ``flags`` (argparse's values, the positional that
    named the PDFile left out) on top; only flags that stand for a keyword (and --json, --quiet) count.

    Parse with ``supplied=`` the names of the given flags (:func:`client.options.given`), so a
    required keyword that a flag gives may be left out of the file.
    """
    file = {name: value for name, value in _values(pdfile).items() if value is not None}  # None: not said
    overrides = {name: value for name, value in (flags or {}).items() if name in _OVERRIDES}
    return resolve(COMMANDS[_COMMAND[pdfile.operation]], file=file, flags=overrides)


def _values(pdfile: PDFile) -> dict[str, object]:
    op = pdfile.operation
    out: dict[str, object] = {
        "server": pdfile.server,
        "insecure": pdfile.insecure,
        "credentials": pdfile.credentials,
        "arch": pdfile.architecture,
    }
    storage = pdfile.provider.connection_string if pdfile.provider is not None else None
    if op == "pull":
        if pdfile.catalog_id is not None:
            out["ref"] = pdfile.catalog_id + (f":{pdfile.version}" if pdfile.version else "")
        if pdfile.clone:
            out["clone"] = pdfile.clone_name or ""
        out.update(
            storage=storage,
            dest=pdfile.destination,
            name=pdfile.machine_name,
            start=pdfile.start_after_pull,
            owner=pdfile.owner,
            clone_dest=pdfile.clone_destination,
            execute=pdfile.execute,
        )
        return out
    if op == "list":
        out.update(id=pdfile.catalog_id, tag=pdfile.tags[0] if pdfile.tags else None)
        return out
    out.update(storage=storage, role=pdfile.roles, claim=pdfile.claims, tag=pdfile.tags, force=pdfile.force)
    if op in ("import", "import-vm"):
        out["ref"] = f"{pdfile.catalog_id}:{pdfile.version}"
    if op in ("push", "import-vm"):
        out.update(description=pdfile.description, vm_type=pdfile.vm_type)
    if op == "import-vm":
        out.update(vm_remote_path=pdfile.vm_remote_path, is_compressed=pdfile.is_compressed)
    if op == "push":
        out.update(path=pdfile.local_path, catalog=pdfile.catalog_id, version=pdfile.version)
        reqs = pdfile.minimum_requirements
        if reqs is not None:
            out.update(min_cpu=reqs.cpu or None, min_memory_mb=reqs.memory_mb or None, min_disk_mb=reqs.disk_mb or None)
        level = pdfile.compress_pack_level
        if level is not None:
            out["level"] = COMPRESS_LEVELS[level]
        if level == "no_compression":
            out["compress"] = False
        if pdfile.compress_pack is not None:
            out["compress"] = pdfile.compress_pack
    return out
