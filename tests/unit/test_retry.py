"""The one retry policy (client.retry): which outcomes are retried, which refresh a URL, which are
final, the backoff, and the last cause kept. No I/O: storage answers come from httpx.MockTransport and
sleeps are recorded, not slept."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import httpx
import pytest

from client.blobio import BlobClient
from client.retry import (
    MAX_DELAY,
    BlobMissing,
    RetriesExceeded,
    RetryPolicy,
    UrlRefused,
    check_storage,
    retryable,
)
from core.errors import Conflict, NotFound, PdcatError, Unavailable


def _answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


def _policy(retries: int = 3, backoff: float = 1.0) -> tuple[RetryPolicy, list[float]]:
    slept: list[float] = []
    return RetryPolicy(retries, backoff, sleep=slept.append), slept


def _outcomes(*results: BaseException | str) -> Callable[[], str]:
    """An attempt that raises or returns each of ``results`` in turn."""
    pending: Iterator[BaseException | str] = iter(results)

    def attempt() -> str:
        result = next(pending)
        if isinstance(result, BaseException):
            raise result
        return result

    return attempt


# ---- what storage's answers mean ---------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_5xx_and_429_are_retried(status: int) -> None:
    assert retryable(status)
    with pytest.raises(Unavailable, match=rf"^storage answered HTTP {status} for chunk abc$"):
        check_storage(_answer(status), "chunk abc")


@pytest.mark.parametrize("status", [200, 201, 204, 206])
def test_success_passes(status: int) -> None:
    assert not retryable(status)
    check_storage(_answer(status), "chunk abc")


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_from_storage_mean_refresh_the_url(status: int) -> None:
    assert not retryable(status)
    with pytest.raises(UrlRefused, match=rf"^storage refused the URL for chunk abc \(HTTP {status}\)$") as info:
        check_storage(_answer(status), "chunk abc")
    assert (info.value.what, info.value.http_status) == ("chunk abc", status)


def test_404_from_storage_is_blob_missing_and_final() -> None:
    with pytest.raises(BlobMissing, match=r"^storage answered HTTP 404 \(no such object\) for chunk abc$"):
        check_storage(_answer(404), "chunk abc")
    with pytest.raises(BlobMissing, match=r"^the pack is gone$"):
        check_storage(_answer(404), "the pack", missing="the pack is gone")
    assert issubclass(BlobMissing, NotFound) and not issubclass(BlobMissing, Unavailable)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_an_error_never_data(status: int) -> None:
    where = "https://bucket.s3.eu-west-1.amazonaws.com/x"
    with pytest.raises(PdcatError, match=rf"HTTP {status} \(a redirect to {where}\) for chunk abc; .*misconfigured"):
        check_storage(_answer(status, location=where), "chunk abc")
    with pytest.raises(PdcatError, match=rf"HTTP {status} \(a redirect\) for chunk abc"):
        check_storage(_answer(status), "chunk abc")
    assert not retryable(status)


@pytest.mark.parametrize("status", [400, 405, 409, 410, 412, 416])
def test_other_4xx_are_final(status: int) -> None:
    assert not retryable(status)
    with pytest.raises(PdcatError, match=rf"^storage answered HTTP {status} for chunk abc$") as info:
        check_storage(_answer(status), "chunk abc")
    assert not isinstance(info.value, (Unavailable, UrlRefused, NotFound))


# ---- backoff -------------------------------------------------------------------------------------
def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    policy = RetryPolicy(retries=20, backoff=0.5)
    for retry in range(1, 8):
        base = 0.5 * 2 ** (retry - 1)
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(min(0.5 * base, MAX_DELAY) <= d <= min(1.5 * base, MAX_DELAY) for d in delays), retry
        if 1.5 * base < MAX_DELAY:
            assert len(set(delays)) > 1  # jittered, so clients that failed together do not retry together
    assert all(policy.delay(20) <= MAX_DELAY for _ in range(50))


# ---- the loop ------------------------------------------------------------------------------------
def test_transient_errors_are_retried_with_growing_waits_then_succeed() -> None:
    policy, slept = _policy(retries=3)
    attempt = _outcomes(httpx.ConnectError("refused"), Unavailable("HTTP 503"), httpx.ReadTimeout("slow"), "done")
    assert policy.run(attempt, "chunk abc") == "done"
    assert len(slept) == 3
    assert 0.5 <= slept[0] <= 1.5 and 1.0 <= slept[1] <= 3.0 and 2.0 <= slept[2] <= 6.0


def test_giving_up_keeps_the_last_cause() -> None:
    policy, slept = _policy(retries=2)
    last = Unavailable("storage answered HTTP 503 for chunk abc")
    attempt = _outcomes(httpx.ConnectError("refused"), httpx.ConnectError("refused"), last)
    with pytest.raises(RetriesExceeded) as info:
        policy.run(attempt, "chunk abc")
    assert info.value.message == "giving up on chunk abc after 3 attempts: storage answered HTTP 503 for chunk abc"
    assert info.value.__cause__ is last
    assert isinstance(info.value, Unavailable) and len(slept) == 2


def test_no_retries_means_one_attempt() -> None:
    policy, slept = _policy(retries=0)
    with pytest.raises(RetriesExceeded, match="after 1 attempts"):
        policy.run(_outcomes(httpx.ConnectError("refused")), "chunk abc")
    assert slept == []


@pytest.mark.parametrize(
    "error",
    [BlobMissing("gone"), PdcatError("HTTP 307 (a redirect)"), Conflict("changed"), ValueError("a bug")],
    ids=["404", "redirect", "conflict", "bug"],
)
def test_final_errors_are_raised_at_once(error: BaseException) -> None:
    policy, slept = _policy()
    with pytest.raises(type(error)) as info:
        policy.run(_outcomes(error, "never"), "chunk abc")
    assert info.value is error and slept == []


def test_a_refused_url_is_raised_when_the_caller_cannot_refresh_it() -> None:
    policy, slept = _policy()
    refused = UrlRefused("the pack index", 403)
    with pytest.raises(UrlRefused) as info:
        policy.run(_outcomes(refused, "never"), "the pack index")
    assert info.value is refused and slept == []


def test_a_refused_url_is_refreshed_once_and_tried_again_at_once() -> None:
    policy, slept = _policy()
    refreshed: list[int] = []
    attempt = _outcomes(UrlRefused("chunk abc", 403), "done")
    assert policy.run(attempt, "chunk abc", refresh=lambda: refreshed.append(1)) == "done"
    assert refreshed == [1] and slept == []


def test_a_fresh_url_refused_again_is_final() -> None:
    policy, _ = _policy()
    refreshed: list[int] = []
    attempt = _outcomes(UrlRefused("chunk abc", 403), Unavailable("HTTP 503"), UrlRefused("chunk abc", 401), "never")
    with pytest.raises(UrlRefused, match=r"^storage refused a fresh URL for chunk abc \(HTTP 401\)$") as info:
        policy.run(attempt, "chunk abc", refresh=lambda: refreshed.append(1))
    assert refreshed == [1] and isinstance(info.value.__cause__, UrlRefused)


def test_an_error_while_refreshing_is_raised_as_is() -> None:
    policy, _ = _policy()

    def refresh() -> None:
        raise NotFound("vm:1.0 (x86_64) not found")

    with pytest.raises(NotFound, match="not found"):
        policy.run(_outcomes(UrlRefused("chunk abc", 403), "never"), "chunk abc", refresh=refresh)


def test_give_up_can_raise_the_last_error_unchanged() -> None:
    policy, _ = _policy(retries=1)
    last = Unavailable("the catalog is sweeping")
    with pytest.raises(Unavailable) as info:
        policy.run(_outcomes(Unavailable("busy"), last), "a catalog request", give_up=lambda error: error)
    assert info.value is last


def test_only_the_callers_transient_errors_are_retried() -> None:
    policy, slept = _policy()
    attempt = _outcomes(ConnectionResetError("reset"), "done")
    assert policy.run(attempt, "reading 'k'", transient=(ConnectionError,)) == "done"
    assert len(slept) == 1
    with pytest.raises(httpx.ConnectError):
        policy.run(_outcomes(httpx.ConnectError("refused")), "reading 'k'", transient=(ConnectionError,))


def test_a_dropped_connection_is_worth_a_warning_a_busy_answer_is_not(caplog: pytest.LogCaptureFixture) -> None:
    policy, _ = _policy()
    with caplog.at_level(logging.WARNING, logger="pdcat.transfer"):
        policy.run(_outcomes(Unavailable("HTTP 503"), httpx.ConnectError("refused"), "done"), "chunk abc")
    assert [r.getMessage() for r in caplog.records] == ["chunk abc failed (refused); retrying"]


# ---- the blob client follows it --------------------------------------------------------------------
def _blobs(handle: Callable[[httpx.Request], httpx.Response], retries: int = 2) -> BlobClient:
    return BlobClient(transport=httpx.MockTransport(handle), retries=retries, backoff=0)


def test_blob_client_refreshes_a_refused_url_and_uses_the_fresh_one() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(403) if request.url.path == "/old" else httpx.Response(200, content=b"bytes")

    blobs = _blobs(handle)
    try:
        assert blobs.get("http://storage.test/old", "chunk abc", refresh=lambda: "http://storage.test/new") == b"bytes"
        blobs.put("http://storage.test/old", b"x", "chunk abc", refresh=lambda: "http://storage.test/new")
    finally:
        blobs.close()
    assert seen == ["/old", "/new", "/old", "/new"]


def test_blob_client_retries_5xx_then_gives_up_with_the_last_answer() -> None:
    calls: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503 if len(calls) % 2 else 500)

    blobs = _blobs(handle, retries=2)
    try:
        with pytest.raises(RetriesExceeded, match=r"after 3 attempts: storage answered HTTP 503 for chunk abc$"):
            blobs.get("http://storage.test/c", "chunk abc")
    finally:
        blobs.close()
    assert len(calls) == 3


def test_blob_client_does_not_retry_a_missing_object() -> None:
    calls: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(404)

    blobs = _blobs(handle)
    try:
        with pytest.raises(BlobMissing):
            blobs.get("http://storage.test/c", "chunk abc", refresh=lambda: "http://storage.test/d")
    finally:
        blobs.close()
    assert len(calls) == 1


def test_a_put_body_goes_out_in_pieces_and_whole() -> None:
    """httpx (h11) copies each piece of a body it is handed: a 4 MiB object given whole was held two
    or three times over during a slow upload. It goes in 256 KiB pieces, and arrives intact."""
    seen: list[int] = []
    received = bytearray()

    def handle(request: httpx.Request) -> httpx.Response:
        for piece in request.stream:  # type: ignore[union-attr]
            seen.append(len(piece))
            received.extend(piece)
        return httpx.Response(200)

    data = os.urandom(4 * 1024 * 1024 + 5)
    BlobClient(transport=httpx.MockTransport(handle), retries=0).put("http://storage.test/x", data, "chunk x")
    assert bytes(received) == data
    assert max(seen) <= 256 * 1024 and len(seen) == 17


def test_the_same_failure_everywhere_at_once_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A server gone away fails every transfer in flight alike: one line says it (with how many more
    were alike since), not a line per transfer and retry."""
    policy, _ = _policy()
    with caplog.at_level(logging.WARNING, logger="pdcat.transfer"):
        for name in ("a", "b", "c"):
            policy.run(_outcomes(httpx.ConnectError("refused"), "done"), f"chunk {name}")
        policy.run(_outcomes(httpx.ReadError("reset"), "done"), "chunk d")
    assert [r.getMessage() for r in caplog.records] == [
        "chunk a failed (refused); retrying",
        "chunk d failed (reset); retrying",
    ]
