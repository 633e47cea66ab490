"""The original product's ``.meta`` document and the storage keys of its packs, as pure values.

Both sides read them: ``client.pdpack`` writes and reads packs through a bring-your-own storage provider,
and the catalog service registers a pack already in its own storage (``POST /catalog/import`` with
``format: "pdpack"``) by reading its ``.meta``. The server must not import client code, so the model is
here and ``client.pdpack`` re-exports it. Pure: bytes in, values out; every error is an
:class:`~core.errors.InvalidInput` naming the field. The key naming, the fields and their sources, and
what is (not) confirmed about the original: docs/pdpack-format.md.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidInput
from core.identity import normalize_architecture, normalize_catalog_id, normalize_version
from core.manifest import MinimumRequirements, parse_description, parse_roles, parse_tags, parse_vm_type

__all__ = [
    "MAX_META_BYTES",
    "ContentItem",
    "MinimumSpec",
    "PackMeta",
    "catalog_folder",
    "catalog_metadata",
    "checksum_algorithm",
    "go_normalize",
    "meta_key",
    "pack_file_key",
    "pack_key",
    "pack_name",
]

_GO_REPLACED = " ,:;()[]{}'\"/\\|<>=+*&^%$#@!`~?"
MAX_META_BYTES = 16 * 1024 * 1024


# ---- keys ---------------------------------------------------------------------------------------
def go_normalize(text: str) -> str:
    """``helpers.NormalizeString`` of the original: the characters it dislikes become ``_``, lower-case."""
    for ch in _GO_REPLACED:
        text = text.replace(ch, "_")
    return text.strip().lower()


def catalog_folder(catalog_id: str) -> str:
    """The provider folder that holds every pack of one catalog id."""
    return go_normalize(normalize_catalog_id(catalog_id))


def pack_name(catalog_id: str, arch: str, version: str) -> str:
    """``<catalog_id>-<arch>-<version>`` as the original names files (``latest`` is a plain version here)."""
    parts = (
        normalize_catalog_id(catalog_id),
        normalize_architecture(arch),
        normalize_version(version, allow_latest=True),
    )
    return go_normalize("-".join(go_normalize(p) for p in parts))


def pack_key(catalog_id: str, arch: str, version: str) -> str:
    return f"{catalog_folder(catalog_id)}/{pack_name(catalog_id, arch, version)}.pdpack"


def meta_key(catalog_id: str, arch: str, version: str) -> str:
    return f"{catalog_folder(catalog_id)}/{pack_name(catalog_id, arch, version)}.meta"


# ---- the .meta document -------------------------------------------------------------------------
@dataclass(frozen=True)
class ContentItem:
    """One entry of ``virtual_machine_contents`` / ``pack_contents``: ``path`` is the folder it sits in."""

    name: str
    path: str = "/"
    is_dir: bool = False
    size: int = 0
    checksum: str = ""  # JSON "hash"
    created_at: str = ""
    updated_at: str = ""
    deleted_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "is_dir": self.is_dir,
            "name": self.name,
            "path": self.path,
            "hash": self.checksum,
            "size": self.size,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "deleted_at": self.deleted_at,
        }


@dataclass(frozen=True)
class MinimumSpec:
    """The original's ``minimum_requirements``: cpu count, memory and disk in MiB."""

    cpu: int = 0
    memory: int = 0
    disk: int = 0


@dataclass(frozen=True)
class PackMeta:
    """A ``.meta`` document. Python names where the JSON ones are unclear: ``vm_type`` is ``type``,
    ``checksum`` is ``compressed_checksum``, ``contents`` is ``virtual_machine_contents``."""

    catalog_id: str
    version: str
    architecture: str
    id: str = ""
    name: str = ""
    description: str = ""
    vm_type: str = ""
    path: str = ""
    pack_path: str = ""
    metadata_path: str = ""
    pack_relative_path: str = ""
    size: int = 0
    pack_size: int = 0
    is_compressed: bool = False
    checksum: str = ""
    required_roles: tuple[str, ...] = ()
    required_claims: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    created_at: str = ""
    updated_at: str = ""
    minimum_requirements: MinimumSpec | None = None
    contents: tuple[ContentItem, ...] = ()
    pack_contents: tuple[ContentItem, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # every other field, written back verbatim

    @classmethod
    def from_json(cls, data: bytes) -> PackMeta:
        """Parse a ``.meta``: unknown fields are kept in ``extra``; the ones pdcat relies on are checked."""
        if len(data) > MAX_META_BYTES:
            raise InvalidInput(f".meta is larger than {MAX_META_BYTES} bytes; not a pack's metadata")
        try:
            doc = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f".meta is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise InvalidInput(".meta must be a JSON object")
        known = set(_META_ORDER) - _GO_DEFAULTS.keys()
        catalog_id = _str(doc, "catalog_id").strip()
        version = _str(doc, "version").strip()
        if not catalog_id:
            raise InvalidInput(".meta has no catalog_id")
        if not version:
            raise InvalidInput(".meta has no version")
        arch = _str(doc, "architecture")
        if not arch:
            raise InvalidInput(".meta has no architecture")
        minimum = doc.get("minimum_requirements")
        return cls(
            catalog_id=catalog_id,
            version=version,
            architecture=normalize_architecture(arch),
            id=_str(doc, "id"),
            name=_str(doc, "name"),
            description=_str(doc, "description"),
            vm_type=_str(doc, "type"),
            path=_str(doc, "path"),
            pack_path=_str(doc, "pack_path"),
            metadata_path=_str(doc, "metadata_path"),
            pack_relative_path=_str(doc, "pack_relative_path"),
            size=_int(doc, "size"),
            pack_size=_int(doc, "pack_size"),
            is_compressed=_bool(doc, "is_compressed"),
            checksum=_str(doc, "compressed_checksum").strip(),
            required_roles=_strs(doc, "required_roles"),
            required_claims=_strs(doc, "required_claims"),
            tags=_strs(doc, "tags"),
            created_at=_str(doc, "created_at"),
            updated_at=_str(doc, "updated_at"),
            minimum_requirements=None if minimum is None else _minimum(minimum),
            contents=_items(doc, "virtual_machine_contents"),
            pack_contents=_items(doc, "pack_contents"),
            # the Go fields pdcat does not model are kept when they say something (tainted: true...)
            extra={k: v for k, v in doc.items() if k not in known and (k not in _GO_DEFAULTS or v != _GO_DEFAULTS[k])},
        )

    def to_json(self) -> bytes:
        """The document in the original's field names and order (``json.MarshalIndent``, two spaces)."""
        own: dict[str, Any] = {
            "id": self.id,
            "catalog_id": self.catalog_id,
            "description": self.description,
            "version": self.version,
            "name": self.name,
            "architecture": self.architecture,
            "path": self.path,
            "pack_path": self.pack_path,
            "metadata_path": self.metadata_path,
            "type": self.vm_type,
            "size": self.size,
            "required_roles": list(self.required_roles),
            "required_claims": list(self.required_claims),
            "tags": list(self.tags),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "is_compressed": self.is_compressed,
            "pack_relative_path": self.pack_relative_path,
            "compressed_checksum": self.checksum,
            "virtual_machine_contents": [c.to_json() for c in self.contents],
            "pack_contents": [c.to_json() for c in self.pack_contents],
            "pack_size": self.pack_size,
        }
        if self.minimum_requirements is not None:
            m = self.minimum_requirements
            own["minimum_requirements"] = {"cpu": m.cpu, "memory": m.memory, "disk": m.disk}
        for key in _OMIT_EMPTY:
            if not own.get(key):
                own.pop(key, None)
        doc: dict[str, Any] = {}
        for key in _META_ORDER:
            if key in own:
                doc[key] = own[key]
            elif key in self.extra:
                doc[key] = self.extra[key]
            elif key in _GO_DEFAULTS:
                doc[key] = _GO_DEFAULTS[key]
        for key, value in self.extra.items():
            doc.setdefault(key, value)
        return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")


# Field order of VirtualMachineCatalogManifest; _GO_DEFAULTS are the fields pdcat does not model but
# that the Go marshaller always writes.
_META_ORDER = (
    "id", "catalog_id", "description", "version", "name", "architecture", "path", "pack_path",
    "metadata_path", "type", "provider", "size", "required_roles", "required_claims", "tags", "created_at",
    "updated_at", "last_downloaded_at", "last_downloaded_user", "is_compressed", "pack_relative_path",
    "download_count", "compressed_checksum", "virtual_machine_contents", "pack_contents", "pack_size",
    "tainted", "tainted_by", "tainted_at", "untainted_by", "revoked", "revoked_at", "revoked_by",
    "minimum_requirements",
)  # fmt: skip
_GO_DEFAULTS: Mapping[str, Any] = {
    "provider": None,
    "last_downloaded_at": "",
    "last_downloaded_user": "",
    "download_count": 0,
    "tainted": False,
    "tainted_by": "",
    "tainted_at": "",
    "untainted_by": "",
    "revoked": False,
    "revoked_at": "",
    "revoked_by": "",
}
_OMIT_EMPTY = ("path", "pack_path", "metadata_path", "pack_size")  # `json:",omitempty"` in the Go struct


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f".meta field {key!r} must be a string")
    return value


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f".meta field {key!r} must be a whole number of at least 0")
    return value


def _bool(doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f".meta field {key!r} must be true or false")
    return value


def _strs(doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f".meta field {key!r} must be a list of strings")
    return tuple(value)


def _minimum(value: object) -> MinimumSpec:
    if not isinstance(value, dict):
        raise InvalidInput(".meta field 'minimum_requirements' must be an object")
    return MinimumSpec(*(_int(value, k) for k in ("cpu", "memory", "disk")))


def _items(doc: Mapping[str, Any], key: str) -> tuple[ContentItem, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidInput(f".meta field {key!r} must be a list of objects")
    try:
        return tuple(
            ContentItem(
                name=_str(v, "name"),
                path=_str(v, "path"),
                is_dir=_bool(v, "is_dir"),
                size=_int(v, "size"),
                checksum=_str(v, "hash"),
                created_at=_str(v, "created_at"),
                updated_at=_str(v, "updated_at"),
                deleted_at=_str(v, "deleted_at"),
            )
            for v in value
        )
    except InvalidInput as exc:
        raise InvalidInput(f".meta field {key!r}: {exc.message.removeprefix('.meta ')}") from exc


def pack_file_key(meta: PackMeta | None, catalog_id: str, arch: str, version: str) -> str:
    """The key of the pack a ``.meta`` belongs to.

    The original's pull opens the ``pack_path`` its ``.meta`` names, in the same folder; only its
    file name is taken (a ``.meta`` cannot point outside its catalog's folder). Without a ``.meta``,
    or without ``pack_path``, it is the standard name (:func:`pack_key`).
    """
    if meta is None or not meta.pack_path:
        return pack_key(catalog_id, arch, version)
    base = posixpath.basename(meta.pack_path)
    if not base or base.startswith(".") or "\\" in base or "\x00" in base:
        raise InvalidInput(f".meta field 'pack_path' names an unusable pack file {meta.pack_path[:120]!r}")
    return f"{catalog_folder(catalog_id)}/{base}"


def checksum_algorithm(checksum: str) -> str | None:
    """Which hash a ``compressed_checksum`` is, by its shape; None when it cannot be checked.

    The original writes hex MD5 (``helpers.GetFileMD5Checksum``); packs registered by its
    ``import_vm.go`` may carry the provider's checksum instead (local SHA-1; an S3 multipart ETag
    ``<hex>-<n>`` has no usable shape).
    """
    text = checksum.strip().lower()
    if not text or any(c not in "0123456789abcdef" for c in text):
        return None
    return {32: "md5", 40: "sha1", 64: "sha256"}.get(len(text))


def catalog_metadata(meta: PackMeta, *, skip: Collection[str] = ()) -> dict[str, Any]:
    """The manifest metadata a ``.meta`` carries, checked by the catalog's own rules.

    Keys are the manifest's (``description``, ``tags``, ``required_roles``, ``required_claims``,
    ``minimum_requirements``, ``vm_type``); an error names the ``.meta`` field. Fields in ``skip``
    (the importer gave them instead) are not read at all, so a value the catalog would refuse can be
    overridden rather than fixed in storage.
    """

    def minimum() -> MinimumRequirements:
        spec = meta.minimum_requirements
        if spec is None:
            return MinimumRequirements()
        return MinimumRequirements.parse({"cpu": spec.cpu, "memory_mb": spec.memory, "disk_mb": spec.disk})

    def vm_type() -> str:
        text = meta.vm_type.strip().lower()
        if not text:
            raise InvalidInput("is empty: give vm_type (pvm or macvm) in the request")
        return parse_vm_type(text)

    readers: dict[str, tuple[str, Callable[[], Any]]] = {
        "description": ("description", lambda: parse_description(meta.description)),
        "tags": ("tags", lambda: parse_tags(list(meta.tags))),
        "required_roles": ("required_roles", lambda: parse_roles(list(meta.required_roles))),
        "required_claims": ("required_claims", lambda: parse_roles(list(meta.required_claims))),
        "minimum_requirements": ("minimum_requirements", minimum),
        "vm_type": ("type", vm_type),
    }
    out: dict[str, Any] = {}
    for name, (json_name, read) in readers.items():
        if name in skip:
            continue
        try:
            out[name] = read()
        except InvalidInput as exc:
            raise InvalidInput(f".meta field {json_name!r}: {exc.message}") from exc
    return out
