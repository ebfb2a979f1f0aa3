"""Containers for the real BigDataViewer XMLs whose loader points at OME-Zarr or N5
(tests/data/samples/bdv, copied byte for byte; their origin is in tests/data/samples/README.md).

The pixels are written by zarr-python (OME-Zarr 0.4) and z5py (N5), at the sizes the XMLs
declare. Full-resolution levels of those sizes are gigabytes, so low levels are sparse: a
corner chunk is written per channel and timepoint, every other chunk is missing and reads
as 0. The coarsest levels are written whole. Tests compare against zarr-python / z5py reads
of the same stores, never against what they meant to write.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
from pathlib import Path

import numpy as np
import zarr

from bdv_fixtures import pattern_at

SAMPLES = Path(__file__).parent / "data" / "samples" / "bdv"
MASTODON_IDR = "mastodon-idr-13457227-tczyx.bdv-n5-universe.xml"
MOBIE_MYOSIN = "mobie-io-prospr-myosin.ome-zarr-s3.xml"
BIGSTITCHER_MESOSPIM = "pydantic-bigstitcher-6.multimg-zarr.xml"
BIGSTITCHER_AIND_S3 = "pydantic-bigstitcher-2.multimg-zarr.xml"


def copy_sample(name: str, dest_dir: Path) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SAMPLES / name, dest_dir / name)
    return dest_dir / name


def with_text(xml: Path, tag: str, value: str, dest: Path) -> Path:
    """A copy of a real XML with one element's text replaced (the container URL, pointed at a
    loopback server); every other byte is the sample's."""
    text = xml.read_text()
    new, n = re.subn(rf"(<{re.escape(tag)}>)[^<]*(</{re.escape(tag)}>)", lambda m: m.group(1) + value + m.group(2), text)
    assert n == 1, (tag, n)
    dest.write_text(new)
    return dest


def write_pyramid(path: Path, axes: str, shape0, factors, chunks, dtype, *, full_from: int, seed: int = 0,
                  scale0=None, version: str = "0.4", labels: list[str] | None = None) -> None:
    """An OME-Zarr 0.4 image written by zarr-python. `factors[l]` divides each spatial axis of
    level l (ceil); levels from `full_from` on are written whole, lower ones get one corner
    chunk per non-spatial index."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    scale0 = scale0 or [1.0] * len(axes)
    datasets = []
    for lv, f in enumerate(factors):
        shape = tuple(math.ceil(n / f[i]) for i, n in enumerate(shape0))
        ch = tuple(min(c, n) for c, n in zip(chunks, shape))
        arr = root.create_array(str(lv), shape=shape, dtype=dtype, chunks=ch,
                                chunk_key_encoding={"name": "v2", "separator": "/"}, fill_value=0)
        others = [range(n) if a in "tc" else [None] for a, n in zip(axes, shape)]
        for combo in itertools.product(*others):  # one t/c index at a time keeps memory small
            extent = shape if lv >= full_from else ch
            region = tuple(slice(v, v + 1) if v is not None else slice(0, e) for v, e in zip(combo, extent))
            start = [r.start for r in region]
            size = [r.stop - r.start for r in region]
            arr[region] = pattern_at(start, size, dtype, seed=seed + 97 * lv)
        datasets.append({"path": str(lv), "coordinateTransformations": [
            {"type": "scale", "scale": [s * f[i] for i, s in enumerate(scale0)]}]})
    kinds = {"t": "time", "c": "channel"}
    ax = [{"name": a, "type": kinds.get(a, "space"), **({"unit": "micrometer"} if a in "zyx" else {})} for a in axes]
    root.attrs["multiscales"] = [{"version": version, "name": path.stem, "axes": ax, "datasets": datasets}]
    if labels:
        group = root.require_group("labels")
        group.attrs["labels"] = labels


def spatial_factors(axes: str, per_level: list[tuple[int, int, int]]) -> list[list[int]]:
    """Per-level factors over all axes from (z, y, x) factors."""
    out = []
    for zyx in per_level:
        lookup = dict(zip("zyx", zyx))
        out.append([lookup.get(a, 1) for a in axes])
    return out


# -- the samples' containers --------------------------------------------------------------------


def write_idr_13457227(dir: Path) -> Path:
    """The Mastodon sample's image: t,c,z,y,x = 18, 4, 35, 2048, 2048 uint16 (the XML's 4
    setups, 18 timepoints and size), y/x halved over 6 levels. Chunks span 2 channels, so a
    view is cut out of a chunk shared with another setup."""
    path = dir / "13457227.zarr"
    write_pyramid(path, "tczyx", (18, 4, 35, 2048, 2048),
                  spatial_factors("tczyx", [(1, 2 ** k, 2 ** k) for k in range(6)]),
                  (1, 2, 8, 256, 256), "uint16", full_from=5, seed=3, scale0=[1, 1, 0.4, 0.21667, 0.21667])
    return path


def write_prospr_myosin(dir: Path) -> Path:
    """The MoBIE sample's image: z,y,x = 519, 471, 500 uint8 at 0.55 um, 3 levels."""
    path = dir / "prospr-myosin.ome.zarr"
    write_pyramid(path, "zyx", (519, 471, 500), [[1, 1, 1], [2, 2, 2], [4, 4, 4]], (64, 128, 128), "uint8",
                  full_from=1, seed=5, scale0=[0.55, 0.55, 0.55])
    return path


def write_mesospim(dir: Path, setups: int = 16) -> Path:
    """The BigStitcher/mesoSPIM sample's `Reuss-MousBrain2x2tiles-2ch.ome.zarr/s<k>-t0.zarr`:
    t,c,z,y,x = 1, 1, 615, 2048, 2048 uint16 per setup, halved in z, y and x over 5 levels."""
    root = dir / "Reuss-MousBrain2x2tiles-2ch.ome.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2)
    for s in range(setups):
        write_pyramid(root / f"s{s}-t0.zarr", "tczyx", (1, 1, 615, 2048, 2048),
                      spatial_factors("tczyx", [(2 ** k, 2 ** k, 2 ** k) for k in range(5)]),
                      (1, 1, 32, 256, 256), "uint16", full_from=4, seed=100 * s)
    return root


def zarr_view(path: Path, level: int, index: dict[str, int], z=slice(None)) -> np.ndarray:
    """An independent read: the z, y, x volume (or the planes `z`) of one OME-Zarr level at
    fixed t/c indices."""
    group = zarr.open_group(str(path), mode="r")
    axes = [a["name"] for a in group.attrs["multiscales"][0]["axes"]]
    arr = group[str(level)]
    sel = tuple(index.get(a, 0) if a in "tc" else z if a == "z" else slice(None) for a in axes)
    out = np.asarray(arr[sel])
    return out if out.ndim == 3 else out[None]
