"""TIFF structure: headers and IFDs for classic TIFF and BigTIFF (little-endian).

Tags are written in ascending order; values that do not fit the entry go right after the
IFD, word aligned. IFD sizes depend only on the tags' types and counts, not on offsets,
so layouts can be planned before any offset is known.

Strip and tile tables (offsets, byte counts) are arithmetic: a `Table` says how to make
any part of one. Placed apart from its IFD (`Tag.at`), a table is made only when read, so
a plane of a million tiles costs no memory and no time to mount.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

ASCII, SHORT, LONG, RATIONAL, IFD, LONG8, IFD8 = 2, 3, 4, 5, 13, 16, 18
TYPE_SIZE = {ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, IFD: 4, LONG8: 8, IFD8: 8}
TYPE_CODE = {SHORT: "H", LONG: "I", IFD: "I", LONG8: "Q", IFD8: "Q"}

CLASSIC_LIMIT = 2**32

NEW_SUBFILE_TYPE, SUBFILE_TYPE = 254, 255
IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
IMAGE_DESCRIPTION, STRIP_OFFSETS, SAMPLES_PER_PIXEL, ROWS_PER_STRIP, STRIP_BYTE_COUNTS = 270, 273, 277, 278, 279
X_RESOLUTION, Y_RESOLUTION, PLANAR_CONFIGURATION, RESOLUTION_UNIT, SOFTWARE = 282, 283, 284, 296, 305
SUB_IFDS, SAMPLE_FORMAT = 330, 339
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 322, 323, 324, 325

SAMPLE_FORMAT_OF_KIND = {"u": 1, "b": 1, "i": 2, "f": 3}


@dataclass(frozen=True)
class Table:
    """`count` integers start, start + step, ... (the last one `last` when given)."""

    count: int
    start: int
    step: int
    last: int | None = None

    def __len__(self) -> int:
        return self.count

    def values(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        """Values [first, stop) as uint64."""
        stop = self.count if stop is None else stop
        out = np.arange(first, stop, dtype=np.uint64) * np.uint64(self.step) + np.uint64(self.start)
        if self.last is not None and first < self.count <= stop:
            out[self.count - 1 - first] = self.last
        return out


@dataclass(frozen=True)
class Tag:
    code: int
    type: int
    values: object  # list of ints, list of (num, den), bytes for ASCII, or a Table
    at: int | None = None  # where the values are, apart from the IFD (tables only)

    def count(self) -> int:
        return len(self.values)

    @property
    def nbytes(self) -> int:
        return self.count() * TYPE_SIZE[self.type]

    def payload(self, first: int = 0, stop: int | None = None) -> bytes:
        """The values' bytes; for a Table, only bytes [first, stop) are made."""
        if isinstance(self.values, Table):
            item = TYPE_SIZE[self.type]
            stop = self.nbytes if stop is None else stop
            i0, i1 = first // item, -(-stop // item)
            data = self.values.values(i0, i1).astype(f"<u{item}").tobytes()
            return data[first - i0 * item:stop - i0 * item]
        if self.type == ASCII:
            return bytes(self.values)
        if self.type == RATIONAL:
            return b"".join(struct.pack("<II", n, d) for n, d in self.values)
        return struct.pack(f"<{len(self.values)}{TYPE_CODE[self.type]}", *self.values)


class TiffFormat:
    def __init__(self, big: bool):
        self.big = big
        self.header_len = 16 if big else 8
        self.entry_len = 20 if big else 12
        self.count_len = 8 if big else 2
        self.offset_len = 8 if big else 4
        self.offset_type = LONG8 if big else LONG

    def header(self, first_ifd: int) -> bytes:
        if self.big:
            return b"II" + struct.pack("<HHHQ", 43, 8, 0, first_ifd)
        return b"II" + struct.pack("<HI", 42, first_ifd)

    def ifd_len(self, tags: Sequence[Tag]) -> int:
        return self.count_len + len(tags) * self.entry_len + self.offset_len + sum(
            _align(t.nbytes) for t in tags if t.nbytes > self.offset_len and t.at is None
        )

    def ifd(self, tags: Sequence[Tag], at: int, next_ifd: int) -> bytes:
        tags = sorted(tags, key=lambda t: t.code)
        extra_at = at + self.count_len + len(tags) * self.entry_len + self.offset_len
        entries, extra = [], []
        for t in tags:
            if t.nbytes > self.offset_len and t.at is not None:
                value = struct.pack("<Q" if self.big else "<I", t.at)
            elif t.nbytes <= self.offset_len:
                value = t.payload().ljust(self.offset_len, b"\0")
            else:
                payload = t.payload()
                value = struct.pack("<Q" if self.big else "<I", extra_at)
                padded = payload.ljust(_align(len(payload)), b"\0")
                extra.append(padded)
                extra_at += len(padded)
            head = struct.pack("<HHQ" if self.big else "<HHI", t.code, t.type, t.count())
            entries.append(head + value)
        count = struct.pack("<Q" if self.big else "<H", len(tags))
        nxt = struct.pack("<Q" if self.big else "<I", next_ifd)
        return count + b"".join(entries) + nxt + b"".join(extra)


def _align(n: int) -> int:
    return n + (n & 1)


def rational(value: float) -> tuple[int, int]:
    """The closest fraction with 32-bit terms (TIFF RATIONAL)."""
    if not value > 0:
        return (1, 1)
    frac = Fraction(value).limit_denominator(2**32 - 1)
    while frac.numerator > 2**32 - 1:
        frac = Fraction(value).limit_denominator(max(1, frac.denominator // 2))
        if frac.denominator == 1:
            break
    return (min(frac.numerator, 2**32 - 1), max(1, frac.denominator))


def table_tags(fmt: "TiffFormat", codes: tuple[int, int], offsets: Table, counts: Table,
               tables_at: int | None) -> list[Tag]:
    """Offsets and byte counts tags; with `tables_at`, tables that do not fit their entry are
    placed there (offsets, then counts, 8-byte aligned) instead of after the IFD."""
    count_type = fmt.offset_type if fmt.big else LONG
    tags = [Tag(codes[0], fmt.offset_type, offsets), Tag(codes[1], count_type, counts)]
    if tables_at is None:
        return tags
    placed, at = [], tables_at
    for tag in tags:
        if tag.nbytes > fmt.offset_len:
            tag = Tag(tag.code, tag.type, tag.values, at)
            at += _align8(tag.nbytes)
        placed.append(tag)
    return placed


def tables_len(fmt: "TiffFormat", count: int) -> int:
    """Bytes that table_tags places at `tables_at` for tables of `count` entries."""
    offsets = count * TYPE_SIZE[fmt.offset_type]
    counts = count * TYPE_SIZE[fmt.offset_type if fmt.big else LONG]
    return sum(_align8(n) for n in (offsets, counts) if n > fmt.offset_len)


def _align8(n: int) -> int:
    return -(-n // 8) * 8


@dataclass(frozen=True)
class StripPlan:
    """A plane cut into strips of whole rows, stored in row order: the plane's C order."""

    height: int
    row_bytes: int
    rows_per_strip: int

    @property
    def count(self) -> int:
        return -(-self.height // self.rows_per_strip)

    @property
    def nbytes(self) -> int:
        return self.height * self.row_bytes

    def tags(self, fmt: "TiffFormat", pixel_offset: int, tables_at: int | None = None) -> list["Tag"]:
        full = self.rows_per_strip * self.row_bytes
        offsets = Table(self.count, pixel_offset, full)
        counts = Table(self.count, full, 0, self.nbytes - (self.count - 1) * full)
        return [Tag(ROWS_PER_STRIP, LONG, [self.rows_per_strip]),
                *table_tags(fmt, (STRIP_OFFSETS, STRIP_BYTE_COUNTS), offsets, counts, tables_at)]

    def tables_len(self, fmt: "TiffFormat") -> int:
        return tables_len(fmt, self.count)


@dataclass(frozen=True)
class TilePlan:
    """A plane cut into tiles (edge tiles padded to full size), stored tile row by tile row,
    each at least `gap` bytes after the end of the one before (strides of whole 4 KiB pages)."""

    height: int
    width: int
    itemsize: int
    tile_length: int  # multiples of 16 (TIFF)
    tile_width: int
    gap: int = 0

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.height // self.tile_length), -(-self.width // self.tile_width)

    @property
    def count(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def tile_bytes(self) -> int:
        return self.tile_length * self.tile_width * self.itemsize

    @property
    def stride(self) -> int:
        """From one tile's start to the next one's."""
        return self.tile_bytes if not self.gap else -(-self.tile_bytes // PAGE) * PAGE + self.gap

    @property
    def nbytes(self) -> int:
        """Through the end of the last tile (no gap after it)."""
        return (self.count - 1) * self.stride + self.tile_bytes

    def tags(self, fmt: "TiffFormat", pixel_offset: int, tables_at: int | None = None) -> list["Tag"]:
        offsets = Table(self.count, pixel_offset, self.stride)
        counts = Table(self.count, self.tile_bytes, 0)
        return [Tag(TILE_WIDTH, LONG, [self.tile_width]), Tag(TILE_LENGTH, LONG, [self.tile_length]),
                *table_tags(fmt, (TILE_OFFSETS, TILE_BYTE_COUNTS), offsets, counts, tables_at)]

    def tables_len(self, fmt: "TiffFormat") -> int:
        return tables_len(fmt, self.count)


PAGE = 4096
STRIP_TARGET_BYTES = 256 << 10
# Tiles smaller than this make tables of millions of entries that readers load whole; larger
# ones make readers of a small region read (and hold) far more than it.
MIN_TILE, MAX_TILE, DEFAULT_TILE = 256, 4096, 512


def plan_strips(height: int, row_bytes: int) -> StripPlan:
    # Strips of ~256 KiB let strip-wise readers (libtiff, GDAL) fetch only what they show.
    rows = max(1, min(height, STRIP_TARGET_BYTES // max(1, row_bytes)))
    return StripPlan(height, row_bytes, rows)


def tile_side(chunk: int, size: int) -> int:
    """A tile side that covers whole chunks, or lies within one, wherever TIFF allows it
    (a multiple of 16): then a tile read fetches only the chunks under it. Never much larger
    than the plane."""
    if chunk <= 0 or chunk % 16:
        side = DEFAULT_TILE
    elif chunk < MIN_TILE:
        side = chunk * -(-MIN_TILE // chunk)  # whole chunks
    elif chunk <= MAX_TILE:
        side = chunk
    else:
        # Within one chunk: the largest multiple of 16 up to MAX_TILE that divides it.
        side = next((t for t in range(MAX_TILE, MIN_TILE - 1, -16) if chunk % t == 0), DEFAULT_TILE)
    return min(side, -(-size // 16) * 16)


def plan_tiles(height: int, width: int, itemsize: int, chunk_yx: tuple[int, int], gap: int = 0) -> TilePlan:
    return TilePlan(height, width, itemsize, tile_side(chunk_yx[0], height), tile_side(chunk_yx[1], width), gap)


def image_tags(
    fmt: TiffFormat,
    width: int,
    height: int,
    dtype: np.dtype,
    plan: StripPlan | TilePlan,
    pixel_offset: int,
    description: bytes | None = None,
    resolution: tuple[float, float] | None = None,
    resolution_unit: int = 1,
    tables_at: int | None = None,
) -> list[Tag]:
    """The tags of one uncompressed grayscale image (docs/formats.md, "TIFF and BigTIFF"); `tables_at`: where
    its strip or tile tables go when they do not fit their entries (else after the IFD)."""
    tags = [
        Tag(NEW_SUBFILE_TYPE, LONG, [0]),
        Tag(IMAGE_WIDTH, LONG, [width]),
        Tag(IMAGE_LENGTH, LONG, [height]),
        Tag(BITS_PER_SAMPLE, SHORT, [dtype.itemsize * 8]),
        Tag(COMPRESSION, SHORT, [1]),
        Tag(PHOTOMETRIC, SHORT, [1]),
        Tag(SAMPLES_PER_PIXEL, SHORT, [1]),
        Tag(SAMPLE_FORMAT, SHORT, [SAMPLE_FORMAT_OF_KIND[dtype.kind]]),
        *plan.tags(fmt, pixel_offset, tables_at),
    ]
    if description is not None:
        tags.append(Tag(IMAGE_DESCRIPTION, ASCII, description + b"\0"))
    if resolution is not None:
        # ResolutionUnit 1 (none): ImageJ then takes the unit from the description;
        # 3 (centimeter): pixels per cm, which readers of the tags alone understand.
        tags += [
            Tag(X_RESOLUTION, RATIONAL, [rational(resolution[0])]),
            Tag(Y_RESOLUTION, RATIONAL, [rational(resolution[1])]),
            Tag(RESOLUTION_UNIT, SHORT, [resolution_unit]),
        ]
    return tags
