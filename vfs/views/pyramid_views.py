"""image.ome.tif: every level of an image in one pyramidal, tiled OME-TIFF.

The layout Bio-Formats reads as a pyramid, as the OME-TIFF specification ("Sub-resolutions")
describes it and raw2ometiff writes it: one IFD per plane of level 0, in the order the
OME-XML declares (XYCZT), the OME-XML in the first; each plane's reduced levels are its
SubIFDs (tag 330), largest first, chained to one another and left out of the main chain,
with NewSubfileType 1 (the specification's value; raw2ometiff also sets the page bit when
there are several planes). Every level is tiled, in tiles the size of its chunks where TIFF
allows it. Like raw2ometiff: PlanarConfiguration 1, Software, the old SubfileType (1 full,
2 reduced), resolution in pixels per centimeter (the tags of sN.ome.tif, tiff_views.ome_resolution).

    header | IFD of plane 0 (OME-XML) | IFDs of planes 1.. | SubIFDs of each plane
           | tables of each plane | pixels of level 0 (all planes) | level 1 | ...

Tables (tile offsets and byte counts) are made only when read. A reduced level whose t, c or
z sizes differ from level 0's (z downsampled too) shows, under each plane, its nearest plane.
"""

from __future__ import annotations

from .planes import PlaneSource
from ..writers.tiff import (ASCII, CLASSIC_LIMIT, IFD, IFD8, LONG, NEW_SUBFILE_TYPE, PLANAR_CONFIGURATION, SHORT,
                            SOFTWARE, SUB_IFDS, SUBFILE_TYPE, Tag, TiffFormat, image_tags)
from .tiff_views import _align, chunk_tiles, ome_resolution, read_tiles, unsupported_reason as tiff_unsupported_reason
from ..tree.nodes import FileNode
from ..writers.ome_xml import ome_xml
from .view import View
from ..tree.virtualfile import PixelSegment, RecordSegment, StaticSegment, TableSegment, VirtualFile

SOFTWARE_NAME = b"ngffmount\0"


def unsupported_reason(sources: list[PlaneSource]) -> str | None:
    """Why an image cannot have image.ome.tif (the reason its sN.ome.tif files are missing)."""
    return next(filter(None, (tiff_unsupported_reason(src, "ome") for src in sources)), None)


class _Level:
    def __init__(self, src: PlaneSource, top: PlaneSource):
        self.src, self.plan = src, chunk_tiles(src)
        self.resolution, self.resolution_unit = ome_resolution(src)  # as in sN.ome.tif
        self.nbytes = self.plan.nbytes
        self.sizes = ((src.nt, top.nt), (src.nc, top.nc), (src.nz, top.nz))

    def plane(self, t: int, c: int, z: int) -> tuple[int, int, int]:
        """Plane (t, c, z) of level 0 -> this level's nearest plane."""
        return tuple(i * mine // theirs for i, (mine, theirs) in zip((t, c, z), self.sizes))


def pyramid_file(sources: list[PlaneSource], ome_xml: bytes) -> VirtualFile:
    top = sources[0]
    levels = [_Level(src, top) for src in sources]
    n, count = top.plane_count, len(levels)
    pixel_total = n * sum(lv.nbytes for lv in levels)

    for fmt in (TiffFormat(False), TiffFormat(True)):
        layout = _Layout(fmt, levels, n, ome_xml, pixel_total)
        if fmt.big or layout.size < CLASSIC_LIMIT:
            break

    segments = [StaticSegment(0, fmt.header(layout.ifd0_at) + layout.ifd(0, 0))]
    if n > 1:
        segments.append(RecordSegment(layout.records_at, n - 1, layout.record_len, lambda k: layout.ifd(0, k + 1)))
    if count > 1:
        segments.append(RecordSegment(layout.subs_at, n, layout.sub_len,
                                      lambda p: b"".join(layout.ifd(lv, p) for lv in range(1, count))))
    if layout.table_len:
        segments.append(TableSegment(layout.tables_at, n, layout.table_len,
                                     lambda p: [t for lv in range(count) for t in layout.tags(lv, p)]))
    for lv, level in enumerate(levels):
        segments.append(PixelSegment(layout.pixels_at[lv], n, level.nbytes, _plane_reader(level, top)))
    return VirtualFile(layout.size, segments)


def _plane_reader(level: _Level, top: PlaneSource):
    def read_plane(i: int, a: int, b: int, out=None):
        return read_tiles(level.src, level.plan, *level.plane(*top.czt(i)), a, b, out)

    return read_plane


class _Layout:
    """Where everything of the file goes, for one TIFF format; IFD sizes depend only on tag
    types and counts, so they are measured first with placeholder offsets."""

    def __init__(self, fmt: TiffFormat, levels: list[_Level], n: int, ome_xml: bytes, pixel_total: int):
        self.fmt, self.levels, self.n, self.ome_xml = fmt, levels, n, ome_xml
        self.pixels_at = [0] * len(levels)
        self.tables_at = self.subs_at = self.records_at = 0
        self.table_lens = [lv.plan.tables_len(fmt) for lv in levels]
        self.table_len = sum(self.table_lens)
        self.sub_lens = [fmt.ifd_len(self.tags(lv, 0)) for lv in range(1, len(levels))]
        self.sub_len = sum(self.sub_lens)
        self.ifd0_at = fmt.header_len
        self.records_at = self.ifd0_at + fmt.ifd_len(self.tags(0, 0))
        self.record_len = fmt.ifd_len(self.tags(0, 1))
        self.subs_at = self.records_at + (n - 1) * self.record_len
        self.tables_at = self.subs_at + n * self.sub_len
        at = _align(self.tables_at + n * self.table_len, pixel_total, tiled=True)
        for lv, level in enumerate(levels):
            self.pixels_at[lv] = at
            at += n * level.nbytes
        self.size = at

    def record_at(self, plane: int) -> int:
        """The level-0 IFD of a plane."""
        return self.ifd0_at if plane == 0 else self.records_at + (plane - 1) * self.record_len

    def sub_at(self, lv: int, plane: int) -> int:
        return self.subs_at + plane * self.sub_len + sum(self.sub_lens[:lv - 1])

    def tags(self, lv: int, plane: int) -> list[Tag]:
        fmt, level = self.fmt, self.levels[lv]
        src = level.src
        description = self.ome_xml if lv == 0 and plane == 0 else None
        tables_at = self.tables_at + plane * self.table_len + sum(self.table_lens[:lv])
        pixel_offset = self.pixels_at[lv] + plane * level.nbytes
        tags = [t for t in image_tags(fmt, src.width, src.height, src.dtype, level.plan, pixel_offset, description,
                                      level.resolution, level.resolution_unit, tables_at=tables_at)
                if t.code != NEW_SUBFILE_TYPE]
        tags += [
            Tag(NEW_SUBFILE_TYPE, LONG, [1 if lv else 0]),
            Tag(SUBFILE_TYPE, SHORT, [2 if lv else 1]),
            Tag(PLANAR_CONFIGURATION, SHORT, [1]),
            Tag(SOFTWARE, ASCII, SOFTWARE_NAME),
        ]
        if lv == 0 and len(self.levels) > 1:
            subs = [self.sub_at(k, plane) for k in range(1, len(self.levels))]
            tags.append(Tag(SUB_IFDS, IFD8 if fmt.big else IFD, subs))
        return tags

    def ifd(self, lv: int, plane: int) -> bytes:
        if lv == 0:
            at, nxt = self.record_at(plane), (self.record_at(plane + 1) if plane + 1 < self.n else 0)
        else:
            at = self.sub_at(lv, plane)
            nxt = self.sub_at(lv + 1, plane) if lv + 1 < len(self.levels) else 0
        return self.fmt.ifd(self.tags(lv, plane), at, nxt)


PYRAMID_OME_TIFF = View(
    "image.ome.tif", lambda ctx: unsupported_reason(ctx.sources),
    lambda ctx: FileNode(pyramid_file(ctx.sources, ome_xml(ctx.image, ctx.sources[0], "")), ctx.mtime),
    lambda node, ctx: {"size": node.size, "levels": len(ctx.sources), "planes": ctx.sources[0].plane_count})
