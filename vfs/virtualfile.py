"""VirtualFile: a file made of segments, sized from metadata alone (ARCHITECTURE.md, interface 4).

A segment is static header bytes, generated records (one per plane, e.g. TIFF IFDs) or a
pixel span. Reads bisect on segment offsets; gaps between segments read as zeros.

Reads return a bytes-like object (bytes or a byte memoryview): a read that lies in one
pixel span hands over the pixels' own buffer, with no copy to bytes on the way.
"""

from __future__ import annotations

import bisect
from typing import Callable, Sequence, Union

Buffer = Union[bytes, memoryview]


def joined(parts: list) -> Buffer:
    """One part as it is (no copy); several as one bytes object."""
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Segment:
    offset: int
    length: int

    def read(self, rel: int, size: int) -> Buffer:
        raise NotImplementedError


class StaticSegment(Segment):
    def __init__(self, offset: int, data: bytes):
        self.offset, self.length, self.data = offset, len(data), bytes(data)

    def read(self, rel: int, size: int) -> Buffer:
        return self.data[rel:rel + size]


class RecordSegment(Segment):
    """`count` records of `record_len` bytes, record i made by `make(i)` only when read."""

    def __init__(self, offset: int, count: int, record_len: int, make: Callable[[int], bytes]):
        self.offset, self.count, self.record_len, self.make = offset, count, record_len, make
        self.length = count * record_len

    def read(self, rel: int, size: int) -> Buffer:
        first, last = rel // self.record_len, (rel + size - 1) // self.record_len
        blob = b"".join(self.make(i) for i in range(first, last + 1))
        start = rel - first * self.record_len
        return blob[start:start + size]


class PixelSegment(Segment):
    """`count` planes stored back to back; plane i comes from `read_plane(i, start, stop)`."""

    def __init__(self, offset: int, count: int, plane_bytes: int, read_plane: Callable[[int, int, int], Buffer]):
        self.offset, self.count, self.plane_bytes, self.read_plane = offset, count, plane_bytes, read_plane
        self.length = count * plane_bytes

    def read(self, rel: int, size: int) -> Buffer:
        parts = []
        end = rel + size
        while rel < end:
            plane, start = divmod(rel, self.plane_bytes)
            stop = min(self.plane_bytes, start + (end - rel))
            parts.append(self.read_plane(plane, start, stop))
            rel += stop - start
        return joined(parts)


class VirtualFile:
    def __init__(self, size: int, segments: Sequence[Segment]):
        self.size = size
        self.segments = sorted(segments, key=lambda s: s.offset)
        self._starts = [s.offset for s in self.segments]
        for a, b in zip(self.segments, self.segments[1:]):
            if a.offset + a.length > b.offset:
                raise ValueError("overlapping segments")
        if self.segments and self.segments[-1].offset + self.segments[-1].length > size:
            raise ValueError("segment past end of file")

    def read(self, offset: int, size: int) -> Buffer:
        if offset >= self.size or size <= 0:
            return b""
        end = min(self.size, offset + size)
        out = []
        pos = offset
        i = max(0, bisect.bisect_right(self._starts, pos) - 1)
        while pos < end:
            seg = self.segments[i] if i < len(self.segments) else None
            if seg is None or pos < seg.offset:
                gap_end = end if seg is None else min(end, seg.offset)
                out.append(bytes(gap_end - pos))
                pos = gap_end
                continue
            seg_end = seg.offset + seg.length
            if pos >= seg_end:
                i += 1
                continue
            n = min(end, seg_end) - pos
            out.append(seg.read(pos - seg.offset, n))
            pos += n
            i += 1
        return joined(out)
