"""A loopback HTTP proxy that adds a fixed latency to every request and counts them.

It stands between S3 clients (ngffmount, zarr-python/s3fs, rclone) and a moto server, so
every client pays the same round-trip time and is measured by the same counters:

    with LatencyProxy("http://127.0.0.1:5000", latency_s=0.03) as proxy:
        ...  # point clients at proxy.url
        proxy.snapshot()  # {"requests": ..., "bytes": ..., "by_method": {...}, "cpu_s": ...}

Clients in other processes read the counters with GET {proxy.url}/__proxy__/stats (an
S3 bucket name cannot contain "_", so this never shadows a bucket); those calls are not
counted. Standalone: python scripts/latency_proxy.py UPSTREAM_URL [--latency-ms 30].
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import LoopbackHTTPServer  # noqa: E402  (the loopback server base the tests use)

CONTROL = "/__proxy__/stats"
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never forwarded.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
              "te", "trailer", "transfer-encoding", "upgrade"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive towards clients, as a real S3 endpoint allows
    timeout = 60  # idle keep-alive connections must not pin handler threads forever
    server: "LatencyProxy"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def do_GET(self):
        if self.path.split("?", 1)[0] == CONTROL:
            body = json.dumps(self.server.snapshot()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._proxy()

    def _request_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _proxy(self):
        cpu0 = time.thread_time()
        try:
            self._forward()
        finally:
            self.server._count_cpu(time.thread_time() - cpu0)

    def _forward(self):
        srv = self.server
        body = self._request_body()
        srv._count_request(self.command)
        time.sleep(srv.latency_s)  # the simulated round trip, paid by each request in parallel
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        resp, payload = srv.upstream_request(self.command, self.path, body, headers)
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        # HEAD keeps the upstream length (the size of the object); others send what we have.
        length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)
            srv._count_bytes(len(payload))

    do_HEAD = do_PUT = do_POST = do_DELETE = _proxy


class LatencyProxy(LoopbackHTTPServer):
    def __init__(self, upstream: str, latency_s: float = 0.03, port: int = 0):
        u = urllib.parse.urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname, u.port or 80
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self._local = threading.local()
        self.reset()
        super().__init__(_Handler, port)

    # -- upstream: one persistent connection per handler thread (= per client connection)

    def upstream_request(self, method, path, body, headers):
        for attempt in range(2):
            conn = getattr(self._local, "conn", None)
            fresh = conn is None
            if fresh:
                conn = self._local.conn = http.client.HTTPConnection(
                    self.upstream_host, self.upstream_port, timeout=120)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = b"" if method == "HEAD" else resp.read()
                return resp, payload
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
                conn.close()
                self._local.conn = None
                if fresh or attempt:  # a reused connection may have been closed by the server: retry once
                    raise
        raise AssertionError("unreachable")

    # -- counters

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._bytes = 0
            self._by_method = collections.Counter()
            self._cpu_s = 0.0

    def snapshot(self) -> dict:
        """The counters; cpu_s: CPU seconds the proxy's handler threads spent on requests."""
        with self._lock:
            return {"requests": self._requests, "bytes": self._bytes, "by_method": dict(self._by_method),
                    "cpu_s": self._cpu_s}

    def _count_request(self, method: str) -> None:
        with self._lock:
            self._requests += 1
            self._by_method[method] += 1

    def _count_bytes(self, n: int) -> None:
        with self._lock:
            self._bytes += n

    def _count_cpu(self, seconds: float) -> None:
        with self._lock:
            self._cpu_s += seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("upstream", help="e.g. http://127.0.0.1:5000")
    ap.add_argument("--latency-ms", type=float, default=30.0)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    proxy = LatencyProxy(args.upstream, args.latency_ms / 1000, args.port)
    print(f"proxy {proxy.url} -> {args.upstream} (+{args.latency_ms:g} ms per request)", flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
