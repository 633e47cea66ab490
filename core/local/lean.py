"""What the embedded server leaves unloaded, to stay within its memory budget (issue 14: at most
64 MiB resident during a transfer).

PyJWT imports the ``cryptography`` bindings (OpenSSL and Rust, about 20 MiB resident) whenever they are
installed, for the RS256/ES256 algorithms of JWKS mode. A server configured with a shared secret
(``PDCAT_JWT_SECRET``, no ``PDCAT_JWKS_URL``) only ever signs and verifies HS256, which PyJWT does
with the standard library's ``hmac``: in that mode the bindings are hidden from the import system
before anything imports PyJWT, and PyJWT then offers the HMAC algorithms alone. In JWKS mode nothing
changes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

__all__ = ["skip_unused_crypto"]

_BINDINGS = "cryptography"


def skip_unused_crypto(env: Mapping[str, str]) -> bool:
    """Hide ``cryptography`` from this process if the server will use HS256 only; True if hidden.

    Must run before PyJWT is first imported (``core.config`` and ``core.auth`` import it). A process
    that has already loaded the bindings keeps them.
    """
    if env.get("PDCAT_JWKS_URL") or _BINDINGS in sys.modules:
        return False
    sys.modules[_BINDINGS] = None  # type: ignore[assignment]  # an import of it now fails as "not installed"
    return True
