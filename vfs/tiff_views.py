"""TIFF views of a level: single-plane files and ImageJ hyperstacks, laid out as VirtualFiles.

Pixel data is uncompressed and contiguous so that any byte range maps straight to a
region of the level. FORMATS.md ("ImageJ 1.x reading TIFF") has the rules followed here.
"""

from __future__ import annotations

import copy
from functools import partial

import numpy as np

from .ome_xml import OME_PIXEL_TYPE
from .planes import LENGTH_IN_METERS, Calibration, PlaneSource
from .tiff import CLASSIC_LIMIT, StripPlan, TiffFormat, TilePlan, image_tags, plan_strips
from .virtualfile import PixelSegment, RecordSegment, StaticSegment, VirtualFile

PIXEL_ALIGN = 16
# Large files start their pixels where libfuse3's reads start (1 MiB boundaries), so a read
# holds whole rows of one plane, never the seam of two planes or of two rows of chunks (when
# the width is a power of two): a scroll then slices half as many chunks per read. The
# padding is at most 1/64 of the pixels.
READ_ALIGN = 1 << 20
READ_ALIGN_FROM = 64 << 20
# OME-TIFF planes above this are tiled, so tile-wise readers (Bio-Formats, QuPath) fetch what they show.
TILE_ABOVE_BYTES = 32 << 20
TILE_ABOVE_WIDTH = 8192
OME_TILE = 512
# What ImageJ 1.x reads exactly: 8/16-bit, 16-bit signed (via the description's calibration),
# 32-bit int (as float) and float. It reads int8 as unsigned and uint32 as signed: left out.
IMAGEJ_DTYPES = {"uint8", "uint16", "int16", "float32", "int32"}
TIFF_DTYPES = IMAGEJ_DTYPES | {"int8", "uint32", "uint64", "int64", "float16", "float64"}


def _align(n: int, pixel_bytes: int) -> int:
    """Where pixels of `pixel_bytes` in all may start, at or after byte n."""
    step = READ_ALIGN if pixel_bytes >= READ_ALIGN_FROM else PIXEL_ALIGN
    return -(-n // step) * step


def _fmt(value: float) -> str:
    return repr(float(value))


def imagej_description(src: PlaneSource, cal: Calibration, stack: bool) -> bytes:
    lines = ["ImageJ=1.11a"]
    if stack and src.plane_count > 1:
        lines.append(f"images={src.plane_count}")
        dims = {"channels": src.nc, "slices": src.nz, "frames": src.nt}
        lines += [f"{k}={v}" for k, v in dims.items() if v > 1]
        if sum(v > 1 for v in dims.values()) > 1:
            lines.append("hyperstack=true")
        if src.nc > 1:
            lines.append("mode=grayscale")
    if cal.unit:
        lines.append(f"unit={cal.unit}")
    if src.has_axis("z"):
        lines.append(f"spacing={_fmt(cal.pixel_depth)}")
    if stack and src.nt > 1 and cal.frame_interval:
        lines.append(f"finterval={_fmt(cal.frame_interval)}")
        if cal.time_unit:
            lines.append(f"tunit={cal.time_unit}")
    for axis, value in zip("xyz", cal.origin):
        if value:
            lines.append(f"{axis}origin={_fmt(value)}")
    if stack and src.plane_count > 1:
        lines.append("loop=false")
    return ("\n".join(lines) + "\n").encode("utf-8")


def unsupported_reason(src: PlaneSource, kind: str) -> str | None:
    """Why a TIFF view ("tiff" planes, "imagej" stack, "ome" OME-TIFF) cannot hold this level, or None."""
    name = src.dtype.name
    allowed = {"tiff": TIFF_DTYPES, "imagej": IMAGEJ_DTYPES, "ome": set(OME_PIXEL_TYPE)}[kind]
    if name not in allowed:
        who = {"tiff": "TIFF", "imagej": "ImageJ 1.x", "ome": "OME-TIFF"}[kind]
        return f"{who} cannot hold dtype {src.level.dtype}"
    if kind == "imagej" and src.plane_bytes >= CLASSIC_LIMIT - 4096:
        return "a single plane is 4 GiB or more; ImageJ 1.x cannot read BigTIFF"
    return None


class TiffLayout:
    """Shared geometry of the TIFF views of one level."""

    resolution_unit = 1  # none: ImageJ takes the unit from the description

    def __init__(self, src: PlaneSource):
        self.src = src
        self.cal = src.calibration()
        self.strips = plan_strips(src.height, src.row_bytes)
        res = (1.0 / self.cal.pixel_width if self.cal.pixel_width else 1.0,
               1.0 / self.cal.pixel_height if self.cal.pixel_height else 1.0)
        self.resolution = res

    def _tags(self, fmt: TiffFormat, plan, pixel_offset: int, description: bytes | None):
        s = self.src
        return image_tags(fmt, s.width, s.height, s.dtype, plan, pixel_offset, description, self.resolution,
                          self.resolution_unit)

    def per_cm(self) -> tuple[float, float] | None:
        """Pixels per centimeter in x and y, when both axes have a length unit; else None."""
        out = []
        for name in ("x", "y"):
            p = self.src.pos[name]
            unit, scale = self.src.level.axes[p].unit, self.src.level.scale[p]
            if unit not in LENGTH_IN_METERS or not scale > 0:
                return None
            out.append(1e-2 / (scale * LENGTH_IN_METERS[unit]))
        return (out[0], out[1]) if all(0 < v < 2**32 for v in out) else None  # a TIFF RATIONAL holds it

    # -- one plane per file -------------------------------------------------------------
    def plane_header(self) -> tuple[bytes, int]:
        """Header bytes and pixel offset, identical for every plane file of the level."""
        desc = imagej_description(self.src, self.cal, stack=False)
        for fmt in (TiffFormat(False), TiffFormat(True)):
            ifd_at = fmt.header_len
            pixel_offset = _align(ifd_at + fmt.ifd_len(self._tags(fmt, self.strips, 0, desc)), self.src.plane_bytes)
            if fmt.big or pixel_offset + self.src.plane_bytes < CLASSIC_LIMIT:
                break
        head = fmt.header(ifd_at) + fmt.ifd(self._tags(fmt, self.strips, pixel_offset, desc), ifd_at, 0)
        return head, pixel_offset

    def plane_file(self, t: int, c: int, z: int, header: tuple[bytes, int] | None = None, on_read=None) -> VirtualFile:
        """One plane; `on_read()` is told of each read (readahead across a folder of planes)."""
        head, pixel_offset = header or self.plane_header()
        src = self.src

        def read_plane(_i: int, a: int, b: int, out=None):
            if on_read is not None:
                on_read()
            return src.read(t, c, z, a, b, out)

        pixels = PixelSegment(pixel_offset, 1, src.plane_bytes, read_plane)
        return VirtualFile(pixel_offset + src.plane_bytes, [StaticSegment(0, head), pixels])

    # -- files of all planes ----------------------------------------------------------
    def stack_file(self) -> VirtualFile:
        """ImageJ hyperstack, planes in CZT order. Under 4 GiB every plane has an IFD (for
        libtiff, GDAL, tifffile); above, one IFD with `images=` (ImageJ's convention)."""
        desc = imagej_description(self.src, self.cal, stack=True)
        return self._multipage(desc, self.strips, big_allowed=False)

    def ome_file(self, ome_xml: bytes) -> VirtualFile:
        """OME-TIFF, planes in XYCZT order: BigTIFF above 4 GiB, tiled when planes are large."""
        src = self.src
        plan = self.strips
        if src.plane_bytes > TILE_ABOVE_BYTES or src.width > TILE_ABOVE_WIDTH:
            plan = TilePlan(src.height, src.width, src.dtype.itemsize, OME_TILE)
        # Resolution in pixels per cm (ResolutionUnit 3), as Bio-Formats writes it, for
        # readers of the tags alone; the OME-XML stays the source of truth.
        layout = self
        if (per_cm := self.per_cm()) is not None:
            layout = copy.copy(self)
            layout.resolution, layout.resolution_unit = per_cm, 3
        return layout._multipage(ome_xml, plan, big_allowed=True)

    def _multipage(self, description: bytes, plan, big_allowed: bool) -> VirtualFile:
        src = self.src
        n = src.plane_count
        per_plane_ifds = True
        for fmt in (TiffFormat(False), TiffFormat(True)):
            ifd0_at = fmt.header_len
            records_at = ifd0_at + fmt.ifd_len(self._tags(fmt, plan, 0, description))
            record_len = fmt.ifd_len(self._tags(fmt, plan, 0, None))
            pixel_offset = _align(records_at + (n - 1) * record_len, n * plan.nbytes)
            if pixel_offset + n * plan.nbytes < CLASSIC_LIMIT:
                break
            if not big_allowed:
                per_plane_ifds = False
                pixel_offset = _align(records_at, n * plan.nbytes)
                break
        size = pixel_offset + n * plan.nbytes

        def record_at(i: int) -> int:  # IFD of plane i >= 1
            return records_at + (i - 1) * record_len

        first_next = record_at(1) if per_plane_ifds and n > 1 else 0
        head = fmt.header(ifd0_at) + fmt.ifd(self._tags(fmt, plan, pixel_offset, description), ifd0_at, first_next)
        segments = [StaticSegment(0, head)]
        if per_plane_ifds and n > 1:

            def make_record(k: int) -> bytes:
                i = k + 1
                nxt = record_at(i + 1) if i + 1 < n else 0
                return fmt.ifd(self._tags(fmt, plan, pixel_offset + i * plan.nbytes, None), record_at(i), nxt)

            segments.append(RecordSegment(records_at, n - 1, record_len, make_record))
        readahead = src.readahead(src.czt)
        read = src.read if isinstance(plan, StripPlan) else partial(read_tiles, src, plan)

        def read_plane(i: int, a: int, b: int, out=None):
            readahead.observe(i)
            return read(*src.czt(i), a, b, out)

        segments.append(PixelSegment(pixel_offset, n, plan.nbytes, read_plane))
        return VirtualFile(size, segments)


def read_tiles(src: PlaneSource, plan: TilePlan, t: int, c: int, z: int, start: int, stop: int, _out=None) -> bytes:
    """Bytes [start, stop) of a tiled plane: each tile read from the level and zero-padded."""
    out = []
    cols = plan.grid[1]
    first, last = start // plan.tile_bytes, (stop - 1) // plan.tile_bytes
    for k in range(first, last + 1):
        ty, tx = divmod(k, cols)
        y0, x0 = ty * plan.tile, tx * plan.tile
        block = src.region(t, c, z, (y0, min(src.height, y0 + plan.tile)), (x0, min(src.width, x0 + plan.tile)))
        tile = np.zeros((plan.tile, plan.tile), src.dtype)
        tile[: block.shape[0], : block.shape[1]] = block
        out.append(tile.tobytes())
    data = b"".join(out)
    skip = start - first * plan.tile_bytes
    return data[skip:skip + (stop - start)]
