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
BIGSTITCHER_AIND_LOCAL = "pydantic-bigstitcher-1.multimg-zarr.xml"


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


def write_exaspim_tiles(xml: Path, dest: Path) -> dict[int, Path]:
    """The tiles an exaSPIM multimg XML names: t,c,z,y,x = 1, 1, 28672, 10640, 14192 uint16
    each (its size), declared whole, one corner chunk written. Returns setup -> tile path."""
    import xml.etree.ElementTree as ET

    tiles = {}
    for z in ET.parse(xml).getroot().iter("zgroup"):
        tile = dest / z.findtext("path").strip()
        write_pyramid(tile, "tczyx", (1, 1, 28672, 10640, 14192), [[1] * 5], (1, 1, 64, 256, 256), "uint16",
                      full_from=1, seed=int(z.get("setup")))
        tiles[int(z.get("setup"))] = tile
    return tiles


def zarr_view(path: Path, level: int, index: dict[str, int], z=slice(None)) -> np.ndarray:
    """An independent read: the z, y, x volume (or the planes `z`) of one OME-Zarr level at
    fixed t/c indices."""
    group = zarr.open_group(str(path), mode="r")
    axes = [a["name"] for a in group.attrs["multiscales"][0]["axes"]]
    arr = group[str(level)]
    sel = tuple(index.get(a, 0) if a in "tc" else z if a == "z" else slice(None) for a in axes)
    out = np.asarray(arr[sel])
    return out if out.ndim == 3 else out[None]


# -- small datasets for the adapter contract ------------------------------------------------------


def spimdata_xml(loader: str, setups: int, timepoints: int, size_xyz, voxel_xyz, unit: str = "micrometer",
                 affine=None) -> str:
    """A SpimData 0.2 document around an <ImageLoader> element, laid out as spimdata writes it."""
    setup_xml = "".join(
        f"<ViewSetup><id>{s}</id><name>setup {s}</name><size>{' '.join(map(str, size_xyz))}</size>"
        f"<voxelSize><unit>{unit}</unit><size>{' '.join(map(str, voxel_xyz))}</size></voxelSize></ViewSetup>"
        for s in range(setups))
    a = affine or [voxel_xyz[0], 0, 0, 0, 0, voxel_xyz[1], 0, 0, 0, 0, voxel_xyz[2], 0]
    regs = "".join(
        f'<ViewRegistration timepoint="{t}" setup="{s}"><ViewTransform type="affine">'
        f"<affine>{' '.join(map(str, a))}</affine></ViewTransform></ViewRegistration>"
        for s in range(setups) for t in range(timepoints))
    return (f'<SpimData version="0.2"><BasePath type="relative">.</BasePath><SequenceDescription>{loader}'
            f"<ViewSetups>{setup_xml}</ViewSetups><Timepoints type=\"range\"><first>0</first>"
            f"<last>{timepoints - 1}</last></Timepoints></SequenceDescription>"
            f"<ViewRegistrations>{regs}</ViewRegistrations></SpimData>")


def write_small_n5_universe(dir: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """A Mastodon bdv.n5.universe XML over a t,c,z,y,x OME-Zarr: 2 setups (channels) x 2
    timepoints, 2 levels; returns the XML and each view's levels as zarr-python reads them."""
    image = dir / "cells.ome.zarr"
    write_pyramid(image, "tczyx", (2, 2, 9, 40, 50), [[1, 1, 1, 1, 1], [1, 1, 1, 2, 2]], (1, 1, 4, 16, 16),
                  "uint16", full_from=0, seed=11)
    loader = ('<ImageLoader format="bdv.n5.universe" version="1.0"><Url type="relative">cells.ome.zarr</Url>'
              "<Dataset>/</Dataset></ImageLoader>")
    xml = dir / "cells.xml"
    xml.write_text(spimdata_xml(loader, 2, 2, (50, 40, 9), (0.5, 0.5, 2.0)))
    images = {f"setup{s}/timepoint{t}": [zarr_view(image, lv, {"t": t, "c": s}) for lv in range(2)]
              for s in range(2) for t in range(2)}
    return xml, images


def write_small_multimg(dir: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """A BigStitcher bdv.multimg.zarr 3.0 XML: 3 tiles, each a 1,2,z,y,x OME-Zarr whose
    channel 1 is the view (indicies "1 0"); registrations in pixels of x as BigStitcher
    writes them (calibration 1, 1, 4)."""
    root = dir / "tiles.ome.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2)
    groups_xml = ""
    images = {}
    for s in range(3):
        write_pyramid(root / f"tile{s}.zarr", "tczyx", (1, 2, 7, 33, 45), [[1, 1, 1, 1, 1], [1, 1, 2, 2, 2]],
                      (1, 1, 4, 16, 16), "uint8", full_from=0, seed=20 * s)
        groups_xml += f'<zgroup setup="{s}" tp="0" path="tile{s}.zarr" indicies="1 0" />'
        images[f"setup{s}"] = [zarr_view(root / f"tile{s}.zarr", lv, {"c": 1}) for lv in range(2)]
    loader = ('<ImageLoader format="bdv.multimg.zarr" version="3.0"><zarr type="relative">tiles.ome.zarr</zarr>'
              f"<zgroups>{groups_xml}</zgroups></ImageLoader>")
    xml = dir / "tiles.xml"
    xml.write_text(spimdata_xml(loader, 3, 1, (45, 33, 7), (0.25, 0.25, 1.0), "um",
                                affine=[1, 0, 0, 100, 0, 1, 0, 40, 0, 0, 4, 8]))
    return xml, images
