"""The retry policy of remote reads: what is worth another attempt, and how long to wait.

5xx, 408, 429, S3 throttling codes, timeouts, connection errors and truncated bodies are
retried; 4xx answers and anything unknown are not. Pauses double from 0.1 s with jitter.
"""

from __future__ import annotations

import asyncio
import errno
import random
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

from .urls import redact

MISSING_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
BACKOFF_BASE = 0.1  # first pause; doubles per attempt, with jitter
BACKOFF_CAP = 2.0

RETRY, MISSING, FATAL = "retry", "missing", "fatal"

# Exception class names (anywhere in the MRO) that mean "the transfer broke, try again":
# aiohttp, botocore/aiobotocore, urllib3, http.client, requests, fsspec.
_TRANSIENT_TYPES = frozenset({
    "ClientPayloadError", "ClientConnectionError", "ServerTimeoutError", "ContentLengthError",
    "HTTPClientError", "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
    "ConnectTimeoutError", "IncompleteReadError", "ResponseStreamingError", "ResponseParserError",
    "IncompleteRead", "ProtocolError", "RemoteDisconnected", "ChunkedEncodingError",
    "ContentDecodingError", "Timeout", "ConnectionError", "FSTimeoutError", "IncompleteBody",
})
# S3 error codes that mean "busy or broken for now" (some arrive with a 4xx status).
_TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "ThrottledException", "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "ProvisionedThroughputExceededException",
})
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ECONNRESET", "ECONNABORTED", "ECONNREFUSED", "ETIMEDOUT", "EPIPE",
                                      "EREMOTEIO", "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN", "ENETRESET")
    if hasattr(errno, name)
)


def classify(exc: BaseException) -> str:
    """RETRY, MISSING (the object does not exist) or FATAL (4xx, bad credentials, bugs).

    The causes are looked at too: s3fs and fsspec re-raise botocore and aiohttp errors as
    OSError or FileNotFoundError ("from exc"), and the HTTP status is only on the original.
    """
    for node in _chain(exc):
        verdict = _transient(node)
        if verdict is not None:
            if verdict:
                return RETRY
            break
    return MISSING if isinstance(exc, MISSING_ERRORS) else FATAL


def _chain(exc: BaseException, limit: int = 8):
    seen, todo = set(), [exc]
    while todo and len(seen) < limit:
        node = todo.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        todo += [node.__cause__, node.__context__]


def _transient(exc: BaseException) -> bool | None:
    """True: retry. False: a definite answer not to retry (e.g. 404, 403). None: no opinion."""
    status, code = _status_and_code(exc)
    if code in _TRANSIENT_CODES:
        return True
    if status is not None:
        return status >= 500 or status in (408, 429)
    if isinstance(exc, (TimeoutError, ConnectionError, asyncio.TimeoutError)):
        return True
    if _TRANSIENT_TYPES.intersection(c.__name__ for c in type(exc).__mro__):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return None


def _status_and_code(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status (and S3 error code) an exception carries, if any."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = (response.get("Error") or {}).get("Code")
        return _int_or_none(status), (code if isinstance(code, str) else None)
    names = {c.__name__ for c in type(exc).__mro__}
    if "RemoteStatus" in names:  # obstore_transport
        return _int_or_none(getattr(exc, "status", None)), None
    if "ClientResponseError" in names:  # aiohttp
        return _int_or_none(getattr(exc, "status", None)), None
    if "HTTPError" in names:  # requests (.response.status_code), urllib (.code)
        return _int_or_none(getattr(response, "status_code", None) or getattr(exc, "code", None)), None
    return None, None


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def backoff_delay(attempt: int) -> float:
    """The pause after failed attempt number `attempt` (1-based): 0.1 s doubling, capped,
    with "equal jitter" (half fixed, half random) so clients that failed together spread out."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
    return ceiling / 2 + random.random() * ceiling / 2


# When the read a request serves must be answered by (time.monotonic()), if it has a deadline.
_DEADLINE: ContextVar[float | None] = ContextVar("ngffmount_deadline", default=None)


@contextmanager
def deadline_at(when: float | None):
    """Remote requests made inside end by `when` (time.monotonic()) at the latest: a reader's
    clock starts when its read arrives, not when a thread gets to its fetch."""
    token = _DEADLINE.set(when)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    return _DEADLINE.get()


def time_left(budget: float) -> float:
    """A request's budget, cut short by the deadline of the read it serves."""
    deadline = _DEADLINE.get()
    return budget if deadline is None else min(budget, deadline - time.monotonic())


class RetryRun:
    """The policy of one request's retries, written once for the sync and the async loop:
    how long the next attempt may take, and after a failure the pause before the next one
    or the exception that ends the request."""

    def __init__(self, budget: float, retries: int, clock: Callable[[], float], on_retry: Callable[[], None]):
        """`budget`: seconds for every attempt and pause; `retries`: attempts at most;
        `clock`: the loop's monotonic clock; `on_retry`: counts each retry."""
        self.budget, self.retries = budget, retries
        self._clock, self._on_retry = clock, on_retry
        self.started = clock()
        self.attempts = 0

    def left(self) -> float:
        return self.started + self.budget - self._clock()

    def after_failure(self, exc: Exception) -> float | BaseException:
        self.attempts += 1
        n, now = self.attempts, self._clock()
        if classify(exc) != RETRY:
            return exc
        deadline = self.started + self.budget
        if now >= deadline - 1e-3:
            return GaveUp(exc, n, now - self.started, self.budget)
        pause = backoff_delay(n)
        if n >= self.retries or now + pause >= deadline:
            return GaveUp(exc, n, now - self.started)  # no pause past the deadline: fail now
        self._on_retry()
        return pause


class IncompleteBody(Exception):
    """A response shorter than the range asked for, though the object goes on (retryable)."""


class GaveUp(Exception):
    """A request that kept failing until its retry budget or its deadline was spent."""

    def __init__(self, last: BaseException, attempts: int, elapsed: float, deadline: float | None = None):
        why = f"no complete answer within {deadline:.3g} s" if deadline is not None else "gave up"
        super().__init__(f"{why} ({attempts} attempt{'s' if attempts != 1 else ''} in {elapsed:.1f} s), "
                         f"last error: {describe_error(last)}")
        self.__cause__ = last
        self.attempts = attempts


class Abandoned(Exception):
    """A request dropped because another request of its batch failed."""


_ABANDONED = (Abandoned, asyncio.CancelledError)


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text)
