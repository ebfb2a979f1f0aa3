"""`crop/`: any box of a level as an ImageJ hyperstack, made when looked up by its name.

`crop/sN/z100-300_y2048-4096_x0-2048.tif` is `sN.tif` cut to that box: the same stack
layout (tiff_views.TiffLayout) over a PlaneSource offset to the box, so its size comes from
metadata alone and its origin is shifted to the box's corner.
"""

from __future__ import annotations

import re
import threading
from typing import Iterable

from ...adapters.lru import LRU
from ..tree.nodes import DirNode, FileNode, Node, static_file
from .planes import PlaneSource
from .tiff_views import IMAGEJ_DTYPES, TiffLayout, unsupported_reason
from .view import View

AXIS_ORDER = "tczyx"
_RANGE = re.compile(r"([tczyx])([0-9]{1,12})-([0-9]{1,12})")  # ASCII digits only
# Crop files looked up lately, kept so that a file's reads share one layout and readahead.
KEEP_FILES = 256


def parse_box(name: str, sizes: dict[str, int | None]) -> dict[str, tuple[int, int]] | None:
    """The box a file name asks for, or None when the name is not a valid box of a level
    whose axes have `sizes` (None: the level has no such axis)."""
    if not name.endswith(".tif"):
        return None
    parts = name[:-4].split("_")
    box: dict[str, tuple[int, int]] = {}
    last = -1
    for part in parts:
        m = _RANGE.fullmatch(part)
        if m is None:
            return None
        axis, start, stop = m.group(1), int(m.group(2)), int(m.group(3))
        order = AXIS_ORDER.index(axis)
        if order <= last or sizes.get(axis) is None or not 0 <= start < stop <= sizes[axis]:
            return None
        last = order
        box[axis] = (start, stop)
    return box


class CropLevelDir(DirNode):
    """`crop/sN/`: lists nothing; any valid box name is a file."""

    def __init__(self, level, engine, mtime: float):
        super().__init__(mtime)
        self.level, self.engine = level, engine
        src = PlaneSource(level, engine)
        self.sizes = {k: (src.sizes[k] if src.has_axis(k) else None) for k in AXIS_ORDER}
        self._files: LRU[str, FileNode] = LRU(KEEP_FILES)
        self._lock = threading.Lock()

    def names(self) -> Iterable[str]:
        return ()

    def child(self, name: str) -> Node | None:
        with self._lock:
            node = self._files.get(name)
            if node is not None:
                return node
        box = parse_box(name, self.sizes)
        if box is None:
            return None
        src = PlaneSource(self.level, self.engine, box=box)
        if unsupported_reason(src, "imagej"):
            return None
        node = FileNode(TiffLayout(src).stack_file(), self.mtime)
        with self._lock:
            self._files.put(name, node)
        return node


def example_crop(image) -> str:
    """The middle of every plane of level 0, as a crop file's path."""
    s = PlaneSource(image.levels[0], None)
    half = {a: (s.sizes[a] // 4, max(s.sizes[a] // 4 + 1, 3 * s.sizes[a] // 4)) for a in "yx"}
    return "crop/s0/" + "_".join(f"{a}{lo}-{hi}" for a, (lo, hi) in half.items()) + ".tif"


def crop_readme(image) -> bytes:
    src = PlaneSource(image.levels[0], None)
    axes = [a for a in AXIS_ORDER if src.has_axis(a)]
    lines = [
        "Any box of a level is a file here, made when you open it by name (the folders list",
        "nothing). crop/sN/<box>.tif is an ImageJ hyperstack like sN.tif, cut to the box, with",
        "its origin at the box's corner.",
        "",
        "A box name lists ranges in t, c, z, y, x order as <axis><start>-<stop>, joined by _.",
        "Ranges are half-open, in voxels of that level; a left-out axis spans its whole extent.",
        f"This image's axes: {', '.join(axes)}. A name that does not parse, an empty range,",
        "a range outside the level or a box whose planes hold more pixels than ImageJ 1.x",
        "reads is not found (ENOENT).",
        "",
        "Levels (sizes per axis):",
    ]
    for i, level in enumerate(image.levels):
        s = PlaneSource(level, None)
        lines.append(f"  s{i}: " + " ".join(f"{a}={s.sizes[a]}" for a in axes))
    yx = example_crop(image)[len("crop/s0/"):-len(".tif")]
    lines += ["", "Examples:", f"  crop/s0/{yx}.tif        every plane, the middle of each"]
    if "z" in axes:
        lines.append(f"  crop/s0/z0-1_{yx}.tif   the first z only")
    if "c" in axes:
        lines.append("  crop/s0/c0-1.tif   the whole first channel")
    return ("\n".join(lines) + "\n").encode()


def crop_reason(image) -> str | None:
    """Why an image has no crops, or None."""
    if any(PlaneSource(level, None).dtype.name in IMAGEJ_DTYPES for level in image.levels):
        return None
    return f"ImageJ 1.x cannot hold dtype {image.levels[0].dtype}"


class CropDir(DirNode):
    """`crop/`: lists README.txt only; the level folders `sN/` are found by name."""

    def __init__(self, image, engine):
        super().__init__(image.mtime, {"README.txt": static_file(crop_readme(image), image.mtime)})
        # Levels whose dtype ImageJ reads (a crop of a level with huge planes may still fit).
        self.levels = {f"s{i}": CropLevelDir(level, engine, image.mtime) for i, level in enumerate(image.levels)
                       if PlaneSource(level, None).dtype.name in IMAGEJ_DTYPES}

    def child(self, name: str) -> Node | None:
        return self.entries.get(name) or self.levels.get(name)


CROPS = View("crop/", lambda ctx: crop_reason(ctx.image), lambda ctx: CropDir(ctx.image, ctx.engine),
             lambda node, ctx: {"levels": list(node.levels), "readme": "README.txt", "example": example_crop(ctx.image)})
