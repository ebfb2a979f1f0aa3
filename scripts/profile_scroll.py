#!/usr/bin/env python3
"""Profile the ngffmount daemon during a cold scroll through s0.tif: where its CPU goes.

    python3 scripts/profile_scroll.py --size small                     # quick (128 MiB level)
    python3 scripts/profile_scroll.py --chunking 64x256x256 --out /tmp/prof
    python3 scripts/profile_scroll.py --size small --mount-arg=--no-disk-cache

The benchmark's setup (its data, moto behind latency_proxy.py, a fresh mount on an empty
cache) and two cold scrolls of s0.tif in plane-sized reads, as `scripts/benchmark.py` times
them, each on its own new mount and empty cache:
- the first under `perf record -g` where perf is installed (true CPU by shared object and
  symbol, kernel included); its daemon CPU-seconds, from /proc/PID/stat over the benchmark's
  window (right before the read until the daemon is idle), are the reference;
- the second under `py-spy record --gil --nonblocking -r 200 -f raw` (Python stacks of the
  thread holding the GIL; nonblocking, as stopping the daemon for each sample costs it more
  CPU than the scroll itself).

Output (under --out, default $NGFFBENCH_DIR/profile): perf.data, pyspy.txt (collapsed stacks)
and README.md (the folder's report): CPU by subsystem, CPU and context switches by thread
(/proc, the first scroll), py-spy's samples classified by the innermost frame in a
known file, CPU-s = share x the reference daemon CPU-s; and perf's tables. The interpreter's
share of perf is what py-spy splits by subsystem. It uses the benchmark's data and run
directory: do not run it next to a benchmark with the same NGFFBENCH_DIR.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as bm  # noqa: E402  (the benchmark's setup, reused)

# Subsystems by the file of a stack frame; a sample goes to the innermost frame that matches.
SUBSYSTEMS = [
    ("disk cache", ("/cache/disk", "/cache/writeback", "/diskcache/", "/sqlite3/")),
    ("fetching / transport", ("/adapters/storage", "/adapters/obstore_transport", "/adapters/retry", "/adapters/counters", "/s3fs/",
                              "/aiobotocore/", "/botocore/", "/aiohttp/", "/fsspec/", "/obstore/", "/yarl/",
                              "/multidict/", "/dateutil/", "/urllib3/", "/cache/fetchhealth")),
    ("decode", ("/numcodecs/", "/blosc", "/imagecodecs/", "/zarr/codecs/", "/zarr/core/codec", "/cache/blocked",
                "/adapters/zarr_codecs", "/adapters/blosc_frames", "/adapters/precomputed_codecs")),
    ("views / TIFF assembly", ("/vfs/views/", "/vfs/writers/", "/vfs/tree/")),
    ("FUSE", ("/vfs/fuse/", "/mfusepy", "/fuse.py")),
    ("engine bookkeeping", ("/cache/engine", "/cache/fetchqueue", "/cache/readahead", "/cache/memory",
                            "/cache/level", "/cache/region", "/cache/tier", "/cache/stats", "/adapters/lru")),
]
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def classify(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        m = FRAME.match(frame)
        path = "/" + (m.group("file") if m else frame).lstrip("/")  # py-spy drops site-packages/
        for name, patterns in SUBSYSTEMS:
            if any(p in path for p in patterns):
                return name
    return "other"


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw output: one line per distinct stack, frames joined by ';', then a count."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def subsystem_table(stacks: list[tuple[list[str], int]], daemon_cpu: float) -> list[str]:
    by = collections.Counter()
    for stack, n in stacks:
        by[classify(stack)] += n
    total = sum(by.values()) or 1
    L = ["| subsystem | py-spy samples | share of samples | CPU-s estimate |", "|---|---|---|---|"]
    for name in [s for s, _ in SUBSYSTEMS] + ["other"]:
        L.append(f"| {name} | {by[name]} | {by[name] / total:.0%} | {by[name] / total * daemon_cpu:.2f} |")
    L.append(f"| all | {total} | 100% | {daemon_cpu:.2f} |")
    return L


def top_frames(stacks: list[tuple[list[str], int]], n: int = 15) -> list[str]:
    """The innermost frames that hold the most samples (self time), by the subsystem their
    stacks were given to (a shared helper, e.g. Condition.notify, appears once per subsystem)."""
    by = collections.Counter()
    for stack, count in stacks:
        by[stack[-1], classify(stack)] += count
    total = sum(by.values()) or 1
    L = ["| innermost frame | subsystem | share |", "|---|---|---|"]
    for (frame, subsystem), count in by.most_common(n):
        L.append(f"| `{frame.replace('|', '/')}` | {subsystem} | {count / total:.1%} |")
    return L


def perf_tables(data: Path, daemon_cpu: float) -> list[str]:
    """perf's samples by shared object, and its top symbols (kernel ones included)."""
    def report(*sort):
        r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
                            "--percent-limit", "0.5", "--sort", ",".join(sort)],
                           capture_output=True, text=True, timeout=600)
        rows = []
        for line in r.stdout.splitlines():
            m = re.match(r"^\s+([\d.]+)%\s+(.*\S)\s*$", line)
            if m:
                rows.append((float(m.group(1)), re.sub(r"\s{2,}", "  ", m.group(2))))
        return rows

    L = ["| shared object | share of perf samples | CPU-s estimate |", "|---|---|---|"]
    L += [f"| {name} | {pct:.1f}% | {pct / 100 * daemon_cpu:.2f} |" for pct, name in report("dso")]
    L += ["", "| symbol (shared object) | share of perf samples |", "|---|---|"]
    L += [f"| `{name}` | {pct:.1f}% |" for pct, name in report("dso", "sym")[:20]]
    return L


def thread_times(pid: int) -> dict[str, tuple[str, float, int]]:
    """Per thread of `pid`: (kernel name, CPU seconds, voluntary context switches)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue  # ended meanwhile
        switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        out[task.name] = (stat[stat.index("(") + 1:stat.rindex(")")], bm.stat_ticks(stat) / bm.CLK_TCK, switches)
    return out


def python_thread_names(pid: int) -> dict[str, str]:
    """Thread id -> Python thread name (digits dropped: fetch_3 -> fetch), from `py-spy dump`.
    Threads libfuse and obstore's runtime start have no Python name."""
    dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=120).stdout
    return {m.group(1): re.sub(r"[_-]?\d+$", "", m.group(2))
            for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]*)"', dump)}


def thread_table(before: dict, after: dict, names: dict[str, str]) -> list[str]:
    """CPU and voluntary switches over the read, by thread kind."""
    kinds = collections.defaultdict(lambda: [0, 0.0, 0])
    for tid, (comm, cpu, switches) in after.items():
        _, cpu0, switches0 = before.get(tid, (comm, 0.0, 0))
        kind = names.get(tid) or ("tokio runtime (obstore)" if comm.startswith("tokio") else f"{comm} (libfuse workers and others)")
        row = kinds[kind]
        row[0] += 1
        row[1] += cpu - cpu0
        row[2] += switches - switches0
    L = ["| threads | count | CPU-s | voluntary switches |", "|---|---|---|---|"]
    for kind, (count, cpu, switches) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        if cpu >= 0.005 or switches:
            L.append(f"| {kind} | {count} | {cpu:.2f} | {switches} |")
    return L


def stop(proc: subprocess.Popen | None, timeout: float = 120) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # both write their output on SIGINT
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def profiled_scroll(h: bm.Harness, url: str, spec, profiler: list[str] | None, log: Path,
                    extra: tuple = (), by_thread: bool = False) -> dict:
    """One cold scroll (new mount, empty cache) measured like the benchmark's, with `profiler`
    ("{pid}" = the daemon) recording from before the read until the daemon is idle."""
    mnt, pid, daemon_log = h.ngff_mount(url, h.fresh("ngff"), extra=extra)
    proc = None
    try:
        if pid is None:
            raise bm.BenchError("the ngffmount daemon was not found")
        if profiler:
            proc = subprocess.Popen([a.replace("{pid}", str(pid)) for a in profiler],
                                    stdout=subprocess.DEVNULL, stderr=open(log, "w"))
            time.sleep(2)  # attached before the read
            if proc.poll() is not None:
                raise bm.BenchError(f"{profiler[0]} exited: {log.read_text()[-2000:]}")
        before = thread_times(pid) if by_thread else {}
        run = h.measure(spec(mnt), mnt)
        if by_thread:
            run["threads"] = thread_table(before, thread_times(pid), python_thread_names(pid))
        return run
    except bm.BenchError as exc:
        raise bm.BenchError(f"{exc}\nngffmount daemon log {daemon_log}:\n{bm.tail(daemon_log, 40)}") from None
    finally:
        stop(proc)
        h.ngff_unmount(mnt, pid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=bm.SIZES, default="full", help="small: 128 MiB level; full: 1 GiB (default)")
    ap.add_argument("--chunking", choices=bm.CHUNKINGS, default="1x512x512")
    ap.add_argument("--latency-ms", type=float, default=30.0, help="added to every S3 request (default 30)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    ap.add_argument("--no-perf", action="store_true", help="py-spy and /proc only, even if perf is installed")
    ap.add_argument("--mount-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `ngffmount mount`, repeatable (e.g. --mount-arg=--no-disk-cache)")
    ap.add_argument("--out", default=str(bm.BENCH / "profile"), help="output directory (default %(default)s)")
    args = ap.parse_args()
    if not shutil.which("py-spy"):
        ap.error("py-spy not found: pip install py-spy (the bench extra)")
    use_perf = not args.no_perf and shutil.which("perf") is not None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from latency_proxy import LatencyProxy
    from servers import MotoS3Server

    def on_sigterm(*_):  # the same way out as Ctrl-C: profilers stopped, mount and servers gone
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    meta_path = bm.BENCH / "data" / args.size / "meta.json"
    have = json.loads(meta_path.read_text())["chunkings"] if meta_path.exists() else []
    meta = bm.ensure_data(args.size, sorted({*have, args.chunking}))  # regenerates the other one too if it was there
    nz, ny, nx = meta["shape"]
    run_dir = bm.BENCH / "run"
    for leftover in (run_dir / "mnt").glob("*"):
        if bm.is_mounted(leftover):
            bm.fusermount(str(leftover))
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "logs").mkdir(parents=True)
    prefix = f"{args.size}/{args.chunking}.ome.zarr"
    pyspy_out, perf_out = out / "pyspy.txt", out / "perf.data"
    spec = lambda mnt: {"kind": "file", "path": f"{mnt}/s0.tif", "block": ny * nx * 2,  # noqa: E731
                        "verify": "stack", "planes": nz, "plane_bytes": ny * nx * 2}
    with MotoS3Server() as moto, LatencyProxy(moto.endpoint_url, args.latency_ms / 1000) as proxy:
        moto.create_bucket(bm.BUCKET)
        bm.upload(moto, bm.BENCH / "data" / prefix, prefix)
        h = bm.Harness(SimpleNamespace(size=args.size, warm_gib=0), moto, proxy, [])
        url = f"s3://{bm.BUCKET}/{prefix}"
        try:
            # Two cold scrolls, each on a new mount and an empty cache: perf's (or none) gives
            # the daemon's CPU-s; py-spy's, which costs the daemon more, only the split.
            perf_cmd = ["perf", "record", "-g", "-F", "499", "-o", str(perf_out), "-p", "{pid}"] if use_perf else None
            run = profiled_scroll(h, url, spec, perf_cmd, out / "perf.log", tuple(args.mount_arg), by_thread=True)
            pyspy_cmd = ["py-spy", "record", "--gil", "--nonblocking", "-r", str(args.rate), "-f", "raw",
                         "-o", str(pyspy_out), "--pid", "{pid}"]
            spy_run = profiled_scroll(h, url, spec, pyspy_cmd, out / "py-spy.log", tuple(args.mount_arg))
        except bm.BenchError as exc:
            print(exc, file=sys.stderr)
            return 1
    if run["hashes"] != meta["planes"] or spy_run["hashes"] != meta["planes"]:
        print("WRONG BYTES in the scroll", file=sys.stderr)
        return 1
    daemon_cpu, reader_cpu = run["cpu_daemon"], run["cpu_reader"]
    stacks = read_collapsed(pyspy_out)
    L = [f"# Profile of a cold scroll ({args.size} level, {args.chunking})", "",
         f"Command: `{' '.join(['python3', *sys.argv])}`  ",
         f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; git {bm.machine_facts(args)['machine']['ngffmount']}", "",
         f"One cold scroll of s0.tif ({nz} x {ny} x {nx} uint16, plane-sized reads, new mount, empty cache, "
         f"+{args.latency_ms:g} ms per request{''.join(' ' + a for a in args.mount_arg)})"
         f"{' under perf' if use_perf else ''}: {run['seconds']:.2f} s, "
         f"{run['requests']} requests; CPU-s: reader {reader_cpu:.2f}, daemon {daemon_cpu:.2f} (/proc, from right "
         "before the read until the daemon is idle). A second cold scroll, under py-spy: "
         f"{spy_run['seconds']:.2f} s, daemon {spy_run['cpu_daemon']:.2f} CPU-s.",
         "", "### Daemon CPU by subsystem (py-spy --gil, Python stacks)", "",
         f"py-spy at {args.rate} Hz (--nonblocking: the daemon is not stopped to sample), samples of the thread "
         "holding the GIL, each given to the subsystem of its innermost frame in a known file; CPU-s estimate = "
         "share x the daemon's CPU-s of the first scroll. Native work that releases the GIL (blosc, memcpy, the "
         "kernel's copies) is invisible here: see perf below.", ""]
    L += subsystem_table(stacks, daemon_cpu)
    L += ["", "Top innermost frames:", ""] + top_frames(stacks)
    L += ["", "### Daemon CPU by thread (/proc/PID/task, the first scroll)", "",
          "CPU seconds and voluntary context switches of each kind of thread, from right before the read until the "
          "daemon is idle; Python's names from `py-spy dump`.", ""] + run["threads"]
    if use_perf and perf_out.exists():
        L += ["", "### Daemon CPU by shared object (perf record -g, all threads, kernel included)", ""]
        L += perf_tables(perf_out, daemon_cpu)
    elif not use_perf:
        L += ["", "perf not used (not installed, or --no-perf)."]
    report = "\n".join(L) + "\n"
    (out / "README.md").write_text(report)
    print(report)
    print(f"written: {out / 'README.md'}, {pyspy_out}" + (f", {perf_out}" if use_perf else ""))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
