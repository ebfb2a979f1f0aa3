"""`ngffmount stats`, `ngffmount cache info|clear|prefetch`: looking at and managing the cache."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import sys
import time

from ...adapters import Image, NgffMountError, normalize_url, open_source
from ...cache.disk import FULL_MARGIN, CacheUnavailable, DiskCache
from ...cache.diskfolder import describe, human, remove_cache_files
from ...cache.engine import ChunkEngine
from ...cache.region import chunks_touching

PREFETCH_BATCH = 64


def stats_table(mountpoint: str) -> str:
    path = os.path.join(mountpoint, ".ngffmount", "stats.json")
    try:
        with open(path) as f:
            stats = json.load(f)
    except FileNotFoundError:
        raise NgffMountError(f"{mountpoint} is not an ngffmount mount (no .ngffmount/stats.json)") from None
    except OSError as exc:
        raise NgffMountError(f"cannot read {path}: {exc.strerror}") from None
    width = max(len(k) for k in stats)
    rows = []
    for key, value in stats.items():
        shown = human(value) if key.endswith("bytes") or key.startswith("bytes") else value
        rows.append(f"{key:<{width}}  {shown}")
    return "\n".join(rows)


def cache_info(directory: str) -> str:
    """Reads the folder without writing to it: works on a full file system too."""
    if not os.path.isdir(directory):
        return f"cache directory {directory} does not exist yet (empty)"
    try:
        info = describe(directory)
    except FileNotFoundError:
        return f"cache directory {directory} holds no cache yet (empty)"
    except (OSError, sqlite3.Error) as exc:
        raise NgffMountError(f"cannot read the cache at {directory}: {exc}") from None
    full = " (full: mounts evict and write less)" if info["free"] < FULL_MARGIN else ""
    return "\n".join([
        f"directory  {directory}",
        f"entries    {info['entries']}",
        f"size       {human(info['size'])}",
        f"limit      {human(info['limit'])} (as last set by a mount; --cache-size)",
        f"free       {human(info['free'])} on its file system{full}",
    ])


def cache_clear(directory: str, source: str | None = None) -> str:
    """Empty the cache folder, or with `source`, drop only the entries fetched through it."""
    if not os.path.isdir(directory):
        return f"cache directory {directory} does not exist: nothing to clear"
    try:
        disk = DiskCache(directory, size_limit=None)
    except CacheUnavailable as exc:
        if source is not None:
            raise NgffMountError(f"{exc}; `ngffmount cache clear` without a source empties it") from None
        # Not even room to open it: drop its files, which mounts using it make again.
        try:
            entries = describe(directory)["entries"]
        except (OSError, sqlite3.Error):
            entries = "all"
        remove_cache_files(directory)
        return f"removed {entries} entries from {directory} ({exc}: removed its database and files)"
    try:
        if source is not None:
            url = normalize_url(source)
            return f"removed {disk.clear_source(url)} entries of {url} from {directory}"
        return f"removed {disk.evicted_to_open + disk.clear()} entries from {directory}"
    except (OSError, sqlite3.Error) as exc:
        raise NgffMountError(f"cannot clear the cache at {directory}: {exc}") from None
    finally:
        disk.close()


def parse_region(text: str | None, level) -> tuple[list[int], list[int]]:
    """`z0:z1,y0:y1,x0:x1` (spatial axes) or one slice per axis; open ends allowed."""
    shape = level.shape
    lo, hi = [0] * len(shape), list(shape)
    if not text:
        return lo, hi
    parts = text.split(",")
    space = [i for i, a in enumerate(level.axes) if a.type == "space"]
    if len(parts) == len(shape):
        dims = list(range(len(shape)))
    elif len(parts) == len(space):
        dims = space
    else:
        raise NgffMountError(f"--region has {len(parts)} parts; give {len(space)} (spatial axes) or {len(shape)}")
    for dim, part in zip(dims, parts):
        a, sep, b = part.partition(":")
        try:
            start = int(a) if a.strip() else 0
            stop = int(b) if sep and b.strip() else (shape[dim] if sep else start + 1)
        except ValueError:
            raise NgffMountError(f"--region part {part!r} is not start:stop") from None
        if not 0 <= start < stop <= shape[dim]:
            raise NgffMountError(f"--region part {part!r} is outside 0:{shape[dim]}")
        lo[dim], hi[dim] = start, stop
    return lo, hi


def _images(node, prefix="") -> list[tuple[str, Image]]:
    if isinstance(node, Image):
        return [(prefix, node)]
    out = []
    for name, image in node.images.items():
        out.append((f"{prefix}{name}/", image))
    for name, group in node.groups.items():
        out += _images(group, f"{prefix}{name}/")
    return out


def prefetch(source: str, storage_options: dict, concurrency: int, cache_dir: str, cache_size: int,
             level_name: str | None, region: str | None, shared=None, progress=sys.stderr) -> str:
    """Fetch chunks into the disk cache, or with `shared` (a tier, see cache/tier.py) into that
    tier only: warming a cluster's shared cache needs no local copy."""
    tree = open_source(source, storage_options, concurrency)
    targets = []
    for prefix, image in _images(tree):
        names = [f"s{i}" for i in range(len(image.levels))]
        if level_name is not None and level_name not in names:
            raise NgffMountError(f"--level {level_name} does not exist; levels are {', '.join(names)}")
        for name, level in zip(names, image.levels):
            if level_name is None or name == level_name:
                targets.append((f"{prefix}{name}", level, parse_region(region, level)))
    if shared is not None:
        engine = ChunkEngine(memory_bytes=0, tiers=[shared])
        shared.check()
        where = f"the shared cache {shared.url.redacted}"
    else:
        try:
            disk = DiskCache(cache_dir, cache_size, source=normalize_url(source))
        except CacheUnavailable as exc:
            raise NgffMountError(str(exc)) from None
        engine = ChunkEngine(disk=disk, memory_bytes=0)
        where = f"the cache at {cache_dir}"
    total = sum(len(chunks_touching(level, lo, hi)) for _, level, (lo, hi) in targets)
    done = fetched = nbytes = 0
    started = time.monotonic()
    for name, level, (lo, hi) in targets:
        indices = iter(chunks_touching(level, lo, hi))
        while batch := list(itertools.islice(indices, PREFETCH_BATCH)):
            n, b = engine.fill_disk(level, batch)
            done, fetched, nbytes = done + len(batch), fetched + n, nbytes + b
            _draw(progress, name, done, total, nbytes, time.monotonic() - started)
    engine.flush_disk()
    if progress is not None:
        progress.write("\n")
    return f"{total} chunks in {where}: {fetched} fetched ({human(nbytes)}), {total - fetched} already there"


def _draw(out, name: str, done: int, total: int, nbytes: int, elapsed: float) -> None:
    if out is None:
        return
    width = 30
    filled = int(width * done / max(1, total))
    rate = nbytes / elapsed if elapsed > 0 else 0
    out.write(f"\r{name:<8} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} chunks  {human(nbytes)}  {human(rate)}/s ")
    out.flush()
