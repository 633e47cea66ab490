"""The one error tree of pdcat.

Every failure a caller can cause or observe is one of these; each class carries the HTTP status and
the stable machine code that the router puts in ``{"error": {"code", "message"}}``::

    PdcatError                      500 internal
    ├── InvalidInput                400 invalid_input
    ├── Unauthenticated             401 unauthenticated
    ├── Forbidden                   403 forbidden
    ├── NotFound                    404 not_found
    ├── MethodNotAllowed            405 method_not_allowed
    ├── Conflict                    409 conflict
    │   └── Tainted                 409 tainted
    ├── Gone                        410 revoked
    ├── PayloadTooLarge             413 payload_too_large
    ├── Unprocessable               422 unprocessable
    ├── TooManyRequests             429 too_many_requests (``retry_after``: seconds, for Retry-After)
    └── Unavailable                 503 unavailable   (a backend we depend on is down)

Anything that is not a ``PdcatError`` is a bug: the router logs it and answers a generic 500.
Messages are shown to users as they are, so they never contain secrets or stack traces.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Forbidden",
    "Gone",
    "InvalidInput",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PdcatError",
    "Tainted",
    "TooManyRequests",
    "Unauthenticated",
    "Unavailable",
    "Unprocessable",
    "error_for_status",
]


class PdcatError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__


class InvalidInput(PdcatError):
    status = 400
    code = "invalid_input"


class Unauthenticated(PdcatError):
    status = 401
    code = "unauthenticated"


class Forbidden(PdcatError):
    status = 403
    code = "forbidden"


class NotFound(PdcatError):
    status = 404
    code = "not_found"


class MethodNotAllowed(PdcatError):
    status = 405
    code = "method_not_allowed"


class Conflict(PdcatError):
    status = 409
    code = "conflict"


class Tainted(Conflict):
    code = "tainted"


class Gone(PdcatError):
    status = 410
    code = "revoked"


class PayloadTooLarge(PdcatError):
    status = 413
    code = "payload_too_large"


class Unprocessable(PdcatError):
    status = 422
    code = "unprocessable"


class TooManyRequests(PdcatError):
    """Slow down: ``retry_after`` (whole seconds, at least 1) is what ``Retry-After`` should say."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str = "", retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = None if retry_after is None else max(1, int(retry_after))


class Unavailable(PdcatError):
    status = 503
    code = "unavailable"


_BY_CODE: dict[str, type[PdcatError]] = {
    cls.code: cls
    for cls in (
        InvalidInput,
        Unauthenticated,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        Tainted,
        Gone,
        PayloadTooLarge,
        Unprocessable,
        TooManyRequests,
        Unavailable,
    )
}
_BY_STATUS: dict[int, type[PdcatError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: Unprocessable,
    429: TooManyRequests,
    503: Unavailable,
}


def error_for_status(status: int, code: str | None, message: str) -> PdcatError:
    """Rebuild the error a server answered with, so clients can catch the same classes."""
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status, PdcatError)
    err = cls(message)
    return err
