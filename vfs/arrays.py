"""An N-D view of a level (some axes fixed, the rest in a chosen order) read as C-order bytes.

HDF5 datasets are such views: a whole level in source axis order (sN.h5), or one (t, c)
volume as z, y, x (BigDataViewer `cells`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..cache.region import byte_view, c_order_boxes, read_region


class ArrayView:
    def __init__(self, engine, level, axes: Sequence[int | None], fixed: Mapping[int, int] | None = None,
                 dtype: np.dtype | None = None):
        """`axes`: level axis positions in the view's order (None: a singleton axis);
        `fixed`: level axis position -> index for the axes left out."""
        self.engine, self.level = engine, level
        self.axes = list(axes)
        self.fixed = dict(fixed or {})
        self.shape = tuple(1 if a is None else level.shape[a] for a in self.axes)
        self.dtype = np.dtype(dtype or level.dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self, start: int, stop: int) -> memoryview | bytes:
        """Bytes [start, stop) of the view in C order."""
        item = self.dtype.itemsize
        e0, e1 = start // item, -(-stop // item)
        parts = [self._box(lo, hi).ravel() for lo, hi in c_order_boxes(self.shape, e0, e1)]
        if not parts:
            return b""
        data = byte_view((parts[0] if len(parts) == 1 else np.concatenate(parts)).astype(self.dtype, copy=False))
        skip = start - e0 * item
        return data[skip:skip + (stop - start)]

    def _box(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        ndim = len(self.level.shape)
        llo, lhi = [0] * ndim, [1] * ndim
        for pos, index in self.fixed.items():
            llo[pos], lhi[pos] = index, index + 1
        present = [(a, l, h) for a, l, h in zip(self.axes, lo, hi) if a is not None]
        for a, l, h in present:
            llo[a], lhi[a] = l, h
        region = read_region(self.engine, self.level, llo, lhi)
        # Drop the fixed axes, then put the view's axes in its order.
        kept = sorted(a for a, _, _ in present)
        region = region.reshape([region.shape[a] for a in kept])
        region = region.transpose([kept.index(a) for a, _, _ in present])
        return region.reshape([h - l for l, h in zip(lo, hi)])
