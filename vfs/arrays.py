"""An N-D view of a level (some axes fixed, the rest in a chosen order) read as C-order bytes.

This is the one place where a byte range of a view becomes regions of a level. HDF5
datasets are such views: a whole level in source axis order (sN.h5), or one (t, c) volume
as z, y, x (BigDataViewer `cells`); so is each plane of the TIFF views (planes.PlaneSource):
y and x with t, c and z fixed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..cache.region import byte_view, c_order_boxes, chunks_touching, read_region


class ArrayView:
    def __init__(self, engine, level, axes: Sequence[int | None], fixed: Mapping[int, int] | None = None,
                 dtype: np.dtype | None = None, box: Sequence[tuple[int, int] | None] | None = None):
        """`axes`: level axis positions in the view's order (None: a singleton axis);
        `fixed`: level axis position -> index for the axes left out;
        `box`: per view axis, the [start, stop) of its level axis it shows (None: all of it)."""
        self.engine, self.level = engine, level
        self.axes = list(axes)
        self.fixed = dict(fixed or {})
        ranges = list(box) if box is not None else [None] * len(self.axes)
        self.origin = [0 if r is None else r[0] for r in ranges]
        self.shape = tuple(1 if a is None else (level.shape[a] if r is None else r[1] - r[0])
                           for a, r in zip(self.axes, ranges))
        self.dtype = np.dtype(dtype or level.dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        present = [a for a in self.axes if a is not None]
        # Elements of the level's dtype in the level's axis order are the view's bytes as they are.
        self._in_place = self.dtype == level.dtype and present == sorted(present)

    def read(self, start: int, stop: int, out: memoryview | None = None) -> memoryview | bytes | None:
        """Bytes [start, stop) of the view in C order; with `out`, written there and None
        returned (assembled in place, with no copy, when they are whole elements)."""
        item = self.dtype.itemsize
        e0, e1 = start // item, -(-stop // item)
        boxes = list(c_order_boxes(self.shape, e0, e1))
        if out is not None and self._in_place and start == e0 * item and stop == e1 * item:
            pos = 0
            for lo, hi in boxes:
                n = int(np.prod([h - l for l, h in zip(lo, hi)], dtype=np.int64)) * item
                llo, lhi = self.level_box(lo, hi)
                read_region(self.engine, self.level, llo, lhi,
                            out=np.frombuffer(out[pos:pos + n], self.dtype).reshape([b - a for a, b in zip(llo, lhi)]))
                pos += n
            return None
        if not boxes:
            data = b""
        else:
            parts = [self.region(lo, hi).ravel() for lo, hi in boxes]
            skip = start - e0 * item
            data = byte_view(parts[0] if len(parts) == 1 else np.concatenate(parts))[skip:skip + (stop - start)]
        if out is None:
            return data
        out[:] = data
        return None

    def level_box(self, lo: Sequence[int], hi: Sequence[int]) -> tuple[list[int], list[int]]:
        """The level's [start, stop) per axis for the view's box [lo, hi)."""
        ndim = len(self.level.shape)
        llo, lhi = [0] * ndim, [1] * ndim
        for pos, index in self.fixed.items():
            llo[pos], lhi[pos] = index, index + 1
        for a, o, l, h in zip(self.axes, self.origin, lo, hi):
            if a is not None:
                llo[a], lhi[a] = o + l, o + h
        return llo, lhi

    def chunks(self) -> list[tuple[int, ...]]:
        """The level's chunks the whole view touches."""
        return chunks_touching(self.level, *self.level_box([0] * len(self.shape), self.shape))

    def region(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """The view's box [lo, hi) as an array in the view's axis order and dtype."""
        region = read_region(self.engine, self.level, *self.level_box(lo, hi))
        # Drop the fixed axes, then put the view's axes in its order.
        present = [a for a in self.axes if a is not None]
        kept = sorted(present)
        region = region.reshape([region.shape[a] for a in kept])
        if present != kept:
            region = region.transpose([kept.index(a) for a in present])
        return region.reshape([h - l for l, h in zip(lo, hi)]).astype(self.dtype, copy=False)
