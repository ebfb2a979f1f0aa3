"""Imaris `.ims` files (the Imaris 5.5 file format: HDF5 with a resolution pyramid).

Pixels are at `DataSet/ResolutionLevel <r>/TimePoint <t>/Channel <c>/Data` (z, y, x), stored
in chunks that may pad the image past `ImageSizeX/Y/Z` (attributes of the Channel group):
each level is cropped to that size. `DataSetInfo/Image` holds the extent (`ExtMin0..2`,
`ExtMax0..2`, x y z) and its `Unit`; `DataSetInfo/Channel <c>` the channel's `Name` and
`Color` ("r g b", 0 to 1). Imaris writes attributes as arrays of single characters.

The file is read like a remote BigDataViewer HDF5: h5py reads the metadata through range
requests, each Data dataset's chunk offsets are indexed once, and every chunk is then one
range request through the chunk cache. The file is never downloaded whole.
"""

from __future__ import annotations

import math
import posixpath
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from .base import Axis, Channel, Image, Level, make_cache_token, unit_name
from .bdv import BDV_TYPES, Hdf5CellsLevel
from .errors import BadMetadata, ChunkReadError, NotAnImage
from .hdf5_chunks import DatasetLayout, Hdf5File, check_filters
from .storage import Store
from .urls import normalize_url, parent_url, redact

FORMAT = "Imaris"
MAX_LEVELS = 64
MAX_VIEWS = 100_000  # (timepoint, channel) pairs probed, at most
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")  # looked at for Imaris attributes (exports get renamed)


def _path_of(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/")


def claims(url: str) -> bool:
    """An .ims file by its suffix; an .h5/.hdf5 file is looked at for Imaris attributes."""
    return _path_of(url).lower().endswith((".ims", *HDF5_SUFFIXES))


def open_imaris(url: str, storage_options: Mapping[str, Any] | None, concurrency: int) -> Image:
    store = Store(parent_url(url), storage_options, concurrency)
    name = posixpath.basename(_path_of(url))
    f = Hdf5File(store, name, redact(url))
    if name.lower().endswith(HDF5_SUFFIXES) and f.attribute("/", "ImarisDataSet") is None:
        raise NotAnImage(f"{f.where}: an HDF5 file, but not an Imaris one (no ImarisDataSet attribute); "
                         "a BigDataViewer HDF5 is mounted through its XML")
    return ImarisFile(f).image(posixpath.splitext(name)[0], normalize_url(url))


def text(value) -> str | None:
    """An Imaris attribute as text: an array of single characters (as Imaris writes them), a
    byte string or a str."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "S":
            value = b"".join(value.ravel().tolist())
        elif value.dtype.kind == "U":
            return "".join(value.ravel().tolist())
        else:
            return " ".join(str(v) for v in value.ravel())
    if isinstance(value, bytes):
        try:  # "µm" may come as UTF-8 (two characters) or Latin-1 (one)
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return str(value)


def _channel_path(r: int, t: int, c: int) -> str:
    return f"DataSet/ResolutionLevel {r}/TimePoint {t}/Channel {c}"


class ImarisFile:
    def __init__(self, f: Hdf5File):
        self.f, self.where = f, f.where

    def number(self, path: str, name: str) -> float:
        raw = text(self.f.attribute(path, name))
        try:
            value = float(raw) if raw is not None else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise BadMetadata(f"{self.where}: {path} attribute {name} is {raw!r}, not a number")
        return value

    def _exists(self, path: str) -> bool:
        return self.f.attribute(path, "ImageSizeX") is not None

    def _count(self, path_of, limit: int, stated: tuple[str, str] | None = None) -> int:
        """How many of path_of(0), path_of(1), ... exist (a Channel group with ImageSizeX). The
        count DataSetInfo states is trusted when its last one exists and the next does not:
        probing each of a thousand timepoints would read a thousand headers spread over the
        file, one request each on a remote file."""
        if stated is not None:
            try:
                n = int(self.number(*stated))
            except BadMetadata:
                n = 0
            if 0 < n <= limit and self._exists(path_of(n - 1)) and not self._exists(path_of(n)):
                return n
        n = 0
        while n < limit and self._exists(path_of(n)):
            n += 1
        return n

    def image(self, name: str, source_url: str) -> Image:
        if not self._exists(_channel_path(0, 0, 0)):
            raise NotAnImage(f"{self.where}: not an Imaris file (no {_channel_path(0, 0, 0)} with ImageSizeX)")
        n_levels = self._count(lambda r: _channel_path(r, 0, 0), MAX_LEVELS)
        n_t = self._count(lambda t: _channel_path(0, t, 0), MAX_VIEWS, ("DataSetInfo/TimeInfo", "FileTimePoints"))
        n_c = self._count(lambda c: _channel_path(0, 0, c), MAX_VIEWS // max(n_t, 1), ("DataSetInfo/Image", "Noc"))
        # The extent: voxel size = extent / image size of each level; the origin is ExtMin.
        ext_min = [self.number("DataSetInfo/Image", f"ExtMin{i}") for i in range(3)]
        ext_max = [self.number("DataSetInfo/Image", f"ExtMax{i}") for i in range(3)]
        unit = unit_name(text(self.f.attribute("DataSetInfo/Image", "Unit")))
        axes = ([Axis("t", "time")] if n_t > 1 else []) + ([Axis("c", "channel")] if n_c > 1 else []) \
            + [Axis(a, "space", unit) for a in "zyx"]
        levels: list[Level] = []
        voxel0 = None
        for r in range(n_levels):
            size = [int(self.number(_channel_path(r, 0, 0), f"ImageSize{a}")) for a in "XYZ"]
            if min(size) <= 0:
                raise BadMetadata(f"{self.where}: {_channel_path(r, 0, 0)} has image size {size}")
            voxel = [(hi - lo) / n for lo, hi, n in zip(ext_min, ext_max, size)]
            if not all(v > 0 for v in voxel):
                raise BadMetadata(f"{self.where}: DataSetInfo/Image extent {ext_min}..{ext_max} is empty")
            voxel0 = voxel0 or voxel
            # A coarser voxel's centre sits half its extra size further in (as for pyramids elsewhere).
            origin = [lo + (v - v0) / 2 for lo, v, v0 in zip(ext_min, voxel, voxel0)]
            layout = self.f.layout(f"{_channel_path(r, 0, 0)}/Data")
            if layout is None:
                break
            levels.append(ImarisLevel(self.f, r, n_t, n_c, size[::-1], layout, axes, voxel[::-1], origin[::-1]))
        if not levels:
            raise BadMetadata(f"{self.where}: {_channel_path(0, 0, 0)} has no Data")
        return Image(name, levels, self.channels(n_c), source_url, FORMAT, self.f.mtime)

    def channels(self, n_c: int) -> list[Channel]:
        out = []
        for c in range(n_c):
            path = f"DataSetInfo/Channel {c}"
            label = text(self.f.attribute(path, "Name"))
            out.append(Channel(label=label or None, color=_hex_color(text(self.f.attribute(path, "Color")))))
        return out


def _hex_color(value: str | None) -> str | None:
    """"r g b" floats from 0 to 1 as 6 hex digits; None when it is not that."""
    try:
        rgb = [float(v) for v in (value or "").split()]
    except ValueError:
        return None
    if len(rgb) != 3 or not all(0 <= v <= 1 for v in rgb):
        return None
    return "".join(f"{round(v * 255):02X}" for v in rgb)


class ImarisLevel(Level):
    """One resolution level over every (timepoint, channel): chunk (t, c, z, y, x) is chunk
    (z, y, x) of that view's Data. The first view's layout stands for all; another view whose
    Data differs fails its reads with a clear error (Hdf5CellsLevel checks on first use)."""

    def __init__(self, f: Hdf5File, r: int, n_t: int, n_c: int, shape_zyx, layout: DatasetLayout, axes,
                 scale_zyx, translation_zyx):
        check_filters(layout, f.where)
        if len(layout.shape) != 3:
            raise BadMetadata(f"{f.where}: {_channel_path(r, 0, 0)}/Data is not 3D")
        if any(s > d for s, d in zip(shape_zyx, layout.shape)):
            raise BadMetadata(f"{f.where}: {_channel_path(r, 0, 0)} image size {shape_zyx[::-1]} is larger "
                              f"than its Data {list(layout.shape[::-1])} (x, y, z)")
        self.file, self.r = f, r
        self.path = f"DataSet/ResolutionLevel {r}"
        self.layout = layout
        self.lead = (n_t,) * (n_t > 1) + (n_c,) * (n_c > 1)  # the t and c axes that are shown
        self.n_t, self.n_c = n_t, n_c
        self.shape = self.lead + tuple(int(s) for s in shape_zyx)
        self.chunk_shape = (1,) * len(self.lead) + tuple(layout.chunks)
        self.dtype = layout.dtype
        self.axes = tuple(axes)
        self.scale = (1.0,) * len(self.lead) + tuple(scale_zyx)
        self.translation = (0.0,) * len(self.lead) + tuple(translation_zyx)
        self.fill_value = 0
        self.cache_token = make_cache_token(f"{f.identity}/{self.path}",
                                            {**layout.describe(), "views": [n_t, n_c], "image": list(shape_zyx)})
        self._views: dict[tuple[int, int], Hdf5CellsLevel] = {}
        self._lock = threading.Lock()

    def _view(self, t: int, c: int) -> Hdf5CellsLevel:
        with self._lock:
            view = self._views.get((t, c))
            if view is None:
                data_type = self.dtype.name if self.dtype.name in BDV_TYPES else None
                view = self._views[(t, c)] = Hdf5CellsLevel(
                    lambda: self.file, f"{_channel_path(self.r, t, c)}/Data", self.layout, data_type,
                    self.axes[-3:], self.scale[-3:], self.translation[-3:], is_template=(t, c) == (0, 0))
            return view

    def _split(self, idx: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
        lead = list(idx[: len(self.lead)])
        t = lead.pop(0) if self.n_t > 1 else 0
        c = lead.pop(0) if self.n_c > 1 else 0
        return t, c, tuple(idx[len(self.lead):])

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        t, c, zyx = self._split(idx)
        return f"{t}/{c}/" + "/".join(str(i) for i in zyx)

    def fetch_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        by_view: dict[tuple[int, int], list[str]] = {}
        for k in keys:
            t, c, rest = k.split("/", 2)
            by_view.setdefault((int(t), int(c)), []).append(rest)
        out: dict[str, bytes | None] = {}
        for (t, c), rests in by_view.items():
            got = self._view(t, c).fetch_many(rests)
            out.update((f"{t}/{c}/{rest}", got[rest]) for rest in rests)
        return out

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        t, c, zyx = self._split(idx)
        if t >= self.n_t or c >= self.n_c:
            raise ChunkReadError(f"{self.file.where}: no view t{t} c{c} in {self.path}")
        arr = self._view(t, c).decode(zyx, raw)
        return arr.reshape(self.chunk_shape)
