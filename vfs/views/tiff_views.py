"""TIFF views of a level: single-plane files and ImageJ hyperstacks, laid out as VirtualFiles.

Pixel data is uncompressed and contiguous so that any byte range maps straight to a
region of the level. docs/formats.md ("ImageJ 1.x reading TIFF") has the rules followed here.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import NamedTuple

import numpy as np

from ...cache.region import byte_view
from ..tree.nodes import FileNode, PlaneDir
from ..writers.ome_xml import OME_PIXEL_TYPE, ome_xml
from .planes import LENGTH_IN_METERS, Calibration, PlaneSource
from ..writers.tiff import CLASSIC_LIMIT, TiffFormat, TilePlan, image_tags, plan_strips, plan_tiles
from .view import LEVEL, View
from ..tree.virtualfile import PixelSegment, RecordSegment, Segment, StaticSegment, TableSegment, VirtualFile

PIXEL_ALIGN = 16
# Large files start their pixels where libfuse3's reads start (1 MiB boundaries), so a read
# holds whole rows of one plane, never the seam of two planes or of two rows of chunks (when
# the width is a power of two): a scroll then slices half as many chunks per read. The
# padding is at most 1/64 of the pixels.
READ_ALIGN = 1 << 20
READ_ALIGN_FROM = 64 << 20
# Tiled files that large keep this much room between their tables and their pixels: the
# kernel's readahead (at most 1 MiB here) past the tables then reads zeros, not a chunk.
READAHEAD_GUARD = 1 << 20
# Tiles are a page apart: a reader's next tile in the file is then no sequential read to the
# kernel, which would read the tile after it ahead (a chunk nobody asked for). Those reads
# made a viewer's window reads fetch 1.4 chunks per chunk needed.
TILE_GAP = 8192
# OME-TIFF planes above this are tiled, so tile-wise readers (Bio-Formats, QuPath) fetch what they show.
TILE_ABOVE_BYTES = 32 << 20
TILE_ABOVE_WIDTH = 8192
OME_TILE = 512
# What ImageJ 1.x reads exactly: 8/16-bit, 16-bit signed (via the description's calibration),
# 32-bit int (as float) and float. It reads int8 as unsigned and uint32 as signed: left out.
IMAGEJ_DTYPES = {"uint8", "uint16", "int16", "float32", "int32"}
TIFF_DTYPES = IMAGEJ_DTYPES | {"int8", "uint32", "uint64", "int64", "float16", "float64"}
# ImageJ 1.x holds a plane in one Java array, and reads only strips: planes with more pixels
# than it reads are tiled (slide tools and pipelines read them by region) and get no stack.
IMAGEJ_MAX_PIXELS = 2**31 - 1
RESOLUTION_NONE, RESOLUTION_CENTIMETER = 1, 3  # TIFF ResolutionUnit values


def _align(n: int, pixel_bytes: int, tiled: bool = False) -> int:
    """Where pixels of `pixel_bytes` in all may start, at or after byte n."""
    step = READ_ALIGN if pixel_bytes >= READ_ALIGN_FROM else PIXEL_ALIGN
    if tiled and pixel_bytes >= READ_ALIGN_FROM:
        n += READAHEAD_GUARD
    return -(-n // step) * step


def imagej_max_pixels(itemsize: int) -> int:
    """The most pixels a plane ImageJ 1.x reads may have. Its 8-bit reader fills the plane in
    reads of 1/25 of it (whole multiples of 8192 bytes) and adds the next read's length to
    the bytes read so far in a Java int: that sum must stay below 2^31 (about 2.06e9 pixels)."""
    if itemsize != 1:
        return IMAGEJ_MAX_PIXELS
    step, parts = 8192, 25
    k = 2**31 // (parts * step + step)  # reads of k * step bytes
    return min(2**31 - k * step, parts * step * (k + 1) - 1)


def beyond_imagej(src: PlaneSource) -> bool:
    return src.height * src.width > imagej_max_pixels(src.dtype.itemsize)


def is_tiled(plan) -> bool:
    return isinstance(plan, TilePlan)


def chunk_tiles(src: PlaneSource) -> TilePlan:
    """Tiles the size of the source chunks where TIFF allows it (tiff.tile_side)."""
    chunk = src.level.chunk_shape
    return plan_tiles(src.height, src.width, src.dtype.itemsize, (chunk[src.pos["y"]], chunk[src.pos["x"]]), TILE_GAP)


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
    if kind == "imagej" and beyond_imagej(src):
        limit = imagej_max_pixels(src.dtype.itemsize)
        return (f"a plane of {src.width} x {src.height} pixels is more than ImageJ 1.x reads ({limit} pixels "
                f"of {src.dtype.name}; 2^31 - 1 at most); its planes are tiled TIFFs in the level's folder")
    if kind == "imagej" and src.plane_bytes >= CLASSIC_LIMIT - 4096:
        return "a single plane is 4 GiB or more; ImageJ 1.x cannot read BigTIFF"
    return None


def per_unit(cal: Calibration) -> tuple[float, float]:
    """Pixels per calibrated unit in x and y (ImageJ's resolution tags, ResolutionUnit 1)."""
    return (1.0 / cal.pixel_width if cal.pixel_width else 1.0, 1.0 / cal.pixel_height if cal.pixel_height else 1.0)


def per_cm(src: PlaneSource) -> tuple[float, float] | None:
    """Pixels per centimeter in x and y, when both axes have a length unit; else None."""
    out = []
    for name in ("x", "y"):
        p = src.pos[name]
        unit, scale = src.level.axes[p].unit, src.level.scale[p]
        if unit not in LENGTH_IN_METERS or not scale > 0:
            return None
        out.append(1e-2 / (scale * LENGTH_IN_METERS[unit]))
    return (out[0], out[1]) if all(0 < v < 2**32 for v in out) else None  # a TIFF RATIONAL holds it


def ome_resolution(src: PlaneSource, cal: Calibration | None = None) -> tuple[tuple[float, float], int]:
    """Resolution tags of OME-TIFF images (sN.ome.tif, image.ome.tif): pixels per centimeter
    with ResolutionUnit 3 (centimeter) as Bio-Formats and raw2ometiff write them, when x and y
    have a length unit; else pixels per unit with ResolutionUnit 1 (none)."""
    if (values := per_cm(src)) is not None:
        return values, RESOLUTION_CENTIMETER
    return per_unit(cal or src.calibration()), RESOLUTION_NONE


class PlaneHeader(NamedTuple):
    """What every plane file of a level shares: the segments before the pixels, where the
    pixels start, and the file size."""

    segments: list[Segment]
    pixel_offset: int
    size: int


class TiffLayout:
    """Shared geometry of the TIFF views of one level."""

    resolution_unit = RESOLUTION_NONE  # ImageJ takes the unit from the description

    def __init__(self, src: PlaneSource):
        self.src = src
        self.cal = src.calibration()
        self.strips = plan_strips(src.height, src.row_bytes)
        # Plane files: strips while ImageJ can open them, else tiles the size of the chunks.
        self.plane_plan = self.strips
        if beyond_imagej(src):
            self.plane_plan = self.tiles()
        self.resolution = per_unit(self.cal)

    def _tags(self, fmt: TiffFormat, plan, pixel_offset: int, description: bytes | None,
              tables_at: int | None = None):
        s = self.src
        return image_tags(fmt, s.width, s.height, s.dtype, plan, pixel_offset, description, self.resolution,
                          self.resolution_unit, tables_at=tables_at)

    def tiles(self) -> TilePlan:
        return chunk_tiles(self.src)

    def plane_reader(self, plan):
        """read(t, c, z, start, stop, out=None): bytes of a plane as `plan` stores them."""
        return partial(read_tiles, self.src, plan) if is_tiled(plan) else self.src.read

    # -- one plane per file -------------------------------------------------------------
    def plane_header(self) -> PlaneHeader:
        """Header, tables and pixel offset, identical for every plane file of the level."""
        desc = imagej_description(self.src, self.cal, stack=False)
        plan = self.plane_plan
        # Classic TIFF (ImageJ reads no other) while it holds the plane, if need be without
        # aligning its pixels to 1 MiB.
        for fmt, aligned in ((TiffFormat(False), True), (TiffFormat(False), False), (TiffFormat(True), True)):
            ifd_at = fmt.header_len
            tables_at = ifd_at + fmt.ifd_len(self._tags(fmt, plan, 0, desc, tables_at=0))
            pixel_offset = _align(tables_at + plan.tables_len(fmt), plan.nbytes if aligned else 0, is_tiled(plan))
            if fmt.big or pixel_offset + plan.nbytes < CLASSIC_LIMIT:
                break
        tags = self._tags(fmt, plan, pixel_offset, desc, tables_at)
        head = fmt.header(ifd_at) + fmt.ifd(tags, ifd_at, 0)
        segments = [StaticSegment(0, head)]
        if plan.tables_len(fmt):
            segments.append(TableSegment(tables_at, 1, plan.tables_len(fmt), lambda _i: tags))
        return PlaneHeader(segments, pixel_offset, pixel_offset + plan.nbytes)

    def plane_file(self, t: int, c: int, z: int, header: PlaneHeader | None = None, on_read=None) -> VirtualFile:
        """One plane; `on_read()` is told of each read of a stripped plane (readahead across
        a folder of planes; tiled planes are read by region)."""
        header = header or self.plane_header()
        plan = self.plane_plan
        read = self.plane_reader(plan)
        if is_tiled(plan):
            on_read = None

        def read_plane(_i: int, a: int, b: int, out=None):
            if on_read is not None:
                on_read()
            return read(t, c, z, a, b, out)

        pixels = PixelSegment(header.pixel_offset, 1, plan.nbytes, read_plane)
        return VirtualFile(header.size, [*header.segments, pixels])

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
            plan = TilePlan(src.height, src.width, src.dtype.itemsize, OME_TILE, OME_TILE, TILE_GAP)
        # Resolution in pixels per cm (ResolutionUnit 3) where it can be, for readers of the
        # tags alone; the OME-XML stays the source of truth.
        layout = copy.copy(self)
        layout.resolution, layout.resolution_unit = ome_resolution(src, self.cal)
        return layout._multipage(ome_xml, plan, big_allowed=True)

    def _multipage(self, description: bytes, plan, big_allowed: bool) -> VirtualFile:
        src = self.src
        n = src.plane_count
        per_plane_ifds = True
        tiled = is_tiled(plan)
        for fmt in (TiffFormat(False), TiffFormat(True)):
            ifd0_at = fmt.header_len
            records_at = ifd0_at + fmt.ifd_len(self._tags(fmt, plan, 0, description, tables_at=0))
            record_len = fmt.ifd_len(self._tags(fmt, plan, 0, None, tables_at=0))
            table_len = plan.tables_len(fmt)
            tables_at = records_at + (n - 1) * record_len
            pixel_offset = _align(tables_at + n * table_len, n * plan.nbytes, tiled)
            if pixel_offset + n * plan.nbytes < CLASSIC_LIMIT:
                break
            if not big_allowed:
                per_plane_ifds = False
                tables_at = records_at
                pixel_offset = _align(tables_at + table_len, n * plan.nbytes, tiled)
                break
        size = pixel_offset + n * plan.nbytes

        def record_at(i: int) -> int:  # IFD of plane i >= 1
            return records_at + (i - 1) * record_len

        def plane_tags(i: int, desc: bytes | None):
            return self._tags(fmt, plan, pixel_offset + i * plan.nbytes, desc, tables_at + i * table_len)

        first_next = record_at(1) if per_plane_ifds and n > 1 else 0
        head = fmt.header(ifd0_at) + fmt.ifd(plane_tags(0, description), ifd0_at, first_next)
        segments = [StaticSegment(0, head)]
        if per_plane_ifds and n > 1:

            def make_record(k: int) -> bytes:
                i = k + 1
                nxt = record_at(i + 1) if i + 1 < n else 0
                return fmt.ifd(plane_tags(i, None), record_at(i), nxt)

            segments.append(RecordSegment(records_at, n - 1, record_len, make_record))
        if table_len:
            segments.append(TableSegment(tables_at, n if per_plane_ifds else 1, table_len, lambda i: plane_tags(i, None)))
        # Planes ImageJ could hold are read whole, plane after plane; larger ones by region.
        readahead = None if beyond_imagej(src) else src.readahead(src.czt)
        read = self.plane_reader(plan)

        def read_plane(i: int, a: int, b: int, out=None):
            if readahead is not None:
                readahead.observe(i)
            return read(*src.czt(i), a, b, out)

        segments.append(PixelSegment(pixel_offset, n, plan.nbytes, read_plane))
        return VirtualFile(size, segments)


def read_tiles(src: PlaneSource, plan: TilePlan, t: int, c: int, z: int, start: int, stop: int,
               out: memoryview | None = None):
    """Bytes [start, stop) of a tiled plane: of each tile, only the rows the range touches are
    read from the level, zero-padded past the plane's edges; the gaps between tiles are zeros.
    With `out`, written there."""
    buf = out if out is not None else memoryview(bytearray(stop - start))
    cols = plan.grid[1]
    row_bytes = plan.tile_width * plan.itemsize
    pos = start
    while pos < stop:
        k, rel = divmod(pos, plan.stride)
        if rel >= plan.tile_bytes:  # between tiles
            end = min(plan.stride, rel + stop - pos)
            buf[pos - start:pos - start + end - rel] = bytes(end - rel)
            pos += end - rel
            continue
        end = min(plan.tile_bytes, rel + stop - pos)
        ty, tx = divmod(k, cols)
        r0, r1 = rel // row_bytes, -(-end // row_bytes)  # tile rows touched
        y0, y1 = ty * plan.tile_length + r0, min(src.height, ty * plan.tile_length + r1)
        x0, x1 = tx * plan.tile_width, min(src.width, (tx + 1) * plan.tile_width)
        if y1 - y0 == r1 - r0 and x1 - x0 == plan.tile_width:
            block = src.region(t, c, z, (y0, y1), (x0, x1))
        else:
            block = np.zeros((r1 - r0, plan.tile_width), src.dtype)
            if y0 < y1 and x0 < x1:
                block[: y1 - y0, : x1 - x0] = src.region(t, c, z, (y0, y1), (x0, x1))
        skip = rel - r0 * row_bytes
        buf[pos - start:pos - start + end - rel] = byte_view(block)[skip:skip + end - rel]
        pos += end - rel
    return None if out is not None else bytes(buf)


# -- the views ----------------------------------------------------------------------------
PLANE_FILES = View(
    f"{LEVEL}/", lambda ctx: unsupported_reason(ctx.src, "tiff"),
    lambda ctx: PlaneDir(ctx.layout, ctx.mtime),
    lambda node, ctx: {"files": ctx.src.plane_count, "file_size": node.file_size})
IMAGEJ_STACK = View(
    f"{LEVEL}.tif", lambda ctx: unsupported_reason(ctx.src, "imagej"),
    lambda ctx: FileNode(ctx.layout.stack_file(), ctx.mtime),
    lambda node, ctx: {"size": node.size, "planes": ctx.src.plane_count})
LEVEL_OME_TIFF = View(
    f"{LEVEL}.ome.tif", lambda ctx: unsupported_reason(ctx.src, "ome"),
    lambda ctx: FileNode(ctx.layout.ome_file(ome_xml(ctx.image, ctx.src, ctx.name)), ctx.mtime),
    lambda node, ctx: {"size": node.size, "planes": ctx.src.plane_count})
