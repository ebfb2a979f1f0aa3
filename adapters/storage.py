"""Read-only key access to a source location through fsspec.

Navigation is by known keys only: many HTTP servers and S3 policies forbid listing.
Keys are relative to the source root; nothing outside the root is ever read.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import fsspec
from fsspec.asyn import AsyncFileSystem, sync

from .errors import BadMetadata, ChunkReadError, SourceNotFound
from .urls import has_scheme, normalize_url, redact

MISSING_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


class TransferCounters:
    """Requests sent and bytes received by every store of this process (for stats.json)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.in_flight = 0

    def begin(self, n: int) -> None:
        with self._lock:
            self.requests += n
            self.in_flight += n

    def end(self, n: int, nbytes: int) -> None:
        with self._lock:
            self.in_flight -= n
            self.bytes += nbytes


TRANSFERS = TransferCounters()


@dataclass(frozen=True)
class RangeRequest:
    key: str
    start: int  # negative: a suffix of -start bytes
    end: int | None = None


def storage_options_for(
    url: str,
    *,
    anon: bool = False,
    endpoint_url: str | None = None,
    extra: Mapping[str, Any] | None = None,
    concurrency: int = 32,
    timeout: float = 60.0,
) -> dict:
    """fsspec options for a URL from the CLI flags: the defaults users of each protocol expect."""
    protocol = url.split("://", 1)[0].lower() if has_scheme(url) else "file"
    opts: dict = {}
    if protocol in ("s3", "s3a"):
        opts["anon"] = anon
        # botocore keeps 10 connections unless told otherwise, whatever concurrency we ask for.
        opts["config_kwargs"] = {
            "max_pool_connections": max(10, concurrency),
            "connect_timeout": timeout,
            "read_timeout": timeout,
        }
        if endpoint_url:
            opts["client_kwargs"] = {"endpoint_url": endpoint_url}
    elif protocol in ("http", "https"):
        import aiohttp

        opts["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 15))}
    opts.update(extra or {})
    return opts


class Store:
    """A source root plus the filesystem that reads it."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, concurrency: int = 32):
        self.url = normalize_url(url)
        # The same bucket name on two S3 endpoints is two sources: the cache must tell them apart.
        endpoint = _endpoint_of(storage_options or {})
        self.identity = self.url + (f" @ {normalize_url(endpoint)}" if endpoint else "")
        self.concurrency = max(1, concurrency)
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except (ValueError, ImportError) as exc:
            raise SourceNotFound(f"cannot open {self.url}: {redact(str(exc))}") from None
        self.root = root.rstrip("/")
        self._is_async = isinstance(self.fs, AsyncFileSystem) and getattr(self.fs, "async_impl", False)
        self._pool = None if self._is_async else ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch")

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

    def get_json(self, key: str) -> dict | None:
        raw = self.get(key)
        if raw is None:
            return None
        return parse_json(raw, f"{self.url}/{key}")

    def mtime(self, key: str) -> float | None:
        """The modification time the source reports for `key`, if it reports one."""
        try:
            info = self.fs.info(self._path(key))
        except Exception:
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

    # -- machinery -----------------------------------------------------------------
    def _run(self, requests: list[RangeRequest]) -> list[bytes | None]:
        if not requests:
            return []
        TRANSFERS.begin(len(requests))
        raw = []
        try:
            if self._is_async:
                raw = sync(self.fs.loop, self._gather, requests)
            else:
                raw = list(self._pool.map(self._fetch_sync, requests))
        finally:
            TRANSFERS.end(len(requests), sum(len(v) for v in raw if isinstance(v, (bytes, bytearray))))
        out = []
        for req, value in zip(requests, raw):
            if isinstance(value, MISSING_ERRORS):
                out.append(None)
            elif isinstance(value, BaseException):
                raise ChunkReadError(f"cannot read {self.url}/{req.key}: {describe_error(value)}")
            else:
                out.append(trim_range(value, req))
        return out

    async def _gather(self, requests):
        sem = asyncio.Semaphore(self.concurrency)

        async def one(req: RangeRequest):
            async with sem:
                try:
                    start, end = _range_args(req)
                    return await self.fs._cat_file(self._path(req.key), start=start, end=end)
                except Exception as exc:  # reported per request by _run
                    return exc

        return await asyncio.gather(*(one(r) for r in requests))

    def _fetch_sync(self, req: RangeRequest):
        try:
            start, end = _range_args(req)
            return self.fs.cat_file(self._path(req.key), start=start, end=end)
        except Exception as exc:
            return exc


def _endpoint_of(options: Mapping[str, Any]) -> str | None:
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


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text)
