"""The ``pdcat`` commands: each takes its options and the catalog client factory, and returns the exit
code. :func:`dispatch` picks the command; push, pull, import and import-vm live in
``client.cli.transfers``. Commands without an options type read their argparse namespace directly."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from client.api import CatalogClient
from client.cli.contexts import cmd_context, logged_out, saved_where
from client.cli.session import Connect, common, explain_missing, reference, say
from client.config import Credentials, cacert_override, forget_credentials, normalize_server, store_login
from client.options import (
    COMMANDS,
    ImportOptions,
    ImportVmOptions,
    ListOptions,
    Options,
    PullOptions,
    PushOptions,
    resolve,
)
from client.output import console, err_console, human_size, manifest_table, print_json, printable
from core.errors import InvalidInput, NotFound, PdcatError
from core.identity import LATEST, normalize_architecture

if TYPE_CHECKING:
    import ssl

    from client.cache import CacheEntry
    from core.local.tls import ServerCertificate

__all__ = ["dispatch", "run_options"]


def dispatch(args: argparse.Namespace, connect: Connect) -> int:
    """Run the command ``args`` names: ls, push, pull, import and import-vm (and any PDFile) through
    their typed options, the others with their namespace."""
    if args.command in COMMANDS or args.command == "run":
        return run_options(_options(args), connect)
    return _COMMANDS[args.command](args, connect)


def run_options(options: Options, connect: Connect) -> int:
    """The command for a set of options: how ``pdcat run`` follows a recipe's RUN.

    Only push, pull, import and import-vm load the transfer engine (``client.cli.transfers``)."""
    if isinstance(options, ListOptions):
        return cmd_ls(options, connect)
    from client.cli.transfers import cmd_import, cmd_import_vm, cmd_pull, cmd_push

    match options:
        case ImportVmOptions():
            return cmd_import_vm(options, connect)
        case ImportOptions():
            return cmd_import(options, connect)
        case PushOptions():
            return cmd_push(options, connect)
        case PullOptions():
            return cmd_pull(options, connect)
    raise TypeError(f"no command takes {type(options).__name__}")


def _options(args: argparse.Namespace) -> Options:
    """The typed options of the command line, or of the PDFile it names (``pdcat run FILE``, ``pdcat
    push|pull FILE.pdfile``) with the flags typed here on top."""
    if args.command == "run":
        if not _is_pdfile(args.path):
            raise InvalidInput(f"{args.path} is not a PDFile (the file name must end in .pdfile)")
        return _recipe(args, args.path, "path", None)
    if args.command == "push" and _is_pdfile(args.path):
        return _recipe(args, args.path, "path", "push")
    if args.command == "pull" and _is_pdfile(args.ref):
        return _recipe(args, args.ref, "ref", "pull")
    return resolve(COMMANDS[args.command], flags=vars(args))


def _is_pdfile(path: str) -> bool:
    return path.lower().endswith(".pdfile")


def _recipe(args: argparse.Namespace, path: str, positional: str, expected: str | None) -> Options:
    from client.recipes import recipe_options

    def warn(message: str) -> None:
        err_console().print(f"pdcat: warning: {message}", markup=False, highlight=False)

    flags = {name: value for name, value in vars(args).items() if name != positional}  # it names the file
    return recipe_options(path, flags, expected, warn)


def cmd_serve(args: argparse.Namespace, connect: Connect) -> int:
    from core.local.lean import skip_unused_crypto

    skip_unused_crypto(os.environ)  # before anything imports PyJWT: see core/local/lean.py
    from core.config import load_settings
    from core.local.bootstrap import open_local_catalog
    from core.local.server import LocalServer, WsgiApp, data_dir_default
    from core.logs import configure_logging

    # Everything the server creates (data folder, database and its -wal/-shm, blobs, temp files) is
    # private to this user, whatever umask it was started with.
    os.umask(0o077)
    settings = load_settings()
    configure_logging(settings.log_level, log_format=settings.log_format)
    data = Path(args.data) if args.data else data_dir_default()
    given_url = args.public_url or os.environ.get("PDCAT_PUBLIC_URL")
    tls = _serve_tls(args, data, given_url)
    app = WsgiApp()
    server = LocalServer(app, args.host, args.port, threads=args.threads, tls=tls[1] if tls else None)
    public_url = _public_url(given_url, args.host, server.port, "https" if tls else "http")
    catalog = open_local_catalog(data, public_url, settings)
    app.catalog = catalog
    print(f"pdcat catalog serving on {public_url} (data: {data})", flush=True)
    trust = ""
    if tls:
        _announce_tls(tls[0], public_url)
        trust = f" --cacert {tls[0].cert}" if tls[0].self_signed else ""
    if catalog.first_start:
        fs = catalog.first_start
        print(
            f"First start: created user '{fs.username}' (SUPER_USER); its password is in {fs.password_file}", flush=True
        )
        print(
            f"Log in with: pdcat login --server {public_url}{trust} -u {fs.username} --password-stdin"
            f" < {fs.password_file}",  # not -p: a password in the arguments shows in ps
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


def _every_interface(host: str) -> bool:
    return host in ("0.0.0.0", "", "::")


def _public_url(given: str | None, host: str, port: int, scheme: str = "http") -> str:
    """Where clients reach this server: presigned URLs start with it, so teammates need one that names
    this machine, not the loopback address."""
    if given:
        return normalize_server(given)
    if _every_interface(host):
        import socket

        name = socket.getfqdn()
        print(
            f"Listening on every interface; clients are sent to {scheme}://{name}:{port}. If teammates reach this "
            f"machine by another name or address, restart with --public-url {scheme}://NAME:PORT",
            flush=True,
        )
        return f"{scheme}://{name}:{port}"
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def _serve_tls(
    args: argparse.Namespace, data: Path, given_url: str | None
) -> tuple[ServerCertificate, ssl.SSLContext] | None:
    """The certificate ``pdcat serve`` presents and its context, or None for plain HTTP; refuses, before
    the port is bound, what cannot work."""
    if args.tls_self_signed and (args.tls_cert or args.tls_key):
        raise InvalidInput("pick one: --tls-cert with --tls-key (your certificate), or --tls-self-signed")
    if bool(args.tls_cert) != bool(args.tls_key):
        given, missing = ("--tls-cert", "--tls-key") if args.tls_cert else ("--tls-key", "--tls-cert")
        raise InvalidInput(f"{given} needs {missing} too: the certificate and its private key, both PEM files")
    if not (args.tls_cert or args.tls_self_signed):
        return None
    url = normalize_server(given_url) if given_url else None
    if url and urlsplit(url).scheme.lower() == "http":
        raise InvalidInput(f"the public URL {url} is http://, but this server speaks TLS: give its https:// URL")
    from core.local.tls import given_certificate, self_signed_certificate

    if args.tls_cert:
        key = Path(args.tls_key)
        found = given_certificate(Path(args.tls_cert), key)
        if key.stat().st_mode & 0o077:
            warning = f"pdcat: warning: other users can read the TLS key {key}: chmod 600 {key}"
            err_console().print(warning, markup=False)
        return found
    import socket

    public_host = urlsplit(url).hostname if url else socket.getfqdn() if _every_interface(args.host) else args.host
    names = [public_host or "localhost", socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    return self_signed_certificate(data / "tls", names)


def _announce_tls(cert: ServerCertificate, public_url: str) -> None:
    """The certificate, its fingerprint, and how a teammate trusts it."""
    if cert.self_signed:
        made = {
            "reused": "reused",
            "made": "made now",
            "replaced": "made now, replacing one that no longer named this host or was about to expire: "
            "clients that trusted that one must trust this one",
        }[cert.made]
        print(f"TLS: self-signed certificate {cert.cert} ({made})", flush=True)
        print(f"TLS: SHA-256 fingerprint {cert.fingerprint}", flush=True)
        print(
            f"Teammates trust it: copy {cert.cert} to their machine as cert.pem, check that "
            "'openssl x509 -in cert.pem -noout -fingerprint -sha256' prints the fingerprint above, then "
            f"'pdcat login --server {public_url} --cacert cert.pem -u USER' (CI: PDCAT_CACERT=cert.pem)",
            flush=True,
        )
        return
    print(f"TLS: certificate {cert.cert}", flush=True)
    print(f"TLS: SHA-256 fingerprint {cert.fingerprint}", flush=True)
    print(
        "Clients trust it if its issuer is among their system's roots; otherwise they pass that CA's certificate: "
        f"'pdcat login --server {public_url} --cacert CA.pem -u USER' (CI: PDCAT_CACERT=CA.pem)",
        flush=True,
    )


def _login_cacert(args: argparse.Namespace) -> str | None:
    """``--cacert`` as an absolute path (it is stored with the login), checked first: a CA file that
    cannot be used is refused before a password is asked for."""
    if not args.cacert:
        return None
    from client.net import Trust, tls_context

    path = str(Path(args.cacert).expanduser().absolute())
    tls_context(Trust(cacert=path))
    return path


def cmd_login(args: argparse.Namespace, connect: Connect) -> int:
    server = normalize_server(args.server)
    cacert = _login_cacert(args)
    if args.api_key:
        return _login_with_api_key(args, server, cacert)
    if not args.username:
        raise InvalidInput("login needs -u USER (or --api-key KEY)")
    password = args.password or os.environ.get("PDCAT_PASSWORD")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidInput("--password-stdin read no password")
    if password is None:
        if not sys.stdin.isatty():
            raise InvalidInput("no password: pass --password-stdin, -p or PDCAT_PASSWORD, or run in a terminal")
        password = getpass.getpass(f"Password for {args.username}: ")
    with CatalogClient(server, cacert=cacert or cacert_override()) as api:
        answer = api.login(args.username, password)
    stored = store_login(
        Credentials(server, answer["token"], None, args.username, answer["expires_at"], cacert), current=True
    )
    where = saved_where(stored, "token")
    say(common(args), f"Logged in to {server} as {args.username} (token until {answer['expires_at']}); {where}")
    return 0


def _login_with_api_key(args: argparse.Namespace, server: str, cacert: str | None) -> int:
    """Store an API key as this machine's credential for ``server``, once the catalog has accepted it."""
    key = sys.stdin.readline().strip() if args.api_key == "-" else args.api_key.strip()
    if not key:
        raise InvalidInput("--api-key - read no key from standard input")
    with CatalogClient(server, api_key=key, cacert=cacert or cacert_override()) as api:
        me = api.whoami()
    stored = store_login(Credentials(server, None, key, str(me["subject"]), None, cacert), current=True)
    say(common(args), f"Logged in to {server} as {me['subject']} with an API key; {saved_where(stored, 'key')}")
    return 0


def _new_password(args: argparse.Namespace, who: str) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"New password for {who}: ")
        if getpass.getpass("Again: ") != password:
            raise InvalidInput("the two passwords differ; nothing changed")
    else:
        raise InvalidInput("no password: pass --password-stdin, or run in a terminal")
    if not password:
        raise InvalidInput("an empty password; nothing changed")
    return password


def _names(items: list[str]) -> str:
    return ", ".join(items) or "-"


def cmd_user(args: argparse.Namespace, connect: Connect) -> int:
    """The embedded server's users: ls, add, rm, passwd (yours, or a user's as SUPER_USER), set-roles.

    ``passwd`` of your own account asks for the current password too; with --password-stdin the first
    line is the current password and the second the new one."""
    if args.action != "ls" and not args.username:
        raise InvalidInput(f"user {args.action} needs a USERNAME")
    with connect(common(args)) as api:
        if args.action == "ls":
            found = api.list_users()
            if args.json:
                print_json({"items": found})
            for u in [] if args.json else found:
                print(printable(f"{u['username']}  roles: {_names(u['roles'])}  claims: {_names(u['claims'])}"))
        elif args.action == "add":
            created = api.add_user(args.username, _new_password(args, args.username), args.role, args.claim)
            say(common(args), f"Added {created['username']} (roles: {_names(created['roles'])})")
        elif args.action == "rm":
            api.remove_user(args.username)
            say(common(args), f"Removed {args.username}")
        elif args.action == "set-roles":
            changed = api.set_user_roles(args.username, args.role, args.claim)
            say(
                common(args),
                f"{changed['username']}: roles {_names(changed['roles'])} (from their next login or token refresh)",
            )
        else:
            current = _current_password(args) if args.username == api.whoami()["subject"] else None
            api.set_password(args.username, _new_password(args, args.username), current)
            say(common(args), f"Changed the password of {args.username}")
    return 0


def _current_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise InvalidInput("no current password: pass --password-stdin (current, then new), or run in a terminal")
    return getpass.getpass("Current password: ")


def cmd_tag(args: argparse.Namespace, connect: Connect) -> int:
    catalog_id, version, arch = reference(args.ref, args.arch)
    with connect(common(args)) as api:
        try:
            m = api.edit(catalog_id, version, arch, "tags", list(args.tags), add=not args.rm)
        except NotFound as exc:
            raise explain_missing(api, catalog_id, version, arch, exc) from None
    if args.json:
        print_json(m)
    else:
        say(common(args), f"{m['catalog_id']}:{m['version']} ({m['architecture']}) tags: {', '.join(m['tags']) or '-'}")
    return 0


def cmd_completion(args: argparse.Namespace, connect: Connect) -> int:
    from client.cli.completion import completion_script
    from client.cli.parser import build_parser

    print(completion_script(build_parser(), args.shell), end="")
    return 0


def cmd_logout(args: argparse.Namespace, connect: Connect) -> int:
    """Forget a stored login, or all of them, with their secrets (a token stays valid until it expires:
    it is a bearer token)."""
    gone = forget_credentials(args.server, everything=args.all)
    for problem in gone.problems:
        err_console().print(f"pdcat: warning: the keychain still holds the secret of {problem}", markup=False)
    say(common(args), logged_out(gone))
    return 0


def cmd_whoami(args: argparse.Namespace, connect: Connect) -> int:
    with connect(common(args)) as api:
        me = api.whoami()
    if args.json:
        print_json(me)
    else:
        print(printable(f"{me['subject']} (roles: {', '.join(me['roles']) or '-'}; via {me['via']})"))
    return 0


def cmd_ls(opts: ListOptions, connect: Connect) -> int:
    arch = normalize_architecture(opts.arch) if opts.arch else None
    with connect(opts) as api:
        if opts.id:
            items = api.versions(opts.id)
            items = [
                m
                for m in items
                if (arch is None or m["architecture"] == arch) and (not opts.tag or opts.tag in m["tags"])
            ]
        else:
            items = list(api.list_manifests(tag=opts.tag, architecture=arch))
    if opts.json:
        print_json({"items": items})
    elif opts.format:
        for m in items:
            print(_formatted(opts.format, m))
    elif opts.quiet:  # docker's -q: just what identifies each, for scripts
        for ref in dict.fromkeys(f"{m['catalog_id']}:{m['version']}" for m in items):
            print(ref)
    elif not items:
        print("No VMs visible to you.")
    else:
        print(manifest_table(items))
    return 0


def _formatted(template: str, manifest: dict[str, Any]) -> str:
    try:
        return template.format_map(manifest)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        fields = ", ".join(sorted(manifest))
        raise InvalidInput(f"--format {template!r}: {exc!s} is not usable; the fields are {fields}") from None


def cmd_show(args: argparse.Namespace, connect: Connect) -> int:
    catalog_id, version, arch = reference(args.ref, args.arch)
    with connect(common(args)) as api:
        try:
            m = api.get(catalog_id, version, arch)
        except NotFound as exc:
            raise explain_missing(api, catalog_id, version, arch, exc) from None
    if args.json:
        print_json(m)
        return 0
    print(manifest_table([m]))
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
    from rich.markup import escape

    for k, v in details.items():  # the values are the server's: never markup, never control characters
        console().print(f"  [bold]{k:>15}[/bold]  {escape(printable(str(v)))}", highlight=False)
    return 0


def cmd_state(args: argparse.Namespace, connect: Connect) -> int:
    catalog_id, version, arch = reference(args.ref, args.arch)
    if version == LATEST:
        raise InvalidInput(f"{args.command} needs an explicit version (ID:VERSION), not latest")
    with connect(common(args)) as api:
        m = api.state(catalog_id, version, arch, args.command)
    if args.json:
        print_json(m)
    else:
        say(common(args), f"{m['catalog_id']}:{m['version']} ({m['architecture']}) is now {args.command.rstrip('e')}ed")
    return 0


def cmd_rm(args: argparse.Namespace, connect: Connect) -> int:
    catalog_id, _, version = args.ref.partition(":")
    arch = normalize_architecture(args.arch) if args.arch else None
    if arch and not version:
        raise InvalidInput("--arch needs ID:VERSION")
    with connect(common(args)) as api:
        if not version and not args.yes:
            _confirm_whole_id(api, catalog_id)
        api.delete(catalog_id, version or None, arch, purge=args.purge)
    removed = f"Removed {args.ref}" + (f" ({arch})" if arch else "")
    if args.purge:
        say(common(args), f"{removed} and reclaimed the data no other version uses")
    else:
        say(common(args), f"{removed}; its data stays in storage until `pdcat gc` reclaims what no other version uses")
    return 0


def _confirm_whole_id(api: CatalogClient, catalog_id: str) -> None:
    """``rm ID`` removes every version and architecture: asked first on a terminal, refused without one
    unless --yes (as ``docker system prune`` or ``gh repo delete`` do)."""
    count = len(api.versions(catalog_id))
    what = f"every version of {catalog_id} ({count} version-architecture pair{'s' if count != 1 else ''})"
    if not sys.stdin.isatty():
        raise InvalidInput(f"this would remove {what}; pass --yes to do it without a terminal")
    answer = input(f"Remove {what}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise InvalidInput("nothing removed")


def cmd_apikey(args: argparse.Namespace, connect: Connect) -> int:
    with connect(common(args)) as api:
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
                # Only the key goes to stdout, so KEY=$(pdcat apikey create ...) captures just the key.
                if not args.quiet:
                    err_console().print(
                        f"API key {created['id']} for {created['subject']}, expires {created['expires_at']}"
                    )
                    err_console().print("Shown only once; use it as PDCAT_API_KEY or the X-Api-Key header:")
                print(created["key"])
        elif args.action == "ls":
            keys = api.list_api_keys()
            if args.json:
                print_json({"items": keys})
            else:
                for k in keys:
                    state = "revoked" if k["revoked"] else f"expires {k['expires_at']}"
                    print(printable(f"{k['id']}  {k['subject']}  roles={','.join(k['roles']) or '-'}  {state}"))
        else:
            if not args.key_id:
                raise InvalidInput("revoke needs the key id")
            api.revoke_api_key(args.key_id)
            say(common(args), f"Revoked API key {args.key_id}")
    return 0


_GC_COUNTS = ("catalogs", "chunks_deleted", "chunk_bytes_deleted", "staged_deleted", "staged_bytes_deleted",
              "sessions_aborted")  # fmt: skip


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cmd_gc(args: argparse.Namespace, connect: Connect) -> int:
    """Every step of one garbage-collection walk, summed into one line (or one JSON object)."""
    if args.grace is not None and args.grace < 0:
        raise InvalidInput("--grace must be 0 seconds or more")
    totals = dict.fromkeys(_GC_COUNTS, 0)
    cursor: str | None = None
    steps = 0
    with connect(common(args)) as api:
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
    say(common(args), line)
    return 0


def cmd_cache(args: argparse.Namespace, connect: Connect) -> int:
    from client.cache import VmCache, budget_from_env

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
                print(printable(f"The cache at {cache.root} is empty."))
            else:
                for e in entries:
                    pin = " pinned" if e.pinned else ""
                    print(
                        f"{e.digest[:12]}  {e.catalog_id}:{e.version} ({e.architecture})  "
                        f"{human_size(e.disk_usage)} on disk  used {e.use_count}x{pin}"
                    )
                print(printable(f"{len(entries)} VM(s), {human_size(cache.usage())} in {cache.root}"))
        elif args.action == "prune":
            victims = cache.prune(dry_run=args.dry_run)
            if args.json:
                print_json({"dry_run": args.dry_run, "evicted": [_entry_json(e) for e in victims]})
            else:
                verb = "Would evict" if args.dry_run else "Evicted"
                for e in victims:
                    print(f"{verb} {e.catalog_id}:{e.version} ({e.architecture}), {human_size(e.disk_usage)}")
                if not victims:
                    print("Nothing to evict: the cache is within its budget.")
        else:
            if not args.ref:
                raise InvalidInput(f"cache {args.action} needs a digest prefix or ID:VERSION[:ARCH]")
            if args.action == "rm":
                e = cache.remove(args.ref)
                say(common(args), f"Removed {e.catalog_id}:{e.version} ({e.architecture}) from the cache")
            else:
                e = cache.pin(args.ref, args.action == "pin")
                say(common(args), f"{args.action.capitalize()}ned {e.catalog_id}:{e.version} ({e.architecture})")
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


_COMMANDS: dict[str, Callable[[argparse.Namespace, Connect], int]] = {
    "serve": cmd_serve,
    "login": cmd_login,
    "logout": cmd_logout,
    "context": cmd_context,
    "tag": cmd_tag,
    "user": cmd_user,
    "completion": cmd_completion,
    "whoami": cmd_whoami,
    "show": cmd_show,
    "taint": cmd_state,
    "untaint": cmd_state,
    "revoke": cmd_state,
    "rm": cmd_rm,
    "cache": cmd_cache,
    "gc": cmd_gc,
    "apikey": cmd_apikey,
}
