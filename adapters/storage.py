"""Read-only key access to a source location through fsspec.

Navigation is by known keys only: many HTTP servers and S3 policies forbid listing.
Keys are relative to the source root; nothing outside the root is ever read.

Every remote read is one `RangeRequest` under a retry policy (`classify`, `backoff_delay`):
5xx, 408, 429, throttling, timeouts, connection errors and truncated bodies are retried
with jittered exponential backoff, at most `retries` attempts and never past `timeout`
seconds per request, nor past the deadline of the read it serves (`retry.deadline_at`).
A request returns its complete bytes, None (missing), or fails.

Chunk GETs of s3:// and http(s):// sources go through obstore (obstore_transport) where it
understands the options, else through fsspec; `transport` picks ("auto", "obstore", "fsspec").
Metadata calls (info, listings) always go through fsspec.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import email.utils
import json
import posixpath
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import fsspec
from fsspec.asyn import AsyncFileSystem, sync

from .counters import Counters
from .errors import BadMetadata, ChunkReadError, SourceGaveUp, SourceNotFound
from .obstore_transport import (
    TRANSPORTS, FsspecServes, TransportUnavailable, default_transport, obstore_transport_for,
)
from .retry import (
    _ABANDONED, MISSING_ERRORS, Abandoned, GaveUp, IncompleteBody, RetryRun, _chain, _status_and_code,
    current_deadline, describe_error, time_left,
)
from .urls import has_scheme, normalize_url, redact

DEFAULT_TIMEOUT = 60.0  # seconds one request may take, every attempt and pause included
DEFAULT_RETRIES = 5  # attempts per request, the first one included (as s3fs counts them)
DEFAULT_CONCURRENCY = 32  # parallel requests of one store


class TransferCounters(Counters):
    """Requests sent and bytes received by every store of this process, under their
    stats.json names."""

    def __init__(self):
        super().__init__(("remote_requests", "retries", "bytes_fetched", "in_flight"))

    def begin(self, n: int) -> None:
        self.add_each(remote_requests=n, in_flight=n)

    def end(self, n: int, nbytes: int) -> None:
        self.add_each(in_flight=-n, bytes_fetched=nbytes)

    def retried(self, n: int = 1) -> None:
        """An attempt repeated after a transient failure."""
        self.add("retries", n)

    requests = property(lambda self: self["remote_requests"])
    retries = property(lambda self: self["retries"])
    bytes = property(lambda self: self["bytes_fetched"])
    in_flight = property(lambda self: self["in_flight"])


TRANSFERS = TransferCounters()


@dataclass(frozen=True)
class RangeRequest:
    key: str
    start: int  # negative: a suffix of -start bytes
    end: int | None = None


@dataclass(frozen=True)
class SourceVersion:
    """Which bytes a request got: the request, and the ETag and Last-Modified (an HTTP date)
    the store sent with them. Taken from the response itself, never from another request."""

    key: str
    start: int
    end: int | None
    etag: str | None = None
    last_modified: str | None = None

    def matches(self, req: RangeRequest) -> bool:
        return (self.key, self.start, self.end) == (req.key, req.start, req.end)

    @property
    def validated(self) -> bool:
        """Whether a store can answer a conditional request on it."""
        return bool(self.etag or self.last_modified)

    def as_dict(self) -> dict:
        """The fields as a dict (what SourceVersion(**d) takes back): dataclasses.asdict
        costs ~20 µs of deep copying for these plain fields, once per chunk fetched."""
        return dict(self.__dict__)


class NotModified(Exception):
    """A conditional request answered 304: the bytes are those of the given version."""


class FetchObserver:
    """Around one chunk fetch (`observe`): the version of the bytes its last request got, and
    optionally a version to make the matching request conditional on. With `buffers`, the
    bytes may come as a read-only memoryview of the client's own memory (no copy)."""

    def __init__(self, condition: SourceVersion | None = None, buffers: bool = False):
        self.condition = condition
        self.buffers = buffers
        self.version: SourceVersion | None = None


_OBSERVER: contextvars.ContextVar[FetchObserver | None] = contextvars.ContextVar("ngffmount_fetch", default=None)


@contextlib.contextmanager
def observe(condition: SourceVersion | None = None, buffers: bool = False):
    """Record what the store says about the bytes fetched in this block; with `condition`, the
    request for the same range is conditional (If-None-Match, else If-Modified-Since) and a 304
    raises NotModified. With `buffers`, the caller takes any read-only buffer, not only bytes."""
    observer = FetchObserver(condition, buffers)
    token = _OBSERVER.set(observer)
    try:
        yield observer
    finally:
        _OBSERVER.reset(token)


class StorageOptions(dict):
    """fsspec options that also carry the retry budget (`timeout`, `retries`) and the
    transport of chunk GETs (`transport`, one of TRANSPORTS) to `Store`."""

    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    transport: str | None = None  # None: default_transport()


NO_BOTOCORE_RETRIES = {"mode": "standard", "total_max_attempts": 1}


def attempt_timeout_for(timeout: float) -> float:
    """How long one attempt may wait for a connection or for the next bytes: a quarter of
    the request's budget, so a stalled attempt still leaves time for retries."""
    return max(0.05, timeout / 4)


def storage_options_for(
    url: str,
    *,
    anon: bool = False,
    endpoint_url: str | None = None,
    extra: Mapping[str, Any] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    transport: str | None = None,
) -> StorageOptions:
    """fsspec options for a URL from the CLI flags: the defaults users of each protocol expect.

    `timeout` bounds one request with all its retries; each attempt gives up on a stall
    after `attempt_timeout_for(timeout)`. The client libraries' own retries are off: the
    Store's policy is the only one, so its budget and counters are the truth.
    """
    protocol = url.split("://", 1)[0].lower() if has_scheme(url) else "file"
    stall = attempt_timeout_for(timeout)
    opts = StorageOptions()
    opts.timeout, opts.retries, opts.transport = float(timeout), int(retries), transport
    if protocol in ("s3", "s3a"):
        opts["anon"] = anon
        # With max_concurrency > 1, s3fs sends a HEAD before every whole-object GET to decide
        # whether to split it; chunks are small, so one GET per chunk is enough.
        opts["max_concurrency"] = 1
        # botocore keeps 10 connections unless told otherwise, whatever concurrency we ask for.
        # Readahead may hold `concurrency` of them (on a silent remote, until they time out):
        # readers get as many again, so they never wait for a connection behind readahead.
        opts["config_kwargs"] = {
            "max_pool_connections": max(10, 2 * concurrency),
            "connect_timeout": stall,
            "read_timeout": stall,
            "retries": dict(NO_BOTOCORE_RETRIES),
        }
        if endpoint_url:
            opts["client_kwargs"] = {"endpoint_url": endpoint_url}
    elif protocol in ("http", "https"):
        import aiohttp

        opts["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=timeout, sock_connect=stall, sock_read=stall)}
    opts.update(extra or {})
    return opts


class Store:
    """A source root plus the filesystem that reads it.

    `timeout` and `retries` default to what `storage_options_for` put in the options, else to
    the aiohttp ClientTimeout `total` of HTTP options, else to DEFAULT_TIMEOUT/DEFAULT_RETRIES.
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        *,
        retries: int | None = None,
        timeout: float | None = None,
        transport: str | None = None,
    ):
        self.url = normalize_url(url)
        # The same bucket name on two S3 endpoints is two sources: the cache must tell them apart.
        endpoint = endpoint_of(storage_options or {})
        self.identity = self.url + (f" @ {normalize_url(endpoint)}" if endpoint else "")
        self.concurrency = max(1, concurrency)
        self.timeout = float(timeout if timeout is not None else _timeout_of(storage_options or {}))
        if retries is None:
            retries = getattr(storage_options, "retries", DEFAULT_RETRIES)
        self.retries = max(1, int(retries))
        self.attempt_timeout = attempt_timeout_for(self.timeout)
        options = dict(storage_options or {})
        s3 = has_scheme(url) and url.split("://", 1)[0].lower() in ("s3", "s3a")
        if s3:
            # botocore (up to 5 attempts, sleeps of seconds) and s3fs (5 more around each call)
            # retry on their own; nested under ours that is 125 attempts. Ours alone decide.
            config = dict(options.get("config_kwargs") or {})
            config.setdefault("retries", dict(NO_BOTOCORE_RETRIES))
            options["config_kwargs"] = config
            options["skip_instance_cache"] = True  # we change this instance: keep it ours
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except (ValueError, ImportError) as exc:
            raise SourceNotFound(f"cannot open {self.url}: {redact(str(exc))}") from None
        if s3 and hasattr(self.fs, "retries"):
            self.fs.retries = 1  # s3fs: a class attribute, no constructor option
        self.root = root.rstrip("/")
        self._is_async = isinstance(self.fs, AsyncFileSystem) and getattr(self.fs, "async_impl", False)
        self._pool = None if self._is_async else ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch")
        self._http = _fs_kind(self.fs)
        self.transport = transport or getattr(storage_options, "transport", None) or default_transport()
        self._fast = self._lean_transport(url, dict(storage_options or {}))

    def _lean_transport(self, url: str, options: dict):
        """The obstore transport of chunk GETs, or None where fsspec serves them."""
        if self.transport not in TRANSPORTS:
            raise SourceNotFound(f"unknown transport {self.transport!r}: expected one of {', '.join(TRANSPORTS)}")
        if self.transport == "fsspec":
            return None
        try:
            if not self._is_async:
                raise TransportUnavailable("not an s3:// or http(s):// source")
            return obstore_transport_for(url, options, self.attempt_timeout, self.concurrency, self.timeout)
        except Exception as exc:  # noqa: BLE001 - TransportUnavailable, or a client obstore refuses to build
            if self.transport == "obstore":
                raise SourceNotFound(f"cannot read {self.url} through obstore: {redact(str(exc))}") from None
            return None  # auto: fsspec serves

    @property
    def transport_in_use(self) -> str:
        """Which client sends chunk GETs: "obstore" or "fsspec"."""
        return "obstore" if self._fast is not None else "fsspec"

    def child(self, key: str) -> "Store":
        """A store rooted at a subpath (used for nested groups and images)."""
        sub = Store.__new__(Store)
        sub.__dict__.update(self.__dict__)
        sub.root = self._path(key)
        sub.url = self.url.rstrip("/") + "/" + safe_key(key)
        sub.identity = sub.url + self.identity[len(self.url):]
        return sub

    def _path(self, key: str) -> str:
        key = safe_key(key)
        return f"{self.root}/{key}" if key else self.root

    # -- reads ---------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        """One object; None when it does not exist. Other failures raise ChunkReadError."""
        return self.get_many([key])[key]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        results = self._run([RangeRequest(k, 0, None) for k in keys])
        return dict(zip(keys, results))

    def get_ranges(self, requests: Sequence[RangeRequest]) -> list[bytes | None]:
        return self._run(list(requests))

    def level_documents(self, paths: Sequence[str], name: str) -> list[dict]:
        """The metadata document `name` of each level path, in one concurrent batch."""
        raw = self.get_many([posixpath.join(p, name) for p in paths])
        docs = []
        for p in paths:
            doc = raw[posixpath.join(p, name)]
            if doc is None:
                raise BadMetadata(f"{self.url}: level {p!r} has no {name}")
            docs.append(parse_json(doc, f"{self.url}/{p}/{name}"))
        return docs

    def info(self, key: str) -> dict | None:
        """What the source reports about `key` (size, modification time); None if it is missing."""
        path = self._path(key)
        if self._is_async:
            info = sync(self.fs.loop, self._retrying_async,
                        lambda left: self.fs._info(path, **self._attempt_kwargs(left)))
        else:
            info = self._retrying_sync(lambda left: self.fs.info(path, **self._attempt_kwargs(left)))
        if isinstance(info, MISSING_ERRORS):
            return None
        if isinstance(info, BaseException):
            raise ChunkReadError(f"cannot read {redact(self.url)}/{key}: {describe_error(info)}")
        return info if isinstance(info, dict) else None

    def list_dirs(self, key: str) -> list[str] | None:
        """Names of the folders under `key`, or None where listing is not possible: HTTP has
        no listing (an index page is not one), and S3 policies may forbid it."""
        if self._http:
            return None
        try:
            entries = self.fs.ls(self._path(key), detail=True)
        except Exception:  # noqa: BLE001 - any refusal means: no listing here
            return None
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")

    def size(self, key: str) -> int | None:
        return size_of(self.info(key))

    def mtime(self, key: str) -> float | None:
        """The modification time the source reports for `key`, if it reports one."""
        try:
            return mtime_of(self.info(key))
        except ChunkReadError:
            return None

    # -- machinery -----------------------------------------------------------------
    def _run(self, requests: list[RangeRequest]) -> list[bytes | None]:
        if not requests:
            return []
        observer = _OBSERVER.get()
        condition = observer.condition if observer is not None else None
        conditions = [condition if condition is not None and condition.validated and condition.matches(req) else None
                      for req in requests]
        read_deadline = current_deadline()
        if time_left(self.timeout) <= 0:
            raise ChunkReadError(f"cannot read {self.url}/{requests[0].key}: its read's deadline passed "
                                 "before the request could be sent")
        TRANSFERS.begin(len(requests))
        raw = []
        try:
            if len(requests) == 1 and self._lean_path(requests[0]):
                # One chunk: its thread sends the GET itself (obstore releases the GIL), no loop hop.
                budget = self._budget(read_deadline, time.monotonic())
                raw = [self._retrying_sync(partial(self._attempt_lean, requests[0], conditions[0]), None, budget)]
            elif self._is_async:
                raw = sync(self.fs.loop, self._gather, requests, conditions, read_deadline)
            else:
                abort = threading.Event()
                raw = list(self._pool.map(partial(self._fetch_sync, abort=abort, read_deadline=read_deadline),
                                       requests))
        finally:
            TRANSFERS.end(len(requests), sum(len(v[0]) for v in raw if isinstance(v, tuple)))
        if any(isinstance(value, NotModified) for value in raw):
            raise NotModified()
        if observer is not None and raw and isinstance(raw[-1], tuple):
            req = requests[-1]
            observer.version = SourceVersion(req.key, req.start, req.end, *raw[-1][1:])
        raw = [value[0] if isinstance(value, tuple) else value for value in raw]
        if observer is None or not observer.buffers:  # obstore's memory, as bytes for callers that parse them
            raw = [bytes(value) if isinstance(value, memoryview) else value for value in raw]
        failed = [(req, value) for req, value in zip(requests, raw)
                  if isinstance(value, BaseException) and not isinstance(value, MISSING_ERRORS)]
        # Report the request that failed, not those abandoned because of it.
        for req, value in sorted(failed, key=lambda f: isinstance(f[1], _ABANDONED))[:1]:
            if isinstance(value, GaveUp):
                raise SourceGaveUp(f"cannot read {self.url}/{req.key}: {value}")
            raise ChunkReadError(f"cannot read {self.url}/{req.key}: {describe_error(value)}")
        return [None if isinstance(value, MISSING_ERRORS) else trim_range(value, req)
                for req, value in zip(requests, raw)]

    async def _gather(self, requests, conditions, read_deadline: float | None):
        sem = asyncio.Semaphore(self.concurrency)
        tasks: list[asyncio.Task] = []

        async def one(req: RangeRequest, condition: SourceVersion | None):
            async with sem:
                # (the loop's clock is time.monotonic())
                budget = self._budget(read_deadline, asyncio.get_running_loop().time())
                result = await self._retrying_async(partial(self._attempt_async, req, condition), budget)
            if isinstance(result, BaseException) and not isinstance(result, MISSING_ERRORS):
                # The whole batch fails with this request: stop spending time on the others.
                for task in tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
            return result

        tasks.extend(asyncio.ensure_future(one(r, c)) for r, c in zip(requests, conditions))
        return await asyncio.gather(*tasks, return_exceptions=True)

    def _fetch_sync(self, req: RangeRequest, abort: threading.Event | None = None,
                    read_deadline: float | None = None):
        budget = self._budget(read_deadline, time.monotonic())
        return self._retrying_sync(partial(self._attempt_sync, req), abort, budget)

    def _budget(self, read_deadline: float | None, now: float) -> float:
        """Seconds a request starting now may take: `timeout`, or less if its read ends sooner."""
        return self.timeout if read_deadline is None else min(self.timeout, read_deadline - now)

    # One attempt: (the complete bytes of a request, ETag, Last-Modified), or an exception.
    def _lean_path(self, req: RangeRequest) -> str | None:
        """Where obstore finds the object of `req`, or None if fsspec must send it."""
        if self._fast is None:
            return None
        return self._fast.object_path(self._path(req.key), ranged=(req.start, req.end) != (0, None))

    def _attempt_lean(self, req: RangeRequest, condition: SourceVersion | None, left: float):
        try:
            data, etag, modified, size = self._fast.get(self._lean_path(req), req.start, req.end, condition, left)
        except FsspecServes:
            return sync(self.fs.loop, self._attempt_async, req, condition, left)  # fsspec takes over
        return _complete(req, data, size), etag, modified

    async def _attempt_async(self, req: RangeRequest, condition: SourceVersion | None, left: float):
        path, kw = self._path(req.key), self._attempt_kwargs(left)
        start, end = _range_args(req)
        lean = self._lean_path(req)
        if lean:
            try:
                data, etag, modified, size = await self._fast.get_async(lean, req.start, req.end, condition, left)
                return _complete(req, data, size), etag, modified
            except FsspecServes:
                pass  # fsspec takes over
        if self._http == "aiohttp":
            data, etag, modified = await _http_get(self.fs, path, start, end, condition, kw)
        elif type(self.fs).__module__ == "s3fs.core":
            data, etag, modified = await _s3_get(self.fs, path, start, end, condition)
        else:  # other stores: their validators would cost a request per chunk; none is recorded
            data, etag, modified = await self.fs._cat_file(path, start=start, end=end, **kw), None, None
        if not _short(req, data):
            return data, etag, modified
        try:
            size = (await self.fs._info(path, **kw)).get("size")
        except Exception as exc:
            raise IncompleteBody(f"{len(data)} bytes for {_describe_range(req)}, and no size: {describe_error(exc)}") from exc
        return check_length(req, data, size), etag, modified

    def _attempt_sync(self, req: RangeRequest, left: float):
        path, kw = self._path(req.key), self._attempt_kwargs(left)
        start, end = _range_args(req)
        data = self.fs.cat_file(path, start=start, end=end, **kw)
        if not _short(req, data):
            return data, None, None
        try:
            size = self.fs.info(path, **kw).get("size")
        except Exception as exc:
            raise IncompleteBody(f"{len(data)} bytes for {_describe_range(req)}, and no size: {describe_error(exc)}") from exc
        return check_length(req, data, size), None, None

    def _attempt_kwargs(self, left: float) -> dict:
        """Per-request client options: stall timeouts, and a total that ends with the budget."""
        stall = min(self.attempt_timeout, max(left, 0.01))
        if self._http == "aiohttp":
            import aiohttp

            return {"timeout": aiohttp.ClientTimeout(total=max(left, 0.01), sock_connect=stall, sock_read=stall)}
        if self._http == "requests":
            return {"timeout": (stall, stall)}
        return {}

    # The retry loops, sync and async, over one RetryRun per request (the policy).
    # Each returns the value, or the exception that ended the request.
    def _retry_run(self, budget: float | None, clock: Callable[[], float]) -> RetryRun:
        return RetryRun(self.timeout if budget is None else budget, self.retries, clock, TRANSFERS.retried)

    async def _retrying_async(self, attempt: Callable[[float], Any], budget: float | None = None):
        run = self._retry_run(budget, asyncio.get_running_loop().time)
        while True:
            left = run.left()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError()  # spent waiting for its turn in the batch
                return await asyncio.wait_for(attempt(left), left)  # a hard stop at the deadline
            except Exception as exc:
                pause = run.after_failure(exc)
            if isinstance(pause, BaseException):
                return pause
            await asyncio.sleep(pause)

    def _retrying_sync(self, attempt: Callable[[float], Any], abort: threading.Event | None = None,
                       budget: float | None = None):
        """As _retrying_async. A blocking call cannot be interrupted: the deadline is checked
        between attempts, and each attempt is bounded by the client's own stall timeouts."""
        run = self._retry_run(budget, time.monotonic)
        while True:
            if abort is not None and abort.is_set():
                return Abandoned()
            try:
                return attempt(max(run.left(), 0.01))
            except Exception as exc:
                pause = run.after_failure(exc)
            if isinstance(pause, BaseException):
                if abort is not None and not isinstance(pause, MISSING_ERRORS):
                    abort.set()  # the batch fails with this request: the others may stop
                return pause
            if abort is None:
                time.sleep(pause)
            elif abort.wait(pause):
                return Abandoned()


def _condition_headers(condition: SourceVersion | None) -> dict:
    if condition is None:
        return {}
    if condition.etag:
        return {"If-None-Match": condition.etag}
    return {"If-Modified-Since": condition.last_modified}


async def _http_get(fs, path: str, start, end, condition: SourceVersion | None, kw: dict):
    """fsspec's HTTPFileSystem._cat_file, keeping the response's validators and sending a
    condition: (bytes, ETag, Last-Modified); a 304 raises NotModified."""
    options = {**fs.kwargs, **kw}
    headers = dict(options.pop("headers", None) or {})
    if start is not None or end is not None:
        if start == end:
            return b"", None, None
        headers["Range"] = await fs._process_limits(path, start, end)
    headers.update(_condition_headers(condition))
    session = await fs.set_session()
    url = fs.encode_url(path) if hasattr(fs, "encode_url") else path  # older fsspec has none
    async with session.get(url, headers=headers, **options) as r:
        if r.status == 304:
            raise NotModified()
        data = await r.read()
        fs._raise_not_found_for_status(r, path)
        return data, r.headers.get("ETag"), r.headers.get("Last-Modified")


async def _s3_get(fs, path: str, start, end, condition: SourceVersion | None):
    """s3fs's _cat_file as one GetObject, keeping its ETag and LastModified and sending a
    condition; a 304 raises NotModified."""
    bucket, key, version_id = fs.split_path(path)
    kwargs = {"Bucket": bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    if start is not None or end is not None:
        kwargs["Range"] = await fs._process_limits(path, start, end)
    if condition is not None and condition.etag:
        kwargs["IfNoneMatch"] = condition.etag
    elif condition is not None:
        kwargs["IfModifiedSince"] = email.utils.parsedate_to_datetime(condition.last_modified)
    try:
        resp = await fs._call_s3("get_object", **kwargs)
    except Exception as exc:
        if any(_status_and_code(node)[0] == 304 for node in _chain(exc)):
            raise NotModified() from None
        raise
    try:
        data = await resp["Body"].read()
    finally:
        resp["Body"].close()
    modified = resp.get("LastModified")
    if hasattr(modified, "timestamp"):
        modified = email.utils.format_datetime(modified.astimezone(datetime.timezone.utc), usegmt=True)
    return data, resp.get("ETag"), modified if isinstance(modified, str) else None


def _short(req: RangeRequest, data: bytes) -> bool:
    """A bounded range (or suffix) answered with fewer bytes than asked."""
    if req.start < 0:
        return len(data) < -req.start
    return req.end is not None and len(data) < req.end - req.start


def _complete(req: RangeRequest, data: bytes, size: int | None) -> bytes:
    """The bytes of an answer that says the object's size: checked where they are short."""
    return check_length(req, data, size) if _short(req, data) else data


def check_length(req: RangeRequest, data: bytes, size: int | None) -> bytes:
    """A short answer is fine only where the object ends; else it is a truncated body."""
    if size is None:
        raise IncompleteBody(f"{len(data)} bytes for {_describe_range(req)} of an object of unknown size")
    if req.start < 0:
        expected = min(-req.start, size)
    else:
        expected = max(0, min(req.end, size) - req.start)
    if len(data) == expected:
        return data
    if len(data) == size and req.start > 0:
        return data[req.start:req.end]  # a server that ignored Range sent the whole (small) object
    raise IncompleteBody(f"{len(data)} bytes for {_describe_range(req)} of a {size}-byte object")


def _describe_range(req: RangeRequest) -> str:
    return f"the last {-req.start} bytes" if req.start < 0 else f"bytes {req.start}-{req.end}"


def _timeout_of(options: Mapping[str, Any]) -> float:
    timeout = getattr(options, "timeout", None)  # StorageOptions from storage_options_for
    if timeout is None:
        client_timeout = (options.get("client_kwargs") or {}).get("timeout")
        timeout = getattr(client_timeout, "total", None)  # aiohttp.ClientTimeout
    return float(timeout) if timeout else DEFAULT_TIMEOUT


def _fs_kind(fs) -> str | None:
    """Which HTTP client an fsspec filesystem uses, for per-request timeouts."""
    module = type(fs).__module__
    if module == "fsspec.implementations.http":
        return "aiohttp"
    if module == "fsspec.implementations.http_sync":
        return "requests"
    return None


def endpoint_of(options: Mapping[str, Any]) -> str | None:
    client = options.get("client_kwargs") or {}
    return options.get("endpoint_url") or client.get("endpoint_url")


def _range_args(req: RangeRequest) -> tuple[int | None, int | None]:
    if req.start == 0 and req.end is None:
        return None, None
    return req.start, req.end


def trim_range(data: bytes, req: RangeRequest) -> bytes:
    """Servers that ignore Range answer with the whole object: cut the asked-for part out of it."""
    if req.start == 0 and req.end is None:
        return data
    if req.start < 0:
        return data[req.start:] if len(data) > -req.start else data
    want = None if req.end is None else req.end - req.start
    if want is not None and len(data) > want:
        return data[req.start:req.end]
    return data


def safe_key(key: str) -> str:
    """Normalize a relative key, refusing anything that would leave the source root."""
    if key.startswith("/") or "\\" in key:
        raise BadMetadata(f"path {key!r} in metadata is not a relative path")
    norm = posixpath.normpath(key) if key else ""
    if norm == ".":
        return ""
    if norm.startswith("../") or norm == "..":
        raise BadMetadata(f"path {key!r} in metadata points outside the source")
    return norm


def parse_json(raw: bytes, where: str) -> dict:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMetadata(f"broken JSON in {redact(where)}: {exc}") from None
    if not isinstance(doc, dict):
        raise BadMetadata(f"{redact(where)} is not a JSON object")
    return doc


def size_of(info: dict | None) -> int | None:
    """The size in bytes from what `Store.info` returned."""
    size = info.get("size") if info else None
    return int(size) if isinstance(size, (int, float)) and size >= 0 else None


def mtime_of(info: dict | None) -> float | None:
    """The modification time from what `Store.info` returned, in whichever field and form
    the filesystem gives it."""
    if not info:
        return None
    for name in ("LastModified", "last_modified", "mtime", "Last-Modified", "updated"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return email.utils.parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError):
                continue
        if hasattr(value, "timestamp"):
            return value.timestamp()
    return None
