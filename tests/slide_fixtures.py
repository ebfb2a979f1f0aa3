"""Whole-slide test stores: pyramids declared at full size by zarr-python (a third-party
writer), with only a few chunks written and the rest left to the fill value, and readers
that see a mounted TIFF through tifffile's zarr interface (tile by tile)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import tifffile
import zarr

from zarr_fixtures import pattern

# The NGFF course's example of a slide too large for one TIFF (idr0053): 921600 x 380928.
COURSE_HEIGHT, COURSE_WIDTH = 380928, 921600


def sparse_pyramid(path, shape, dtype, axes: str, chunks, *, factors=None, written=(), units="micrometer",
                   pixel_size=0.25) -> list[zarr.Array]:
    """An OME-Zarr 0.4 pyramid (zarr v2, '/' keys) whose level k has y and x divided by
    factors[k] (rounded up; default halving until both fit one chunk). `written`: (level,
    y, x) positions where one chunk-sized block of pattern pixels is written, on every
    other plane of that level. Returns the arrays as zarr-python opens them."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    ty, tx = axes.index("y"), axes.index("x")
    if factors is None:
        factors, f = [], 1
        while True:
            factors.append(f)
            if -(-shape[ty] // f) <= chunks[ty] and -(-shape[tx] // f) <= chunks[tx]:
                break
            f *= 2
    kinds = {"t": "time", "c": "channel"}
    datasets, arrays = [], []
    for k, f in enumerate(factors):
        s = [(-(-n // f) if i in (ty, tx) else n) for i, n in enumerate(shape)]
        arr = root.create_array(str(k), shape=s, dtype=dtype, chunks=chunks,
                                chunk_key_encoding={"name": "v2", "separator": "/"})
        scale = [pixel_size * f if i in (ty, tx) else 1.0 for i in range(len(shape))]
        datasets.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        arrays.append(arr)
    for seed, (k, y, x) in enumerate(written):
        arr = arrays[k]
        h, w = min(chunks[ty], arr.shape[ty] - y), min(chunks[tx], arr.shape[tx] - x)
        box = [slice(None)] * len(shape)
        box[ty], box[tx] = slice(y, y + h), slice(x, x + w)
        block_shape = [arr.shape[i] if i not in (ty, tx) else (h if i == ty else w) for i in range(len(shape))]
        arr[tuple(box)] = pattern(block_shape, dtype, seed=seed + 1)
    ax = [{"name": a, "type": kinds.get(a, "space"), **({"unit": units} if a in "zyx" else {})} for a in axes]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": ax, "datasets": datasets, "name": "slide"}]
    return arrays


def course_slide(path) -> list[zarr.Array]:
    """The course example as bioformats2raw writes it: t, c, z, y, x with 1024 x 1024 chunks,
    halved down to one chunk (11 levels); chunks written at the corners and the middle."""
    h, w = COURSE_HEIGHT, COURSE_WIDTH
    return sparse_pyramid(path, (1, 1, 1, h, w), "uint8", "tczyx", (1, 1, 1, 1024, 1024),
                          written=[(0, 0, 0), (0, h - 1024, w - 1024), (0, h // 2 - 1024, w // 2 - 1024),
                                   (0, h // 2, w // 2), (1, h // 4, w // 4), (4, 0, 0)])


def tiff_levels(file) -> list[zarr.Array]:
    """Each level of a TIFF's first series (a path or a file object), read tile by tile
    through tifffile's zarr store."""
    store = tifffile.imread(file, aszarr=True)
    opened = zarr.open(store, mode="r")
    if isinstance(opened, zarr.Array):
        return [opened]
    return [opened[str(k)] for k in range(len(list(opened.array_keys())))]


def windows(height: int, width: int, size: int = 1024) -> list[tuple[int, int]]:
    """Windows at the four corners, the middle and across the middle's chunk seams."""
    h, w = min(size, height), min(size, width)
    return [(0, 0), (0, width - w), (height - h, 0), (height - h, width - w),
            (height // 2, width // 2), (max(0, height // 2 - h // 2), max(0, width // 2 - w // 3))]


def daemon_rss_mib(mnt) -> float:
    pid = json.loads((mnt / ".ngffmount" / "stats.json").read_text())["pid"]
    with open(f"/proc/{pid}/status") as f:
        rss = next(line for line in f if line.startswith("VmRSS:"))
    return int(rss.split()[1]) / 1024


def tiff_end(path) -> int:
    """Where the last strip or tile of any image of the first series ends (all levels)."""
    end = 0
    with tifffile.TiffFile(str(path)) as tif:
        for level in tif.series[0].levels:
            for page in level.pages:
                k = int(np.argmax(page.dataoffsets))
                end = max(end, page.dataoffsets[k] + page.databytecounts[k])
    return end


def run(*cmd: str, timeout: float = 300) -> str:
    """A real client's output; fails the test with its stderr when it fails."""
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "VIPS_WARNING": "0"})
    assert result.returncode == 0, f"{cmd} failed: {result.stderr}"
    return result.stdout
