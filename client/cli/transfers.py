"""``pdcat push``, ``pull``, ``import`` and ``import-vm``: typed options in (``client.options``), the
transfer engine (or your own storage, ``client.recipes``) called, a summary printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.cache import CacheEntry, VmCache
from client.cli.session import Connect, explain_missing, host_architecture, progress, reference, say, transfer_config
from client.options import ImportOptions, ImportVmOptions, PullOptions, PushOptions
from client.output import RichProgress, console, human_size, print_json, printable
from client.prlctl import Prlctl, PrlctlError, find_prlctl
from client.transfer import PullPlan, TransferConfig, pull, push
from client.vm_setup import SetupResult, VmSetup, check_vm_setup, setup_pulled_vm
from core.errors import InvalidInput, NotFound
from core.identity import LATEST, ManifestKey, normalize_architecture, normalize_catalog_id

__all__ = ["cmd_import", "cmd_import_vm", "cmd_pull", "cmd_push"]


def _push_target(opts: PushOptions) -> tuple[Path, ManifestKey, dict[str, Any]]:
    """The bundle, its identity and the metadata a push (to the catalog or to your own storage) records."""
    if not opts.catalog or not opts.version:
        raise InvalidInput("push needs --catalog and --version (or a PDFile with CATALOG_ID and VERSION)")
    root = Path(opts.path)
    if not root.exists():
        raise InvalidInput(f"{root} does not exist")
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a VM bundle folder (.pvm / .macvm)")
    if not opts.allow_any_folder:
        _check_vm_bundle(root)
    arch = normalize_architecture(opts.arch or host_architecture())
    key = ManifestKey.parse(opts.catalog, opts.version, arch)
    vm_type = opts.vm_type or ("macvm" if root.suffix == ".macvm" else "pvm")
    metadata: dict[str, Any] = {
        "vm_type": vm_type,
        "roles": list(opts.role),
        "claims": list(opts.claim),
        "tags": list(opts.tag),
    }
    if opts.description is not None:
        metadata["description"] = opts.description
    wanted = (("cpu", opts.min_cpu), ("memory_mb", opts.min_memory_mb), ("disk_mb", opts.min_disk_mb))
    requirements = {field: value for field, value in wanted if value}
    if requirements:  # a PDFile's MINIMUM_REQUIREMENT lines
        metadata["minimum_requirements"] = requirements
    return root, key, metadata


def _check_vm_bundle(root: Path) -> None:
    """A Parallels VM is a ``.pvm`` or ``.macvm`` folder with its ``config.pvs``: anything else is most
    likely the wrong folder (its parent, a copy of the disk alone), which would be pushed as a VM that
    no Parallels Desktop can open."""
    problems = []
    if root.suffix.lower() not in (".pvm", ".macvm"):
        problems.append("its name does not end in .pvm or .macvm")
    if not (root / "config.pvs").is_file():
        problems.append("it has no config.pvs")
    if problems:
        raise InvalidInput(
            f"{root} does not look like a Parallels VM: {' and '.join(problems)}. Point at the VM's "
            ".pvm or .macvm folder, or push this folder anyway with --allow-any-folder"
        )


def cmd_push(opts: PushOptions, connect: Connect) -> int:
    root, key, metadata = _push_target(opts)
    if opts.storage:
        return _push_to_storage(opts, opts.storage, root, key, metadata)
    config = transfer_config(opts.workers, opts.chunk_size, opts.level)
    return _push_to_catalog(opts, connect, root, key, metadata, config)


def _push_to_catalog(
    opts: PushOptions | ImportOptions,
    connect: Connect,
    root: Path,
    key: ManifestKey,
    metadata: dict[str, Any],
    config: TransferConfig,
) -> int:
    shown = progress(opts)
    with connect(opts) as api:
        try:
            base = opts.base if isinstance(opts, PushOptions) else None
            result = push(api, root, key, metadata=metadata, force=opts.force, base=base, config=config, progress=shown)
        finally:
            if isinstance(shown, RichProgress):
                shown.close()
    if opts.json:
        print_json(
            {
                "manifest": result.manifest,
                "uploaded_chunks": result.uploaded_chunks,
                "uploaded_bytes": result.uploaded_bytes,
                "reused_bytes": result.reused_bytes,
                "chunks": result.chunks,
                "seconds": round(result.seconds, 3),
            }
        )
    else:
        m = result.manifest
        say(
            opts,
            f"Pushed {m['catalog_id']}:{m['version']} ({m['architecture']}): {human_size(m['size'])} VM, "
            f"{result.uploaded_chunks}/{result.chunks} chunks uploaded ({human_size(result.uploaded_bytes)} sent, "
            f"{human_size(result.reused_bytes)} already stored) in {result.seconds:.1f}s",
        )
    return 0


def _push_to_storage(opts: PushOptions, connection: str, root: Path, key: ManifestKey, metadata: dict[str, Any]) -> int:
    from client.recipes import open_byo, push_to_storage

    storage = open_byo(connection)
    try:
        meta = push_to_storage(storage, root, key, metadata, compress=opts.compress, level=opts.level)
    finally:
        storage.close()
    if opts.json:
        print_json({"storage": storage.description, "pack": meta.pack_path, "pack_size": meta.pack_size})
    else:
        say(
            opts,
            f"Exported {key.catalog_id}:{key.version} ({key.architecture}) to {storage.description} in the original "
            f"pack format: {meta.pack_path} ({human_size(meta.pack_size)})",
        )
    return 0


def _vm_setup(opts: PullOptions) -> VmSetup:
    """What ``pdcat pull`` was asked to do with the VM once it is here (see client.prlctl)."""
    setup = VmSetup(
        name=opts.name,
        owner=opts.owner,
        start=opts.start,
        clone=opts.clone is not None,
        clone_name=opts.clone or None,
        clone_destination=Path(opts.clone_dest).absolute() if opts.clone_dest else None,
        execute=tuple(opts.execute),
        exec_timeout=opts.exec_timeout,
    )
    if opts.no_register and setup.needs_more_than_registering:
        raise InvalidInput("--no-register cannot be combined with --start, --owner, --clone or --exec")
    if opts.clone_dest and opts.clone is None:
        raise InvalidInput("--clone-dest needs --clone")
    return setup


def _by_digest(opts: PullOptions, connect: Connect) -> tuple[str, str, str]:
    """``ID@sha256:DIGEST`` (or a unique prefix of at least 12 hex characters): the version and
    architecture whose pack has that digest, as ``docker pull image@sha256:...`` pins an image."""
    catalog_id, _, wanted = opts.ref.partition("@")
    wanted = wanted.removeprefix("sha256:").lower()
    if len(wanted) < 12 or any(c not in "0123456789abcdef" for c in wanted):
        raise InvalidInput(f"{opts.ref[:120]!r}: after '@' give sha256:DIGEST (at least 12 hex characters)")
    with connect(opts) as api:
        items = api.versions(normalize_catalog_id(catalog_id))
    found = [m for m in items if str((m.get("pack") or {}).get("digest") or "").startswith(wanted)]
    if opts.arch:
        found = [m for m in found if m["architecture"] == normalize_architecture(opts.arch)]
    if not found:
        raise NotFound(f"no version of {catalog_id} that you can see has a pack digest starting {wanted[:16]}")
    digests = {m["pack"]["digest"] for m in found}
    if len(digests) > 1:
        raise InvalidInput(f"sha256:{wanted} matches {len(digests)} packs of {catalog_id}; give more of the digest")
    m = max(found, key=lambda m: str(m.get("pushed_at") or ""))  # the same bytes under several versions: any will do
    return str(m["catalog_id"]), str(m["version"]), str(m["architecture"])


def cmd_pull(opts: PullOptions, connect: Connect) -> int:
    if "@" in opts.ref:
        catalog_id, version, arch = _by_digest(opts, connect)
    else:
        catalog_id, version, arch = reference(opts.ref, opts.arch)
    dest = Path(opts.dest) if opts.dest else Path.cwd()
    setup = _vm_setup(opts)
    exe = None if opts.no_register else find_prlctl()
    if exe is not None:  # refuse a taken name (or an unknown owner) before downloading anything
        check_vm_setup(Prlctl(exe), setup, default_name=opts.name or catalog_id)
    if opts.storage:
        return _pull_from_storage(opts, opts.storage, ManifestKey(catalog_id, version, arch), dest, exe, setup)
    shown = progress(opts)
    cache = None if opts.no_cache else VmCache()

    def show_plan(plan: PullPlan) -> None:
        if plan.cache == "hit":
            what = f"cached copy ({human_size(plan.reused_bytes)} reused, nothing to download)"
        elif plan.index is None:  # an imported original-format pack: one file, streamed and unpacked
            what = f"download the original pack ({human_size(plan.download_bytes)})"
        else:
            what = f"download {human_size(plan.download_bytes)} in {plan.download_chunks} chunks"
            if plan.reused_bytes:
                what += f", reuse {human_size(plan.reused_bytes)} already on this machine"
        m = plan.manifest
        say(
            opts,
            f"Pulling {m['catalog_id']}:{m['version']} ({m['architecture']}, {human_size(m['size'])}): {what}; "
            f"writes {human_size(plan.write_bytes)}, leaving {human_size(max(plan.free_after, 0))} free",
        )

    def show_eviction(entry: CacheEntry) -> None:
        say(
            opts,
            f"Evicted {entry.catalog_id}:{entry.version} ({entry.architecture}) from the cache, "
            f"freeing {human_size(entry.disk_usage)}",
        )

    with connect(opts) as api:
        try:
            result = pull(
                api,
                catalog_id,
                version,
                arch,
                dest,
                name=opts.name,
                config=transfer_config(opts.workers),
                progress=shown,
                cache=cache,
                on_plan=show_plan,
                on_evict=show_eviction,
            )
        except NotFound as exc:
            raise explain_missing(api, catalog_id, version, arch, exc) from None
        finally:
            if isinstance(shown, RichProgress):
                shown.close()
            if cache is not None:
                cache.close()
    vm, note, register_failed = _register(opts, exe, setup, result.path)
    m = result.manifest
    if opts.json:
        print_json(
            {
                "path": str(result.path),
                "manifest": m,
                "registered": vm is not None,
                "vm": vm.to_dict() if vm is not None else None,
                "downloaded_chunks": result.downloaded_chunks,
                "downloaded_bytes": result.downloaded_bytes,
                "chunks": result.chunks,
                "resumed_chunks": result.resumed_chunks,
                "reused_chunks": result.reused_chunks,
                "reused_bytes": result.reused_bytes,
                "cache": result.cache,
                "clone_method": result.clone_method,
                "seconds": round(result.seconds, 3),
            }
        )
    else:
        resumed = f", {result.resumed_chunks} resumed" if result.resumed_chunks else ""
        if result.reused_chunks:
            resumed += f", {result.reused_chunks} reused from the cache"
        if result.cache == "hit":
            resumed += f", from the cache by {result.clone_method}"
        if m.get("pack", {}).get("format") == "pdpack":
            what = f"original pack downloaded ({human_size(result.downloaded_bytes)}), unpacked, checksum verified"
        else:
            what = (
                f"{result.downloaded_chunks}/{result.chunks} chunks downloaded "
                f"({human_size(result.downloaded_bytes)}{resumed}), every chunk verified"
            )
        say(opts, f"Pulled {m['catalog_id']}:{m['version']} ({m['architecture']}) to {result.path}: "
                   f"{what}, in {result.seconds:.1f}s; {note}")  # fmt: skip
    _finish_pull(opts, vm, result.path, register_failed)
    return 0


def _register(opts: PullOptions, exe: str | None, setup: VmSetup, bundle: Path) -> tuple[SetupResult | None, str, str]:
    """Hand the pulled bundle to Parallels as asked: (the VM, a note for the summary, why it failed)."""
    if opts.no_register:
        return None, "not registered (--no-register)", ""
    if exe is None:
        failed = ""
        if setup.needs_more_than_registering:
            failed = "NOT registered: prlctl was not found (is Parallels Desktop installed?)"
        return None, "prlctl not found, so it was not registered with Parallels Desktop", failed
    try:
        vm = setup_pulled_vm(Prlctl(exe), bundle, setup)
    except PrlctlError as exc:
        return None, exc.message, exc.message
    note = f"registered with Parallels Desktop as {vm.vm_id} ({vm.name!r})"
    if vm.clone_id:
        note += f", cloned as {vm.clone_name!r} ({vm.clone_id})"
    if vm.started:
        note += " and started" + (f", ran {len(vm.outputs)} command(s) in the guest" if vm.outputs else "")
    return vm, note, ""


def _finish_pull(opts: PullOptions, vm: SetupResult | None, bundle: Path, register_failed: str) -> None:
    if vm is not None and vm.outputs and not opts.json:
        for out in vm.outputs:
            if out.stdout.strip():
                console().print(printable(out.stdout.rstrip("\n"), lines=True), markup=False, highlight=False)
    if register_failed:
        # The user asked for a registered (started, cloned...) VM and did not get one: that is a failure
        # (exit 1), but the verified bundle stays where it is and the one-line reason says what to do.
        raise PrlctlError(f"pulled and verified {bundle}, but {register_failed}")


def _pull_from_storage(
    opts: PullOptions, connection: str, key: ManifestKey, dest: Path, exe: str | None, setup: VmSetup
) -> int:
    """An original-format pack from your own storage: unpacked safely, checksum verified, then registered."""
    from client.recipes import fetch_storage_pack, open_byo

    storage = open_byo(connection)
    try:
        bundle, meta = fetch_storage_pack(storage, key, dest, opts.name)
    finally:
        storage.close()
    vm, note, register_failed = _register(opts, exe, setup, bundle)
    if opts.json:
        print_json(
            {
                "path": str(bundle),
                "storage": storage.description,
                "pack": meta.pack_path,
                "registered": vm is not None,
                "vm": vm.to_dict() if vm is not None else None,
            }
        )
    else:
        say(
            opts,
            f"Pulled {key.catalog_id}:{key.version} ({key.architecture}) from {storage.description} to {bundle}: "
            f"original pack {meta.pack_path} ({human_size(meta.pack_size)}), checksum verified; {note}",
        )
    _finish_pull(opts, vm, bundle, register_failed)
    return 0


def _import_metadata(opts: ImportOptions, found: dict[str, Any]) -> dict[str, Any]:
    """What the pack's own .meta says, with the command line's (or the recipe's) values on top."""
    metadata = dict(found)
    for field, values in (("roles", opts.role), ("claims", opts.claim), ("tags", opts.tag)):
        if values:
            metadata[field] = list(values)
    if opts.description is not None:
        metadata["description"] = opts.description
    return metadata


def cmd_import(opts: ImportOptions, connect: Connect) -> int:
    """Bring an original-format pack into the catalog: from your own storage (a normal push, chunked and
    deduplicated), or, without --from, one that already sits in the catalog's storage (registered in place)."""
    catalog_id, version, arch = reference(opts.ref, opts.arch)
    if version == LATEST:
        raise InvalidInput("import needs an explicit version (ID:VERSION)")
    key = ManifestKey(catalog_id, version, arch)
    if not opts.storage:
        with connect(opts) as api:
            body = {"catalog_id": catalog_id, "version": version, "architecture": arch, "format": "pdpack"}
            m = api.import_pack({**body, **_import_metadata(opts, {})})  # flags override the .meta
        if opts.json:
            print_json(m)
        else:
            say(opts, f"Registered {catalog_id}:{version} ({arch}), an original pack in the catalog's storage")
        return 0
    from client.cache import cache_dir
    from client.recipes import fetch_storage_pack, open_byo, staging_dir

    storage = open_byo(opts.storage)
    try:
        with staging_dir(cache_dir()) as scratch:
            bundle, meta = fetch_storage_pack(storage, key, scratch, None)
            found = {
                "vm_type": bundle.suffix.lstrip("."),
                "roles": list(meta.required_roles),
                "claims": list(meta.required_claims),
                "tags": list(meta.tags),
            }
            if meta.description:
                found["description"] = meta.description
            metadata = _import_metadata(opts, found)
            return _push_to_catalog(opts, connect, bundle, key, metadata, transfer_config(opts.workers))
    finally:
        storage.close()


def cmd_import_vm(opts: ImportVmOptions, connect: Connect) -> int:
    """A VM kept in your own storage as files (or one tar), pushed into the catalog."""
    catalog_id, version, arch = reference(opts.ref, opts.arch)
    if version == LATEST:
        raise InvalidInput("import-vm needs an explicit version (ID:VERSION)")
    if not opts.storage or not opts.vm_remote_path:
        raise InvalidInput("import-vm needs --from CONNECTION and --remote-path PATH (PROVIDER and VM_REMOTE_PATH)")
    from client.cache import cache_dir
    from client.recipes import fetch_remote_vm, open_byo, staging_dir

    vm_type = opts.vm_type or ("macvm" if opts.vm_remote_path.rstrip("/").endswith(".macvm") else "pvm")
    storage = open_byo(opts.storage)
    try:
        with staging_dir(cache_dir()) as scratch:
            bundle = fetch_remote_vm(
                storage, opts.vm_remote_path, scratch / f"{catalog_id}.{vm_type}", compressed=opts.is_compressed
            )
            metadata = _import_metadata(opts, {"vm_type": vm_type, "roles": [], "claims": [], "tags": []})
            key = ManifestKey(catalog_id, version, arch)
            return _push_to_catalog(opts, connect, bundle, key, metadata, transfer_config(opts.workers))
    finally:
        storage.close()
