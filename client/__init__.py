"""pdcat's desktop client."""

import sys

# httpx's package import loads its own command line (``httpx._main``: click, rich and pygments, about
# 70 ms), which pdcat never runs. An entry of None in sys.modules makes that import fail, and httpx then
# defines a stand-in, as it does when those packages are missing. Every push and pull starts sooner.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
