"""VirtualFile: a file made of segments, sized from metadata alone (docs/architecture.md, "The interfaces").

A segment is static header bytes, generated records (one per plane, e.g. TIFF IFDs), tables
made for the bytes read (TIFF strip and tile tables) or a pixel span. Reads bisect on segment offsets; gaps between segments read as zeros.

A read fills the caller's buffer (FUSE: libfuse's reply buffer), so pixels are assembled
where the kernel takes them from.
"""

from __future__ import annotations

import bisect
from typing import Callable, Sequence, Union

Buffer = Union[bytes, memoryview]


class Segment:
    offset: int
    length: int

    def read(self, rel: int, size: int) -> Buffer:
        raise NotImplementedError

    def read_into(self, rel: int, out: memoryview) -> None:
        out[:] = self.read(rel, len(out))


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


class TableSegment(Segment):
    """`count` records of `record_len` bytes, each holding the values of some tags placed
    apart from their IFD (TIFF tables: `tag.at`, `tag.nbytes`, `tag.payload(first, stop)`).
    `tags_of(i)` gives record i's tags; only the bytes read are made."""

    def __init__(self, offset: int, count: int, record_len: int, tags_of: Callable[[int], Sequence]):
        self.offset, self.count, self.record_len, self.tags_of = offset, count, record_len, tags_of
        self.length = count * record_len

    def read(self, rel: int, size: int) -> Buffer:
        out = bytearray(size)
        end = rel + size
        for k in range(rel // self.record_len, (end - 1) // self.record_len + 1):
            for tag in self.tags_of(k):
                if tag.at is None:
                    continue
                a = tag.at - self.offset
                lo, hi = max(a, rel), min(a + tag.nbytes, end)
                if lo < hi:
                    out[lo - rel:hi - rel] = tag.payload(lo - a, hi - a)
        return out


class PixelSegment(Segment):
    """`count` planes stored back to back; `read_plane(i, start, stop, out=None)` returns bytes
    [start, stop) of plane i, or writes them into `out` and returns None."""

    def __init__(self, offset: int, count: int, plane_bytes: int, read_plane: Callable[..., Buffer]):
        self.offset, self.count, self.plane_bytes, self.read_plane = offset, count, plane_bytes, read_plane
        self.length = count * plane_bytes

    def _pieces(self, rel: int, size: int):
        end = rel + size
        while rel < end:
            plane, start = divmod(rel, self.plane_bytes)
            stop = min(self.plane_bytes, start + (end - rel))
            yield plane, start, stop
            rel += stop - start

    def read_into(self, rel: int, out: memoryview) -> None:
        pos = 0
        for plane, start, stop in self._pieces(rel, len(out)):
            part = out[pos:pos + stop - start]
            data = self.read_plane(plane, start, stop, part)
            if data is not None:
                part[:] = data
            pos += stop - start


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

    def read_into(self, offset: int, out: memoryview) -> int:
        """Bytes from `offset` into `out` (a byte memoryview); returns how many (0 at the end)."""
        pos = 0
        for seg, rel, n in self._spans(offset, len(out)):
            if seg is None:
                out[pos:pos + n] = bytes(n)
            else:
                seg.read_into(rel, out[pos:pos + n])
            pos += n
        return pos

    def _spans(self, offset: int, size: int):
        """(segment or None for a gap, offset in it, length) covering [offset, offset + size)."""
        if offset >= self.size or size <= 0:
            return
        end = min(self.size, offset + size)
        pos = offset
        i = max(0, bisect.bisect_right(self._starts, pos) - 1)
        while pos < end:
            seg = self.segments[i] if i < len(self.segments) else None
            if seg is None or pos < seg.offset:
                gap_end = end if seg is None else min(end, seg.offset)
                yield None, 0, gap_end - pos
                pos = gap_end
                continue
            seg_end = seg.offset + seg.length
            if pos >= seg_end:
                i += 1
                continue
            n = min(end, seg_end) - pos
            yield seg, pos - seg.offset, n
            pos += n
            i += 1


def read_bytes(vfile: VirtualFile, offset: int, size: int) -> bytes:
    """Bytes [offset, offset + size) of a virtual file, as a FUSE read gets them."""
    buf = memoryview(bytearray(max(0, size)))
    return bytes(buf[:vfile.read_into(offset, buf)])
