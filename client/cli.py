"""The ``pdcat`` command line (DESIGN §9). Thin: parse, call client/core functions, print.

Exit codes: 0 success, 1 failure (one line on stderr saying why), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from client.api import CatalogClient
from client.cache import CacheEntry, VmCache, budget_from_env
from client.config import Credentials, load_credentials, save_credentials
from client.output import RichProgress, console, err_console, human_size, manifest_table, print_json
from client.prlctl import Prlctl, PrlctlError, SetupResult, VmSetup, check_vm_setup, find_prlctl, setup_pulled_vm
from client.transfer import NoProgress, Progress, PullPlan, TransferConfig, pull, push
from core.errors import InvalidInput, PdcatError, Unauthenticated
from core.identity import LATEST, ManifestKey, normalize_architecture, parse_reference
from core.pack import DEFAULT_CHUNK_SIZE

__all__ = ["main"]


def host_architecture() -> str:
    try:
        return normalize_architecture(platform.machine())
    except InvalidInput:
        return "x86_64"


# ---- helpers ----------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> CatalogClient:
    recipe_creds = getattr(args, "credentials", None)  # a PDFile's AUTHENTICATE lines
    if recipe_creds is not None and args.server:
        verify = not getattr(args, "insecure", False)
        if recipe_creds.api_key:
            return CatalogClient(args.server, api_key=recipe_creds.api_key, verify=verify)
        if recipe_creds.username and recipe_creds.password:
            with CatalogClient(args.server, verify=verify) as anonymous:
                token = anonymous.login(recipe_creds.username, recipe_creds.password)["token"]
            return CatalogClient(args.server, token=token, verify=verify)
    creds = load_credentials(getattr(args, "server", None))
    if not creds.token and not creds.api_key:
        raise Unauthenticated(f"not logged in to {creds.server}: run 'pdcat login --server {creds.server} -u USER'")
    return CatalogClient(creds.server, token=creds.token, api_key=creds.api_key)


def _progress(args: argparse.Namespace) -> Progress:
    if getattr(args, "json", False) or getattr(args, "quiet", False) or not sys.stderr.isatty():
        return NoProgress()
    return RichProgress()


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False) and not getattr(args, "json", False):
        console.print(text)


def _transfer_config(args: argparse.Namespace) -> TransferConfig:
    base = TransferConfig()
    return TransferConfig(
        workers=args.workers or base.workers,
        chunk_size=getattr(args, "chunk_size", None) or DEFAULT_CHUNK_SIZE,
        level=getattr(args, "level", None) or base.level,
    )


# ---- commands ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from core.config import load_settings
    from core.local.bootstrap import open_local_catalog
    from core.local.server import LocalServer, WsgiApp, data_dir_default
    from core.logs import configure_logging

    # Everything the server creates (data folder, database and its -wal/-shm, blobs, temp files) is
    # private to this user, whatever umask it was started with.
    os.umask(0o077)
    settings = load_settings()
    configure_logging(settings.log_level)
    data = Path(args.data) if args.data else data_dir_default()
    app = WsgiApp()
    server = LocalServer(app, args.host, args.port, threads=args.threads)
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    public_url = os.environ.get("PDCAT_PUBLIC_URL") or f"http://{shown_host}:{server.port}"
    catalog = open_local_catalog(data, public_url, settings)
    app.catalog = catalog
    print(f"pdcat catalog serving on {public_url} (data: {data})", flush=True)
    if catalog.first_start:
        fs = catalog.first_start
        print(
            f"First start: created user '{fs.username}' (SUPER_USER); its password is in {fs.password_file}", flush=True
        )
        print(
            f'Log in with: pdcat login --server {public_url} -u {fs.username} -p "$(cat {fs.password_file})"',
            flush=True,
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        catalog.close()
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    password = args.password or os.environ.get("PDCAT_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise InvalidInput("no password: pass -p, set PDCAT_PASSWORD, or run in a terminal")
        password = getpass.getpass(f"Password for {args.username}: ")
    with CatalogClient(args.server) as api:
        answer = api.login(args.username, password)
    path = save_credentials(
        Credentials(args.server.rstrip("/"), answer["token"], None, args.username, answer["expires_at"])
    )
    _say(args, f"Logged in to {args.server} as {args.username} (token until {answer['expires_at']}; saved in {path})")
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    with _client(args) as api:
        me = api.whoami()
    if args.json:
        print_json(me)
    else:
        console.print(f"{me['subject']} (roles: {', '.join(me['roles']) or '-'}; via {me['via']})")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    arch = normalize_architecture(args.arch) if args.arch else None
    with _client(args) as api:
        if args.id:
            items = api.versions(args.id)
            items = [
                m
                for m in items
                if (arch is None or m["architecture"] == arch) and (not args.tag or args.tag in m["tags"])
            ]
        else:
            items = list(api.list_manifests(tag=args.tag, architecture=arch))
    if args.json:
        print_json({"items": items})
    elif not items:
        console.print("No VMs visible to you.")
    else:
        console.print(manifest_table(items))
    return 0


def _ref(args: argparse.Namespace) -> tuple[str, str, str]:
    catalog_id, version = parse_reference(args.ref)
    return catalog_id, version, normalize_architecture(args.arch or host_architecture())


def cmd_show(args: argparse.Namespace) -> int:
    catalog_id, version, arch = _ref(args)
    with _client(args) as api:
        m = api.get(catalog_id, version, arch)
    if args.json:
        print_json(m)
        return 0
    console.print(manifest_table([m]))
    details = {
        "description": m["description"] or "-",
        "vm type": m["vm_type"],
        "size": f"{human_size(m['size'])} unpacked, {human_size(m['stored_size'])} stored",
        "pack digest": m["pack"]["digest"] or "-",
        "required roles": ", ".join(m["required_roles"]) or "-",
        "required claims": ", ".join(m["required_claims"]) or "-",
        "downloads": str(m["download_count"]),
        "created": f"{m['created_at']} by {m['created_by']}",
    }
    if m["tainted"]:
        details["tainted"] = f"{m['tainted_at']} by {m['tainted_by']}"
    if m["revoked"]:
        details["revoked"] = f"{m['revoked_at']} by {m['revoked_by']}"
    for k, v in details.items():
        console.print(f"  [bold]{k:>15}[/bold]  {v}")
    return 0


def _push_target(args: argparse.Namespace) -> tuple[Path, ManifestKey, dict[str, Any]]:
    """The bundle, its identity and the metadata a push (to the catalog or to your own storage) records."""
    if not args.catalog or not args.version:
        raise InvalidInput("push needs --catalog and --version (or a PDFile with CATALOG_ID and VERSION)")
    root = Path(args.path)
    if not root.exists():
        raise InvalidInput(f"{root} does not exist")
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a VM bundle folder (.pvm / .macvm)")
    arch = normalize_architecture(args.arch or host_architecture())
    key = ManifestKey.parse(args.catalog, args.version, arch)
    vm_type = getattr(args, "vm_type", None) or ("macvm" if root.suffix == ".macvm" else "pvm")
    metadata: dict[str, Any] = {"vm_type": vm_type, "roles": args.role, "claims": args.claim, "tags": args.tag}
    if args.description is not None:
        metadata["description"] = args.description
    wanted = (("cpu", "min_cpu"), ("memory_mb", "min_memory_mb"), ("disk_mb", "min_disk_mb"))
    requirements = {field: getattr(args, name) for field, name in wanted if getattr(args, name, None)}
    if requirements:  # a PDFile's MINIMUM_REQUIREMENT lines
        metadata["minimum_requirements"] = requirements
    return root, key, metadata


def cmd_push(args: argparse.Namespace) -> int:
    root, key, metadata = _push_target(args)
    if args.storage:
        return _push_to_storage(args, root, key, metadata)
    return _push_to_catalog(args, root, key, metadata)


def _push_to_catalog(args: argparse.Namespace, root: Path, key: ManifestKey, metadata: dict[str, Any]) -> int:
    progress = _progress(args)
    with _client(args) as api:
        try:
            result = push(
                api, root, key, metadata=metadata, force=args.force, config=_transfer_config(args), progress=progress
            )
        finally:
            if isinstance(progress, RichProgress):
                progress.close()
    if args.json:
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
        _say(
            args,
            f"Pushed {m['catalog_id']}:{m['version']} ({m['architecture']}): {human_size(m['size'])} VM, "
            f"{result.uploaded_chunks}/{result.chunks} chunks uploaded ({human_size(result.uploaded_bytes)} sent, "
            f"{human_size(result.reused_bytes)} already stored) in {result.seconds:.1f}s",
        )
    return 0


def _push_to_storage(args: argparse.Namespace, root: Path, key: ManifestKey, metadata: dict[str, Any]) -> int:
    from client.recipes import open_byo, push_to_storage

    storage = open_byo(args.storage)
    try:
        meta = push_to_storage(
            storage, root, key, metadata, compress=args.compress is not False, level=getattr(args, "level", None)
        )
    finally:
        storage.close()
    if args.json:
        print_json({"storage": storage.description, "pack": meta.pack_path, "pack_size": meta.pack_size})
    else:
        _say(
            args,
            f"Exported {key.catalog_id}:{key.version} ({key.architecture}) to {storage.description} in the original "
            f"pack format: {meta.pack_path} ({human_size(meta.pack_size)})",
        )
    return 0


def _vm_setup(args: argparse.Namespace) -> VmSetup:
    """What ``pdcat pull`` was asked to do with the VM once it is here (see client.prlctl)."""
    setup = VmSetup(
        name=args.name,
        owner=args.owner,
        start=args.start,
        clone=args.clone is not None,
        clone_name=args.clone or None,
        clone_destination=Path(args.clone_dest).absolute() if args.clone_dest else None,
        execute=tuple(args.execute),
        exec_timeout=args.exec_timeout,
    )
    if args.no_register and setup.needs_more_than_registering:
        raise InvalidInput("--no-register cannot be combined with --start, --owner, --clone or --exec")
    if args.clone_dest and args.clone is None:
        raise InvalidInput("--clone-dest needs --clone")
    return setup


def cmd_pull(args: argparse.Namespace) -> int:
    catalog_id, version, arch = _ref(args)
    dest = Path(args.dest) if args.dest else Path.cwd()
    setup = _vm_setup(args)
    exe = None if args.no_register else find_prlctl()
    if exe is not None:  # refuse a taken name (or an unknown owner) before downloading anything
        check_vm_setup(Prlctl(exe), setup, default_name=args.name or catalog_id)
    if args.storage:
        return _pull_from_storage(args, ManifestKey(catalog_id, version, arch), dest, exe, setup)
    progress = _progress(args)
    cache = None if args.no_cache else VmCache()

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
        _say(
            args,
            f"Pulling {m['catalog_id']}:{m['version']} ({m['architecture']}, {human_size(m['size'])}): {what}; "
            f"writes {human_size(plan.write_bytes)}, leaving {human_size(max(plan.free_after, 0))} free",
        )

    def show_eviction(entry: CacheEntry) -> None:
        _say(
            args,
            f"Evicted {entry.catalog_id}:{entry.version} ({entry.architecture}) from the cache, "
            f"freeing {human_size(entry.disk_usage)}",
        )

    with _client(args) as api:
        try:
            result = pull(
                api,
                catalog_id,
                version,
                arch,
                dest,
                name=args.name,
                config=_transfer_config(args),
                progress=progress,
                cache=cache,
                on_plan=show_plan,
                on_evict=show_eviction,
            )
        finally:
            if isinstance(progress, RichProgress):
                progress.close()
            if cache is not None:
                cache.close()
    vm, note, register_failed = _register(args, exe, setup, result.path)
    m = result.manifest
    if args.json:
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
        _say(args, f"Pulled {m['catalog_id']}:{m['version']} ({m['architecture']}) to {result.path}: "
                   f"{what}, in {result.seconds:.1f}s; {note}")  # fmt: skip
    _finish_pull(args, vm, result.path, register_failed)
    return 0


def _register(
    args: argparse.Namespace, exe: str | None, setup: VmSetup, bundle: Path
) -> tuple[SetupResult | None, str, str]:
    """Hand the pulled bundle to Parallels as asked: (the VM, a note for the summary, why it failed)."""
    if args.no_register:
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


def _finish_pull(args: argparse.Namespace, vm: SetupResult | None, bundle: Path, register_failed: str) -> None:
    if vm is not None and vm.outputs and not args.json:
        for out in vm.outputs:
            if out.stdout.strip():
                console.print(out.stdout.rstrip("\n"), markup=False, highlight=False)
    if register_failed:
        # The user asked for a registered (started, cloned...) VM and did not get one: that is a failure
        # (exit 1), but the verified bundle stays where it is and the one-line reason says what to do.
        raise PrlctlError(f"pulled and verified {bundle}, but {register_failed}")


def _pull_from_storage(args: argparse.Namespace, key: ManifestKey, dest: Path, exe: str | None, setup: VmSetup) -> int:
    """An original-format pack from your own storage: unpacked safely, checksum verified, then registered."""
    from client.recipes import fetch_storage_pack, open_byo

    storage = open_byo(args.storage)
    try:
        bundle, meta = fetch_storage_pack(storage, key, dest, args.name)
    finally:
        storage.close()
    vm, note, register_failed = _register(args, exe, setup, bundle)
    if args.json:
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
        _say(
            args,
            f"Pulled {key.catalog_id}:{key.version} ({key.architecture}) from {storage.description} to {bundle}: "
            f"original pack {meta.pack_path} ({human_size(meta.pack_size)}), checksum verified; {note}",
        )
    _finish_pull(args, vm, bundle, register_failed)
    return 0


def _import_metadata(args: argparse.Namespace, found: dict[str, Any]) -> dict[str, Any]:
    """What the pack's own .meta says, with the command line's (or the recipe's) values on top."""
    metadata = dict(found)
    for field, flag in (("roles", "role"), ("claims", "claim"), ("tags", "tag")):
        if getattr(args, flag, None):
            metadata[field] = getattr(args, flag)
    if getattr(args, "description", None) is not None:
        metadata["description"] = args.description
    return metadata


def cmd_import(args: argparse.Namespace) -> int:
    """Bring an original-format pack into the catalog: from your own storage (a normal push, chunked and
    deduplicated), or, without --from, one that already sits in the catalog's storage (registered in place)."""
    catalog_id, version, arch = _ref(args)
    if version == LATEST:
        raise InvalidInput("import needs an explicit version (ID:VERSION)")
    key = ManifestKey(catalog_id, version, arch)
    if not args.storage:
        with _client(args) as api:
            body = {"catalog_id": catalog_id, "version": version, "architecture": arch, "format": "pdpack"}
            m = api.import_pack({**body, **_import_metadata(args, {})})  # flags override the .meta
        if args.json:
            print_json(m)
        else:
            _say(args, f"Registered {catalog_id}:{version} ({arch}), an original pack in the catalog's storage")
        return 0
    from client.cache import cache_dir
    from client.recipes import fetch_storage_pack, open_byo, staging_dir

    storage = open_byo(args.storage)
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
            return _push_to_catalog(args, bundle, key, _import_metadata(args, found))
    finally:
        storage.close()


def cmd_import_vm(args: argparse.Namespace) -> int:
    """A VM kept in your own storage as files (or one tar), pushed into the catalog."""
    catalog_id, version, arch = _ref(args)
    if version == LATEST:
        raise InvalidInput("import-vm needs an explicit version (ID:VERSION)")
    if not args.storage or not args.vm_remote_path:
        raise InvalidInput("import-vm needs --from CONNECTION and --remote-path PATH (PROVIDER and VM_REMOTE_PATH)")
    from client.cache import cache_dir
    from client.recipes import fetch_remote_vm, open_byo, staging_dir

    vm_type = args.vm_type or ("macvm" if args.vm_remote_path.rstrip("/").endswith(".macvm") else "pvm")
    storage = open_byo(args.storage)
    try:
        with staging_dir(cache_dir()) as scratch:
            bundle = fetch_remote_vm(
                storage, args.vm_remote_path, scratch / f"{catalog_id}.{vm_type}", compressed=bool(args.is_compressed)
            )
            metadata = _import_metadata(args, {"vm_type": vm_type, "roles": [], "claims": [], "tags": []})
            return _push_to_catalog(args, bundle, ManifestKey(catalog_id, version, arch), metadata)
    finally:
        storage.close()


def cmd_run(args: argparse.Namespace) -> int:
    raise InvalidInput(f"{args.path} is not a PDFile (the file name must end in .pdfile)")


def cmd_state(args: argparse.Namespace) -> int:
    catalog_id, version, arch = _ref(args)
    if version == LATEST:
        raise InvalidInput(f"{args.command} needs an explicit version (ID:VERSION), not latest")
    with _client(args) as api:
        m = api.state(catalog_id, version, arch, args.command)
    if args.json:
        print_json(m)
    else:
        _say(args, f"{m['catalog_id']}:{m['version']} ({m['architecture']}) is now {args.command.rstrip('e')}ed")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    catalog_id, _, version = args.ref.partition(":")
    arch = normalize_architecture(args.arch) if args.arch else None
    if arch and not version:
        raise InvalidInput("--arch needs ID:VERSION")
    with _client(args) as api:
        api.delete(catalog_id, version or None, arch, purge=args.purge)
    removed = f"Removed {args.ref}" + (f" ({arch})" if arch else "")
    if args.purge:
        _say(args, f"{removed} and reclaimed the data no other version uses")
    else:
        _say(args, f"{removed}; its data stays in storage until `pdcat gc` reclaims what no other version uses")
    return 0


def cmd_apikey(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if args.action == "create":
            body: dict[str, Any] = {"roles": args.role, "claims": args.claim, "expires_in_days": args.days}
            if args.service_account:
                body["service_account"] = args.service_account
            if args.description:
                body["description"] = args.description
            created = api.create_api_key(**body)
            if args.json:
                print_json(created)
            else:
                console.print(f"API key {created['id']} for {created['subject']}, expires {created['expires_at']}")
                console.print("Shown only once; use it as PDCAT_API_KEY or the X-Api-Key header:")
                print(created["key"])
        elif args.action == "ls":
            keys = api.list_api_keys()
            if args.json:
                print_json({"items": keys})
            else:
                for k in keys:
                    state = "revoked" if k["revoked"] else f"expires {k['expires_at']}"
                    console.print(f"{k['id']}  {k['subject']}  roles={','.join(k['roles']) or '-'}  {state}")
        else:
            if not args.key_id:
                raise InvalidInput("revoke needs the key id")
            api.revoke_api_key(args.key_id)
            _say(args, f"Revoked API key {args.key_id}")
    return 0


_GC_COUNTS = ("catalogs", "chunks_deleted", "chunk_bytes_deleted", "staged_deleted", "staged_bytes_deleted",
              "sessions_aborted")  # fmt: skip


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cmd_gc(args: argparse.Namespace) -> int:
    """Every step of one garbage-collection walk, summed into one line (or one JSON object)."""
    if args.grace is not None and args.grace < 0:
        raise InvalidInput("--grace must be 0 seconds or more")
    totals = dict.fromkeys(_GC_COUNTS, 0)
    cursor: str | None = None
    steps = 0
    with _client(args) as api:
        while True:
            answer = api.gc(dry_run=args.dry_run, cursor=cursor, grace_seconds=args.grace)
            steps += 1
            for name in _GC_COUNTS:
                totals[name] += int(answer.get(name) or 0)
            following = answer.get("next_cursor")
            if not following:
                break
            if following == cursor:
                raise PdcatError("the catalog's garbage collection did not move on; try again later")
            cursor = str(following)
    if args.json:
        print_json({"dry_run": args.dry_run, "steps": steps, **totals})
        return 0
    verb = "would be reclaimed" if args.dry_run else "reclaimed"
    line = (
        f"gc: {_plural(totals['chunks_deleted'], 'chunk')} ({human_size(totals['chunk_bytes_deleted'])}) and "
        f"{_plural(totals['staged_deleted'], 'staged object')} ({human_size(totals['staged_bytes_deleted'])}) "
        f"{verb} in {_plural(totals['catalogs'], 'catalog')}"
    )
    if totals["sessions_aborted"]:
        aborted = "would be aborted" if args.dry_run else "aborted"
        line += f"; {_plural(totals['sessions_aborted'], 'abandoned upload')} {aborted}"
    _say(args, line)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    overrides = {"max_bytes": args.max_size, "keep_free_bytes": args.keep_free}
    budget = replace(budget_from_env(), **{k: v for k, v in overrides.items() if v is not None})
    cache = VmCache(budget=budget)
    try:
        if args.action == "ls":
            entries = sorted(cache.entries(), key=lambda e: e.last_used, reverse=True)
            if args.json:
                print_json(
                    {"root": str(cache.root), "usage": cache.usage(), "items": [_entry_json(e) for e in entries]}
                )
            elif not entries:
                console.print(f"The cache at {cache.root} is empty.")
            else:
                for e in entries:
                    pin = " pinned" if e.pinned else ""
                    console.print(
                        f"{e.digest[:12]}  {e.catalog_id}:{e.version} ({e.architecture})  "
                        f"{human_size(e.disk_usage)} on disk  used {e.use_count}x{pin}"
                    )
                console.print(f"{len(entries)} VM(s), {human_size(cache.usage())} in {cache.root}")
        elif args.action == "prune":
            victims = cache.prune(dry_run=args.dry_run)
            if args.json:
                print_json({"dry_run": args.dry_run, "evicted": [_entry_json(e) for e in victims]})
            else:
                verb = "Would evict" if args.dry_run else "Evicted"
                for e in victims:
                    console.print(f"{verb} {e.catalog_id}:{e.version} ({e.architecture}), {human_size(e.disk_usage)}")
                if not victims:
                    console.print("Nothing to evict: the cache is within its budget.")
        else:
            if not args.ref:
                raise InvalidInput(f"cache {args.action} needs a digest prefix or ID:VERSION[:ARCH]")
            if args.action == "rm":
                e = cache.remove(args.ref)
                _say(args, f"Removed {e.catalog_id}:{e.version} ({e.architecture}) from the cache")
            else:
                e = cache.pin(args.ref, args.action == "pin")
                _say(args, f"{args.action.capitalize()}ned {e.catalog_id}:{e.version} ({e.architecture})")
    finally:
        cache.close()
    return 0


def _entry_json(e: CacheEntry) -> dict[str, Any]:
    return {
        "digest": e.digest,
        "catalog_id": e.catalog_id,
        "version": e.version,
        "architecture": e.architecture,
        "size": e.size,
        "disk_usage": e.disk_usage,
        "last_used": e.last_used,
        "use_count": e.use_count,
        "pinned": e.pinned,
    }


# ---- parser -----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdcat", description="Push and pull Parallels Desktop VMs through a catalog.")
    p.add_argument("--debug", action="store_true", help="show logs and full errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, json_flag: bool = False, server: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        if json_flag:
            c.add_argument("--json", action="store_true", help="machine-readable output")
        if server:
            c.add_argument("--server", help="catalog URL (default: the one you logged in to, or PDCAT_SERVER)")
        c.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
        return c

    def manifest_flags(c: argparse.ArgumentParser) -> None:
        """What a push (or an import) records about the version."""
        c.add_argument("--arch", help="(default: this machine's)")
        c.add_argument("--role", action="append", default=[], help="required role to see it (repeatable)")
        c.add_argument("--claim", action="append", default=[], help="required claim to see it (repeatable)")
        c.add_argument("--tag", action="append", default=[])
        c.add_argument("--description")
        c.add_argument("--force", action="store_true", help="replace an existing version")

    c = command("serve", "Run the embedded catalog (SQLite + local files) on this machine", server=False)
    c.add_argument("--data", help="data folder (default: the platform's user data folder)")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=int(os.environ.get("PDCAT_PORT", "8080")))
    c.add_argument("--threads", type=int, default=16)
    c.set_defaults(func=cmd_serve)

    c = command("login", "Log in and store a token", server=False)
    c.add_argument("--server", required=True)
    c.add_argument("-u", "--username", required=True)
    c.add_argument("-p", "--password", help="(default: PDCAT_PASSWORD, or asked for)")
    c.set_defaults(func=cmd_login)

    command("whoami", "Show who you are logged in as", json_flag=True).set_defaults(func=cmd_whoami)

    c = command("ls", "List VMs (every visible one, or the versions of one id)", json_flag=True)
    c.add_argument("id", nargs="?")
    c.add_argument("--tag")
    c.add_argument("--arch")
    c.set_defaults(func=cmd_ls)

    c = command("show", "Show one VM version", json_flag=True)
    c.add_argument("ref", metavar="ID:VERSION")
    c.add_argument("--arch", help="(default: this machine's)")
    c.set_defaults(func=cmd_show)

    c = command("push", "Push a VM bundle (.pvm/.macvm folder), or run a push PDFile", json_flag=True)
    c.add_argument("path", help="the bundle, or FILE.pdfile")
    c.add_argument("--catalog", help="catalog id")
    c.add_argument("--version")
    c.add_argument("--to", dest="storage", metavar="CONNECTION", help="export to your own storage instead, in the "
                   "original pack format (provider=aws-s3;bucket=...)")  # fmt: skip
    c.add_argument("--no-compress", dest="compress", action="store_const", const=False, help="(--to) plain tar")
    manifest_flags(c)
    c.add_argument("--chunk-size", type=int, help=f"bytes per chunk (default {DEFAULT_CHUNK_SIZE})")
    c.add_argument("--level", type=int, help="zstd level (default 3)")
    c.add_argument("--workers", type=int)
    c.set_defaults(func=cmd_push)

    c = command("pull", "Pull a VM, verify every byte, register it with prlctl (or run a pull PDFile)", json_flag=True)
    c.add_argument("ref", metavar="ID[:VERSION]|FILE.pdfile")
    c.add_argument("--from", dest="storage", metavar="CONNECTION", help="pull an original-format pack from your own "
                   "storage instead (provider=aws-s3;bucket=...)")  # fmt: skip
    c.add_argument("--arch", help="(default: this machine's)")
    c.add_argument("--dest", help="folder to put the VM in (default: current folder)")
    c.add_argument("--name", help="VM name (default: the catalog id)")
    c.add_argument("--no-register", action="store_true")
    c.add_argument("--start", action="store_true", help="start the VM after registering it (the clone, with --clone)")
    c.add_argument("--owner", help="hand the VM to this user: chown its files, register it as them (needs root)")
    c.add_argument(
        "--clone",
        nargs="?",
        const="",
        metavar="NAME",
        help="also clone it (default name: <name>-clone); --start and --exec then act on the clone",
    )
    c.add_argument("--clone-dest", metavar="DIR", help="folder for the clone (default: Parallels' own)")
    c.add_argument(
        "--exec", action="append", default=[], dest="execute", metavar="CMD", help="run in the guest (repeatable)"
    )
    c.add_argument("--exec-timeout", type=float, default=300.0, metavar="S", help="wait for the guest (default 300)")
    c.add_argument("--no-cache", action="store_true", help="download straight to --dest, bypassing the local cache")
    c.add_argument("--workers", type=int)
    c.set_defaults(func=cmd_pull)

    for action, text in (
        ("taint", "Taint a version: pulls are refused until untainted"),
        ("untaint", "Untaint a version"),
        ("revoke", "Revoke a version, permanently"),
    ):
        c = command(action, text, json_flag=True)
        c.add_argument("ref", metavar="ID:VERSION")
        c.add_argument("--arch", help="(default: this machine's)")
        c.set_defaults(func=cmd_state)

    def import_flags(c: argparse.ArgumentParser) -> None:
        c.add_argument("ref", metavar="ID:VERSION")
        manifest_flags(c)
        c.add_argument("--workers", type=int)

    c = command("import", "Bring an original-format pack (.pdpack + .meta) into the catalog", json_flag=True)
    import_flags(c)
    c.add_argument("--from", dest="storage", metavar="CONNECTION", help="your own storage holding the pack "
                   "(default: the catalog's own storage, registered in place)")  # fmt: skip
    c.set_defaults(func=cmd_import)

    c = command("import-vm", "Push a VM kept in your own storage (a folder of files, or one tar) into the catalog",
                json_flag=True)  # fmt: skip
    import_flags(c)
    c.add_argument("--from", dest="storage", metavar="CONNECTION", help="your own storage (provider=...)")
    c.add_argument("--remote-path", dest="vm_remote_path", metavar="PATH", help="where the VM is in that storage")
    c.add_argument("--compressed", dest="is_compressed", action="store_true", help="the VM is one tar(.gz) file")
    c.add_argument("--vm-type", choices=("pvm", "macvm"))
    c.set_defaults(func=cmd_import_vm)

    c = command("run", "Run a PDFile (push, pull, list, import or import-vm)", json_flag=True, server=False)
    c.add_argument("path", metavar="FILE.pdfile")
    c.set_defaults(func=cmd_run)

    c = command("rm", "Remove a VM id, a version, or one architecture of a version")
    c.add_argument("ref", metavar="ID[:VERSION]")
    c.add_argument("--arch")
    c.add_argument("--purge", action="store_true", help="also delete stored data no other version uses")
    c.set_defaults(func=cmd_rm)

    c = command("cache", "Inspect and trim the local cache of pulled VMs", json_flag=True, server=False)
    c.add_argument("action", choices=("ls", "prune", "rm", "pin", "unpin"))
    c.add_argument("ref", nargs="?", metavar="DIGEST|ID:VERSION[:ARCH]")
    c.add_argument("--dry-run", action="store_true", help="(prune) only say what would be evicted")
    c.add_argument("--max-size", type=int, help="(prune) budget in bytes (default: PDCAT_CACHE_MAX_BYTES)")
    c.add_argument("--keep-free", type=int, help="(prune) bytes of disk to keep free (default 5 GiB)")
    c.set_defaults(func=cmd_cache)

    c = command("gc", "Reclaim storage nothing references (chunks, staged uploads); needs the delete claim",
                json_flag=True)  # fmt: skip
    c.add_argument("--dry-run", action="store_true", help="only count what would be reclaimed")
    c.add_argument("--grace", type=float, metavar="SECONDS", help="keep anything younger (default: the catalog's, 1 h)")
    c.set_defaults(func=cmd_gc)

    c = command("apikey", "Create, list or revoke API keys", json_flag=True)
    c.add_argument("action", choices=("create", "ls", "revoke"))
    c.add_argument("key_id", nargs="?")
    c.add_argument(
        "--service-account",
        metavar="NAME",
        help="mint the key for a robot, acting as svc:<you>/NAME (default: the key acts as you)",
    )
    c.add_argument("--role", action="append", default=[])
    c.add_argument("--claim", action="append", default=[])
    c.add_argument("--days", type=int, default=90)
    c.add_argument("--description")
    c.set_defaults(func=cmd_apikey)
    return p


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"pdcat: {record.levelname.lower()}: {record.getMessage()}"


# The parts of a presigned URL that authorise it: S3's SigV4 signature, credential scope and session
# token, an Azure SAS's ``sig``, the embedded store's ``signature``. The name may follow a raw or a
# percent-encoded ``?``/``&`` (a URL quoted inside another one); the value ends at the next parameter.
_SIGNED_PARAM = re.compile(
    r"((?:[?&]|%26|%3F)(?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|sig|signature)(?:=|%3D))"
    r"(?:(?!%26)[^&\s\"'<>#\\])*",
    re.IGNORECASE,
)


def mask_signatures(text: str) -> str:
    """``text`` with the secret part of every presigned URL replaced by ``***`` (the rest kept)."""
    return _SIGNED_PARAM.sub(r"\1***", text)


class _MaskSignatures(logging.Filter):
    """On the CLI's handler: no log line (pdcat's, httpx's or httpcore's, exceptions included) ever
    shows a presigned URL's signature, so ``--debug`` output can be pasted into a bug report."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the handler reports it, with nothing formatted
            return True
        record.msg, record.args = mask_signatures(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_signatures(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_signatures(record.stack_info)
        return True


def _configure_logging(debug: bool) -> None:
    """Warnings (retries, re-fetched chunks) as short prefixed lines; everything with --debug.

    Either way, presigned URLs are logged without their signatures (``_MaskSignatures``).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s") if debug else _WarningFormatter())
    handler.addFilter(_MaskSignatures())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.ERROR)


def _limit_allocator_growth() -> None:
    """Chunk buffers are megabytes each and come and go on several threads. glibc's default (an
    adaptive mmap threshold and one arena per thread) keeps freed buffers around, so peak memory grew
    with the size of the VM. A fixed 1 MiB mmap threshold and two arenas keep it flat."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_arena_max, m_mmap_threshold = -8, -3
        libc.mallopt(m_mmap_threshold, 1024 * 1024)
        libc.mallopt(m_arena_max, 2)
    except (OSError, AttributeError):
        pass


def _from_recipe(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """``pdcat run FILE.pdfile`` and ``pdcat push|pull FILE.pdfile``: the namespace the recipe's own command
    line would give, with the flags typed here on top (flags > file > defaults)."""
    path = getattr(args, "ref", None) if args.command == "pull" else getattr(args, "path", None)
    if args.command not in ("run", "push", "pull") or not isinstance(path, str) or not path.lower().endswith(".pdfile"):
        return args
    from client.recipes import recipe_namespace

    def warn(message: str) -> None:
        err_console.print(f"pdcat: warning: {message}", markup=False, highlight=False)

    return recipe_namespace(parser, path, args, None if args.command == "run" else args.command, warn)


def main(argv: Sequence[str] | None = None) -> int:
    _limit_allocator_growth()
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.debug)
    try:
        args = _from_recipe(parser, args)
        return int(args.func(args))
    except KeyboardInterrupt:
        err_console.print("pdcat: interrupted; run the same command again to resume")
        return 130
    except PdcatError as exc:
        if args.debug:
            raise
        err_console.print(f"pdcat: {exc.message}", markup=False, highlight=False)
        return 1
    except OSError as exc:
        if args.debug:
            raise
        err_console.print(f"pdcat: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), markup=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
