"""The ``pdcat`` command line. Thin: parse, build typed options, call client/core, print.

Exit codes: 0 success, 1 failure (one line on stderr saying why), 2 usage error, 130 interrupted.

- ``parser``: every command, flag and help text (argparse; nothing heavy imported);
- ``commands``: dispatch, and the commands that only talk to the catalog;
- ``transfers``: push, pull, import and import-vm;
- ``session``: the catalog client, printing, references; ``logs``: logging that masks signatures.

Push, pull, import, import-vm and ls run on typed options (``client.options``), built from the command
line or from a PDFile with the flags on top.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from client.cli.logs import configure_logging, mask_signatures
from client.cli.parser import build_parser
from client.cli.session import connect as _client
from client.output import err_console
from core.errors import PdcatError

__all__ = ["main", "mask_signatures"]


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


def main(argv: Sequence[str] | None = None) -> int:
    _limit_allocator_growth()
    args = build_parser().parse_args(argv)
    configure_logging(args.debug)
    from client.cli.commands import dispatch

    try:
        # ``_client`` is looked up here, at call time, so a test can swap the catalog client factory.
        return dispatch(args, _client)
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
