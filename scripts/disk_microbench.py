"""Micro-benchmark of the disk tier alone: CPU-seconds (time.process_time, every thread of
this process) for N misses, N puts (through the write-behind) and N hits of entries the
size of a 1x512x512 uint16 blosc-lz4 chunk (~330 KB), in a fresh cache folder.

    python3 scripts/disk_microbench.py [--n 1000] [--size 330000] [--dir /var/tmp] [--repeat 3]

Phases: `miss` is what a cold chunk costs before its fetch (holds, claim, get, release of the
claim happens at put); `put` is the put of every entry and the write-behind's flush; `hit`
is a get of each entry; `locks` is the fetch lock alone (acquire + release)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from ngffmount.cache.disk import DiskCache
from ngffmount.cache.disktier import DiskTier
from ngffmount.cache.stats import Stats


def one_run(n: int, size: int, base: str) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="ngffmount-diskbench-", dir=base)
    try:
        payloads = [os.urandom(64) * (size // 64) for _ in range(8)]
        tier = DiskTier(DiskCache(os.path.join(folder, "cache"), 10 << 30))
        tier.attach(Stats(), lambda key, data: True)
        keys = [f"token/0/{i // 32}/{i % 32}/bench" for i in range(n)]
        out = {}

        t = time.process_time()
        claims = []
        for key in keys:
            assert not tier.holds(key)
            claim = tier.claim(key)
            assert tier.get(key) is None
            claims.append(claim)
        out["miss"] = time.process_time() - t

        t = time.process_time()
        for i, (key, claim) in enumerate(zip(keys, claims)):
            tier.put(key, payloads[i % len(payloads)], {"etag": "x"}, claim, key)
        assert tier.flush(600)
        out["put"] = time.process_time() - t

        t = time.process_time()
        for i, key in enumerate(keys):
            assert tier.holds(key)
            entry = tier.get(key)
            assert entry is not None and len(entry[0]) == len(payloads[i % len(payloads)])
        out["hit"] = time.process_time() - t

        locks = tier.disk.locks
        t = time.process_time()
        for key in keys:
            slots = locks.slots([key])
            locks.acquire(slots)
            locks.release(slots)
        out["locks"] = time.process_time() - t
        tier.disk.close()
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=330_000)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.n, args.size, args.dir) for _ in range(args.repeat)]
    for phase in runs[0]:
        values = [r[phase] for r in runs]
        print(f"{phase:6s} median {statistics.median(values):.3f} CPU-s  (runs: "
              f"{', '.join(f'{v:.3f}' for v in values)}) for {args.n} entries")


if __name__ == "__main__":
    main()
