"""The network rules every direct connection of the client follows, the catalog's and storage's
alike: when a proxy could apply (then httpx, which honours it, is used instead), which TLS servers are
trusted (:class:`Trust`, and :func:`tls_context`, the one function that builds the context every
path uses: httpx and ``http.client``, catalog calls and presigned URLs), and what a TLS failure tells
the user to do (:func:`tls_failure`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from core.errors import InvalidInput, PdcatError

if TYPE_CHECKING:
    import ssl

__all__ = ["Trust", "UntrustedServer", "proxy_configured", "tls_context", "tls_failure"]


def proxy_configured() -> bool:
    """Whether httpx could use a proxy here (``trust_env``: ``*_proxy`` variables, and on macOS and
    Windows the system's settings, as ``urllib.request.getproxies`` reads them)."""
    if any(value and name[-6:].lower() == "_proxy" for name, value in os.environ.items()):
        return True
    if sys.platform in ("darwin", "win32"):
        from urllib.request import getproxies

        return bool(getproxies())
    return False


@dataclass(frozen=True)
class Trust:
    """Which TLS servers this client believes.

    ``cacert``: a CA certificate (or a server's self-signed one) trusted *besides* the default roots,
    so one login can reach a catalog with a private certificate and storage with a public one (S3).
    ``verify=False`` only for a PDFile's INSECURE."""

    verify: bool = True
    cacert: str | None = None


def tls_context(trust: Trust = Trust()) -> ssl.SSLContext:
    """The context httpx builds (``httpx._config.create_ssl_context``: certifi, or ``SSL_CERT_FILE``/
    ``SSL_CERT_DIR``), plus ``trust.cacert``, with httpcore's ALPN; TLS 1.2 at least."""
    import ssl

    if not trust.verify:
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
    if trust.verify and trust.cacert:
        try:
            context.load_verify_locations(cafile=trust.cacert)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a PEM certificate"
            raise InvalidInput(
                f"cannot use the CA certificate {trust.cacert} ({reason}): check --cacert or PDCAT_CACERT"
            ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


class UntrustedServer(PdcatError):
    """A server's certificate did not verify (or it does not speak TLS): retrying cannot help."""


_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED


def tls_failure(exc: BaseException, url: str) -> UntrustedServer | None:
    """The TLS failure somewhere in ``exc``'s chain (``url``: the server, as the user knows it), in
    words that say what to do next; None when ``exc`` is not one."""
    ssl = sys.modules.get("ssl")
    if ssl is None:  # never loaded: no TLS was spoken
        return None
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return _verification_failed(seen, url)
        if isinstance(seen, ssl.SSLError) and seen.reason == "WRONG_VERSION_NUMBER":
            return UntrustedServer(f"{url} does not speak TLS: if it is a plain-HTTP catalog, use http:// instead")
        seen = seen.__cause__ or seen.__context__
    return None


def _verification_failed(exc: ssl.SSLCertVerificationError, url: str) -> UntrustedServer:
    host = urlsplit(url).hostname or url
    reason = str(exc.verify_message or exc.reason or exc).rstrip(".")
    if exc.verify_code == _HOSTNAME_MISMATCH:
        return UntrustedServer(
            f"the certificate of {url} is not valid for the name {host} ({reason}): use the URL the server "
            "printed (its --public-url), or give the server a certificate that names this host"
        )
    if exc.verify_code == _EXPIRED:
        return UntrustedServer(f"the certificate of {url} has expired: the server needs a new one")
    return UntrustedServer(
        f"the certificate of {url} is not trusted ({reason}): pass --cacert FILE to pdcat login (the server "
        "printed the path of its certificate) or set PDCAT_CACERT=FILE"
    )
