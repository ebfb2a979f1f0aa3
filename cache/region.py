"""Reading a box of a level: the chunks it touches, in one engine call, sliced together."""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from .level import ChunkedLevel


def chunks_touching(level: ChunkedLevel, start: Sequence[int], stop: Sequence[int]) -> list[tuple[int, ...]]:
    ranges = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(start, stop, level.chunk_shape)]
    return list(itertools.product(*ranges))


def read_region(engine, level: ChunkedLevel, start: Sequence[int], stop: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """level[start:stop] as an array of the level's dtype (a view when one chunk holds it
    all), or written into `out`, an array of that shape."""
    start, stop = tuple(int(s) for s in start), tuple(int(s) for s in stop)
    if any(a < 0 or b > n or a >= b for a, b, n in zip(start, stop, level.shape)):
        raise IndexError(f"region {start}:{stop} is outside shape {level.shape}")
    indices = chunks_touching(level, start, stop)
    chunks = engine.get(level, indices)
    cs = level.chunk_shape
    if len(indices) == 1 and out is None:
        idx = indices[0]
        return chunks[idx][tuple(slice(a - i * c, b - i * c) for a, b, i, c in zip(start, stop, idx, cs))]
    if out is None:
        out = np.empty([b - a for a, b in zip(start, stop)], dtype=level.dtype)
    for idx, arr in chunks.items():
        lo = [max(a, i * c) for a, i, c in zip(start, idx, cs)]
        hi = [min(b, (i + 1) * c) for b, i, c in zip(stop, idx, cs)]
        dst = tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, start))
        src = tuple(slice(l - i * c, h - i * c) for l, h, i, c in zip(lo, hi, idx, cs))
        out[dst] = arr[src]
    return out


def byte_view(arr: np.ndarray) -> memoryview:
    """The array's bytes in C order: its own buffer when it is contiguous, else one copy."""
    return memoryview(np.ascontiguousarray(arr)).cast("B")


def c_order_boxes(shape: Sequence[int], start: int, stop: int):
    """Boxes (lo, hi) covering elements [start, stop) of an array in C order, in that order.

    A linear range splits into at most two boxes per dimension, so a read of any byte range
    of a C-order file costs a few region reads, never one per row.
    """
    if start >= stop:
        return
    if len(shape) == 1:
        yield [start], [stop]
        return
    inner = 1
    for n in shape[1:]:
        inner *= n
    i0, r0 = divmod(start, inner)
    i1, r1 = divmod(stop, inner)
    if i0 == i1:
        for lo, hi in c_order_boxes(shape[1:], r0, r1):
            yield [i0, *lo], [i0 + 1, *hi]
        return
    if r0:
        for lo, hi in c_order_boxes(shape[1:], r0, inner):
            yield [i0, *lo], [i0 + 1, *hi]
        i0 += 1
    if i1 > i0:
        yield [i0] + [0] * (len(shape) - 1), [i1, *shape[1:]]
    if r1:
        for lo, hi in c_order_boxes(shape[1:], 0, r1):
            yield [i1, *lo], [i1 + 1, *hi]
