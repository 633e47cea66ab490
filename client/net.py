"""The network rules every direct connection of the client follows, the catalog's and storage's
alike: when a proxy could apply (then httpx, which honours it, is used instead) and how TLS is
verified (as httpx would: certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

__all__ = ["proxy_configured", "tls_context"]


def proxy_configured() -> bool:
    """Whether httpx could use a proxy here (``trust_env``: ``*_proxy`` variables, and on macOS and
    Windows the system's settings, as ``urllib.request.getproxies`` reads them)."""
    if any(value and name[-6:].lower() == "_proxy" for name, value in os.environ.items()):
        return True
    if sys.platform in ("darwin", "win32"):
        from urllib.request import getproxies

        return bool(getproxies())
    return False


def tls_context(verify: bool) -> ssl.SSLContext:
    """The context httpx builds (``httpx._config.create_ssl_context``), with httpcore's ALPN."""
    import ssl

    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif os.environ.get("SSL_CERT_FILE"):
        context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    elif os.environ.get("SSL_CERT_DIR"):
        context = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    else:
        import certifi

        context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context
