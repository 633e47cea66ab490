"""PDFile: a line-based recipe for ``pdcat push|pull|run FILE.pdfile`` (the original product's format).

A PDFile says, one keyword per line, what to do with which catalog, so a push or a pull can live in a
repository and run in CI. The format (every keyword, templates, errors) is specified in
``docs/pdfile.md``.

The package is pure: text (and the environment, for templates) in, a frozen :class:`PDFile` out, or
one :class:`PDFileError` that names every bad line; :func:`to_options` turns a PDFile into the typed
options of its ``pdcat`` command, with the command line's flags on top. Its modules:

- ``model``: the values (PDFile, Authentication, Provider, Diagnostic) and the error;
- ``lexer``: templates and the small values keywords take;
- ``keywords``: one handler per keyword, and which operations need or use each;
- ``validate``: ``parse`` and ``load``, and the checks across lines;
- ``to_options``: a PDFile as ``client.options`` values.
"""

from __future__ import annotations

from client.pdfile.keywords import KEYWORDS
from client.pdfile.lexer import render_template
from client.pdfile.model import (
    COMPRESS_LEVELS,
    OPERATIONS,
    Authentication,
    Diagnostic,
    ParseResult,
    PDFile,
    PDFileError,
    Provider,
)
from client.pdfile.to_options import to_options
from client.pdfile.validate import load, parse

__all__ = [
    "COMPRESS_LEVELS",
    "KEYWORDS",
    "OPERATIONS",
    "Authentication",
    "Diagnostic",
    "PDFile",
    "PDFileError",
    "ParseResult",
    "Provider",
    "load",
    "parse",
    "render_template",
    "to_options",
]
