"""The one retry policy of every transfer: what is tried again, what asks for a fresh URL, what is final,
how long to wait in between, and what is raised when the tries run out.

An attempt (a request to storage through a presigned URL, to Artifactory, a read of a stored object, a
catalog call) ends one of three ways:

* **retried**, with backoff: a transport error (refused, reset, timed out), HTTP 5xx or 429, a catalog
  that is ``Unavailable`` (503: garbage collection is sweeping, a cold start);
* **refresh the URL**: HTTP 401/403 from storage means the presigned URL expired or was refused
  (:class:`UrlRefused`). The caller's ``refresh`` fetches a fresh one, which is tried at once; a fresh URL
  refused again is final;
* **final**: 404 from storage (:class:`BlobMissing`: waiting does not bring an object back), a redirect
  (ADR 002: a presigned URL is answered, never redirected, so a 307 means the storage endpoint or region
  is wrong) and every other 4xx.

The wait before retry *n* is ``backoff * 2**(n-1)``, jittered by ±50 % and capped at 30 s. When the
retries run out the last cause is kept as ``__cause__``. A :class:`RetriesExceeded` is itself
``Unavailable``: never retry a call that already retries.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from core.errors import NotFound, PdcatError, Unavailable

__all__ = ["MAX_DELAY", "BlobMissing", "RetriesExceeded", "RetryPolicy", "UrlRefused", "check_storage", "retryable"]

log = logging.getLogger("pdcat.transfer")


_QUIET_SECONDS = 10.0


class _RetryWarnings:
    """One warning per cause every few seconds, per policy (a blob client's, shared by its transfers):
    when a server goes away, every transfer in flight fails the same way at once, and a line for each
    of them says nothing more than the first."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int]] = {}  # reason -> (last shown, how many since)
        self._lock = threading.Lock()

    def warn(self, what: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            shown, since = self._seen.get(reason, (-_QUIET_SECONDS, 0))
            if now - shown < _QUIET_SECONDS:
                self._seen[reason] = (shown, since + 1)
                return
            self._seen[reason] = (now, 0)
        more = f" (and {since} more like it)" if since else ""
        log.warning("%s failed (%s); retrying%s", what, reason, more)


T = TypeVar("T")

MAX_DELAY = 30.0
TRANSIENT: tuple[type[BaseException], ...] = (httpx.TransportError, Unavailable)


class RetriesExceeded(Unavailable):
    """An attempt kept failing in ways worth retrying; ``__cause__`` holds the last one."""


class UrlRefused(PdcatError):
    """Storage refused a presigned URL (expired or not valid any more): get a fresh one and try again."""

    def __init__(self, what: str, status: int, *, fresh: bool = False) -> None:
        super().__init__(f"storage refused {'a fresh' if fresh else 'the'} URL for {what} (HTTP {status})")
        self.what, self.http_status = what, status


class BlobMissing(NotFound):
    """Storage has no object at a (validly signed) URL: it was deleted, e.g. by ``rm --purge`` or gc.
    Not retried: waiting does not bring it back."""


def retryable(status: int) -> bool:
    """Whether an HTTP answer is worth asking again: the server failed or is busy (5xx, 429)."""
    return status >= 500 or status == 429


def check_storage(response: httpx.Response, what: str, *, missing: str | None = None) -> None:
    """Raise what storage's answer to a presigned URL means, unless it is a success.

    ``missing``: the message for a 404 when the caller can say more than "no such object".
    """
    status = response.status_code
    if status < 300:
        return
    if retryable(status):
        raise Unavailable(f"storage answered HTTP {status} for {what}")
    if status < 400:
        # A redirect from storage (S3's 307 for a bucket outside us-east-1 on the global endpoint, say)
        # is never success: its body is not the object, and a PUT was not stored.
        where = response.headers.get("location", "")[:120]
        raise PdcatError(
            f"storage answered HTTP {status} (a redirect{' to ' + where if where else ''}) "
            f"for {what}; the catalog's storage endpoint or region is misconfigured"
        )
    if status in (401, 403):
        raise UrlRefused(what, status)
    if status == 404:
        raise BlobMissing(missing or f"storage answered HTTP 404 (no such object) for {what}")
    raise PdcatError(f"storage answered HTTP {status} for {what}")


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # tries after the first
    backoff: float = 0.5  # seconds before the first retry (before jitter)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)  # tests pass a recorder
    warnings: _RetryWarnings = field(default_factory=_RetryWarnings, repr=False, compare=False)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        return min(self.backoff * 2.0 ** (retry - 1) * (0.5 + random.random()), MAX_DELAY)

    def run(
        self,
        attempt: Callable[[], T],
        what: str,
        *,
        transient: tuple[type[BaseException], ...] = TRANSIENT,
        refresh: Callable[[], object] | None = None,
        give_up: Callable[[BaseException], BaseException] | None = None,
    ) -> T:
        """``attempt()`` until it returns, as the module's policy says.

        ``transient``: the errors worth retrying (an attempt turns a retryable status into
        ``Unavailable``, e.g. with :func:`check_storage`). ``refresh``: gets a fresh URL after a
        :class:`UrlRefused` (without it, the refusal is raised). ``give_up(last)``: the error raised,
        from the last cause, when the retries run out (default :class:`RetriesExceeded`; returning
        ``last`` itself raises it unchanged).
        """
        refreshed = False
        retry = 0
        while True:
            try:
                return attempt()
            except UrlRefused as exc:
                if refresh is None:
                    raise
                if refreshed:
                    raise UrlRefused(exc.what, exc.http_status, fresh=True) from exc
                refresh()
                refreshed = True
                continue
            except transient as exc:
                last = exc
            if retry == self.retries:
                break
            retry += 1
            if not isinstance(last, Unavailable):  # busy answers stay quiet; a dropped connection earns a warning
                self.warnings.warn(what, str(last) or type(last).__name__)
            self.sleep(self.delay(retry))
        error = (
            give_up(last)
            if give_up is not None
            else RetriesExceeded(f"giving up on {what} after {self.retries + 1} attempts: {last}")
        )
        if error is last:
            raise last
        raise error from last
