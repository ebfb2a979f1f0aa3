"""An N-D view of a level (some axes fixed, the rest in a chosen order) read as C-order bytes.

This is the one place where a byte range of a view becomes regions of a level. HDF5
datasets are such views: a whole level in source axis order (sN.h5), or one (t, c) volume
as z, y, x (BigDataViewer `cells`); so is each plane of the TIFF views (planes.PlaneSource):
y and x with t, c and z fixed.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ...cache.region import byte_view, c_order_boxes, chunks_touching, read_region


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
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        self._present = [a for a in self.axes if a is not None]
        self._kept = sorted(self._present)  # the view's level axes in the level's order
        # Elements of the level's dtype in the level's axis order are the view's bytes as they are.
        self._in_place = self.dtype == level.dtype and self._present == self._kept
        self._base = [0] * len(level.shape), [1] * len(level.shape)
        for pos, index in self.fixed.items():
            self._base[0][pos], self._base[1][pos] = index, index + 1

    def read(self, start: int, stop: int, out: memoryview | None = None) -> memoryview | bytes | None:
        """Bytes [start, stop) of the view in C order; with `out`, written there and None
        returned (assembled in place, with no copy, when they are whole elements)."""
        item = self.dtype.itemsize
        first, end = start // item, -(-stop // item)  # the elements the boxes cover
        span = self._row_span(first, end)
        if span is not None:
            (lo, hi), first, end = span
            boxes = [(lo, hi)]
        else:
            boxes = list(c_order_boxes(self.shape, first, end))
        if out is not None and self._in_place and start == first * item and stop == end * item:
            pos = 0
            for lo, hi in boxes:
                llo, lhi = self.level_box(lo, hi)
                shape = [b - a for a, b in zip(llo, lhi)]
                n = math.prod(shape) * item
                read_region(self.engine, self.level, llo, lhi, out=np.frombuffer(out[pos:pos + n], self.dtype).reshape(shape))
                pos += n
            return None
        if not boxes:
            data = b""
        else:
            parts = [self.region(lo, hi).ravel() for lo, hi in boxes]
            skip = start - first * item
            # np.concatenate returns native byte order: cast back to the view's.
            whole = parts[0] if len(parts) == 1 else np.concatenate(parts).astype(self.dtype, copy=False)
            data = byte_view(whole)[skip:skip + (stop - start)]
        if out is None:
            return data
        out[:] = data
        return None

    def _row_span(self, first: int, end: int):
        """One box for elements [first, end) when they lie in one row, or in rows of one 2-D
        slice: those rows whole (at most two partial rows more), which is one region read
        instead of up to three. Returns (box, its first element, its end), or None."""
        shape = self.shape
        if len(shape) == 1 or first >= end:
            return None
        width, height = shape[-1], shape[-2]
        r0, r1 = first // width, (end - 1) // width
        if r0 // height != r1 // height:
            return None
        outer = []
        q = r0 // height
        for n in reversed(shape[:-2]):
            q, i = divmod(q, n)
            outer.insert(0, i)
        if r0 == r1:
            x0, x1 = first - r0 * width, end - r0 * width
            box = [*outer, r0 % height], [*(i + 1 for i in outer), r0 % height + 1]
            return (box[0] + [x0], box[1] + [x1]), first, end
        lo = [*outer, r0 % height, 0]
        hi = [*(i + 1 for i in outer), r1 % height + 1, width]
        return (lo, hi), r0 * width, (r1 + 1) * width

    def level_box(self, lo: Sequence[int], hi: Sequence[int]) -> tuple[list[int], list[int]]:
        """The level's [start, stop) per axis for the view's box [lo, hi)."""
        llo, lhi = list(self._base[0]), list(self._base[1])
        for pos, origin, a, b in zip(self.axes, self.origin, lo, hi):
            if pos is not None:
                llo[pos], lhi[pos] = origin + a, origin + b
        return llo, lhi

    def chunks(self) -> list[tuple[int, ...]]:
        """The level's chunks the whole view touches."""
        return chunks_touching(self.level, *self.level_box([0] * len(self.shape), self.shape))

    def region(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """The view's box [lo, hi) as an array in the view's axis order and dtype."""
        region = read_region(self.engine, self.level, *self.level_box(lo, hi))
        shape = [b - a for a, b in zip(lo, hi)]
        if self._present != self._kept:
            # Drop the fixed axes, then put the view's axes in its order.
            region = region.reshape([region.shape[a] for a in self._kept])
            region = region.transpose([self._kept.index(a) for a in self._present])
        return region.reshape(shape).astype(self.dtype, copy=False)
