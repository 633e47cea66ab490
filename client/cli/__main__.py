"""``python -m client.cli``: the same as the ``pdcat`` console script."""

from __future__ import annotations

import sys

from client.cli import main

sys.exit(main())
