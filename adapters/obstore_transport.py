"""The lean transport: chunk GETs of s3:// and http(s):// sources through obstore.

obstore is a Rust object-store client. A request costs a fraction of the Python that
s3fs/aiobotocore or fsspec's HTTP filesystem spend on it (scripts/transport_cpu.py measures
both), and its blocking `get` releases the GIL while it waits, so a fetch thread sends its
request itself instead of handing it to fsspec's event loop.

It is built from the same URL and fsspec storage options as the fsspec filesystem, and
serves only what it understands exactly: anything else (an option it does not know, S3
credentials only botocore's chain can find, a key that needs URL escaping) goes through
fsspec, as every other protocol does. `Store` keeps the retry policy, the deadlines and the
counters for both; obstore's own retries are off.
"""

from __future__ import annotations

import datetime
import email.utils
import os
import re
import threading
import urllib.parse
from typing import Any, Mapping

from .retry import IncompleteBody
from .urls import redact

TRANSPORTS = ("auto", "obstore", "fsspec")
TRANSPORT_ENV = "NGFFMOUNT_TRANSPORT"  # the default of --transport (e.g. to run a test suite on s3fs)

# Options storage_options_for and Store set for s3fs, which mean nothing to a GET here
# (retries and timeouts are the Store's; obstore pools connections on its own).
_S3_KNOWN = {"anon", "key", "secret", "token", "endpoint_url", "client_kwargs", "config_kwargs",
             "max_concurrency", "skip_instance_cache"}
_S3_CLIENT_KNOWN = {"endpoint_url", "region_name"}
_S3_CONFIG_KNOWN = {"max_pool_connections", "connect_timeout", "read_timeout", "retries"}
_HTTP_CLIENT_KNOWN = {"timeout"}
# The CA bundle the environment gives botocore, trusted here too. (obstore's roots already
# follow SSL_CERT_FILE and SSL_CERT_DIR, as OpenSSL does for aiohttp.)
_CA_ENV = {"s3": ("AWS_CA_BUNDLE",), "http": ()}
# Keys of unreserved URL characters only: no escaping for obstore and fsspec to disagree on.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._~/-]+")
_STATUS = re.compile(r"status code: (\d{3})")
# What obstore (reqwest, hyper) says when a transfer broke: worth another attempt.
_BROKEN_TRANSFER = ("error sending request", "timed out", "timeout", "connection", "reset", "closed", "eof",
                    "broken pipe", "incomplete")
MIN_ATTEMPT_TIMEOUT = 0.05


class TransportUnavailable(ValueError):
    """The lean transport cannot serve this source with these options (the reason says why)."""


class RemoteStatus(OSError):
    """An HTTP error status the client did not map to a kind of its own (5xx, 429, 416...)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class FsspecServes(Exception):
    """obstore refused the server's answer where fsspec reads it: fsspec serves this
    request, and those like it from now on."""


class RangesIgnored(FsspecServes):
    """The server answered a range request with the whole object, which obstore refuses:
    fsspec serves this store's range requests from now on (it cuts the range out)."""


class RemoteConnectionError(ConnectionError):
    """No complete answer: refused, reset, timed out, or a body cut short."""


def default_transport() -> str:
    value = os.environ.get(TRANSPORT_ENV, "auto").strip().lower() or "auto"
    if value not in TRANSPORTS:
        raise TransportUnavailable(f"{TRANSPORT_ENV}={value!r}: expected one of {', '.join(TRANSPORTS)}")
    return value


class ObstoreTransport:
    """GETs of one S3 bucket or one HTTP origin: the fsspec paths under `prefix` ("bucket/"
    for S3, "scheme://host:port/" for HTTP), by their path within it (`object_path`). Each
    attempt is bounded by a client whose request timeout fits the time left (`_client_for`).
    """

    def __init__(self, prefix: str, make_client, attempt_timeout: float, budget: float | None = None):
        self.prefix = prefix
        self._make_client = make_client
        self.attempt_timeout = max(MIN_ATTEMPT_TIMEOUT, attempt_timeout)
        self.budget = budget  # a request's time, all attempts included (Store.timeout)
        self.ranges = True  # False once the server showed it ignores Range
        self.headers_read = True  # False once it sent headers obstore cannot read (see _translated)
        self._clients: dict[float, Any] = {}
        self._lock = threading.Lock()
        self._client_for(self.attempt_timeout)  # a bad option fails now, not at the first read

    def object_path(self, path: str, ranged: bool = False) -> str | None:
        """The path within the client of an fsspec path, or None if fsspec must serve it."""
        if not self.headers_read or not path.startswith(self.prefix) or (ranged and not self.ranges):
            return None
        rest = path[len(self.prefix):]
        return rest if rest and _PLAIN_KEY.fullmatch(rest) and "//" not in rest else None

    def _client_for(self, left: float):
        """A client whose request timeout is the attempt timeout, or a power-of-two fraction
        of it when less time is left: a blocking attempt then ends by its deadline (or within
        MIN_ATTEMPT_TIMEOUT of it). The attempt timeout bounds a stall, as fsspec's does, but
        obstore's bounds the whole transfer: a retry may take twice as long as the request
        took so far, so a slow transfer that keeps flowing still completes in the budget."""
        timeout = self.attempt_timeout
        if self.budget is not None:
            while timeout < self.budget - left and timeout * 2 <= self.budget:
                timeout *= 2
        while timeout > left and timeout / 2 >= MIN_ATTEMPT_TIMEOUT:
            timeout /= 2
        client = self._clients.get(timeout)
        if client is None:
            with self._lock:
                client = self._clients.get(timeout)
                if client is None:
                    client = self._clients[timeout] = self._make_client(timeout)
        return client

    def get(self, object_path: str, start: int, end: int | None, condition, left: float):
        """(bytes, ETag, Last-Modified, object size) of one GET, blocking without the GIL. The
        bytes are a read-only memoryview of obstore's buffer: copying them into new memory held
        the GIL for 31% of its samples on a cold scroll (Store makes bytes where needed)."""
        import obstore

        if start == end:
            return _NOTHING  # as fsspec: no bytes, no request (obstore refuses an empty range)
        try:
            result = obstore.get(self._client_for(left), object_path, options=_get_options(start, end, condition))
            data = memoryview(result.bytes())
        except Exception as exc:
            raise self._translated(exc) from None
        return _answer(result, data)

    async def get_async(self, object_path: str, start: int, end: int | None, condition, left: float):
        import obstore

        if start == end:
            return _NOTHING
        try:
            result = await obstore.get_async(self._client_for(left), object_path,
                                             options=_get_options(start, end, condition))
            data = memoryview(await result.bytes_async())
        except Exception as exc:
            raise self._translated(exc) from None
        return _answer(result, data)

    def _translated(self, exc: Exception) -> Exception:
        from obstore import exceptions as e

        if isinstance(exc, e.NotSupportedError) and "range" in str(exc).lower():
            self.ranges = False
            return RangesIgnored(_first_line(exc))
        if isinstance(exc, e.GenericError) and "source: Header {" in str(exc):
            # No Content-Length (a chunked body), a Last-Modified that is no HTTP date...:
            # obstore reads no answer with such headers; aiohttp does.
            self.headers_read = False
            return FsspecServes(_first_line(exc))
        return _translated(exc)


_NOTHING = (b"", None, None, None)
_NO_DATE = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _get_options(start: int, end: int | None, condition) -> dict:
    options: dict[str, Any] = {}
    if start < 0:
        options["range"] = {"suffix": -start}
    elif end is not None:
        options["range"] = (start, end)
    elif start > 0:
        options["range"] = {"offset": start}
    if condition is not None and condition.etag:
        options["if_none_match"] = condition.etag
    elif condition is not None and condition.last_modified:
        options["if_modified_since"] = email.utils.parsedate_to_datetime(condition.last_modified)
    return options


def _answer(result, data: bytes):
    meta = result.meta
    modified = meta.get("last_modified")
    if modified == _NO_DATE:
        modified = None  # obstore's stand-in for an answer without Last-Modified: none was sent
    if isinstance(modified, datetime.datetime):
        modified = email.utils.format_datetime(modified.astimezone(datetime.timezone.utc), usegmt=True)
    return data, meta.get("e_tag"), modified, meta.get("size")


def _translated(exc: Exception) -> Exception:
    """obstore's errors as the kinds the retry policy and Store know (retry.classify)."""
    from obstore import exceptions as e

    from .storage import NotModified

    message = _first_line(exc)
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(message)
    if isinstance(exc, e.NotModifiedError):
        return NotModified()
    if isinstance(exc, (e.PermissionDeniedError, e.UnauthenticatedError)):
        return PermissionError(message)
    status = _STATUS.search(message)
    if status is not None:
        return RemoteStatus(int(status.group(1)), message)
    text = message.lower()
    if "body" in text:  # "request or response body error", "error decoding response body": cut short
        return IncompleteBody(message)
    if any(word in text for word in _BROKEN_TRANSFER):
        return RemoteConnectionError(message)
    return exc if isinstance(exc, OSError) else OSError(message)


def _first_line(exc: Exception) -> str:
    """obstore's message without its debug dump (the URL holds no credential: S3 signs in headers)."""
    return redact(str(exc).split("\n\nDebug source", 1)[0].strip().splitlines()[0] if str(exc) else type(exc).__name__)


# -- building one from fsspec options --------------------------------------------------------

def obstore_transport_for(url: str, options: Mapping[str, Any], attempt_timeout: float,
                          concurrency: int, budget: float | None = None) -> ObstoreTransport:
    """The lean transport of `url` with these fsspec options; TransportUnavailable says why not."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    try:
        import obstore  # noqa: F401
    except ImportError:
        raise TransportUnavailable("obstore is not installed") from None
    if protocol in ("s3", "s3a"):
        return _s3_transport(url, options, attempt_timeout, concurrency, budget)
    if protocol in ("http", "https"):
        return _http_transport(url, options, attempt_timeout, concurrency, budget)
    raise TransportUnavailable(f"{protocol}:// is served by fsspec only")


def _unknown(options: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(options) - known)
    if extra:
        raise TransportUnavailable(f"{where} {', '.join(extra)} not understood by obstore")


def _client_options(timeout: float, concurrency: int, allow_http: bool, roots: str | None) -> dict:
    seconds = f"{max(1, round(timeout * 1000))}ms"
    options = {"timeout": seconds, "connect_timeout": seconds, "allow_http": allow_http,
               "pool_max_idle_per_host": str(max(10, 2 * concurrency))}
    if roots:
        options["root_certificate"] = roots
    return options


def _ca_bundle(kind: str, tls: bool) -> str | None:
    """The PEM text of the CA bundle the environment names for this kind of source, if any."""
    for name in _CA_ENV[kind] if tls else ():
        path = os.environ.get(name)
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    return f.read()
            except OSError as exc:
                raise TransportUnavailable(f"cannot read {name}: {exc.strerror}") from None
    return None


def _s3_transport(url: str, options: Mapping[str, Any], attempt_timeout: float, concurrency: int, budget):
    from obstore.store import S3Store

    _unknown(options, _S3_KNOWN, "storage option")
    client_kwargs = options.get("client_kwargs") or {}
    _unknown(client_kwargs, _S3_CLIENT_KNOWN, "client_kwargs")
    _unknown(options.get("config_kwargs") or {}, _S3_CONFIG_KNOWN, "config_kwargs")
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if not bucket or "?" in bucket:
        raise TransportUnavailable(f"no plain bucket name in {redact(url)}")
    config: dict[str, Any] = {}
    endpoint = options.get("endpoint_url") or client_kwargs.get("endpoint_url")
    region = (client_kwargs.get("region_name") or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION"))
    if endpoint:
        config["endpoint"] = endpoint
    elif not region:
        # s3fs asks AWS where the bucket is; obstore would need to be told.
        raise TransportUnavailable("no region and no endpoint: s3fs finds the bucket's region")
    config["region"] = region or "us-east-1"
    # S3Store also reads AWS_* variables of its own from the environment, which botocore
    # does not: pinned, so that the options alone decide, as they do for s3fs.
    config.update(virtual_hosted_style_request=False, request_payer=False, s3_express=False, skip_signature=False)
    if options.get("anon"):
        config["skip_signature"] = True
    elif options.get("key") and options.get("secret"):
        config["access_key_id"], config["secret_access_key"] = options["key"], options["secret"]
        if options.get("token"):
            config["session_token"] = options["token"]
        elif os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_TOKEN"):
            # S3Store would send it with the options' key; s3fs sends none (no way to unset it).
            raise TransportUnavailable("a session token in the environment and a key without one in the options")
    elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        config["access_key_id"] = os.environ["AWS_ACCESS_KEY_ID"]
        config["secret_access_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            config["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    else:
        raise TransportUnavailable("no key and secret in the options or the environment: "
                                   "s3fs has botocore's credential chain (profiles, SSO, instance roles)")
    allow_http = str(endpoint or "").lower().startswith("http://")
    roots = _ca_bundle("s3", not allow_http)

    def make_client(timeout: float):
        return S3Store(bucket, config=config, client_options=_client_options(timeout, concurrency, allow_http, roots),
                       retry_config={"max_retries": 0})

    return ObstoreTransport(bucket + "/", make_client, attempt_timeout, budget)


def _http_transport(url: str, options: Mapping[str, Any], attempt_timeout: float, concurrency: int, budget):
    from obstore.store import HTTPStore

    _unknown(options, {"client_kwargs"}, "storage option")
    _unknown(options.get("client_kwargs") or {}, _HTTP_CLIENT_KNOWN, "client_kwargs")
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password or parts.query or parts.fragment or not parts.hostname:
        raise TransportUnavailable("credentials, queries or fragments in the URL are left to fsspec")
    origin = f"{parts.scheme.lower()}://{parts.netloc}"
    allow_http = parts.scheme.lower() == "http"
    roots = _ca_bundle("http", not allow_http)

    def make_client(timeout: float):
        return HTTPStore(origin, client_options=_client_options(timeout, concurrency, allow_http, roots),
                         retry_config={"max_retries": 0})

    return ObstoreTransport(origin + "/", make_client, attempt_timeout, budget)
