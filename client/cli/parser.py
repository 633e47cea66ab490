"""The ``pdcat`` argument parser: commands, flags and help, and nothing else (it imports argparse and
nothing of pdcat's, so ``pdcat --help`` stays quick)."""

from __future__ import annotations

import argparse
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without loading typing for ``pdcat --help``
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

__all__ = ["build_parser", "command_of"]


class _Unused:
    """Where the flags of a command that is not being run go: nowhere. Each flag costs argparse a
    help formatter and a few checks; adding them for the one command asked for halves the parser's
    share of ``pdcat ls`` (tests/unit/test_cli_conventions.py checks the flags are the same)."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        return None

    def add_mutually_exclusive_group(self, **kwargs: Any) -> _Unused:
        return self


def command_of(argv: Sequence[str]) -> str:
    """The command ``argv`` runs: its first word that is not an option (pdcat's own options take no
    value), or "" when there is none (``pdcat --help``)."""
    return next((word for word in argv if not word.startswith("-")), "")


class _ChunkSize(argparse.Action):
    """``--chunk-size``, stored as given; its help names the pack format's default, read from core.pack
    only when the help is shown (``pdcat push --help``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)

    @property
    def help(self) -> str:
        from core.pack import DEFAULT_CHUNK_SIZE

        return f"bytes per chunk (default {DEFAULT_CHUNK_SIZE})"

    @help.setter
    def help(self, value: str | None) -> None:
        """argparse sets it; the text above is the one shown."""


class _Parser(argparse.ArgumentParser):
    """argparse, plus "did you mean" for a mistyped command or choice (git's and gh's habit)."""

    def error(self, message: str) -> NoReturn:
        import re

        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            import difflib

            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show pdcat's version and exit")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("pdcat")
        except PackageNotFoundError:  # run from a source tree that was never installed
            found = "unknown (not installed)"
        print(f"pdcat {found}")
        parser.exit()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command, flag and help text of ``pdcat``. The ``dest`` of each option of ls, push, pull, import
    and import-vm is the name of its field in ``client.options``; ``args.command`` picks the command.

    ``only``: give just this command its flags (the others are still listed, for ``--help`` and "did you
    mean"); ``main`` passes :func:`command_of` its arguments. None: every command's (completion scripts).
    """
    p = _Parser(prog="pdcat", description="Push and pull Parallels Desktop VMs through a catalog.")
    p.add_argument("--debug", action="store_true", help="show logs and full errors")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, json_flag: bool = False, server: bool = True) -> Any:
        """The parser to add ``name``'s flags to (an :class:`_Unused` for a command not asked for)."""
        c = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            return _Unused()
        if json_flag:
            c.add_argument("--json", action="store_true", help="machine-readable output")
        if server:
            c.add_argument("--server", help="catalog URL (default: the one you logged in to, or PDCAT_SERVER)")
        c.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
        return c

    def manifest_flags(c: Any) -> None:
        """What a push (or an import) records about the version."""
        c.add_argument("--arch", help="(default: this machine's)")
        c.add_argument("--role", action="append", default=[], help="required role to see it (repeatable)")
        c.add_argument("--claim", action="append", default=[], help="required claim to see it (repeatable)")
        c.add_argument("--tag", action="append", default=[])
        c.add_argument("--description")
        c.add_argument("--force", action="store_true", help="replace an existing version")

    c = command("serve", "Run the embedded catalog (SQLite + local files) on this machine", server=False)
    c.add_argument("--data", help="data folder (default: the platform's user data folder)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    c.add_argument("--public-url", metavar="URL", help="the URL teammates reach this server by, which presigned URLs "
                   "use (default: PDCAT_PUBLIC_URL; else http(s)://<this machine's name>:PORT when listening on every "
                   "interface, http(s)://HOST:PORT otherwise)")  # fmt: skip
    c.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM, any intermediate "
                   "certificates after it); with --tls-key")  # fmt: skip
    c.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM, unencrypted)")
    c.add_argument("--tls-self-signed", action="store_true", help="serve HTTPS with a self-signed certificate, made "
                   "once in <data>/tls/ (teammates trust it with pdcat login --cacert)")  # fmt: skip
    c.add_argument("--port", type=int, default=int(os.environ.get("PDCAT_PORT", "8080")))
    c.add_argument("--threads", type=int, default=16)

    c = command("login", "Log in to a server, store its token (or an API key) and make it the current one",
                server=False)  # fmt: skip
    c.add_argument("--server", required=True)
    c.add_argument("-u", "--username")
    c.add_argument("-p", "--password", help="(default: PDCAT_PASSWORD, or asked for)")
    c.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    c.add_argument("--api-key", metavar="KEY", help="store this API key instead of logging in with a password "
                   "('-': read it from standard input)")  # fmt: skip
    c.add_argument("--cacert", metavar="FILE", help="trust this CA certificate (or the server's self-signed one) "
                   "besides the system's, and store it with the login (PDCAT_CACERT overrides)")  # fmt: skip

    c = command("logout", "Forget the current server's login (--server: that one's, --all: every one)", server=False)
    which = c.add_mutually_exclusive_group()
    which.add_argument("--server", help="the server to log out of (default: PDCAT_SERVER, or the current one)")
    which.add_argument("--all", action="store_true", help="log out of every server")

    c = command("context", "List the servers you are logged in to (ls), or pick the current one (use SERVER)",
                json_flag=True, server=False)  # fmt: skip
    c.add_argument("action", choices=("ls", "use"))
    c.add_argument("name", nargs="?", metavar="SERVER", help="(use) its URL, or a host only one of them has")

    c = command("completion", "Print a shell completion script: source <(pdcat completion bash)", server=False)
    c.add_argument("shell", choices=("bash", "zsh"))

    command("whoami", "Show who you are logged in as", json_flag=True)

    c = command("ls", "List VMs (every visible one, or the versions of one id); -q: ID:VERSION only", json_flag=True)
    c.add_argument("id", nargs="?")
    c.add_argument("--tag")
    c.add_argument("--arch")
    c.add_argument("--format", metavar="TEMPLATE", help="one line per version from a template of its fields, e.g. "
                   "'{catalog_id}:{version} {architecture} {size}' (the fields of --json)")  # fmt: skip

    c = command("show", "Show one VM version", json_flag=True)
    c.add_argument("ref", metavar="ID:VERSION")
    c.add_argument("--arch", help="(default: this machine's)")

    c = command("push", "Push a VM bundle (.pvm/.macvm folder), or run a push PDFile", json_flag=True)
    c.add_argument("path", help="the bundle, or FILE.pdfile")
    c.add_argument("--catalog", help="catalog id")
    c.add_argument("--version")
    c.add_argument("--to", dest="storage", metavar="CONNECTION", help="export to your own storage instead, in the "
                   "original pack format (provider=aws-s3;bucket=...)")  # fmt: skip
    c.add_argument("--no-compress", dest="compress", action="store_false", help="(--to) plain tar")
    manifest_flags(c)
    c.add_argument("--chunk-size", type=int, action=_ChunkSize)
    c.add_argument("--level", type=int, help="zstd level (default 3)")
    c.add_argument("--workers", type=int)
    c.add_argument("--base", metavar="VERSION", help="send only what changed since this version (default: the "
                   "newest of the same id and architecture)")  # fmt: skip
    c.add_argument("--allow-any-folder", action="store_true", help="push a folder that is not a .pvm/.macvm "
                   "bundle with its config.pvs")  # fmt: skip

    c = command("pull", "Pull a VM, verify every byte, register it with prlctl (or run a pull PDFile)", json_flag=True)
    c.add_argument("ref", metavar="ID[:VERSION]|ID@sha256:DIGEST|FILE.pdfile")
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

    for action, text in (
        ("taint", "Taint a version: pulls are refused until untainted"),
        ("untaint", "Untaint a version"),
        ("revoke", "Revoke a version, permanently"),
    ):
        c = command(action, text, json_flag=True)
        c.add_argument("ref", metavar="ID:VERSION")
        c.add_argument("--arch", help="(default: this machine's)")

    def import_flags(c: Any) -> None:
        c.add_argument("ref", metavar="ID:VERSION")
        manifest_flags(c)
        c.add_argument("--workers", type=int)

    c = command("import", "Bring an original-format pack (.pdpack + .meta) into the catalog", json_flag=True)
    import_flags(c)
    c.add_argument("--from", dest="storage", metavar="CONNECTION", help="your own storage holding the pack "
                   "(default: the catalog's own storage, registered in place)")  # fmt: skip

    c = command("import-vm", "Push a VM kept in your own storage (a folder of files, or one tar) into the catalog",
                json_flag=True)  # fmt: skip
    import_flags(c)
    c.add_argument("--from", dest="storage", metavar="CONNECTION", help="your own storage (provider=...)")
    c.add_argument("--remote-path", dest="vm_remote_path", metavar="PATH", help="where the VM is in that storage")
    c.add_argument("--compressed", dest="is_compressed", action="store_true", help="the VM is one tar(.gz) file")
    c.add_argument("--vm-type", choices=("pvm", "macvm"))

    c = command("run", "Run a PDFile (push, pull, list, import or import-vm)", json_flag=True, server=False)
    c.add_argument("path", metavar="FILE.pdfile")

    c = command("user", "Manage the embedded server's users (SUPER_USER); passwd also changes your own",
                json_flag=True)  # fmt: skip
    c.add_argument("action", choices=("ls", "add", "rm", "passwd", "set-roles"))
    c.add_argument("username", nargs="?")
    c.add_argument("--role", action="append", default=[], help="(add, set-roles) repeatable: USER, PUBLISHER, "
                   "ADMIN, SUPER_USER")  # fmt: skip
    c.add_argument("--claim", action="append", default=[], help="(add, set-roles) repeatable")
    c.add_argument("--password-stdin", action="store_true", help="(add, passwd) read the new password from stdin")

    c = command("tag", "Add tags to a version (--rm: remove them)", json_flag=True)
    c.add_argument("ref", metavar="ID:VERSION")
    c.add_argument("tags", nargs="+", metavar="TAG")
    c.add_argument("--arch", help="(default: this machine's)")
    c.add_argument("--rm", action="store_true", help="remove these tags instead")

    c = command("rm", "Remove a VM id, a version, or one architecture of a version")
    c.add_argument("ref", metavar="ID[:VERSION]")
    c.add_argument("--arch")
    c.add_argument("-y", "--yes", action="store_true", help="remove a whole id without asking")
    c.add_argument("--purge", action="store_true", help="also delete stored data no other version uses")

    c = command("cache", "Inspect and trim the local cache of pulled VMs", json_flag=True, server=False)
    c.add_argument("action", choices=("ls", "prune", "rm", "pin", "unpin"))
    c.add_argument("ref", nargs="?", metavar="DIGEST|ID:VERSION[:ARCH]")
    c.add_argument("--dry-run", action="store_true", help="(prune) only say what would be evicted")
    c.add_argument("--max-size", type=int, help="(prune) budget in bytes (default: PDCAT_CACHE_MAX_BYTES)")
    c.add_argument("--keep-free", type=int, help="(prune) bytes of disk to keep free (default 5 GiB)")

    c = command("gc", "Reclaim storage nothing references (chunks, staged uploads); needs the delete claim",
                json_flag=True)  # fmt: skip
    c.add_argument("--dry-run", action="store_true", help="only count what would be reclaimed")
    c.add_argument("--grace", type=float, metavar="SECONDS", help="keep anything younger (default: the catalog's, 1 h)")

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
    return p
