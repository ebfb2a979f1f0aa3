"""CPU cost of one chunk request, per transport: CPU-seconds of this whole process per request.

Objects of ~330 KB are fetched from 32 threads (as the engine's fetch threads do) from moto and
from a static HTTP server, each behind a 30 ms latency proxy. The servers and proxies run in
their own processes, so `time.process_time()` here counts only the client's work.

    PYTHONPATH=.pkg python3 scripts/transport_cpu.py [--objects 600] [--rounds 3] [--size 330000] [--gil]

Columns: CPU of the whole process; of the threads Python started (fetch threads, fsspec's event
loop: a client's native code called from them counts here too); with --gil (needs py-spy), the
time some thread held the GIL, i.e. the interpreter's share (sampled: approximate, and inflated
when other processes compete for the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from servers import MotoS3Server, free_port  # noqa: E402

SIZE = 330_000
THREADS = 32


def thread_cpu() -> dict[str, float]:
    """CPU-seconds of this process's threads by kind (schedstat: nanoseconds): "python" (threads
    Python started: fetch threads, fsspec's event loop, the main thread; the kernel names them all
    after the executable) and "native" (client runtimes' own threads, e.g. tokio's)."""
    exe = os.path.basename(sys.executable)[:15]
    out = {"python": 0.0, "native": 0.0}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except OSError:
            continue
        out["python" if name == exe else "native"] += ns / 1e9
    return out


def _spawn(args: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{args} did not start")


def http_server(root: str) -> tuple[subprocess.Popen, str]:
    """tests/servers.RangeHTTPServer in its own process; it prints its URL."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import servers; "
            "s = servers.RangeHTTPServer(sys.argv[2]); print(s.url, flush=True); s.serve_forever()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(HERE.parent / "tests"), root],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, proc.stdout.readline().strip()


def proxy(upstream: str, latency_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [str(HERE / "latency_proxy.py"), upstream, "--latency-ms", str(latency_ms), "--port", str(port)]
    return _spawn(args, port), f"http://127.0.0.1:{port}"


def gil_seconds(run, rate: int = 1000) -> float:
    """Seconds during which some thread of this process held the GIL while `run()` ran: the
    time the interpreter spent on it (py-spy --gil samples only the GIL's holder)."""
    out = tempfile.mktemp(suffix=".txt")
    spy = subprocess.Popen(["py-spy", "record", "--gil", "--nonblocking", "--rate", str(rate), "--format", "raw",
                            "-o", out, "--pid", str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    run()
    spy.send_signal(signal.SIGINT)
    spy.wait()
    with open(out) as f:
        samples = sum(int(line.rsplit(" ", 1)[1]) for line in f if line.strip())
    if os.environ.get("TRANSPORT_CPU_KEEP_SPY"):
        print(f"  py-spy samples: {out}", file=sys.stderr)
    else:
        os.unlink(out)
    return samples / rate


def measure(fetch_one, keys: list, rounds: int, gil: bool, per_key: int = 1) -> tuple[float, float, float]:
    """CPU-seconds per request over passes over `keys` from THREADS threads (the least of
    `rounds`): of the whole process; of the threads Python started; with `gil`, of the GIL held
    (one more pass under py-spy), else NaN. `per_key`: requests per item of `keys` (batches)."""
    best = (float("inf"), float("inf"))
    with ThreadPoolExecutor(THREADS, thread_name_prefix="ThreadPoolExec") as pool:
        def one_pass():
            sizes = list(pool.map(fetch_one, keys))
            assert all(s == SIZE for s in sizes), sizes[:3]

        list(pool.map(fetch_one, keys[:THREADS]))  # connections up, clients built
        for _ in range(rounds):
            cpu, by_kind = time.process_time(), thread_cpu()
            one_pass()
            total = (time.process_time() - cpu) / len(keys) / per_key
            python = (thread_cpu()["python"] - by_kind["python"]) / len(keys) / per_key
            best = min(best, (total, python))
        held = gil_seconds(one_pass) / len(keys) / per_key if gil else float("nan")
    return (*best, held)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=30.0)
    ap.add_argument("--gil", action="store_true", help="also sample the GIL's holder with py-spy")
    ap.add_argument("--size", type=int, default=330_000, help="bytes per object")
    ap.add_argument("--only", default="", help="comma-separated names of the transports to run")
    args = ap.parse_args()
    globals()["SIZE"] = args.size

    from ngffmount.adapters.storage import Store, storage_options_for
    import fsspec.asyn

    tmp = tempfile.mkdtemp()
    os.makedirs(f"{tmp}/b/c")
    keys = [f"c/{i}" for i in range(args.objects)]
    for k in keys:
        with open(f"{tmp}/b/{k}", "wb") as f:
            f.write(os.urandom(SIZE))
    procs = []
    with MotoS3Server() as moto:
        moto.upload_dir(f"{tmp}/b", "bench", public=True)
        p, s3_url = proxy(moto.endpoint_url, args.latency_ms)
        procs.append(p)
        h, http_root = http_server(tmp)
        procs.append(h)
        p, http_url = proxy(http_root, args.latency_ms)
        procs.append(p)
        try:
            results = run_all(args, keys, s3_url, http_url, Store, storage_options_for, fsspec.asyn)
        finally:
            for p in procs:
                p.terminate()
                p.wait()
    print(f"{args.objects} requests of {SIZE} bytes from {THREADS} threads, +{args.latency_ms:g} ms per request, "
          f"least of {args.rounds} rounds; ms of CPU per request: whole process, threads Python started, "
          "GIL held (py-spy)")
    for name, (total, python, held) in results:
        print(f"{name:42s} {total * 1e3:7.3f} {python * 1e3:7.3f} {held * 1e3:7.3f}")


def run_all(args, keys, s3_url, http_url, Store, storage_options_for, asyn):
    import obstore
    from obstore.store import HTTPStore, S3Store

    wanted = set(filter(None, args.only.split(",")))
    results = []

    def run(name, fetch_one, batch: int = 1):
        if wanted and name not in wanted:
            return
        items = keys if batch == 1 else [keys[i:i + batch] for i in range(0, len(keys) - batch + 1, batch)]
        results.append((name, measure(fetch_one, items, args.rounds, args.gil, batch)))
        print(f"  {name}: {results[-1][1][0] * 1e3:.3f} ms", file=sys.stderr, flush=True)

    def via_store(store):
        return lambda k: len(store.get(k))

    def batches_via_store(store):
        def fetch(batch):
            sizes = {len(v) for v in store.get_many(batch).values()}
            return sizes.pop() if len(sizes) == 1 else sizes
        return fetch

    def options(url, transport, **kw):
        opts = storage_options_for(url, **kw)
        opts.transport = transport
        return opts

    for transport in ("fsspec", "obstore"):
        opts = options("s3://bench", transport, anon=True, endpoint_url=s3_url)
        run(f"s3 Store transport={transport} (anon)", via_store(Store("s3://bench", opts)))
        run(f"s3 Store transport={transport} get_many of 8 (anon)", batches_via_store(Store("s3://bench", opts)), 8)
        opts = options("s3://bench", transport, endpoint_url=s3_url, extra={"key": "testing", "secret": "testing"})
        run(f"s3 Store transport={transport} (signed)", via_store(Store("s3://bench", opts)))
    lean = options("s3://bench", "fsspec", anon=True, endpoint_url=s3_url)
    lean["config_kwargs"]["parameter_validation"] = False
    run("s3 Store s3fs parameter_validation=False", via_store(Store("s3://bench", lean)))
    # ... and Last-Modified parsed by the standard library instead of dateutil.
    leaner = Store("s3://bench", lean)
    asyn.sync(leaner.fs.loop, leaner.fs.set_session)
    import email.utils
    leaner.fs.session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=email.utils.parsedate_to_datetime)
    run("s3 Store s3fs no validation + stdlib dates", via_store(leaner))

    s3 = S3Store("bench", endpoint=s3_url, region="us-east-1", skip_signature=True,
                 client_options={"allow_http": True})
    run("s3 obstore.get sync in the thread", lambda k: len(obstore.get(s3, k).bytes()))
    loop = asyn.get_loop()

    async def obstore_async(k):
        return len(await (await obstore.get_async(s3, k)).bytes_async())
    run("s3 obstore.get_async via fsspec sync()", lambda k: asyn.sync(loop, obstore_async, k))

    import aiohttp
    session = None

    async def aiohttp_get(url):
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        async with session.get(url) as r:
            return len(await r.read())
    run("s3 aiohttp prebuilt URL (anon)", lambda k: asyn.sync(loop, aiohttp_get, f"{s3_url}/bench/{k}"))

    for transport in ("fsspec", "obstore"):
        run(f"http Store transport={transport}", via_store(Store(http_url + "/b", options(http_url, transport))))
    http = HTTPStore(http_url + "/b", client_options={"allow_http": True})
    run("http obstore.get sync in the thread", lambda k: len(obstore.get(http, k).bytes()))
    run("http aiohttp prebuilt URL", lambda k: asyn.sync(loop, aiohttp_get, f"{http_url}/b/{k}"))
    if session is not None:
        asyn.sync(loop, session.close)
    return results


if __name__ == "__main__":
    main()
