#!/usr/bin/env python3
"""Benchmark: ngffmount against zarr-python and rclone, on one OME-Zarr behind S3 latency.

    python scripts/benchmark.py --size small --out /tmp/bench/report.md   # smoke run (128 MiB level)
    python scripts/benchmark.py                                         # full run (1 GiB level)
    python scripts/benchmark.py --size small --xz-only --repeats 1      # the XZ scroll alone
    python scripts/benchmark.py --workloads slide --slide-size small --out /tmp/bench/slide.md

Workloads: "stack" (below) and "slide": a viewer's reads of 16 random 1024 x 1024 windows of
level 0 of a slide (uint8, 1024 x 1024 chunks, the NGFF course's 921600 x 380928 at
--slide-size course; only the chunks under the windows are written), through a fresh
ngffmount's image.ome.tif (tifffile, tile by tile), and by zarr-python and tensorstore
straight from S3: time, time to the first window, requests per chunk and bytes fetched
against the compressed bytes of the chunks under the windows.

Everything runs on loopback: moto_server (S3) <- latency_proxy.py (+30 ms per request,
counts requests and bytes) <- every client. One generated OME-Zarr (NGFF 0.4, zarr v2, '/'
keys, blosc lz4) is stored in two chunkings, and for each chunking these readers are timed
on the same proxy and data: tensorstore and zarr-python (over s3fs and over obstore) direct
from S3, zarr-python through `rclone mount --vfs-cache-mode full`, ngffmount cold / warm /
hot, and zarr-python on a local-disk copy, each with its CPU-seconds (reader, and daemon
where there is one). scripts/profile_scroll.py profiles the daemon on one cold scroll.
An XZ scroll (s0.xz/ file by file, against zarr-python's arr[:, y, :] for the same y)
records requests and decodes per chunk. NGFFBENCH_DIR moves /tmp/bench elsewhere.

Each timed read runs in a fresh worker process (`benchmark.py _worker SPEC`): "cold" never
reuses a client's connections or caches, and a hung FUSE read ends in a timeout, not a
hung harness. Generated data is cached under /tmp/bench/data; a re-run only uploads it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ngffmount.cache.engine import DEFAULT_MEMORY

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

BENCH = Path(os.environ.get("NGFFBENCH_DIR", "/tmp/bench"))  # data, mounts, caches and logs
BUCKET = "ngffbench"
KEY, SECRET, REGION = "testing", "testing", "us-east-1"  # moto accepts any credentials
SIZES = {"small": (64, 1024, 1024), "full": (128, 2048, 2048)}  # z, y, x uint16: 128 MiB, 1 GiB
CHUNKINGS = {"64x256x256": (64, 256, 256), "1x512x512": (1, 512, 512)}
FLOOR_MEMORY = "3G"  # the FUSE floor's mount: holds a whole level, decoded and encoded
SLIDE_SIZES = {"small": (20480, 30720), "course": (380928, 921600)}  # y, x of level 0, uint8
SLIDE_CHUNK, SLIDE_WINDOW, SLIDE_WINDOWS = 1024, 1024, 16
NODES = 8  # daemons of the cluster workload
# The cluster workload's --shared-cache waits this long for each answer. The default (tens of
# ms) suits a server on its own host; here eight daemons, moto and Redis share two cores, and
# with 50 or 100 ms Redis answered late often enough for the daemons to fetch each chunk 7.5
# times from the remote.
CLUSTER_SOCKET_TIMEOUT_S = 0.5


class BenchError(Exception):
    """A measurement that failed; the report shows the message instead of a number."""


def sha1(buf) -> str:
    return hashlib.sha1(buf).hexdigest()


# --------------------------------------------------------------------------- worker


def worker(spec: dict) -> dict:
    """One timed read in this fresh process; prints the result as JSON.

    The proxy counters are read right before the clock starts, after zarr has read its
    metadata, so the request counts cover the data read only.
    """

    def proxy_counters():
        with urllib.request.urlopen(spec["control"], timeout=30) as r:
            return json.load(r)

    if spec["kind"] in ("zarr", "tensorstore"):
        arr = open_direct(spec)
        read = (lambda sel: arr[sel].read().result()) if spec["kind"] == "tensorstore" else (lambda sel: arr[sel])
        before = proxy_counters()
        cpu0, t0 = cpu_self(), time.perf_counter()
        if spec.get("ys") is not None:  # XZ planes, one after the other, as a viewer scrolls
            slices = [read((slice(None), y, slice(None))) for y in spec["ys"]]
            seconds, cpu = time.perf_counter() - t0, cpu_self() - cpu0
            return {"seconds": seconds, "cpu_s": cpu, "before": before, "nbytes": sum(p.nbytes for p in slices),
                    "hashes": [sha1(p.tobytes()) for p in slices]}
        data = read(spec["z"] if spec["z"] is not None else ...)
        seconds, cpu = time.perf_counter() - t0, cpu_self() - cpu0
        planes = data[None] if spec["z"] is not None else data
        return {"seconds": seconds, "cpu_s": cpu, "before": before, "nbytes": data.nbytes,
                "hashes": [sha1(p.tobytes()) for p in planes]}

    if spec["kind"] == "files":  # plane files one after the other, each whole, in 1 MiB reads
        before = proxy_counters()
        cpu0, t0 = cpu_self(), time.perf_counter()
        blobs = []
        for path in spec["paths"]:
            with open(path, "rb", buffering=0) as f:
                blobs.append(f.read())
        seconds, cpu = time.perf_counter() - t0, cpu_self() - cpu0
        import io

        import tifffile

        return {"seconds": seconds, "cpu_s": cpu, "before": before, "nbytes": sum(map(len, blobs)),
                "hashes": [sha1(tifffile.imread(io.BytesIO(b)).tobytes()) for b in blobs]}

    if spec["kind"] == "windows":
        return read_windows(spec, proxy_counters)

    # kind == "file": read a mounted file in order, in fixed-size reads, like ImageJ does.
    size = os.stat(spec["path"]).st_size
    buf = bytearray(size)
    buf[::4096] = bytes(len(range(0, size, 4096)))  # fault the pages in now, not on the clock
    view, pos, block = memoryview(buf), 0, spec["block"]
    first = None
    before = proxy_counters()
    cpu0, t0 = cpu_self(), time.perf_counter()
    with open(spec["path"], "rb", buffering=0) as f:
        while pos < size:
            n = f.readinto(view[pos:pos + block])
            if not n:
                raise BenchError(f"{spec['path']}: short read at {pos} of {size}")
            pos += n
            first = first or time.perf_counter() - t0
    seconds, cpu = time.perf_counter() - t0, cpu_self() - cpu0
    out = {"seconds": seconds, "cpu_s": cpu, "before": before, "nbytes": size, "first_read_s": first}
    if spec.get("verify") == "plane":
        import tifffile

        out["hashes"] = [sha1(tifffile.imread(spec["path"]).tobytes())]
    elif spec.get("verify") == "stack":
        import tifffile

        # The stack's planes are contiguous after the header: hash them straight from buf.
        with tifffile.TiffFile(spec["path"]) as tif:
            off = tif.pages[0].dataoffsets[0]
        pb = spec["plane_bytes"]
        out["hashes"] = [sha1(view[off + i * pb: off + (i + 1) * pb]) for i in range(spec["planes"])]
    return out


def cpu_self() -> float:
    """User + system CPU seconds of this process so far, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def tensorstore_spec(url: str, endpoint: str, concurrency: int | None = None, anonymous: bool = False) -> dict:
    """tensorstore's zarr driver on the s3 kvstore at `endpoint` (the proxy); credentials
    from the environment unless `anonymous`. `concurrency` bounds its in-flight S3 requests
    (s3_request_concurrency); decoding runs on data_copy_concurrency threads, one per core."""
    bucket, key = url[len("s3://"):].split("/", 1)
    spec = {"driver": "zarr", "kvstore": {
        "driver": "s3", "bucket": bucket, "path": key.rstrip("/") + "/", "endpoint": endpoint, "aws_region": REGION,
        "aws_credentials": {"type": "anonymous" if anonymous else "environment"}}}
    if concurrency:
        spec["context"] = {"s3_request_concurrency": {"limit": concurrency},
                           "data_copy_concurrency": {"limit": os.cpu_count() or 1}}
    return spec


def open_direct(spec: dict):
    """The array `spec` names, opened by a direct reader: "tensorstore" (zarr driver, s3
    kvstore), or zarr-python on a local path or S3 through s3fs (store "s3fs", the default)
    or obstore (store "obstore": zarr.storage.ObjectStore over obstore's S3Store)."""
    c, url = spec["concurrency"], spec["url"]
    if spec["kind"] == "tensorstore":
        import tensorstore as ts

        os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)  # moto accepts any
        return ts.open(tensorstore_spec(url, spec["endpoint"], c), read=True).result()
    import zarr

    # async.concurrency bounds in-flight chunk reads; LocalStore (local disk, rclone
    # mount) runs them on zarr's thread pool, which is sized by threading.max_workers.
    zarr.config.set({"async.concurrency": c, "threading.max_workers": c})
    if url.startswith("s3://") and spec.get("store") == "obstore":
        from obstore.store import S3Store

        bucket, key = url[len("s3://"):].split("/", 1)
        store = S3Store(bucket, endpoint=spec["endpoint"], access_key_id=KEY, secret_access_key=SECRET,
                        region=REGION, virtual_hosted_style_request=False, client_options={"allow_http": True})
        return zarr.open_array(zarr.storage.ObjectStore(store, read_only=True), path=key, mode="r", zarr_format=2)
    so = None
    if url.startswith("s3://"):
        so = {"key": KEY, "secret": SECRET, "endpoint_url": spec["endpoint"],
              "client_kwargs": {"region_name": REGION},
              # botocore's pool stays at 10 connections whatever zarr asks for.
              "config_kwargs": {"max_pool_connections": max(c, 10)}}
    return zarr.open_array(url, mode="r", zarr_format=2, storage_options=so)


def read_windows(spec: dict, proxy_counters) -> dict:
    """A viewer's reads of square windows of level 0, one after the other, by one reader:
    "tiff" (a mounted image.ome.tif through tifffile's zarr store, opened on the clock),
    "zarr" (zarr-python, s3fs) or "tensorstore" (its zarr driver on S3)."""
    import numpy as np

    size, reader = spec["size"], spec["reader"]
    if reader == "zarr":
        import zarr

        so = {"key": KEY, "secret": SECRET, "endpoint_url": spec["endpoint"], "client_kwargs": {"region_name": REGION}}
        arr = zarr.open_array(spec["url"], mode="r", zarr_format=2, storage_options=so)
        read = lambda y, x: arr[0, 0, 0, y:y + size, x:x + size]  # noqa: E731
    elif reader == "tensorstore":
        import tensorstore as ts

        arr = ts.open(tensorstore_spec(spec["url"], spec["endpoint"], anonymous=True), read=True).result()
        read = lambda y, x: arr[0, 0, 0, y:y + size, x:x + size].read().result()  # noqa: E731
    before = proxy_counters()
    cpu0, t0 = cpu_self(), time.perf_counter()
    if reader == "tiff":
        import tifffile
        import zarr

        store = tifffile.imread(spec["path"], aszarr=True)
        level0 = zarr.open(store, mode="r")["0"]
        read = lambda y, x: level0[y:y + size, x:x + size]  # noqa: E731
    hashes, first = [], None
    for y, x in spec["windows"]:
        hashes.append(sha1(np.ascontiguousarray(read(y, x)).tobytes()))
        first = first or time.perf_counter() - t0
    seconds, cpu = time.perf_counter() - t0, cpu_self() - cpu0
    return {"seconds": seconds, "cpu_s": cpu, "before": before, "nbytes": len(spec["windows"]) * size * size,
            "first_read_s": first, "hashes": hashes}


# --------------------------------------------------------------------------- data


def synth_slab(z0: int, nz: int, ny: int, nx: int) -> "np.ndarray":
    """Smooth structure plus 6 bits of noise: blosc compresses it ~2x, like real images,
    so decoding costs what it costs on real data."""
    import numpy as np

    rng = np.random.default_rng(z0)
    x = np.arange(nx, dtype=np.float32)[None, :]
    y = np.arange(ny, dtype=np.float32)[:, None]
    out = np.empty((nz, ny, nx), np.uint16)
    for i in range(nz):
        z = z0 + i
        smooth = 20000 + 9000 * np.sin(x / 97 + z / 11) * np.cos(y / 61 - z / 17) + 5000 * np.sin((x + y) / 233 + z / 7)
        out[i] = smooth + rng.integers(0, 64, (ny, nx), dtype=np.uint16)
    return out


def ensure_data(size: str, chunkings: list[str]) -> dict:
    """Local copies of the image in each chunking (cached) and the plane hashes."""
    import numcodecs
    import zarr

    shape = SIZES[size]
    root = BENCH / "data" / size
    meta_path = root / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(ch in meta["chunkings"] for ch in chunkings):
            return meta
    t0 = time.time()
    print(f"generating {size} OME-Zarr {shape} uint16 in {', '.join(chunkings)} under {root} ...", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    arrays = {}
    for ch in chunkings:
        g = zarr.open_group(str(root / f"{ch}.ome.zarr"), mode="w", zarr_format=2)
        arrays[ch] = g.create_array(
            "0", shape=shape, dtype="uint16", chunks=CHUNKINGS[ch], fill_value=0,
            compressors=numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
            chunk_key_encoding={"name": "v2", "separator": "/"})
        axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
        g.attrs["multiscales"] = [{"version": "0.4", "name": "benchmark", "axes": axes, "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}]}]
    hashes = []
    slab = min(64, shape[0])  # a multiple of every chunk depth: each chunk is written once
    for z0 in range(0, shape[0], slab):
        data = synth_slab(z0, min(slab, shape[0] - z0), shape[1], shape[2])
        hashes += [sha1(p.tobytes()) for p in data]
        for arr in arrays.values():
            arr[z0:z0 + len(data)] = data
    meta = {"shape": shape, "chunkings": chunkings, "planes": hashes}
    meta_path.write_text(json.dumps(meta))
    print(f"  generated in {time.time() - t0:.0f} s", flush=True)
    return meta


def slide_windows(height: int, width: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(26)
    return [[int(rng.integers(0, height - SLIDE_WINDOW)), int(rng.integers(0, width - SLIDE_WINDOW))]
            for _ in range(SLIDE_WINDOWS)]


def ensure_slide(size: str) -> dict:
    """A slide as bioformats2raw writes it (t, c, z, y, x; 1024 x 1024 chunks; levels halved
    down to one chunk), declared at full size; of level 0 only the chunks under the windows
    are written (synth_slab's pattern, blosc lz4). Cached; the window hashes come from
    zarr-python reading the local copy."""
    import numcodecs
    import zarr

    height, width = SLIDE_SIZES[size]
    root = BENCH / "data" / f"slide-{size}"
    meta_path = root / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    shutil.rmtree(root, ignore_errors=True)
    local = root / "slide.ome.zarr"
    g = zarr.open_group(str(local), mode="w", zarr_format=2)
    h, w, k, datasets = height, width, 0, []
    while True:
        arr = g.create_array(str(k), shape=(1, 1, 1, h, w), dtype="uint8", chunks=(1, 1, 1, SLIDE_CHUNK, SLIDE_CHUNK),
                             fill_value=0, compressors=numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
                             chunk_key_encoding={"name": "v2", "separator": "/"})
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0, 0.25 * 2**k, 0.25 * 2**k]}]})
        if k == 0:
            level0 = arr
        if max(h, w) <= SLIDE_CHUNK:
            break
        h, w, k = -(-h // 2), -(-w // 2), k + 1
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    g.attrs["multiscales"] = [{"version": "0.4", "name": "slide", "axes": axes, "datasets": datasets}]
    windows = slide_windows(height, width)
    chunks = sorted({(cy, cx) for y, x in windows
                     for cy in range(y // SLIDE_CHUNK, (y + SLIDE_WINDOW - 1) // SLIDE_CHUNK + 1)
                     for cx in range(x // SLIDE_CHUNK, (x + SLIDE_WINDOW - 1) // SLIDE_CHUNK + 1)})
    for cy, cx in chunks:
        y0, x0 = cy * SLIDE_CHUNK, cx * SLIDE_CHUNK
        ny, nx = min(SLIDE_CHUNK, height - y0), min(SLIDE_CHUNK, width - x0)
        level0[0, 0, 0, y0:y0 + ny, x0:x0 + nx] = (synth_slab(cy * 7919 + cx, 1, ny, nx)[0] >> 7).astype("uint8")
    hashes = [sha1(level0[0, 0, 0, y:y + SLIDE_WINDOW, x:x + SLIDE_WINDOW].tobytes()) for y, x in windows]
    needed = sum((local / "0" / "0" / "0" / "0" / str(cy) / str(cx)).stat().st_size for cy, cx in chunks)
    meta = {"shape": [height, width], "levels": len(datasets), "windows": windows, "hashes": hashes,
            "chunks": len(chunks), "needed": needed}
    meta_path.write_text(json.dumps(meta))
    return meta


def chunk_bytes(local: Path) -> dict[int, list[int]]:
    """Compressed size of every chunk of level 0, by chunk z index."""
    out: dict[int, list[int]] = {}
    for zdir in (local / "0").iterdir():
        if zdir.is_dir():
            out[int(zdir.name)] = [f.stat().st_size for f in zdir.rglob("*") if f.is_file()]
    return out


def xz_truth(local: Path, ys: list[int]) -> tuple[list[str], int, int]:
    """Hashes of the XZ planes at `ys` (from the local copy), and the number and compressed
    bytes of the chunks they lie in."""
    import zarr

    arr = zarr.open_array(str(local / "0"), mode="r")
    block = arr[:, min(ys):max(ys) + 1, :]
    hashes = [sha1(block[:, y - min(ys), :].tobytes()) for y in ys]
    cy = arr.chunks[1]
    rows = {y // cy for y in ys}
    files = [f for f in (local / "0").glob("*/*/*") if f.is_file() and int(f.parent.name) in rows]
    return hashes, len(files), sum(f.stat().st_size for f in files)


def upload(moto, local: Path, prefix: str, public: bool = False) -> None:
    """Straight to moto, not through the proxy: setup is not what we measure. `public`:
    readable without credentials (tensorstore reads anonymously)."""
    client = moto.client(max_pool_connections=16)
    files = [p for p in local.rglob("*") if p.is_file()]
    extra = {"ACL": "public-read"} if public else {}

    def put(p: Path):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{p.relative_to(local).as_posix()}", Body=p.read_bytes(),
                          **extra)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))


# --------------------------------------------------------------------------- harness


class Harness:
    def __init__(self, args, moto, proxy, errors: list):
        self.args, self.moto, self.proxy, self.errors = args, moto, proxy, errors
        self.run_dir = BENCH / "run"
        self.mounted: set[str] = set()
        self.rclones: list[subprocess.Popen] = []
        self.n = 0  # numbers cache dirs, logs and mount tags
        self.drop_ok = True
        self.pid: int | None = None  # the ngffmount daemon of the current mount
        self.timeout = 300 if args.size == "small" else 1200

    # -- processes

    @property
    def moto_pid(self) -> int | None:
        return self.moto._proc.pid if self.moto._proc is not None else None

    def run_worker(self, spec: dict) -> dict:
        if self.moto._proc is None or self.moto._proc.poll() is not None:
            raise RuntimeError("moto_server is gone; stopping the benchmark")
        spec = {**spec, "control": self.proxy.url + "/__proxy__/stats", "endpoint": self.proxy.url}
        cmd = [sys.executable, __file__, "_worker", json.dumps(spec)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"read timed out after {self.timeout} s: {spec.get('path') or spec.get('url')}") from None
        if r.returncode != 0:
            raise BenchError(f"worker failed ({spec.get('path') or spec.get('url')}):\n{r.stderr.strip()[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def settle(self, pid: int | None = None, quiet: float = 1.0, limit: float = 60.0) -> int:
        """Wait for `quiet` s without a proxy request and with the daemon (if any) idle:
        readahead and rclone's downloads may go on after the reader is done and count too,
        and background disk-cache writes must not slow the next measurement. Returns the
        daemon's CPU clock ticks when it was last seen busy (the end of its work)."""
        start = last_change = time.monotonic()
        last = (self.proxy.snapshot()["requests"], cpu_ticks(pid))
        busy_ticks = last[1]
        while time.monotonic() - last_change < quiet and time.monotonic() - start < limit:
            time.sleep(0.1)
            cur = (self.proxy.snapshot()["requests"], cpu_ticks(pid))
            if cur[0] != last[0] or cur[1] - last[1] > 2:  # more than 2 clock ticks in 0.1 s: busy
                last_change, busy_ticks = time.monotonic(), cur[1]
            last = cur
        return busy_ticks

    def warmed(self, run, *args):
        """run(*args) right after touching --warm-gib of memory in a process that exits: the
        run's new memory is then memory the host backs, as on a machine without a lazy host."""
        if self.args.warm_gib > 0:
            touch(self.args.warm_gib)
        return run(*args)

    def drop_caches(self) -> None:
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError:
            self.drop_ok = False  # reported: warm and local numbers then include the page cache

    def fresh(self, kind: str) -> Path:
        self.n += 1
        path = self.run_dir / "cache" / f"{kind}-{self.n}"
        path.mkdir(parents=True)
        return path

    # -- ngffmount

    def ngff_mount(self, url: str, cache_dir: Path, name: str = "ngff",
                   extra: tuple = ()) -> tuple[str, int | None, Path]:
        mnt = self.run_dir / "mnt" / name
        mnt.mkdir(parents=True, exist_ok=True)
        self.n += 1
        log = self.run_dir / "logs" / f"ngffmount-{self.n}.log"
        tag = f"{os.getpid()}-{self.n}"
        # Credentials go by environment, as for any AWS client; the tag finds the daemon.
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_DEFAULT_REGION": REGION, "NGFFBENCH_TAG": tag}
        cmd = [sys.executable, "-m", "ngffmount.vfs.command.cli", "mount", url, str(mnt), "--endpoint-url",
               self.proxy.url, "--cache-dir", str(cache_dir), "--log-file", str(log), *extra]
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            self.mounted.add(str(mnt))
            raise BenchError(f"`{shlex.join(cmd)}` did not return in 180 s\nlog {log}:\n{tail(log)}") from None
        if r.returncode != 0:
            raise BenchError(f"`{shlex.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()}\nlog {log}:\n{tail(log)}")
        self.mounted.add(str(mnt))
        self.pid = find_pid(tag)
        return str(mnt), self.pid, log

    def ngff_unmount(self, mnt: str, pid: int | None) -> None:
        fusermount(mnt)
        self.mounted.discard(mnt)
        # The next mount reuses the cache dir: the old daemon must be gone first.
        deadline = time.monotonic() + 30
        while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def ngff_stats(self, mnt: str) -> dict:
        r = subprocess.run(["cat", f"{mnt}/.ngffmount/stats.json"], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise BenchError(f"reading {mnt}/.ngffmount/stats.json failed: {r.stderr.strip()}")
        return json.loads(r.stdout)

    # -- rclone

    @contextlib.contextmanager
    def rclone_mount(self):
        mnt = self.run_dir / "mnt" / "rclone"
        mnt.mkdir(parents=True, exist_ok=True)
        cache = self.fresh("rclone")
        log = self.run_dir / "logs" / f"rclone-{self.n}.log"
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone fails to start with it
        env.update(RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                   RCLONE_CONFIG_BENCH_ENDPOINT=self.proxy.url, RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
                   RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=KEY, RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=SECRET,
                   RCLONE_CONFIG_BENCH_REGION=REGION)
        cmd = ["rclone", "mount", f"bench:{BUCKET}", str(mnt), "--vfs-cache-mode", "full", "--read-only",
               "--cache-dir", str(cache), "--log-file", str(log)]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        self.rclones.append(proc)
        try:
            deadline = time.monotonic() + 30
            while not is_mounted(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"`{shlex.join(cmd)}` did not mount:\n{tail(log)}")
                time.sleep(0.05)
            yield mnt
        finally:
            stop_rclone(proc, str(mnt))
            self.rclones.remove(proc)

    # -- measurements

    def measure(self, spec: dict, mnt: str | None = None, daemon: int | None = None) -> dict:
        """One timed read with its proxy counters (after settling), ngffmount stats and CPU
        seconds: the reader's over its read, and the daemon's (ngffmount's on `mnt`, or
        `daemon`, e.g. rclone) from right before the read until it is idle."""
        # What earlier runs wrote (rclone's and ngffmount's caches, GiBs) is written back
        # now, not by the kernel during this run: that took a cold scroll from 3 s to 5.5 s.
        os.sync()
        st0 = self.ngff_stats(mnt) if mnt else None
        daemon = self.pid if mnt else daemon
        ticks0 = cpu_ticks(daemon)
        source0 = cpu_ticks(self.moto_pid)
        res = self.run_worker(spec)
        ticks1 = self.settle(daemon)
        source1 = cpu_ticks(self.moto_pid)
        after = self.proxy.snapshot()
        run = {"seconds": res["seconds"], "first_read_s": res.get("first_read_s"), "nbytes": res["nbytes"],
               "hashes": res.get("hashes"), "cpu_reader": res.get("cpu_s"),
               "cpu_daemon": (ticks1 - ticks0) / CLK_TCK if daemon else None,
               # What serving the read cost the machine: moto's process and the proxy's threads.
               "cpu_source": (source1 - source0) / CLK_TCK + after["cpu_s"] - res["before"]["cpu_s"],
               "requests": after["requests"] - res["before"]["requests"],
               "bytes": after["bytes"] - res["before"]["bytes"],
               "methods": {m: n - res["before"]["by_method"].get(m, 0) for m, n in after["by_method"].items()
                           if n > res["before"]["by_method"].get(m, 0)}}
        if mnt:
            st1 = self.ngff_stats(mnt)
            run["stats"] = {k: v - st0.get(k, 0) for k, v in st1.items()
                            if isinstance(v, (int, float)) and k != "uptime_s"}
        return run


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def is_mounted(path) -> bool:
    """From the mount table: os.path.ismount() says False for a dead FUSE mount."""
    path = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def fusermount(mnt: str) -> None:
    for args in (["-u"], ["-uz"]):  # lazy only if a plain unmount fails (busy, stale)
        for exe in ("fusermount", "fusermount3"):
            if shutil.which(exe) and subprocess.run([exe, *args, mnt], capture_output=True).returncode == 0:
                return


def stop_rclone(proc: subprocess.Popen, mnt: str) -> None:
    proc.terminate()  # rclone unmounts itself on SIGTERM
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if is_mounted(mnt):  # rclone exits without unmounting when a reader holds files open
        fusermount(mnt)


def find_pid(tag: str) -> int | None:
    """The `_serve` daemon is a grandchild in its own session: find it by an env marker
    (other ngffmount daemons may run on this machine)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"NGFFBENCH_TAG={tag}".encode() in (d / "environ").read_bytes().split(b"\0") \
                        and b"_serve" in (d / "cmdline").read_bytes():
                    return int(d.name)
            except OSError:
                pass
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int | None) -> int:
    """User + system CPU time of a process, in clock ticks (0 if there is none)."""
    try:
        return stat_ticks(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return 0


def stat_ticks(stat: str) -> int:
    """User + system clock ticks from the text of a /proc stat file (a process's or a thread's)."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def peak_rss_mib(pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return None


# --------------------------------------------------------------------------- one chunking


def summarize(label: str, runs: list[dict], chunks: int, needed: int, note: str = "") -> dict:
    secs = [r["seconds"] for r in runs]
    mean = lambda k: statistics.mean(r[k] for r in runs)  # noqa: E731
    row = {"label": label, "seconds": secs, "median": statistics.median(secs), "nbytes": runs[0]["nbytes"],
           "requests": mean("requests"), "bytes": mean("bytes"), "chunks": chunks, "needed": needed, "note": note}
    row["methods"] = {m: statistics.mean(r["methods"].get(m, 0) for r in runs)
                      for m in sorted({m for r in runs for m in r["methods"]})}
    if "stats" in runs[0]:
        row["stats"] = {k: statistics.mean(r["stats"].get(k, 0) for r in runs) for k in runs[0]["stats"]}
    if runs[0].get("first_read_s") is not None:
        row["first_read_s"] = statistics.median(r["first_read_s"] for r in runs)
    for part in ("cpu_reader", "cpu_daemon", "cpu_source"):
        if all(r.get(part) is not None for r in runs):
            row[part] = statistics.median(r[part] for r in runs)
    if "cpu_reader" in row:
        row["cpu"] = statistics.median(r["cpu_reader"] + (r.get("cpu_daemon") or 0) for r in runs)
    return row


def bench_chunking(h: Harness, meta: dict, ch: str) -> dict:
    args, size = h.args, h.args.size
    nz, ny, nx = meta["shape"]
    cz, cy, cx = CHUNKINGS[ch]
    z = nz // 2
    local = BENCH / "data" / size / f"{ch}.ome.zarr"
    url = f"s3://{BUCKET}/{size}/{ch}.ome.zarr"
    sizes = chunk_bytes(local)
    plane_chunks, plane_needed = math.ceil(ny / cy) * math.ceil(nx / cx), sum(sizes[z // cz])
    all_chunks, all_needed = sum(len(v) for v in sizes.values()), sum(map(sum, sizes.values()))
    plane_hash, all_hashes = [meta["planes"][z]], meta["planes"]
    reps, concs = args.repeats, args.concurrency
    rows: dict[str, dict] = {}
    rss: dict[str, float] = {}

    def check(key: str, runs: list[dict], expected: list[str]) -> None:
        for r in runs:
            if r.get("hashes") is not None and r["hashes"] != expected:
                bad = [i for i, (a, b) in enumerate(zip(r["hashes"], expected)) if a != b]
                h.errors.append(f"[{ch}] {key}: WRONG BYTES in planes {bad[:10] or 'count'} "
                                f"({len(r['hashes'])} planes read, {len(expected)} expected)")
                rows[key]["note"] += " WRONG BYTES"
                return

    def attempt(key: str, fn) -> None:
        """Run one group of measurements; a failure is reported, the benchmark goes on."""
        print(f"  [{ch}] {key} ...", flush=True)
        try:
            fn()
            if key in rows:
                r = rows[key]
                print(f"      median {r['median']:.3f} s of {[round(s, 3) for s in r['seconds']]}, "
                      f"{r['requests']:.0f} requests {r['note']}", flush=True)
        except BenchError as exc:
            h.errors.append(f"[{ch}] {key}: {exc}")
            print(f"      FAILED: {exc}", flush=True)
            for mnt in list(h.mounted):
                h.ngff_unmount(mnt, None)

    def zarr_spec(path_or_url: str, c: int, zsel):
        return {"kind": "zarr", "url": f"{path_or_url}/0", "concurrency": c, "z": zsel}

    def best_of(key: str, label: str, run, chunks, needed, expected, first: int = reps):
        """The fastest concurrency by median, with the others in the note. Each concurrency
        gets `first` runs; the best then gets more, up to `reps`."""
        tried = {}
        for c in concs:
            runs = [run(c) for _ in range(first)]
            tried[c] = summarize(f"{label} (concurrency {c})", runs, chunks, needed)
            tried[c]["runs"] = runs
        best_c = min(tried, key=lambda c: tried[c]["median"])
        if first < reps:
            runs = tried[best_c]["runs"] + [run(best_c) for _ in range(reps - first)]
            tried[best_c] = summarize(f"{label} (concurrency {best_c})", runs, chunks, needed)
            tried[best_c]["runs"] = runs
        best = tried[best_c]
        best["note"] = "; ".join(f"c={c}: {r['median']:.2f} s" for c, r in tried.items())
        rows[key] = best
        check(key, best.pop("runs"), expected)

    def plane_and_level(key: str, label: str, run) -> None:
        """One plane and the whole level, each a median at its best concurrency (the level's
        concurrency is picked on one run each)."""
        attempt(f"{key}_plane", lambda: best_of(
            f"{key}_plane", label, lambda c: run(z, c), plane_chunks, plane_needed, plane_hash))
        attempt(f"{key}_all", lambda: best_of(
            f"{key}_all", f"{label}, arr[...]", lambda c: run(None, c), all_chunks, all_needed, all_hashes, first=1))

    def ngff_session(cache_dir: Path, phase: str, body, drop: bool = False):
        mnt, pid, log = h.ngff_mount(url, cache_dir)
        try:
            if drop:
                h.drop_caches()  # after the mount: metadata reads must not refill it
            return body(mnt)
        except BenchError as exc:
            raise BenchError(f"{exc}\nngffmount daemon log {log}:\n{tail(log, 40)}") from None
        finally:
            hwm = peak_rss_mib(pid)
            if hwm is not None:
                rss[phase] = max(rss.get(phase, 0), hwm)
            h.ngff_unmount(mnt, pid)

    # XZ scroll: ngffmount reads s0.xz/ file after file (cold: empty cache, new mount);
    # zarr-python reads arr[:, y, :] for the same y, one after the other.
    xz_ys = list(range(min(ny, args.xz_planes)))
    if xz_ys:
        xz_hashes, xz_chunks, xz_needed = xz_truth(local, xz_ys)

        def ngff_cold_xz():
            spec = lambda m: {"kind": "files", "paths": [f"{m}/s0.xz/y{y:05d}.tif" for y in xz_ys]}  # noqa: E731
            runs = [ngff_session(h.fresh("ngff"), "cold xz scroll", lambda m: h.measure(spec(m), m))
                    for _ in range(reps)]
            row = rows["ngff_cold_xz"] = summarize(f"ngffmount cold, s0.xz/ y0..{xz_ys[-1]} file by file", runs,
                                                   xz_chunks, xz_needed)
            # Readahead fetches chunks of the planes after the last one read: per chunk fetched,
            # how often it was requested and decoded.
            st, raw = row["stats"], math.prod(CHUNKINGS[ch]) * 2
            if st.get("chunks_fetched"):
                row["note"] = (f"per chunk fetched: {row['requests'] / st['chunks_fetched']:.2f} requests, "
                               f"{st.get('decoded_bytes', 0) / (st['chunks_fetched'] * raw):.2f} decodes;")
            check("ngff_cold_xz", runs, xz_hashes)

        attempt("ngff_cold_xz", ngff_cold_xz)
        attempt("zarr_s3_xz", lambda: best_of(
            "zarr_s3_xz", f"zarr-python, S3 direct, arr[:, y, :] for y0..{xz_ys[-1]}",
            lambda c: h.measure({**zarr_spec(url, c, None), "ys": xz_ys}), xz_chunks, xz_needed, xz_hashes, first=1))
    comp = {"chunk_shape": CHUNKINGS[ch], "z": z, "plane_chunks": plane_chunks, "plane_needed": plane_needed,
            "all_chunks": all_chunks, "all_needed": all_needed, "raw_bytes": nz * ny * nx * 2, "xz_planes": len(xz_ys)}
    if args.xz_only:
        return {"rows": rows, "rss": rss, "info": comp}

    # (a) zarr-python straight from S3 through the proxy: a plane here, the whole level below
    # in turns with ngffmount's cold scroll.
    # tensorstore and zarr-python over obstore likewise, in the same turns.
    direct = {"zarr_s3": ("zarr-python, S3 direct", {}),
              "obstore": ("zarr-python + obstore, S3 direct", {"store": "obstore"}),
              "ts": ("tensorstore, S3 direct", {"kind": "tensorstore"})}

    def direct_run(key: str):
        return lambda zsel, c: h.measure({**zarr_spec(url, c, zsel), **direct[key][1]})

    for key, (label, _) in direct.items():
        attempt(f"{key}_plane", lambda key=key, label=label: best_of(
            f"{key}_plane", label, lambda c: direct_run(key)(z, c), plane_chunks, plane_needed, plane_hash))

    # (b) zarr-python on a fresh `rclone mount --vfs-cache-mode full` (empty cache) per run
    if not args.skip_rclone:
        def rclone_run(zsel, c):
            with h.rclone_mount() as mnt:
                return h.measure(zarr_spec(f"{mnt}/{size}/{ch}.ome.zarr", c, zsel), daemon=h.rclones[-1].pid)

        plane_and_level("rclone", "zarr-python on rclone mount", rclone_run)

    plane_spec = lambda mnt: {"kind": "file", "path": f"{mnt}/s0/z{z:05d}.tif", "block": 1 << 20,  # noqa: E731
                              "verify": "plane"}
    stack_spec = lambda mnt, verify=True: {  # noqa: E731
        "kind": "file", "path": f"{mnt}/s0.tif", "block": ny * nx * 2,  # plane-sized reads, in order
        "verify": "stack" if verify else None, "planes": nz, "plane_bytes": ny * nx * 2}

    # (c) ngffmount cold: empty cache dir, new mount, one plane file
    def ngff_cold_plane():
        runs = [ngff_session(h.fresh("ngff"), "cold plane", lambda m: h.measure(plane_spec(m), m)) for _ in range(reps)]
        rows["ngff_cold_plane"] = summarize("ngffmount cold (empty cache, new mount)", runs, plane_chunks, plane_needed)
        check("ngff_cold_plane", runs, plane_hash)

    attempt("ngff_cold_plane", ngff_cold_plane)

    # (c) cold scroll through s0.tif in turns with (a) the direct readers' whole-level reads, then
    # (e) hot re-reads on the first scroll's mount (page cache)
    scroll_cache = h.fresh("ngff")

    def scroll_in_turns():
        """On this VM, memory the host has not backed yet costs ~5 times memory it has (the
        memory warm-up), and the backed share drifts down during a benchmark: zarr-python's
        whole-level read went 2.1, 2.9, 3.8 s in one replay. Runs in turns see the same drift;
        runs in blocks compare whoever ran first with whoever ran later."""
        failed: set[str] = set()  # a direct reader that fails leaves the turns; the others go on

        def direct_whole(key: str, c: int) -> dict | None:
            if key in failed:
                return None
            try:
                return h.warmed(direct_run(key), None, c)
            except BenchError as exc:
                h.errors.append(f"[{ch}] {key}_all: {exc}")
                print(f"      {key}_all FAILED: {exc}", flush=True)
                failed.add(key)
                return None

        # One run each picks the concurrency of each direct reader.
        picks = {key: {c: direct_whole(key, c) for c in concs} for key in direct}
        best = {key: min(p, key=lambda c: p[c]["seconds"]) for key, p in picks.items() if key not in failed}
        druns: dict[str, list] = {key: [] for key in best}
        colds = []

        def cold_then_hot(mnt):
            colds.append(h.warmed(h.measure, stack_spec(mnt), mnt))
            hot = [h.measure(stack_spec(mnt, verify=False), mnt) for _ in range(reps)]
            rows["ngff_hot_all"] = summarize("ngffmount hot, s0.tif re-read (page cache)", hot, all_chunks, all_needed)

        for i in range(reps):  # each cold scroll has an empty cache of its own
            for key in best:
                druns[key].append(direct_whole(key, best[key]))
            ngff_session(scroll_cache if i == 0 else h.fresh("ngff"), "cold scroll + hot",
                         cold_then_hot if i == 0 else lambda m: colds.append(h.warmed(h.measure, stack_spec(m), m)))
        for key in set(best) - failed:
            rows[f"{key}_all"] = summarize(f"{direct[key][0]}, arr[...] (concurrency {best[key]})", druns[key],
                                           all_chunks, all_needed)
            rows[f"{key}_all"]["note"] = ("; ".join(f"c={c}: {r['seconds']:.2f} s" for c, r in picks[key].items())
                                          + " (one run each to pick); then in turns with ngffmount cold")
            check(f"{key}_all", druns[key], all_hashes)
        pairs = {key: [c["seconds"] / d["seconds"] for c, d in zip(colds, druns[key])]
                 for key in ("zarr_s3", "ts") if key in best and key not in failed}
        note = " ".join(f"ratio to the {name} run before it: {', '.join(f'{x:.2f}' for x in pairs[key])};"
                        for key, name in (("zarr_s3", "zarr"), ("ts", "tensorstore")) if key in pairs)
        rows["ngff_cold_all"] = summarize("ngffmount cold, s0.tif plane by plane", colds, all_chunks, all_needed, note)
        rows["ngff_cold_all"]["pairs"] = pairs
        check("ngff_cold_all", colds, all_hashes)

    attempt("ngff_cold_all", scroll_in_turns)

    # (d) ngffmount warm: same cache dir (filled by the scroll), new mount, page cache dropped
    if "ngff_cold_all" in rows:
        def ngff_warm_plane():
            runs = [ngff_session(scroll_cache, "warm", lambda m: h.measure(plane_spec(m), m), drop=True)
                    for _ in range(reps)]
            rows["ngff_warm_plane"] = summarize("ngffmount warm (disk cache, new mount, page cache dropped)",
                                                runs, plane_chunks, plane_needed)
            check("ngff_warm_plane", runs, plane_hash)

        def ngff_warm_scroll():
            runs = [ngff_session(scroll_cache, "warm", lambda m: h.measure(stack_spec(m), m), drop=True)
                    for _ in range(reps)]
            rows["ngff_warm_all"] = summarize("ngffmount warm, s0.tif plane by plane", runs, all_chunks, all_needed)
            check("ngff_warm_all", runs, all_hashes)

        attempt("ngff_warm_plane", ngff_warm_plane)
        attempt("ngff_warm_all", ngff_warm_scroll)

    # (e) the FUSE floor: s0.tif served from the daemon's memory (a cache that holds the whole
    # level, filled by one scroll and one re-read), page cache dropped before each run: what
    # passing the bytes through FUSE costs, with no fetch or disk read (and no decode, but for
    # the blocks of deep chunks the cache keeps encoded).
    def ngff_fuse_floor():
        def body(mnt):
            for _ in range(2):
                h.measure(stack_spec(mnt, verify=False), mnt)
            runs = []
            for _ in range(reps):
                h.drop_caches()
                runs.append(h.measure(stack_spec(mnt), mnt))
            return runs

        # Not through ngff_session: this daemon's peak RSS (a 3G cache) is not the default one's.
        mnt, pid, log = h.ngff_mount(url, h.fresh("ngff"), extra=("--memory-cache", FLOOR_MEMORY))
        try:
            runs = body(mnt)
        except BenchError as exc:
            raise BenchError(f"{exc}\nngffmount daemon log {log}:\n{tail(log, 40)}") from None
        finally:
            h.ngff_unmount(mnt, pid)
        rows["ngff_floor_all"] = summarize(f"ngffmount from its memory cache (--memory-cache {FLOOR_MEMORY}, page cache "
                                           "dropped; no fetch, no disk read; blocks of deep chunks that the cache "
                                           "let go of decode again: decodes/chunk)", runs, all_chunks, all_needed)
        check("ngff_floor_all", runs, all_hashes)

    attempt("ngff_floor_all", ngff_fuse_floor)

    # (f) zarr-python on the local-disk copy, page cache dropped before each run
    def local_run(zsel, c):
        h.drop_caches()
        return h.measure(zarr_spec(str(local), c, zsel))

    plane_and_level("local", "zarr-python, local disk", local_run)

    return {"rows": rows, "rss": rss, "info": comp}


# --------------------------------------------------------------------------- slide


def bench_slide(h: Harness, meta: dict) -> dict:
    """The slide workload: the same windows, each reader `repeats` times from cold."""
    url = f"s3://{BUCKET}/slide-{h.args.slide_size}/slide.ome.zarr"
    base = {"kind": "windows", "windows": meta["windows"], "size": SLIDE_WINDOW}
    rows: dict[str, dict] = {}
    rss: dict[str, float] = {}
    mounts: list[float] = []

    def attempt(key: str, label: str, run) -> None:
        print(f"  [slide] {key} ...", flush=True)
        try:
            runs = [run() for _ in range(h.args.repeats)]
        except BenchError as exc:
            h.errors.append(f"[slide] {key}: {exc}")
            print(f"      FAILED: {exc}", flush=True)
            return
        rows[key] = summarize(label, runs, meta["chunks"], meta["needed"])
        if any(r["hashes"] != meta["hashes"] for r in runs):
            h.errors.append(f"[slide] {key}: WRONG BYTES")
            rows[key]["note"] += " WRONG BYTES"
        print(f"      median {rows[key]['median']:.3f} s, {rows[key]['requests']:.0f} requests", flush=True)

    def ngff_run() -> dict:
        started = time.perf_counter()
        mnt, pid, log = h.ngff_mount(url, h.fresh("ngff"))
        mounts.append(time.perf_counter() - started)
        try:
            return h.measure({**base, "reader": "tiff", "path": f"{mnt}/image.ome.tif"}, mnt)
        except BenchError as exc:
            raise BenchError(f"{exc}\nngffmount daemon log {log}:\n{tail(log, 40)}") from None
        finally:
            hwm = peak_rss_mib(pid)
            if hwm is not None:
                rss["slide"] = max(rss.get("slide", 0), hwm)
            h.ngff_unmount(mnt, pid)

    attempt("ngff", "ngffmount cold: image.ome.tif through tifffile (new mount, empty cache)", ngff_run)
    if mounts:
        rows.get("ngff", {})["note"] = f"mount command {statistics.median(mounts):.2f} s (start-up included);"
    attempt("zarr", "zarr-python, S3 direct (s3fs)", lambda: h.measure({**base, "reader": "zarr", "url": url + "/0"}))
    attempt("tensorstore", "tensorstore, S3 direct",
            lambda: h.measure({**base, "reader": "tensorstore", "url": url + "/0"}))
    return {"rows": rows, "rss": rss, "meta": meta}


def render_slide(args, slide: dict) -> list[str]:
    meta, rows = slide["meta"], slide["rows"]
    height, width = meta["shape"]
    L = ["", "## Slide: 16 windows of 1024 x 1024 from level 0", "",
         f"Level 0 = {width} x {height} uint8 ({height * width / 2**30:.1f} GiB), {meta['levels']} levels, "
         f"1024 x 1024 chunks, blosc lz4; only the {meta['chunks']} chunks under the {len(meta['windows'])} "
         f"random windows are written ({meta['needed'] / 2**20:.1f} MiB compressed). Each run is cold: "
         "ngffmount gets a new mount and an empty cache, and its clock starts before image.ome.tif is opened "
         "(tifffile reads the header, the tile tables and then tile after tile); zarr-python and tensorstore "
         "open the array before the clock. Windows are read one after the other, as a viewer asks for them.", "",
         "| reader | median s | first window s | runs (s) | CPU-s (reader + daemon) | requests | requests/chunk | "
         "fetched/needed | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for key in ("ngff", "zarr", "tensorstore"):
        r = rows.get(key)
        if not r:
            continue
        note = r["note"]
        if "stats" in r:
            s = r["stats"]
            note += (" " if note else "") + ", ".join(f"{n}={s[n]:g}" for n in ("chunks_fetched", "errors") if n in s)
        L.append("| " + " | ".join([
            r["label"], fmt(r["median"]), fmt(r.get("first_read_s")), ", ".join(f"{x:.3g}" for x in r["seconds"]),
            cpu_cell(r), requests_cell(r), fmt(r["requests"] / r["chunks"]), fmt(r["bytes"] / r["needed"]), note]) + " |")
    if slide["rss"]:
        L += ["", f"ngffmount daemon peak RSS (VmHWM): {slide['rss']['slide']:.0f} MiB"]
    return L


def touch(gib: int) -> None:
    """Touch `gib` GiB of memory in a process that then exits: what is freed is memory the host backs."""
    subprocess.run([sys.executable, "-c", f"import numpy; numpy.ones({gib} << 30, numpy.uint8)"], check=True)


def touch_memory() -> str:
    """Touch most of the free memory once, in a process that then exits. On a VM whose host
    backs guest memory lazily, the first touch of a guest page costs several times any later
    one (here about 1.3 s per GiB): without this, whichever run first needs new memory pays
    it, and the first run of a group is an outlier."""
    avail = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) << 10
    gib = max(1, min(12, avail // 2**30 - 4))
    t = time.time()
    touch(gib)
    return f"{gib} GiB touched once before the runs, in {time.time() - t:.1f} s"


def page_cache_baseline(h: Harness, meta: dict) -> str:
    """The ceiling for "hot": the same reads of a local file of s0.tif's size, from the page cache."""
    nz, ny, nx = meta["shape"]
    path = h.run_dir / "pagecache.bin"
    with open(path, "wb") as f:  # written, not sparse, so every page is really cached
        for _ in range(nz):
            f.write(bytes(ny * nx * 2))
    try:
        runs = [h.run_worker({"kind": "file", "path": str(path), "block": ny * nx * 2}) for _ in range(h.args.repeats)]
    finally:
        path.unlink()
    return f"{nz * ny * nx * 2 / statistics.median(r['seconds'] for r in runs) / 1e9:.2f} GB/s " \
           f"(a local {nz * ny * nx * 2 / 2**20:.0f} MiB file read like s0.tif, page cache)"


# --------------------------------------------------------------------------- report


def decodes_per_chunk(row: dict, info: dict) -> float:
    """Decoded bytes per raw byte of the chunks under the read."""
    return row["stats"].get("decoded_bytes", 0) / (row["chunks"] * math.prod(info["chunk_shape"]) * 2)


def fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"
    return str(x)


def requests_cell(r: dict) -> str:
    methods = ", ".join(f"{m} {fmt(n, 4)}" for m, n in r["methods"].items())
    return f"{fmt(r['requests'], 4)} ({methods})" if methods else fmt(r["requests"], 4)


def cpu_cell(r: dict) -> str:
    """Median CPU seconds: the reader's, plus the daemon's (ngffmount, rclone) where there is one."""
    if "cpu" not in r:
        return "–"
    if r.get("cpu_daemon") is None:
        return f"{r['cpu']:.2f}"
    return f"{r['cpu']:.2f} ({r['cpu_reader']:.2f} + {r['cpu_daemon']:.2f})"


def ratio(rows, a, b, key="median"):
    return rows[a][key] / rows[b][key] if rows.get(a, {}).get(key) is not None and rows.get(b, {}).get(key) else None


def render_head(facts: dict, elapsed: float) -> list[str]:
    L = ["# ngffmount benchmark", "",
         f"Command: `{facts['command']}`  ", f"Date: {facts['date']}, total run time {elapsed / 60:.1f} min", "",
         "## Machine", ""]
    return L + [f"- {k}: {v}" for k, v in facts["machine"].items()]


def render_failures(errors: list) -> list[str]:
    if not errors:
        return []
    return ["", "## Failures", ""] + [f"```\n{e}\n```" for e in errors]


# Issue 22's targets against tensorstore: (label, value of a chunking's rows, bound, "max"/"min")
TARGETS = [
    ("cold plane ngffmount / tensorstore", lambda rows: ratio(rows, "ngff_cold_plane", "ts_plane"), 1.0, "max"),
    ("cold scroll ngffmount / tensorstore", lambda rows: ratio(rows, "ngff_cold_all", "ts_all"), 1.2, "max"),
    ("CPU-s cold scroll ngffmount (reader + daemon) / tensorstore",
     lambda rows: ratio(rows, "ngff_cold_all", "ts_all", "cpu"), 2.0, "max"),
    ("warm scroll ngffmount / tensorstore cold scroll", lambda rows: ratio(rows, "ngff_warm_all", "ts_all"), 0.5, "max"),
    ("hot re-read GB/s", lambda rows: rows["ngff_hot_all"]["nbytes"] / rows["ngff_hot_all"]["median"] / 1e9
     if "ngff_hot_all" in rows else None, 4.0, "min"),
]


def render_targets(results: dict) -> list[str]:
    """Issue 22's targets (ratios to tensorstore from this run) and the direct readers side by side."""
    chs = list(results)
    L = ["", "## Against tensorstore (issue 22's targets)", "",
         "| target | bound | " + " | ".join(chs) + " |", "|---|---|" + "---|" * len(chs)]
    for label, value, bound, kind in TARGETS:
        cells = []
        for ch in chs:
            rows = results[ch]["rows"]
            v = value(rows)
            if v is None:
                cells.append("–")
                continue
            met = v <= bound if kind == "max" else v >= bound
            cell = f"{fmt(v)}, {'met' if met else 'NOT met'}"
            if label.startswith("cold scroll") and "ts" in rows["ngff_cold_all"].get("pairs", {}):
                cell += " (pairs " + ", ".join(f"{x:.2f}" for x in rows["ngff_cold_all"]["pairs"]["ts"]) + ")"
            cells.append(cell)
        L.append(f"| {label} | {'≤' if kind == 'max' else '≥'} {bound:g} | " + " | ".join(cells) + " |")
    cells = [fmt(v) if (v := cpu_floor_ratio(results[ch]["rows"])) is not None else "–" for ch in chs]
    L.append(f"| (reference) least cold-scroll time the run's CPU allows on {os.cpu_count()} cores, ngffmount "
             "/ tensorstore's scroll | – | " + " | ".join(cells) + " |")
    L += ["", "Cold scroll = the whole level: `arr[...]` for the direct readers, s0.tif plane by plane for "
          "ngffmount; tensorstore, zarr-python (s3fs, obstore) and ngffmount cold run in turns. CPU-s = user + "
          "system CPU seconds: the reader process's over its read, plus for ngffmount the daemon's from right "
          "before the read until it is idle (readahead and disk-cache writes included). Source CPU-s: what "
          "serving the same read cost moto_server and the proxy, which share the machine's cores with the "
          "reader. The reference row divides ngffmount's CPU-s and its source CPU-s by the cores: no cold "
          "scroll of ngffmount that spends as much CPU can be faster, however well it overlaps its work.", "",
          "| chunking | reader | plane s | scroll s | CPU-s scroll (reader + daemon) | source CPU-s scroll (moto + proxy) |",
          "|---|---|---|---|---|---|"]
    readers = [("tensorstore (zarr driver, s3 kvstore)", "ts_plane", "ts_all"),
               ("zarr-python + obstore (`zarr.storage.ObjectStore`)", "obstore_plane", "obstore_all"),
               ("zarr-python + s3fs", "zarr_s3_plane", "zarr_s3_all"),
               ("ngffmount cold, s0.tif plane by plane", "ngff_cold_plane", "ngff_cold_all"),
               ("ngffmount warm (disk cache, new mount)", "ngff_warm_plane", "ngff_warm_all")]
    for ch in chs:
        rows = results[ch]["rows"]
        for label, plane, scroll in readers:
            if plane in rows or scroll in rows:
                source = rows.get(scroll, {}).get("cpu_source")
                L.append(f"| {ch} | {label} | {fmt(rows.get(plane, {}).get('median'))} | "
                         f"{fmt(rows.get(scroll, {}).get('median'))} | {cpu_cell(rows.get(scroll, {}))} | "
                         f"{'–' if source is None else f'{source:.2f}'} |")
    return L


def cpu_floor_ratio(rows) -> float | None:
    """ngffmount's cold scroll CPU-s, its source's included, spread over every core, as a
    fraction of tensorstore's cold scroll time."""
    cold, ts_row = rows.get("ngff_cold_all", {}), rows.get("ts_all", {})
    if cold.get("cpu") is None or cold.get("cpu_source") is None or not ts_row.get("median"):
        return None
    return (cold["cpu"] + cold["cpu_source"]) / os.cpu_count() / ts_row["median"]


def render(args, meta, results: dict, errors: list, facts: dict, elapsed: float, drop_ok: bool) -> str:
    nz, ny, nx = meta["shape"]
    L = render_head(facts, elapsed)
    L += ["", "## Setup", "",
          f"- Image: OME-Zarr 0.4, zarr v2, '/' chunk keys, blosc lz4 + shuffle, level 0 = {nz} x {ny} x {nx} uint16 "
          f"({nz * ny * nx * 2 / 2**30:.2f} GiB), smooth pattern plus 6 bits of noise.",
          f"- S3: moto_server behind latency_proxy.py, +{args.latency_ms:g} ms per request (threaded, keep-alive "
          "to moto). Every reader below talks to the proxy; its counters give the requests and bytes.",
          f"- Readers: tensorstore (zarr driver, s3 kvstore; s3_request_concurrency "
          f"{', '.join(map(str, args.concurrency))}, best reported; data_copy_concurrency = {os.cpu_count()} cores), "
          "zarr-python direct from S3 through s3fs and through obstore (`zarr.storage.ObjectStore` over "
          "`obstore.store.S3Store`), and zarr-python on a local copy, at async.concurrency "
          f"{', '.join(map(str, args.concurrency))} (best reported, others in the notes); zarr-python on "
          "`rclone mount --vfs-cache-mode full` (new rclone, empty cache per run); ngffmount cold (empty "
          "--cache-dir, new mount), warm (same --cache-dir, new mount, page cache dropped), hot (same mount "
          "again, page cache).",
          "- Plane: z = middle. ngffmount reads `s0/zNNNNN.tif` whole (1 MiB reads); zarr reads `arr[z]`. "
          "Scroll: ngffmount reads `s0.tif` from start to end in plane-sized reads (what ImageJ's virtual stack "
          "does); zarr reads `arr[...]`.",
          f"- XZ scroll: ngffmount reads `s0.xz/y00000.tif`, `y00001.tif`, ... ({args.xz_planes} files, each whole, "
          "cold: empty cache, new mount); zarr-python reads `arr[:, y, :]` for the same y, one after the other "
          "(it keeps no chunks between reads). Chunks under the read are those of the chunk rows these y lie in.",
          f"- Medians of {args.repeats} runs (for zarr-python and rclone on a whole level: one run per concurrency, "
          f"then {args.repeats} in all for the best). The direct readers' whole-level reads from S3 and ngffmount's "
          "cold scrolls run in turns (zarr-python + s3fs, zarr-python + obstore, tensorstore, ngffmount, zarr-python "
          "+ s3fs, ...; each direct reader's concurrency picked on one run each before), because "
          "fresh memory gets dearer during a run on this VM; right before each of those runs "
          f"{args.warm_gib} GiB of memory is touched in a process that exits, so that the run's new memory is memory "
          "the host backs (as on a machine whose host does not back memory lazily). Each run is a fresh process, started after `sync` so that no "
          "run pays for writing back what the runs before it wrote. Requests and bytes are counted from right before the read until the proxy "
          "has seen no request for 1 s with the ngffmount daemon idle (readahead included); zarr's metadata reads "
          "are not counted. Daemon and rclone logs: /tmp/bench/run/logs (kept until the next run).",
          "- CPU-s = user + system CPU seconds of the reader process over its read (getrusage, all its threads), "
          "plus, for ngffmount and rclone, the daemon's (/proc/PID/stat) from right before the read until it was last "
          "seen busy while settling (the window of the request counts). moto's and the proxy's CPU is not counted.",
          "- requests/chunk = proxy requests / chunks under the read; fetched/needed = proxy bytes / compressed "
          "bytes of those chunks. Every read is checked against SHA-1 hashes of the generated planes."]
    if not drop_ok:
        L.append("- **Could not drop the page cache** (/proc/sys/vm/drop_caches not writable): warm and local "
                 "numbers include it.")
    # Summary across chunkings
    L += ["", "## Summary", "",
          "| chunking | cold plane ngffmount / zarr S3 | scroll ngffmount cold / zarr S3 arr[...] | "
          "warm plane ngffmount / zarr local | hot s0.tif GB/s | requests/chunk (cold scroll) | "
          "fetched/needed (cold scroll) | decodes/chunk (cold scroll) | daemon peak RSS |",
          "|---|---|---|---|---|---|---|---|---|"]
    for ch, res in results.items():
        rows = res["rows"]
        hot = rows.get("ngff_hot_all")
        cold = rows.get("ngff_cold_all")
        L.append("| " + " | ".join([
            ch, fmt(ratio(rows, "ngff_cold_plane", "zarr_s3_plane")), fmt(ratio(rows, "ngff_cold_all", "zarr_s3_all")),
            fmt(ratio(rows, "ngff_warm_plane", "local_plane")),
            fmt(hot["nbytes"] / hot["median"] / 1e9) if hot else "–",
            fmt(cold["requests"] / cold["chunks"]) if cold else "–",
            fmt(cold["bytes"] / cold["needed"]) if cold else "–",
            fmt(decodes_per_chunk(cold, res["info"])) if cold else "–",
            f"{max(res['rss'].values()):.0f} MiB" if res["rss"] else "–"]) + " |")
    L.append("\nRatios are times (below 1: ngffmount is faster). Hot GB/s compares with the page-cache read "
             f"baseline of this machine: {facts['machine'].get('page-cache read baseline', '–')}.")
    L += render_targets(results)
    order = [("cold plane", ["ts_plane", "obstore_plane", "zarr_s3_plane", "rclone_plane", "ngff_cold_plane"]),
             ("warm plane", ["ngff_warm_plane", "local_plane"]),
             ("scroll / whole level", ["ts_all", "obstore_all", "zarr_s3_all", "rclone_all", "ngff_cold_all",
                                       "ngff_warm_all", "local_all"]),
             ("hot re-read", ["ngff_hot_all"]),
             ("memory re-read (FUSE floor)", ["ngff_floor_all"]),
             ("XZ scroll", ["zarr_s3_xz", "ngff_cold_xz"])]
    for ch, res in results.items():
        rows, info = res["rows"], res["info"]
        raw_chunk = math.prod(info["chunk_shape"]) * 2
        L += ["", f"## Chunking {ch}", "",
              f"{info['all_chunks']} chunks of {raw_chunk / 2**20:g} MiB raw, {info['all_needed'] / 2**20:.0f} MiB "
              f"compressed in all ({info['all_needed'] / info['raw_bytes']:.0%} of raw). Plane z={info['z']} lies in "
              f"{info['plane_chunks']} chunks, {info['plane_needed'] / 2**20:.1f} MiB compressed, "
              f"{ny * nx * 2 / 2**20:g} MiB of pixels.", "",
              "| workload | reader | median s | MB/s | runs (s) | CPU-s (reader + daemon) | requests | requests/chunk | "
              "fetched/needed | decodes/chunk | notes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for workload, keys in order:
            for k in keys:
                r = rows.get(k)
                if not r:
                    continue
                dec = fmt(decodes_per_chunk(r, info)) if "stats" in r else ""
                note = r["note"]
                if "first_read_s" in r and "plane by plane" in r["label"]:
                    note += (" " if note else "") + f"first plane read at {r['first_read_s']:.2f} s;"
                if "stats" in r:
                    s = r["stats"]
                    note += (" " if note else "") + ", ".join(
                        f"{n}={s[n]:g}" for n in ("chunks_fetched", "memory_hits", "disk_hits", "prefetched", "errors")
                        if n in s)
                L.append("| " + " | ".join([
                    workload, r["label"], fmt(r["median"]), fmt(r["nbytes"] / r["median"] / 1e6),
                    ", ".join(f"{s:.3g}" for s in r["seconds"]), cpu_cell(r),
                    requests_cell(r),
                    fmt(r["requests"] / r["chunks"]), fmt(r["bytes"] / r["needed"]), dec, note]) + " |")
        if res["rss"]:
            L += ["", "ngffmount daemon peak RSS (VmHWM), max per phase: " +
                  ", ".join(f"{k} {v:.0f} MiB" for k, v in res["rss"].items())]
    L += render_failures(errors)
    L += ["", "## Caveats", "",
          f"- {facts['machine']['nproc']} cores run the readers, the proxy, moto, rclone and the ngffmount daemon "
          "at once, so CPU-bound steps (decoding, moto serving) compete; load averages above show whether anything "
          "else ran.",
          "- moto serves from memory; the proxy's latency is per request, with no bandwidth limit.",
          "- s3fs (under zarr-python and ngffmount) sends HEAD then GET for a whole-object read: 2 requests per "
          "chunk is its floor. rclone adds directory listings (LIST shows as GET).",
          f"- ngffmount runs with its defaults (--concurrency 32, --memory-cache {DEFAULT_MEMORY >> 20}M, disk "
          "cache on, libfuse3 with 1 MiB reads where installed). decodes/chunk is its stats.json's decoded_bytes "
          "over the raw bytes of the chunks under the read: whole chunks and Blosc blocks decoded alone both count, "
          "so 1 means every byte was decoded once.",
          "- zarr-python on a local path (local disk, rclone) reads chunks on its thread pool, sized here to the "
          "concurrency."]
    return "\n".join(L) + "\n"


def machine_facts(args) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def ver(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    def cmd(*c):
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not available"

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    mem = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))
    rev = cmd("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": {
            "nproc": os.cpu_count(), "CPU": cpu, "RAM": f"{mem / 2**20:.1f} GiB",
            "OS": f"{cmd('sh', '-c', '. /etc/os-release; echo $PRETTY_NAME')}, kernel {platform.release()}",
            "Python": platform.python_version(),
            "ngffmount": f"{ver('ngffmount')} (git {rev}{', uncommitted changes' if dirty.strip() else ''})",
            "packages": ", ".join(f"{p} {ver(p)}" for p in
                                  ("zarr", "numcodecs", "numpy", "s3fs", "fsspec", "aiobotocore", "tifffile",
                                   "mfusepy", "moto", "tensorstore", "obstore")),
            "rclone": cmd("rclone", "version"), "fuse": cmd("fusermount3", "-V"),
            "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        },
    }


# --------------------------------------------------------------------------- main


def start_redis(run_dir: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server on a free loopback port, from a config file of mode 0600, as a cache."""
    from servers import free_port

    port = free_port()
    conf = run_dir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"bind 127.0.0.1\nport {port}\nsave \"\"\nappendonly no\ndir {run_dir}\n"
                "maxmemory 4gb\nmaxmemory-policy allkeys-lru\n")
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=open(run_dir / "logs" / "redis.log", "ab"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise BenchError("redis-server did not start")


def bench_cluster(h: Harness, meta: dict, ch: str) -> dict:
    """NODES daemons (each its own disk cache, one shared Redis) scroll one level at once,
    against one daemon alone; then one plane on a fresh node with a warm Redis, against a
    disk-warm plane and a cold one."""
    nz = meta["shape"][0]
    z = nz // 2
    local = BENCH / "data" / h.args.size / f"{ch}.ome.zarr"
    url = f"s3://{BUCKET}/{h.args.size}/{ch}.ome.zarr"
    sizes = chunk_bytes(local)
    all_chunks, all_needed = sum(len(v) for v in sizes.values()), sum(map(sum, sizes.values()))
    plane_chunks = len(sizes[z // CHUNKINGS[ch][0]])
    scroll = lambda mnt: {"kind": "files", "paths": [f"{mnt}/s0/z{i:05d}.tif" for i in range(nz)]}  # noqa: E731
    plane = lambda mnt: {"kind": "files", "paths": [f"{mnt}/s0/z{z:05d}.tif"]}  # noqa: E731
    rows: dict[str, dict] = {}
    redis, shared_url = start_redis(h.run_dir)
    shared = ("--shared-cache", f"{shared_url}?socket_timeout={CLUSTER_SOCKET_TIMEOUT_S:g}")
    try:
        print(f"  [cluster {ch}] one daemon alone ...", flush=True)
        solo_cache = h.fresh("ngff")
        mnt, pid, _ = h.ngff_mount(url, solo_cache, "solo")
        try:
            alone = h.measure(scroll(mnt), mnt)
        finally:
            h.ngff_unmount(mnt, pid)
        rows["alone"] = {**summarize("one daemon alone, cold", [alone], all_chunks, all_needed),
                         "ok": alone["hashes"] == meta["planes"]}
        print(f"  [cluster {ch}] {NODES} daemons, one Redis ...", flush=True)
        nodes = [h.ngff_mount(url, h.fresh("ngff"), f"node{i}", shared) for i in range(NODES)]
        try:
            before = h.proxy.snapshot()
            started = time.perf_counter()
            with ThreadPoolExecutor(NODES) as pool:
                runs = list(pool.map(lambda n: h.run_worker(scroll(n[0])), nodes))
            wall = time.perf_counter() - started
            h.settle()
            after = h.proxy.snapshot()
            stats = [h.ngff_stats(n[0]) for n in nodes]
        finally:
            for mnt, pid, _ in nodes:
                h.ngff_unmount(mnt, pid)
        rows["cluster"] = {"label": f"{NODES} daemons at once, one Redis", "median": wall, "seconds": [wall],
                           "requests": after["requests"] - before["requests"], "bytes": after["bytes"] - before["bytes"],
                           "chunks": all_chunks, "needed": all_needed,
                           "ok": all(r["hashes"] == meta["planes"] for r in runs),
                           "slowest": max(r["seconds"] for r in runs),
                           "shared_hits": sum(s.get("shared_hits", 0) for s in stats),
                           "shared_lock_waits": sum(s.get("shared_lock_waits", 0) for s in stats),
                           "shared_errors": sum(s.get("shared_errors", 0) for s in stats)}
        # --repeats rounds of the three, interleaved: each sees the same moments of a busy host.
        planes = (("shared_warm", "fresh node, empty disk cache, warm Redis", lambda: h.fresh("ngff"), shared),
                  ("disk_warm", "new mount on a warm disk cache", lambda: solo_cache, ()),
                  ("cold", "new mount, empty cache, no Redis", lambda: h.fresh("ngff"), ()))
        runs: dict[str, list] = {key: [] for key, *_ in planes}
        for _ in range(max(1, h.args.repeats)):
            for key, label, cache, extra in planes:
                print(f"  [cluster {ch}] plane: {key} ...", flush=True)
                mnt, pid, _ = h.ngff_mount(url, cache(), "plane", extra)
                try:
                    runs[key].append(h.measure(plane(mnt), mnt))
                finally:
                    h.ngff_unmount(mnt, pid)
        for key, label, *_ in planes:
            rows[key] = {**summarize(label, runs[key], plane_chunks, sum(sizes[z // CHUNKINGS[ch][0]])),
                         "ok": all(r["hashes"] == [meta["planes"][z]] for r in runs[key])}
    except BenchError as exc:
        h.errors.append(f"[cluster {ch}] {exc}")
    finally:
        redis.terminate()
        redis.wait(10)
    for key, row in rows.items():
        if not row["ok"]:
            h.errors.append(f"[cluster {ch}] {key}: WRONG BYTES")
    return rows


def render_cluster(ch: str, rows: dict) -> list[str]:
    L = ["", f"## A cluster: {NODES} daemons and one Redis ({ch})", "",
         f"{NODES} daemons, each with its own disk cache and `--shared-cache` on one redis-server "
         f"(allkeys-lru, `?socket_timeout={CLUSTER_SOCKET_TIMEOUT_S:g}`: one host runs them all), scroll every "
         "plane file of s0 at once through the same proxy. Requests per chunk "
         "are the whole cluster's remote requests over the level's chunks.", "",
         "| run | seconds | remote requests | requests/chunk | bytes right | notes |", "|---|---|---|---|---|---|"]
    for key in ("alone", "cluster", "shared_warm", "disk_warm", "cold"):
        r = rows.get(key)
        if not r:
            continue
        note = "" if len(r["seconds"]) < 2 else "median of " + ", ".join(fmt(s) for s in r["seconds"])
        if key == "shared_warm" and rows.get("disk_warm"):
            note += f"; {r['median'] / rows['disk_warm']['median']:.2f}x the disk-warm plane"
        if key == "shared_warm" and r.get("stats"):
            st = r["stats"]  # means over the runs: the reader's reads in parts, then all (the whole entries behind it)
            note += (f"; from Redis {st.get('shared_part_bytes_read', 0) / 1e6:.2f} MB on the read's path "
                     f"({st.get('shared_partial_hits', 0):.0f} chunks in parts), "
                     f"{st.get('shared_bytes_read', 0) / 1e6:.1f} MB in all")
        if key == "cluster":
            note = (f"slowest node {r['slowest']:.3g} s; shared_hits={r['shared_hits']}, "
                    f"shared_lock_waits={r['shared_lock_waits']}, shared_errors={r.get('shared_errors', 0)}")
        L.append(f"| {r['label']} | {fmt(r['median'])} | {r['requests']:.0f} | {fmt(r['requests'] / r['chunks'])} "
                 f"| {'yes' if r['ok'] else 'NO'} | {note} |")
    return L


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="full", help="small: 128 MiB level; full: 1 GiB (default)")
    ap.add_argument("--chunkings", default=",".join(CHUNKINGS), help="comma-separated, from: " + ", ".join(CHUNKINGS))
    ap.add_argument("--latency-ms", type=float, default=30.0, help="added to every S3 request (default 30)")
    ap.add_argument("--concurrency", default="10,64", help="zarr-python async.concurrency values to try (best wins)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per plane and hot measurement (median)")
    ap.add_argument("--skip-rclone", action="store_true")
    ap.add_argument("--xz-planes", type=int, default=32,
                    help="XZ planes (y = 0, 1, ...) read by the XZ scroll workload (0: none; default 32)")
    ap.add_argument("--xz-only", action="store_true", help="run only the stack workload's XZ scroll (no slide workload)")
    ap.add_argument("--warm-gib", type=int, default=6,
                    help="memory touched right before each whole-level run in turns (0: none; default 6)")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="markdown report (default %(default)s)")
    ap.add_argument("--workloads", default="stack,slide",
                    help="comma-separated, from: stack, slide, cluster (default stack,slide; cluster: "
                         f"{NODES} daemons sharing one Redis, on the first chunking)")
    ap.add_argument("--slide-size", choices=SLIDE_SIZES, default="course",
                    help="slide level 0: small 30720 x 20480, course 921600 x 380928 (default)")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    workloads = {w.strip() for w in args.workloads.split(",") if w.strip()}
    if not workloads or workloads - {"stack", "slide", "cluster"}:
        ap.error(f"--workloads: choose from stack, slide, cluster (got {args.workloads!r})")
    chunkings = [c.strip() for c in args.chunkings.split(",") if c.strip()]
    unknown = set(chunkings) - set(CHUNKINGS)
    if unknown:
        ap.error(f"unknown chunkings {sorted(unknown)}; choose from {list(CHUNKINGS)}")
    if args.xz_only:  # the stack workload's XZ scroll alone
        workloads = {"stack"}
    if "stack" in workloads and not args.skip_rclone and not args.xz_only and not shutil.which("rclone"):
        ap.error("rclone not found: apt-get install -y rclone, or pass --skip-rclone")

    # SIGTERM takes the same way out as Ctrl-C, through every cleanup below.
    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    from latency_proxy import LatencyProxy
    from servers import MotoS3Server

    t_start = time.time()
    facts = machine_facts(args)
    run_dir = BENCH / "run"
    for leftover in (run_dir / "mnt").glob("*"):  # a run killed with -9 may have left mounts
        if is_mounted(leftover):
            fusermount(str(leftover))
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "logs").mkdir(parents=True)

    errors: list[str] = []
    results: dict[str, dict] = {}
    slide = None
    with contextlib.ExitStack() as stack:
        meta = ensure_data(args.size, chunkings) if workloads & {"stack", "cluster"} else None
        slide_meta = ensure_slide(args.slide_size) if "slide" in workloads else None
        moto = stack.enter_context(MotoS3Server())
        proxy = stack.enter_context(LatencyProxy(moto.endpoint_url, args.latency_ms / 1000))
        h = Harness(args, moto, proxy, errors)

        @stack.callback
        def cleanup():
            for proc in list(h.rclones):
                stop_rclone(proc, str(run_dir / "mnt" / "rclone"))
            for mnt in list(h.mounted):
                fusermount(mnt)
            shutil.rmtree(run_dir / "cache", ignore_errors=True)  # GiBs of chunk caches; the logs stay

        t0 = time.time()
        moto.create_bucket(BUCKET)
        if meta is not None:
            for ch in chunkings:
                upload(moto, BENCH / "data" / args.size / f"{ch}.ome.zarr", f"{args.size}/{ch}.ome.zarr")
        if slide_meta is not None:
            upload(moto, BENCH / "data" / f"slide-{args.slide_size}" / "slide.ome.zarr",
                   f"slide-{args.slide_size}/slide.ome.zarr", public=True)
        print(f"uploaded to moto in {time.time() - t0:.0f} s; proxy {proxy.url} +{args.latency_ms:g} ms", flush=True)
        if meta is not None:
            if not args.xz_only and "stack" in workloads:
                facts["machine"]["memory warm-up"] = touch_memory()
                facts["machine"]["page-cache read baseline"] = page_cache_baseline(h, meta)
            for ch in chunkings if "stack" in workloads else []:
                results[ch] = bench_chunking(h, meta, ch)
        cluster = bench_cluster(h, meta, chunkings[0]) if "cluster" in workloads else None
        if slide_meta is not None:
            slide = bench_slide(h, slide_meta)
        facts["machine"]["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        end = machine_facts(args)["machine"]["ngffmount"]
        if end != facts["machine"]["ngffmount"]:  # each mount runs the working tree of its moment
            facts["machine"]["ngffmount at end"] = end
        if meta is not None and "stack" in workloads:
            report = render(args, meta, results, errors, facts, time.time() - t_start, h.drop_ok)
        else:
            report = "\n".join(render_head(facts, time.time() - t_start) + render_failures(errors)) + "\n"
        if slide is not None:
            report += "\n".join(render_slide(args, slide)) + "\n"
        if cluster is not None:
            report += "\n".join(render_cluster(chunkings[0], cluster)) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print("\n" + report)
    print(f"report written to {out}; ngffmount logs under {run_dir / 'logs'}")
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; mounts, rclone, moto and the proxy were stopped", file=sys.stderr)
        sys.exit(130)
