"""Imaris `.ims` files written with h5py exactly as the Imaris 5.5 file format description lays
them out (no Linux Imaris writer is on PyPI: imaris-convert and PyImarisWriter ship Windows
DLLs only), and read back with the independent reader `imaris-ims-file-reader`.

Layout: root attributes (ImarisDataSet, ImarisVersion, DataSetDirectoryName, ...),
`DataSetInfo/Image` (X, Y, Z, ExtMin0..2, ExtMax0..2, Unit, Noc), `DataSetInfo/Channel <c>`
(Name, Color "r g b", ...), `DataSetInfo/TimeInfo`, `Thumbnail/Data`, and per resolution
level, timepoint and channel a group with ImageSizeX/Y/Z and HistogramMin/Max holding a
chunked, compressed `Data` (z, y, x) padded to whole chunks, and its `Histogram`. Every
attribute except NumberOfDataSets is an array of single characters, as Imaris writes them.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from zarr_fixtures import pattern


def chars(value) -> np.ndarray:
    return np.array(list(str(value)), dtype="S1")


def _set(obj, **attrs) -> None:
    for k, v in attrs.items():
        obj.attrs.create(k, chars(v))


def level_shapes(shape_zyx, levels: int) -> list[tuple[int, int, int]]:
    """Each level halves every axis longer than 1 (rounding up), as Imaris pyramids do."""
    shapes = [tuple(shape_zyx)]
    for _ in range(levels - 1):
        shapes.append(tuple(max(1, math.ceil(s / 2)) if s > 1 else 1 for s in shapes[-1]))
    return shapes


def write_ims(path: Path, shape_zyx=(9, 50, 70), timepoints: int = 1, channels: int = 1, levels: int = 3,
              dtype="uint16", chunks=(4, 32, 32), compression: str = "gzip", shuffle: bool = True,
              extent_min=(-10.0, 5.0, 2.0), voxel_xyz=(0.25, 0.25, 1.5), unit: str = "um",
              names=None, colors=None, noise: bool = False) -> Path:
    """An .ims file; volume (t, c) of level 0 is `pattern(shape, dtype, seed=10 t + c)` (or
    random, incompressible pixels with noise=True). The padding past the image size holds
    junk (not zeros), so a reader that forgot to crop shows it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = level_shapes(shape_zyx, levels)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w", libver="earliest") as f:
        _set(f, DataSetDirectoryName="DataSet", DataSetInfoDirectoryName="DataSetInfo", ImarisDataSet="ImarisDataSet",
             ImarisVersion="5.5.0", ThumbnailDirectoryName="Thumbnail")
        f.attrs.create("NumberOfDataSets", np.array([1], dtype=np.uint32))
        info = f.create_group("DataSetInfo")
        z, y, x = shape_zyx
        ext_max = [lo + v * n for lo, v, n in zip(extent_min, voxel_xyz, (x, y, z))]
        image = info.create_group("Image")
        _set(image, Description="ngffmount test image", Name="test", RecordingDate="2026-12-06 00:00:00.000",
             Noc=channels, Unit=unit, X=x, Y=y, Z=z, LensPower="",
             **{f"ExtMin{i}": f"{v:.3f}" for i, v in enumerate(extent_min)},
             **{f"ExtMax{i}": f"{v:.3f}" for i, v in enumerate(ext_max)})
        _set(info.create_group("Imaris"), Version="9.0")
        _set(info.create_group("ImarisDataSet"), Creator="Imaris", NumberOfImages=1, Version="9.0")
        time_info = info.create_group("TimeInfo")
        _set(time_info, DatasetTimePoints=timepoints, FileTimePoints=timepoints,
             **{f"TimePoint{t + 1}": f"2026-12-06 00:00:{t:02d}.000" for t in range(timepoints)})
        for c in range(channels):
            name = names[c] if names else f"Channel {c}"
            color = colors[c] if colors else "1.000 1.000 1.000"
            _set(info.create_group(f"Channel {c}"), Name=name, Color=color, ColorMode="BaseColor",
                 ColorOpacity="1.000", ColorRange="0.000 255.000", Description="", GammaCorrection="1.000")
        f.create_group("Thumbnail").create_dataset("Data", data=np.zeros((256, 1024), np.uint8))
        volumes = {}
        for t in range(timepoints):
            for c in range(channels):
                if noise:
                    vol = rng.integers(0, np.iinfo(dtype).max, size=shape_zyx, dtype=dtype)
                else:
                    vol = pattern(shape_zyx, dtype, seed=10 * t + c)
                for r, shape in enumerate(shapes):
                    volumes[(r, t, c)] = vol[tuple(slice(0, s) for s in shape)] if r == 0 else \
                        volumes[(r - 1, t, c)][::2 if shape[0] < shapes[r - 1][0] else 1, ::2, ::2]
        dataset = f.create_group("DataSet")
        for r, shape in enumerate(shapes):
            level_chunks = tuple(min(ch, s) for ch, s in zip(chunks, shape))
            padded = tuple(math.ceil(s / ch) * ch for s, ch in zip(shape, level_chunks))
            for t in range(timepoints):
                for c in range(channels):
                    group = dataset.require_group(f"ResolutionLevel {r}/TimePoint {t}/Channel {c}")
                    vol = volumes[(r, t, c)]
                    stored = np.full(padded, 7, dtype)
                    stored[tuple(slice(0, s) for s in shape)] = vol
                    group.create_dataset("Data", data=stored, chunks=level_chunks, **_filters(compression, shuffle))
                    hist, _ = np.histogram(vol, bins=256)
                    group.create_dataset("Histogram", data=hist.astype(np.uint64))
                    _set(group, ImageSizeX=shape[2], ImageSizeY=shape[1], ImageSizeZ=shape[0],
                         ImageBlockSizeX=level_chunks[2], ImageBlockSizeY=level_chunks[1],
                         ImageBlockSizeZ=level_chunks[0],
                         HistogramMin=f"{vol.min():.3f}", HistogramMax=f"{vol.max():.3f}")
    return path


def _filters(compression: str, shuffle: bool) -> dict:
    """h5py arguments for the filters Imaris writes: gzip (deflate) or, since Imaris 9.x, the
    HDF5 LZ4 filter (32004, written here by hdf5plugin's build of it), with or without shuffle."""
    if compression == "none":
        return {}
    if compression.startswith("lz4"):  # "lz4:N": blocks of N bytes
        import hdf5plugin

        block = int(compression.partition(":")[2] or 0)
        return {"shuffle": shuffle, **hdf5plugin.LZ4(nbytes=block)}
    return {"compression": compression, "shuffle": shuffle}


def read_with_reference(path: Path) -> tuple[dict[tuple[int, int, int], np.ndarray], dict[int, tuple]]:
    """Every (level, t, c) volume and each level's voxel size (z, y, x) as imaris-ims-file-reader
    reads them."""
    import hdf5plugin  # noqa: F401 - lets the reader's h5py decode LZ4 chunks
    from imaris_ims_file_reader.ims import ims

    reader = ims(str(path), squeeze_output=False)
    try:
        volumes, voxels = {}, {}
        for r in range(reader.ResolutionLevels):
            block = reader[r, :, :, :, :, :]
            for t in range(reader.TimePoints):
                for c in range(reader.Channels):
                    volumes[(r, t, c)] = np.asarray(block[t, c])
            voxels[r] = reader.metaData[r, 0, 0, "resolution"]
        return volumes, voxels
    finally:
        reader.close()
