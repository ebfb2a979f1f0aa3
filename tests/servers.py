"""Loopback test servers: a Range-capable static HTTP server and a moto S3 server.

Both bind ephemeral ports on 127.0.0.1 (fixed ports deadlock parallel runs) and work
as context managers or through explicit start()/stop() from pytest fixtures:

    with RangeHTTPServer(tmp_path) as srv:
        fsspec.filesystem("http").cat_file(srv.url + "/a.bin", start=0, end=10)

    with MotoS3Server() as s3:
        s3.upload_dir(tmp_path / "x.zarr", "bucket", "x.zarr")
"""

from __future__ import annotations

import collections
import email.utils
import html
import mimetypes
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["free_port", "RangeHTTPServer", "MotoS3Server"]

DUMMY_KEY = "testing"
DUMMY_SECRET = "testing"
REGION = "us-east-1"


def free_port() -> int:
    """A port the kernel just reported free on 127.0.0.1 (small race: for subprocesses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- HTTP


class _RangeHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients (aiohttp, requests) keep connections alive as real servers allow.
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections must not pin handler threads forever.
    timeout = 30
    server: "RangeHTTPServer"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass  # quiet: tests assert on counters, not on stderr

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    # -- helpers

    def _reply(self, status: int, headers: dict | None = None, payload: bytes = b"", body=True):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        # Content-Length always, so keep-alive works and HEAD reports the size.
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body and payload:
            self.server._count_bytes(len(payload))  # before the client can see them: no race
            self.wfile.write(payload)

    def _error(self, status: int, body: bool):
        self._reply(status, {"Content-Type": "text/plain"}, HTTPStatus(status).phrase.encode(), body)

    def _serve(self, body: bool):
        srv = self.server
        # Not urlsplit(): it would read "//etc/passwd" as a network location.
        urlpath = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0])
        status = srv.fail_paths.get(urlpath)
        srv._record(self.command, urlpath)
        if "If-None-Match" in self.headers or "If-Modified-Since" in self.headers:
            srv._count_conditional(urlpath)
        if status is not None:
            return self._error(status, body)
        full = srv.resolve(urlpath)
        if full is None:
            return self._error(403, body)
        if os.path.isdir(full):
            if not srv.listing:
                # Like S3 websites and many real servers: no index, no listing.
                return self._error(404, body)
            return self._reply(200, {"Content-Type": "text/html; charset=utf-8"},
                               srv.index_html(full, urlpath), body)
        try:
            f = open(full, "rb")
        except OSError:
            return self._error(404, body)
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            # As nginx does: the ETag names the file's modification time and size.
            etag = f'"{st.st_mtime_ns:x}-{size:x}"'
            headers = {
                "Content-Type": mimetypes.guess_type(full)[0] or "application/octet-stream",
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "ETag": etag,
                "Accept-Ranges": "bytes",
            }
            if _not_modified(self.headers, etag, st.st_mtime):
                srv._count_not_modified()
                return self._reply(304, {"ETag": etag, "Last-Modified": headers["Last-Modified"],
                                         "Content-Length": "0"}, b"", body)
            rng = _parse_range(self.headers.get("Range"), size)
            if rng == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{size}"
                return self._reply(416, headers, b"", body)
            if rng is None:
                status, start, end = 200, 0, size  # no Range, or one we may ignore (RFC 9110)
            else:
                status, (start, end) = 206, rng
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            headers["Content-Length"] = str(end - start)
            self._reply(status, headers, b"", body=False)
            if body:
                f.seek(start)
                left = end - start
                while left > 0:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    srv._count_bytes(len(chunk))
                    left -= len(chunk)


def _not_modified(request_headers, etag: str, mtime: float) -> bool:
    """RFC 9110 13.1: If-None-Match decides when present, else If-Modified-Since."""
    match = request_headers.get("If-None-Match")
    if match is not None:
        tags = [t.strip().removeprefix("W/") for t in match.split(",")]
        return "*" in tags or etag in tags
    since = request_headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        return int(mtime) <= email.utils.parsedate_to_datetime(since).timestamp()
    except (TypeError, ValueError):
        return False


def _parse_range(value: str | None, size: int):
    """Return (start, end_exclusive), None to serve the whole file, or "unsatisfiable".

    Only a single range is supported; multi-range or malformed headers are ignored,
    which RFC 9110 allows (the client then gets 200 with the full body).
    """
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first, _, last = value[6:].strip().partition("-")
    try:
        if first == "":  # suffix: the last n bytes
            n = int(last)
            if n <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size
        start = int(first)
        last_byte = int(last) if last else None
    except ValueError:
        return None
    if last_byte is not None and last_byte < start:
        return None  # syntactically invalid (e.g. 5-2): ignore
    if start >= size:
        return "unsatisfiable"
    return start, size if last_byte is None else min(last_byte + 1, size)


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server on an ephemeral 127.0.0.1 port, served from a background thread;
    the base of the test servers and proxies."""

    # http.server's backlog of 5 stalls ~1 s per dropped connection under concurrency.
    request_queue_size = 1024
    daemon_threads = True

    def __init__(self, handler, port: int = 0):
        self._thread: threading.Thread | None = None
        super().__init__(("127.0.0.1", port), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, name=type(self).__name__,
                                            kwargs={"poll_interval": 0.05}, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def handle_error(self, request, client_address):
        # Clients drop connections mid-body; that is not a server bug.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class RequestCounters:
    """Requests seen, bytes served and a log of recent requests, for tests to assert on.
    Each log entry is the tuple the server passes to _record, starting (method, url_path)."""

    log_size = 10_000  # how many recent requests .log keeps

    def _start_counting(self) -> None:
        self._lock = threading.Lock()
        self.reset_counters()

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def conditional_paths(self) -> list[str]:
        """Paths of the requests that carried If-None-Match or If-Modified-Since, oldest first."""
        with self._lock:
            return list(self._conditional)

    @property
    def not_modified(self) -> int:
        """Conditional requests answered 304 Not Modified."""
        with self._lock:
            return self._not_modified

    @property
    def bytes_served(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def log(self) -> list[tuple]:
        """The last `log_size` requests, oldest first."""
        with self._lock:
            return list(self._log)

    @property
    def paths(self) -> list[str]:
        return [entry[1] for entry in self.log]

    def reset_counters(self) -> None:
        with self._lock:
            self._requests = 0
            self._bytes = 0
            self._not_modified = 0
            self._conditional = collections.deque(maxlen=self.log_size)
            self._log = collections.deque(maxlen=self.log_size)

    def _record(self, *entry) -> None:
        with self._lock:
            self._requests += 1
            self._log.append(entry)

    def _count_conditional(self, path: str) -> None:
        with self._lock:
            self._conditional.append(path)

    def _count_not_modified(self) -> None:
        with self._lock:
            self._not_modified += 1

    def _count_bytes(self, n: int) -> None:
        with self._lock:
            self._bytes += n


class RangeHTTPServer(RequestCounters, LoopbackHTTPServer):
    """Static files from root_dir with single byte-range support and request counters.

    listing=False (default): directory URLs return 404 and there is never an HTML
    index, so fsspec cannot scrape listings (as with most real object-store servers).
    listing=True: directories return a minimal HTML index, like http.server.
    fail_paths: {"/url/path": status} makes those paths answer with that status.
    Paths resolving outside root_dir (.. or symlinks) get 403.
    """

    def __init__(self, root_dir, listing: bool = False):
        self.root = os.path.realpath(os.fspath(root_dir))
        self.listing = listing
        self.fail_paths: dict[str, int] = {}
        self._start_counting()
        super().__init__(_RangeHandler)

    # -- files

    def resolve(self, urlpath: str) -> str | None:
        """Filesystem path for a decoded URL path, or None if it escapes the root."""
        if "\x00" in urlpath or ".." in urlpath.split("/"):
            return None
        full = os.path.realpath(os.path.join(self.root, urlpath.lstrip("/")))
        if full != self.root and not full.startswith(self.root + os.sep):
            return None
        return full

    def index_html(self, full: str, urlpath: str) -> bytes:
        # Absolute hrefs, so clients resolve them right with or without a trailing slash.
        base = urlpath.rstrip("/")
        links = []
        for name in sorted(os.listdir(full)):
            slash = "/" if os.path.isdir(os.path.join(full, name)) else ""
            href = urllib.parse.quote(f"{base}/{name}{slash}")
            links.append(f'<li><a href="{href}">{html.escape(name + slash)}</a></li>')
        return ("<!DOCTYPE html><html><body><ul>\n" + "\n".join(links)
                + "\n</ul></body></html>\n").encode()


# --------------------------------------------------------------------------- S3


class MotoS3Server:
    """`moto_server` in a subprocess on a free loopback port.

    Credentials: clients made here carry dummy keys; os.environ is never changed.
    Objects uploaded with public=True get ACL public-read, which moto needs before it
    serves unsigned (anonymous) reads, e.g. s3fs.S3FileSystem(anon=True, ...).
    """

    def __init__(self, startup_timeout: float = 30.0):
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._logfile = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self, port: int) -> list[str]:
        # Prefer the script next to this interpreter: pyenv shims may pick another Python.
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        if not os.path.exists(exe):
            exe = shutil.which("moto_server")
        base = [exe] if exe else [sys.executable, "-m", "moto.server"]
        return base + ["-H", "127.0.0.1", "-p", str(port)]

    def start(self) -> "MotoS3Server":
        # werkzeug logs every request; keep it out of the test output but readable on failure.
        self._logfile = tempfile.TemporaryFile()
        for _attempt in range(3):  # free_port() can race with another process
            self.port = free_port()
            self._proc = subprocess.Popen(self._command(self.port), stdin=subprocess.DEVNULL,
                                          stdout=self._logfile, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return self
            self._kill()
        self._logfile.seek(0)
        tail = self._logfile.read()[-2000:].decode(errors="replace")
        self._logfile.close()
        raise RuntimeError(f"moto_server did not start:\n{tail}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    # Any HTTP answer means the WSGI app is up, not just the socket.
                    s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    if s.recv(16).startswith(b"HTTP/"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def stop(self) -> None:
        self._kill()
        if self._logfile is not None:
            self._logfile.close()
            self._logfile = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- boto3 helpers

    def client(self, **config_kwargs):
        """A boto3 S3 client for this server with dummy credentials (env untouched)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_SECRET,
            config=Config(**config_kwargs) if config_kwargs else None,
        )

    def storage_options(self, anon: bool = True) -> dict:
        """Keyword arguments for s3fs.S3FileSystem / zarr storage_options."""
        opts = {"client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION}}
        if anon:
            opts["anon"] = True
        else:
            opts.update(key=DUMMY_KEY, secret=DUMMY_SECRET)
        return opts

    def create_bucket(self, name: str) -> None:
        """Create a private bucket (idempotent).

        No bucket ACL on purpose: moto then lets anonymous clients read *every* object
        (real S3 would not), which would hide missing object ACLs. Moto allows anonymous
        listing of any bucket anyway.
        """
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass

    def upload_dir(self, local_dir, bucket: str, prefix: str = "", public: bool = True) -> list[str]:
        """Upload a directory tree under s3://bucket/prefix/; returns the keys written."""
        self.create_bucket(bucket)
        c = self.client()
        extra = {"ACL": "public-read"} if public else {}
        root = os.fspath(local_dir)
        prefix = prefix.strip("/")
        keys = []
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                key = f"{prefix}/{rel}" if prefix else rel
                with open(path, "rb") as f:
                    c.put_object(Bucket=bucket, Key=key, Body=f, **extra)
                keys.append(key)
        return keys
