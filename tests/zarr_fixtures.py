"""Test stores written by zarr-python (a third-party writer), with NGFF metadata from real samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

SAMPLES = Path(__file__).parent / "data" / "samples"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def pattern(shape, dtype, seed: int = 0) -> np.ndarray:
    """Compressible but position-unique pixels, so a misplaced byte shows."""
    grids = np.indices(shape, dtype=np.int64)
    value = seed
    for i, g in enumerate(grids):
        value = value + g * (7 ** (len(shape) - 1 - i) + 13 * i)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (value * 0.25 - 1000).astype(dtype)
    if dtype.kind == "b":
        return (value % 3 == 0)
    if dtype.itemsize == 8:  # exercise the high bytes too (and negatives for int64)
        v = value.astype(np.uint64)
        return ((v << np.uint64(40)) | v).astype(dtype)
    info = np.iinfo(dtype)
    return (value % (int(info.max) - int(info.min) + 1) + int(info.min)).astype(dtype)


def multiscale_meta(axes: str, levels: int, scale0, units=None, translation=None, version="0.4", name="test"):
    kinds = {"t": "time", "c": "channel"}
    ax = []
    for a in axes:
        entry = {"name": a, "type": kinds.get(a, "space")}
        if units and units.get(a):
            entry["unit"] = units[a]
        ax.append(entry)
    datasets = []
    for lvl in range(levels):
        s = [v * (2**lvl if a in "yx" else 1) for a, v in zip(axes, scale0)]
        ct = [{"type": "scale", "scale": s}]
        if translation is not None:
            ct.append({"type": "translation", "translation": list(translation)})
        datasets.append({"path": str(lvl), "coordinateTransformations": ct})
    ms = {"axes": ax, "datasets": datasets, "name": name}
    if version == "0.4":
        ms["version"] = "0.4"
    return [ms]


def write_ome_zarr(
    path,
    data: np.ndarray,
    axes: str,
    *,
    version: str = "0.4",
    levels: int = 2,
    chunks=None,
    shards=None,
    separator: str = "/",
    scale0=None,
    units=None,
    translation=None,
    attrs: dict | None = None,
    compressors=None,
) -> list[np.ndarray]:
    """Write a pyramid (y, x halved per level by striding); return the arrays written per level.
    `compressors`: as zarr-python takes them (default: zarr-python's)."""
    zarr_format = 3 if version == "0.5" else 2
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    scale0 = scale0 or [1.0] * len(axes)
    written = []
    for lvl in range(levels):
        step = tuple(2**lvl if a in "yx" else 1 for a in axes)
        arr = data[tuple(slice(None, None, s) for s in step)]
        kwargs = {}
        if zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": separator}
        c = tuple(min(c, n) for c, n in zip(chunks or arr.shape, arr.shape))
        if shards is not None:
            # Shards must hold whole inner chunks, also where a level is smaller than a shard.
            kwargs["shards"] = tuple(min(sh, -(-n // ci) * ci) for sh, n, ci in zip(shards, arr.shape, c))
        if zarr_format == 3:
            kwargs["dimension_names"] = list(axes)
        if compressors is not None:
            kwargs["compressors"] = compressors
        z = root.create_array(str(lvl), shape=arr.shape, dtype=arr.dtype, chunks=c, **kwargs)
        z[...] = arr
        written.append(arr)
    ms = multiscale_meta(axes, levels, scale0, units, translation, version)
    if attrs is None:
        attrs = {"multiscales": ms}
    if version == "0.5":
        root.attrs["ome"] = {"version": "0.5", **attrs}
    else:
        root.attrs.update(attrs)
    return written


def write_sparse_stack(path, planes: int = 2100, axes: list | None = None, datasets: list | None = None):
    """A z, y, x uint16 level of `planes` 1024 x 1024 planes (2100: 4.1 GiB declared) where
    only plane 0 (all 7) and the last plane (a pattern) exist; returns the zarr array."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(planes, 1024, 1024), dtype="uint16", chunks=(1, 1024, 1024),
                            chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[0] = 7
    arr[planes - 1] = pattern((1024, 1024), "uint16")
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes or [{"name": a, "type": "space"} for a in "zyx"],
                                  "datasets": datasets or [{"path": "0"}]}]
    return arr


def write_metadata_doc(path: Path, doc: dict) -> None:
    """Write a metadata document byte-for-byte as the sample has it (key order kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
