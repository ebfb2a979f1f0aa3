"""TIFF structure: headers and IFDs for classic TIFF and BigTIFF (little-endian).

Tags are written in ascending order; values that do not fit the entry go right after the
IFD, word aligned. IFD sizes depend only on the tags, not on offsets, so layouts can be
planned before any offset is known.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

ASCII, SHORT, LONG, RATIONAL, LONG8 = 2, 3, 4, 5, 16
TYPE_SIZE = {ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, LONG8: 8}
TYPE_CODE = {SHORT: "H", LONG: "I", LONG8: "Q"}

CLASSIC_LIMIT = 2**32

NEW_SUBFILE_TYPE = 254
IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
IMAGE_DESCRIPTION, STRIP_OFFSETS, SAMPLES_PER_PIXEL, ROWS_PER_STRIP, STRIP_BYTE_COUNTS = 270, 273, 277, 278, 279
X_RESOLUTION, Y_RESOLUTION, RESOLUTION_UNIT, SAMPLE_FORMAT = 282, 283, 296, 339
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 322, 323, 324, 325

SAMPLE_FORMAT_OF_KIND = {"u": 1, "b": 1, "i": 2, "f": 3}


@dataclass(frozen=True)
class Tag:
    code: int
    type: int
    values: object  # list of ints, list of (num, den), or bytes for ASCII

    def count(self) -> int:
        return len(self.values)

    def payload(self) -> bytes:
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
            _align(len(t.payload())) for t in tags if len(t.payload()) > self.offset_len
        )

    def ifd(self, tags: Sequence[Tag], at: int, next_ifd: int) -> bytes:
        tags = sorted(tags, key=lambda t: t.code)
        extra_at = at + self.count_len + len(tags) * self.entry_len + self.offset_len
        entries, extra = [], []
        for t in tags:
            payload = t.payload()
            if len(payload) <= self.offset_len:
                value = payload.ljust(self.offset_len, b"\0")
            else:
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

    def tags(self, fmt: "TiffFormat", pixel_offset: int) -> list["Tag"]:
        full = self.rows_per_strip * self.row_bytes
        counts = [full] * (self.count - 1) + [self.nbytes - (self.count - 1) * full]
        return [
            Tag(STRIP_OFFSETS, fmt.offset_type, [pixel_offset + i * full for i in range(self.count)]),
            Tag(ROWS_PER_STRIP, LONG, [self.rows_per_strip]),
            Tag(STRIP_BYTE_COUNTS, fmt.offset_type if fmt.big else LONG, counts),
        ]


@dataclass(frozen=True)
class TilePlan:
    """A plane cut into tiles (edge tiles padded to full size), stored tile row by tile row."""

    height: int
    width: int
    itemsize: int
    tile: int  # square tiles; a multiple of 16 (TIFF)

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.height // self.tile), -(-self.width // self.tile)

    @property
    def tile_bytes(self) -> int:
        return self.tile * self.tile * self.itemsize

    @property
    def nbytes(self) -> int:
        rows, cols = self.grid
        return rows * cols * self.tile_bytes

    def tags(self, fmt: "TiffFormat", pixel_offset: int) -> list["Tag"]:
        n = self.grid[0] * self.grid[1]
        return [
            Tag(TILE_WIDTH, LONG, [self.tile]),
            Tag(TILE_LENGTH, LONG, [self.tile]),
            Tag(TILE_OFFSETS, fmt.offset_type, [pixel_offset + i * self.tile_bytes for i in range(n)]),
            Tag(TILE_BYTE_COUNTS, fmt.offset_type if fmt.big else LONG, [self.tile_bytes] * n),
        ]


STRIP_TARGET_BYTES = 256 << 10


def plan_strips(height: int, row_bytes: int) -> StripPlan:
    # Strips of ~256 KiB let strip-wise readers (libtiff, GDAL) fetch only what they show.
    rows = max(1, min(height, STRIP_TARGET_BYTES // max(1, row_bytes)))
    return StripPlan(height, row_bytes, rows)


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
) -> list[Tag]:
    """The tags of one uncompressed grayscale image (FORMATS.md, TIFF)."""
    tags = [
        Tag(NEW_SUBFILE_TYPE, LONG, [0]),
        Tag(IMAGE_WIDTH, LONG, [width]),
        Tag(IMAGE_LENGTH, LONG, [height]),
        Tag(BITS_PER_SAMPLE, SHORT, [dtype.itemsize * 8]),
        Tag(COMPRESSION, SHORT, [1]),
        Tag(PHOTOMETRIC, SHORT, [1]),
        Tag(SAMPLES_PER_PIXEL, SHORT, [1]),
        Tag(SAMPLE_FORMAT, SHORT, [SAMPLE_FORMAT_OF_KIND[dtype.kind]]),
        *plan.tags(fmt, pixel_offset),
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
