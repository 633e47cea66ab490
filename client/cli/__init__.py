"""The ``pdcat`` command line. Thin: parse, build typed options, call client/core, print.

Exit codes: 0 success, 1 failure (one line on stderr saying why), 2 usage error, 130 interrupted.

- ``parser``: every command, flag and help text (argparse; nothing heavy imported);
- ``commands``: dispatch, and the commands that only talk to the catalog;
- ``transfers``: push, pull, import and import-vm;
- ``session``: the catalog client, printing, references; ``logs``: logging that masks signatures.

Push, pull, import, import-vm and ls run on typed options (``client.options``), built from the command
line or from a PDFile with the flags on top.

Startup is kept short (``pdcat --help`` and ``pdcat ls`` well under 150 ms): this package loads only
the parser; a command loads what it needs when it runs, so ``ls`` never loads the transfer engine, the
cache or httpx (``tests/unit/test_cli_startup.py`` holds the line, ``bench/startup.py`` measures it).
"""

from __future__ import annotations

import sys

from client.cli.parser import build_parser, command_of

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without loading typing for ``pdcat --help``
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from client.api import CatalogClient
    from client.cli.logs import mask_signatures
    from client.options import Options
else:

    def __getattr__(name: str) -> Any:
        """``mask_signatures`` (``client.cli.logs``, which loads logging), loaded when first asked for."""
        if name == "mask_signatures":
            from client.cli.logs import mask_signatures

            return mask_signatures
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main", "mask_signatures"]


def _client(options: Options) -> CatalogClient:
    """The catalog client factory the commands get (``client.cli.session.connect``); a test swaps it."""
    from client.cli.session import connect

    return connect(options)


_MOVES_CHUNKS = frozenset({"push", "pull", "import", "import-vm", "run", "serve"})
"""The commands whose memory :func:`_limit_allocator_growth` bounds (the others skip loading ctypes)."""


def _limit_allocator_growth(command: str) -> None:
    """Chunk buffers are megabytes each and come and go on several threads. glibc's default (an
    adaptive mmap threshold and one arena per thread) keeps freed buffers around, so peak memory grew
    with the size of the VM. A fixed 1 MiB mmap threshold and two arenas keep it flat.

    ``serve`` also keeps up to 2 MiB free at the top of each arena (glibc trims past 128 KiB): an
    upload arrives in reads of 256 KiB, each a new buffer freed at once, and giving each back made
    the next one fault in its pages again. Pushes of the bench bundle (``perf stat`` on the server,
    A/B/A): 27,000-153,000 page faults and 3.9-4.6 CPU s each without the pad; 100-9,700 faults and
    3.6-3.9 CPU s with it (one outlier at 4.6); peak RSS 55-60 MiB either way."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_arena_max, m_mmap_threshold, m_trim_threshold = -8, -3, -1
        libc.mallopt(m_mmap_threshold, 1024 * 1024)
        libc.mallopt(m_arena_max, 2)
        if command == "serve":
            libc.mallopt(m_trim_threshold, 2 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


_KEPT = {"push": "what was sent and verified is kept", "pull": "what was downloaded is kept"}


def _resume_hint(command: str, exc: Exception) -> str | None:
    """After a transfer that stopped for want of a network or a server (not a refusal), what to do."""
    from core.errors import Unavailable

    if command in _KEPT and isinstance(exc, Unavailable):
        return f"run the same command again to resume: {_KEPT[command]}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(only=command_of(words)).parse_args(words)
    if args.command in _MOVES_CHUNKS:
        _limit_allocator_growth(args.command)
    # what a command needs, loaded once it is known (``--help`` and a usage error exit before this)
    from client.cli.commands import dispatch
    from client.cli.logs import configure_logging
    from core.errors import PdcatError

    configure_logging(args.debug)

    try:
        # ``_client`` is looked up here, at call time, so a test can swap the catalog client factory.
        return dispatch(args, _client)
    except KeyboardInterrupt:
        from client.output import err_console

        err_console().print("pdcat: interrupted; run the same command again to resume")
        return 130
    except PdcatError as exc:
        if args.debug:
            raise
        from client.output import err_console

        err_console().print(f"pdcat: {exc.message}", markup=False, highlight=False)
        hint = _resume_hint(args.command, exc)
        if hint:
            err_console().print(f"pdcat: {hint}", markup=False, highlight=False)
        return 1
    except OSError as exc:
        if args.debug:
            raise
        from client.output import err_console

        err_console().print(f"pdcat: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), markup=False)
        return 1
