"""A level seen as (t, c, z) planes of Y x X pixels, and its calibration.

This is where the source's axis order is mapped to the t, c, z, y, x of the file views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...adapters.units import IMAGEJ_LENGTH_UNIT, IMAGEJ_TIME_UNIT, LENGTH_IN_METERS
from ...cache.readahead import Readahead
from .arrays import ArrayView


@dataclass(frozen=True)
class Calibration:
    pixel_width: float
    pixel_height: float
    pixel_depth: float
    unit: str | None  # ImageJ's spelling
    origin: tuple[float, float, float]  # x, y, z in pixels, as ImageJ counts them
    frame_interval: float | None
    time_unit: str | None


def tiff_dtype(dtype: np.dtype) -> np.dtype:
    """Little-endian (files say II); bool as uint8 0/1."""
    if dtype.kind == "b":
        return np.dtype("uint8")
    return dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype


def axis_positions(level) -> dict[str, int | None]:
    """Where t, c, z, y and x are among the level's axes (None: absent)."""
    kinds = [a.type for a in level.axes]
    space = [i for i, k in enumerate(kinds) if k == "space"]
    return {
        "t": kinds.index("time") if "time" in kinds else None,
        "c": kinds.index("channel") if "channel" in kinds else None,
        "z": space[-3] if len(space) == 3 else None,
        "y": space[-2],
        "x": space[-1],
    }


class PlaneSource:
    def __init__(self, level, engine, box: dict[str, tuple[int, int]] | None = None,
                 roles: dict[str, str] | None = None):
        """`box`: t, c, z, y or x -> [start, stop) of a crop (the whole axis where left out);
        `roles`: which level axis plays which part in the files, e.g. {"y": "z", "z": "y"} for
        XZ planes (z as rows, one file per y). Box names are in the files' roles."""
        self.level, self.engine = level, engine
        level_pos = axis_positions(level)
        self.pos = {k: level_pos[(roles or {}).get(k, k)] for k in level_pos}
        self.start = {k: 0 for k in self.pos}
        self.sizes = {k: (1 if p is None else level.shape[p]) for k, p in self.pos.items()}
        for name, (a, b) in (box or {}).items():
            self.start[name], self.sizes[name] = a, b - a
        self.nt, self.nc, self.nz = self.sizes["t"], self.sizes["c"], self.sizes["z"]
        self.height, self.width = self.sizes["y"], self.sizes["x"]
        self.dtype = tiff_dtype(level.dtype)
        self.row_bytes = self.width * self.dtype.itemsize
        self.plane_bytes = self.height * self.row_bytes
        self.plane_count = self.nt * self.nc * self.nz
        self._yx = [self.pos["y"], self.pos["x"]]
        self._yx_box = [(self.start[k], self.start[k] + self.sizes[k]) for k in ("y", "x")]
        self._last_plane: tuple[tuple[int, int, int] | None, ArrayView | None] = (None, None)

    def has_axis(self, name: str) -> bool:
        return self.pos[name] is not None

    def czt(self, i: int) -> tuple[int, int, int]:
        """Plane i of an ImageJ stack (channel fastest, then z, then t) as (t, c, z)."""
        c = i % self.nc
        z = (i // self.nc) % self.nz
        return i // (self.nc * self.nz), c, z

    def tcz(self, i: int) -> tuple[int, int, int]:
        """Plane i in (t, c, z) order, the order of the plane files' names."""
        return i // (self.nc * self.nz), (i // self.nz) % self.nc, i % self.nz

    def plane(self, t: int, c: int, z: int) -> ArrayView:
        """Plane (t, c, z): the array view of y and x with t, c and z fixed, in the file dtype."""
        key, view = self._last_plane
        if key == (t, c, z):
            return view  # reads go through a plane's bytes in order: make its view once
        fixed = {self.pos[k]: self.start[k] + i for k, i in (("t", t), ("c", c), ("z", z)) if self.pos[k] is not None}
        view = ArrayView(self.engine, self.level, self._yx, fixed, self.dtype, self._yx_box)
        self._last_plane = (t, c, z), view
        return view

    def chunks_of(self, t: int, c: int, z: int) -> list[tuple[int, ...]]:
        return self.plane(t, c, z).chunks()

    def readahead(self, plane_order) -> Readahead:
        """A readahead over the planes in `plane_order` (self.czt for stacks, self.tcz for folders)."""
        return Readahead(self.engine, self.level, self.plane_count, lambda i: self.chunks_of(*plane_order(i)))

    def read(self, t: int, c: int, z: int, start: int, stop: int, out: memoryview | None = None):
        """Bytes [start, stop) of plane (t, c, z) in C order, little-endian; with `out`, written
        there (assembled in place when they are whole elements of the level's dtype)."""
        return self.plane(t, c, z).read(start, stop, out)

    def region(self, t: int, c: int, z: int, y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        """Rows y[0]:y[1], columns x[0]:x[1] of plane (t, c, z), as (y, x) in the file dtype."""
        return self.plane(t, c, z).region((y[0], x[0]), (y[1], x[1]))

    def calibration(self) -> Calibration:
        level = self.level
        unit_x = level.axes[self.pos["x"]].unit

        def in_x_unit(name: str) -> float:
            p = self.pos[name]
            if p is None:
                return 1.0
            value, unit = level.scale[p], level.axes[p].unit
            if unit and unit_x and unit != unit_x and unit in LENGTH_IN_METERS and unit_x in LENGTH_IN_METERS:
                value *= LENGTH_IN_METERS[unit] / LENGTH_IN_METERS[unit_x]
            return value

        pw, ph, pd = in_x_unit("x"), in_x_unit("y"), in_x_unit("z")

        def origin(name: str) -> float:
            # ImageJ origins count pixels: physical = (index - origin) * pixel size.
            p = self.pos[name]
            if p is None:
                return 0.0
            shift = -level.translation[p] / level.scale[p] if level.scale[p] else 0.0
            return shift - self.start[name]

        t = self.pos["t"]
        return Calibration(
            pixel_width=pw,
            pixel_height=ph,
            pixel_depth=pd,
            unit=IMAGEJ_LENGTH_UNIT.get(unit_x, unit_x) if unit_x else None,
            origin=(origin("x"), origin("y"), origin("z")),
            frame_interval=level.scale[t] if t is not None else None,
            time_unit=IMAGEJ_TIME_UNIT.get(level.axes[t].unit, level.axes[t].unit) if t is not None and level.axes[t].unit else None,
        )
