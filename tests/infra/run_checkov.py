"""Run checkov (in the IaC tools venv) with its JSONPath parse table built once per process.

checkov's JSONPath library (bc_jsonpath_ng) asks PLY for a fresh LALR table on every parse
(``write_tables=0``, ~0.25 s each), and checkov parses one JSONPath per ``Fn::Sub`` it renders: on
the ~165 integrations of chalice's API that is ~25 s of a ~30 s run. PLY's own table cache
(``picklefile``) keeps the table, and PLY rebuilds it whenever the grammar's signature differs, so
the checks and their results are unchanged; only the time goes. The cache is private to this process.

Usage: ``.venv-iac/bin/python tests/infra/run_checkov.py <checkov arguments>``.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any


def _cache_parse_tables(cache: Path) -> None:
    import ply.yacc  # type: ignore[import-not-found]  # the tools venv only

    real_yacc = ply.yacc.yacc

    def yacc(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("picklefile") is None and not kwargs.get("write_tables", True):
            module = kwargs.get("module")
            grammar = f"{type(module).__module__}.{type(module).__qualname__}" if module is not None else "default"
            kwargs["picklefile"] = str(cache / f"{grammar}-{kwargs.get('start') or 'start'}.pickle")
        return real_yacc(*args, **kwargs)

    ply.yacc.yacc = yacc


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="checkov-ply-") as cache:
        _cache_parse_tables(Path(cache))
        from checkov.main import Checkov  # type: ignore[import-not-found]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=SyntaxWarning)
            return int(Checkov().run() or 0)


if __name__ == "__main__":
    sys.exit(main())
