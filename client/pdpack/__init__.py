"""The original product's pack format: ``<id>/<id>-<arch>-<version>.pdpack`` plus its ``.meta`` JSON.

pdcat's own format is chunked and content-addressed (``client.packer``); this package reads and writes what
Parallels' ``prl-devops-service`` puts in a storage provider, so pdcat can pull a VM the original tools
pushed and export one they can pull. The format, its sources and the safety rules of unpacking are in
docs/pdpack-format.md. Modules: ``tarfmt`` (tar and gzip details, sparse members), ``writer``, ``extract``
(the per-member checks), ``reader`` (``unpack_pack``), ``storage`` (export and import through a provider).
The key naming and the ``.meta`` model live in ``core.pdpack_meta`` and are re-exported here.
"""

from __future__ import annotations

from client.pdpack.errors import ChecksumMismatch, PackRejected
from client.pdpack.reader import UnpackStats, unpack_pack
from client.pdpack.storage import PackStorage, export_pack, import_pack, import_pack_with_stats
from client.pdpack.tarfmt import COMPRESSION_LEVELS
from client.pdpack.writer import PackStats, write_pack
from core.pdpack_meta import ContentItem, MinimumSpec, PackMeta, catalog_folder, meta_key, pack_key, pack_name

__all__ = [
    "COMPRESSION_LEVELS",
    "ChecksumMismatch",
    "ContentItem",
    "MinimumSpec",
    "PackMeta",
    "PackRejected",
    "PackStats",
    "PackStorage",
    "UnpackStats",
    "catalog_folder",
    "export_pack",
    "import_pack",
    "import_pack_with_stats",
    "meta_key",
    "pack_key",
    "pack_name",
    "unpack_pack",
    "write_pack",
]
