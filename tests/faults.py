"""A fault-injecting HTTP reverse proxy on loopback, in front of an origin URL
(tests.servers.RangeHTTPServer, a moto S3 server, anything HTTP/1.1).

    with FaultyProxy(origin.url, seed=1, error=0.1, reset=0.05, truncate=0.05) as proxy:
        fsspec.filesystem("http").cat_file(proxy.url + "/a.bin")   # may fail, retry
        proxy.fail_permanently("/a.bin", "reset")
        proxy.set_rates()                                          # no random faults now
        proxy.blackhole(); ...; proxy.restore()                    # an outage: no answers
        print(proxy.counts)   # {"requests": .., "passed": .., "error": .., "reset": .., ...}

Fault kinds (each with its own rate, drawn per request):
  error     answer 500 or 503 (or any of `statuses`) with a short body; keeps the connection
  reset     close the socket without answering (RST: SO_LINGER 0)
  truncate  send the status and headers with the full Content-Length, then part of the
            body, then close (the client sees a body shorter than announced)
  short     for a 206, send a shorter body with a matching Content-Length but the
            original Content-Range: a well-formed reply with bytes missing (only the
            client's length check can tell); other answers are truncated instead
  delay     sleep `delay` seconds (set it longer than the client's timeout), then answer

Outage: between `blackhole()` and `restore()` the proxy accepts connections and reads
requests, but never answers (on restore, the held connections are dropped).

Decisions are deterministic: each is a hash of (seed, method, path, Range header, how
many times this same request was seen before), so a run does not depend on thread timing.
Requests, Range headers, statuses and response headers pass through unchanged (except
hop-by-hop headers, and Content-Length, which always matches the body sent).
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import socket
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from servers import LoopbackHTTPServer

__all__ = ["FaultyProxy", "KINDS"]

KINDS = ("error", "reset", "truncate", "short", "delay")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length"}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections must not pin threads forever
    server: "FaultyProxy"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def do_GET(self):
        self._proxy()

    def do_HEAD(self):
        self._proxy()

    def do_PUT(self):
        self._proxy()

    def do_POST(self):
        self._proxy()

    def do_DELETE(self):
        self._proxy()

    def _proxy(self):
        srv = self.server
        if not srv._restored.is_set():
            with srv._lock:
                srv.counts["blackholed"] += 1
            srv._restored.wait()
            return self._reset()
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        kind, status = srv._decide(self.command, path, self.headers.get("Range"))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command in ("PUT", "POST") else None
        if kind == "reset":
            return self._reset()
        if kind == "error":
            payload = f"injected fault: {status}\n".encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
            except OSError:
                self.close_connection = True
            return
        if kind == "delay":
            time.sleep(srv.delay)
        try:
            status, reason, headers, data = srv._forward(self.command, self.path, self.headers, body)
        except OSError:
            return self._reset()
        if kind == "short" and status != 206:
            kind = srv._recount("short", "truncate")  # a short 200 is undetectable: truncate it instead
        if kind in ("truncate", "short") and (self.command == "HEAD" or len(data) < 2):
            srv._recount(kind, "reset")  # nothing to cut: fail the other way
            return self._reset()
        cut = len(data) // 2 if kind in ("truncate", "short") else len(data)
        announced = str(cut if kind == "short" else len(data))
        if self.command == "HEAD":
            announced = next((v for n, v in headers if n.lower() == "content-length"), "0")
        try:
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", announced)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data[:cut])
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. after a delay)
            self.close_connection = True
            return
        srv._count_bytes(cut)
        if kind == "truncate":
            self._reset(graceful=True)

    def _reset(self, graceful: bool = False):
        """Drop the connection: RST by default, FIN after a truncated body."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            if not graceful:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FaultyProxy(LoopbackHTTPServer):
    """The proxy server. Rates are probabilities per request (their sum at most 1).

    seed:       makes every decision reproducible
    statuses:   what an "error" fault answers (cycled deterministically)
    delay:      seconds a "delay" fault waits before answering
    methods:    which methods faults apply to (all by default)
    """

    allow_reuse_address = True

    def __init__(self, origin: str, *, seed: int = 0, error: float = 0.0, reset: float = 0.0,
                 truncate: float = 0.0, short: float = 0.0, delay_rate: float = 0.0, delay: float = 2.0,
                 statuses=(500, 503), methods=None):
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme != "http":
            raise ValueError(f"origin must be http://host:port, got {origin!r}")
        self.origin_host, self.origin_port = parts.hostname, parts.port or 80
        self.origin_prefix = parts.path.rstrip("/")
        self.seed = seed
        self.delay = delay
        self.statuses = tuple(statuses)
        self.methods = None if methods is None else {m.upper() for m in methods}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._seen: collections.Counter = collections.Counter()
        self._permanent: dict[str, str | int] = {}
        self._restored = threading.Event()
        self._restored.set()
        self.set_rates(error=error, reset=reset, truncate=truncate, short=short, delay=delay_rate)
        self.reset_counters()
        super().__init__(_ProxyHandler)

    # -- lifecycle

    def handle_error(self, request, client_address):
        pass  # clients hang up on delayed and broken answers: that is the point

    # -- configuration

    def set_rates(self, *, error: float = 0.0, reset: float = 0.0, truncate: float = 0.0,
                  short: float = 0.0, delay: float = 0.0) -> None:
        """Random fault rates per kind; no arguments: no random faults (permanent ones stay)."""
        rates = {"error": error, "reset": reset, "truncate": truncate, "short": short, "delay": delay}
        if any(r < 0 for r in rates.values()) or sum(rates.values()) > 1:
            raise ValueError(f"rates must be >= 0 and sum to at most 1: {rates}")
        with self._lock:
            self.rates = rates

    def fail_permanently(self, path: str, kind: str | int = "error") -> None:
        """Every request for this URL path (exact, as the client sends it) fails: with `kind`
        ("error", "reset", "truncate", "short", "delay") or with an HTTP status (e.g. 503)."""
        if not isinstance(kind, int) and kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._permanent[path] = kind

    def heal(self, path: str | None = None) -> None:
        """End the permanent failure of one path, or of all paths."""
        with self._lock:
            if path is None:
                self._permanent.clear()
            else:
                self._permanent.pop(path, None)

    def blackhole(self) -> None:
        """From now on, hold every request without an answer, as a remote that went silent."""
        self._restored.clear()

    def restore(self) -> None:
        """End the outage: held requests are dropped, new ones are answered."""
        self._restored.set()

    def stop(self) -> None:
        self.restore()  # let held handlers go
        super().stop()

    # -- counters

    def reset_counters(self) -> None:
        with self._lock:
            self.counts = dict.fromkeys(("requests", "passed", "permanent", "blackholed", *KINDS), 0)
            self.bytes_sent = 0
            self.log: collections.deque = collections.deque(maxlen=100_000)  # (method, path, range, kind)
            self.faults_by_request: collections.Counter = collections.Counter()

    @property
    def faults(self) -> int:
        """Requests that got a fault (random or permanent)."""
        with self._lock:
            return sum(self.counts[k] for k in KINDS)

    @property
    def requests(self) -> int:
        with self._lock:
            return self.counts["requests"]

    def requests_for(self, path: str, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, p, _, _ in self.log if p == path and (method is None or m == method))

    def _count_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _recount(self, was: str, now: str) -> str:
        with self._lock:
            self.counts[was] -= 1
            self.counts[now] += 1
        return now

    # -- the decision

    def _decide(self, method: str, path: str, rng: str | None) -> tuple[str | None, int | None]:
        """(kind or None, status for "error") for this request; counts it."""
        with self._lock:
            ident = (method, path, rng or "")
            nth = self._seen[ident]
            self._seen[ident] += 1
            digest = hashlib.blake2b(repr((self.seed, *ident, nth)).encode(), digest_size=8).digest()
            draw = int.from_bytes(digest[:6], "big") / float(1 << 48)
            status = self.statuses[digest[7] % len(self.statuses)] if self.statuses else 500
            kind = None
            permanent = self._permanent.get(path)
            if permanent is not None:
                if isinstance(permanent, int):
                    kind, status = "error", permanent
                else:
                    kind = permanent
                self.counts["permanent"] += 1
            elif self.methods is None or method in self.methods:
                edge = 0.0
                for name in KINDS:
                    edge += self.rates[name]
                    if draw < edge:
                        kind = name
                        break
            self.counts["requests"] += 1
            self.counts[kind or "passed"] += 1
            if kind is not None:
                self.faults_by_request[ident] += 1
            self.log.append((method, path, rng, kind))
            return kind, status

    # -- forwarding

    def _forward(self, method: str, target: str, headers, body: bytes | None):
        """Send the request to the origin on this thread's keep-alive connection."""
        send = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        if body is not None:
            send["Content-Length"] = str(len(body))
        for attempt in (1, 2):  # a kept-alive origin connection may have been closed meanwhile
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.origin_host, self.origin_port, timeout=30)
            try:
                conn.request(method, self.origin_prefix + target, body=body, headers=send)
                resp = conn.getresponse()
                data = resp.read()
                out = resp.status, resp.reason, resp.getheaders(), data
                if resp.will_close:
                    conn.close()
                    self._local.conn = None
                return out
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise OSError("origin unreachable")
        raise AssertionError("unreachable")
