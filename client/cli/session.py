"""What every command shares: the catalog client, what to print, and references to versions.

The transfer engine is loaded only by the commands that transfer (``progress``, ``transfer_config``):
``pdcat ls`` and the other catalog calls start without it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from client.api import CatalogClient
from client.config import cacert_override, load_credentials, login_command
from client.options import Options, resolve
from client.output import RichProgress, console, printable
from client.token_refresh import RefreshingToken, stored_login
from core.errors import InvalidInput, NotFound, PdcatError, Unauthenticated
from core.identity import normalize_architecture, parse_reference

if TYPE_CHECKING:
    from client.transfer import Progress, TransferConfig

__all__ = [
    "Connect",
    "common",
    "connect",
    "explain_missing",
    "host_architecture",
    "progress",
    "reference",
    "say",
    "transfer_config",
]

#: How a command gets its catalog client; ``client.cli.main`` passes :func:`connect` (tests, their own).
Connect = Callable[[Options], CatalogClient]


def connect(options: Options) -> CatalogClient:
    """A client for the catalog: a PDFile's AUTHENTICATE lines if it has them, else the stored login
    (or ``PDCAT_SERVER``/``PDCAT_TOKEN``/``PDCAT_API_KEY``), trusting the login's CA certificate (or
    ``PDCAT_CACERT``)."""
    recipe_creds = options.credentials
    if recipe_creds is not None and options.server:
        tls: dict[str, Any] = {"verify": not options.insecure, "cacert": cacert_override()}
        if recipe_creds.api_key:
            return CatalogClient(options.server, api_key=recipe_creds.api_key, **tls)
        if recipe_creds.username and recipe_creds.password:
            with CatalogClient(options.server, **tls) as anonymous:
                answer = anonymous.login(recipe_creds.username, recipe_creds.password)
            # refreshed like a stored login's, but kept in memory: the recipe's login is not this machine's
            login = RefreshingToken(answer["token"], answer["expires_at"], username=recipe_creds.username)
            return CatalogClient(options.server, login=login, **tls)
    creds = load_credentials(options.server)
    if not creds.token and not creds.api_key:
        raise Unauthenticated(f"not logged in to {creds.server}: run '{login_command(creds.server)}'")
    tls = {"verify": not options.insecure, "cacert": creds.cacert}  # the login's CA (or PDCAT_CACERT)
    if creds.token and creds.expires_at:  # a stored password login; PDCAT_TOKEN comes without expires_at
        return CatalogClient(creds.server, login=stored_login(creds), **tls)
    return CatalogClient(creds.server, token=creds.token, api_key=creds.api_key, **tls)


def explain_missing(api: CatalogClient, catalog_id: str, version: str, arch: str, exc: NotFound) -> NotFound:
    """The catalog's "not found" for ``id:version (arch)``, naming what does exist of that id among what
    this caller can see: the other architectures of the version, or the versions of the id."""
    if not exc.message.endswith(("not found", "not found: no usable version")):
        return exc  # not the catalog's answer for a missing version (a pull that lost its version...)
    try:
        items = api.versions(catalog_id)
    except NotFound:
        items = []
    except PdcatError:
        return exc
    if not items:
        return NotFound(f"{exc.message}: there is no VM {catalog_id} that you can see ('pdcat ls' lists them)")
    ready = [m for m in items if m.get("status") == "ready"]
    same = ready if version == "latest" else [m for m in items if m.get("version") == version]
    if same:
        archs = ", ".join(sorted({str(m["architecture"]) for m in same}))
        return NotFound(f"{exc.message}: {catalog_id}:{version} exists for {archs} (pick one with --arch)")
    newest = sorted(items, key=lambda m: str(m.get("pushed_at") or ""), reverse=True)
    names = list(dict.fromkeys(str(m["version"]) for m in newest))
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    return NotFound(f"{exc.message}: {catalog_id} has versions {', '.join(names[:8])}{more}")


def common(args: argparse.Namespace) -> Options:
    """The shared options (server, --json, --quiet) of a command that has no options type of its own."""
    return resolve(Options, flags=vars(args))


def progress(options: Options) -> Progress:
    """One renderer for every transfer: a rich bar on a terminal, a plain line every few seconds
    without one (CI), nothing with --quiet or --json (stdout is then the JSON answer)."""
    if options.json or options.quiet:
        from client.transfer import NoProgress

        return NoProgress()
    if not sys.stderr.isatty():
        from client.output import LineProgress

        return LineProgress()
    return RichProgress()


def say(options: Options, text: str) -> None:
    """A line for people (none with -q or --json): printed as it is, never read as rich markup, and
    with any control character a server's answer carried shown as ``?``."""
    if not options.quiet and not options.json:
        console().print(printable(text, lines=True), markup=False, highlight=False)


def transfer_config(workers: int | None, chunk_size: int | None = None, level: int | None = None) -> TransferConfig:
    from client.transfer import TransferConfig
    from core.pack import DEFAULT_CHUNK_SIZE

    base = TransferConfig()
    return TransferConfig(
        workers=workers or base.workers, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, level=level or base.level
    )


def host_architecture() -> str:
    import platform

    try:
        return normalize_architecture(platform.machine())
    except InvalidInput:
        return "x86_64"


def reference(ref: str, arch: str | None) -> tuple[str, str, str]:
    """``ID[:VERSION]`` and ``--arch`` (default: this machine's) as catalog id, version, architecture."""
    catalog_id, version = parse_reference(ref)
    return catalog_id, version, normalize_architecture(arch or host_architecture())
