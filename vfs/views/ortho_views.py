"""Orthogonal planes of a level: `sN.xz/` (one TIFF per y) and `sN.yz/` (one TIFF per x).

They are the plane files of `sN/` with the level's axes given other parts: in an XZ plane z
runs down the rows and x along them, and the files step along y. Each read takes only the
rows it covers from the chunks it touches (cache.blocked decodes only the Blosc blocks
those rows lie in), so a scroll decodes each chunk once while it stays in memory.
"""

from __future__ import annotations

from ..tree.nodes import PlaneDir
from .planes import PlaneSource
from .tiff_views import TiffLayout, unsupported_reason
from .view import LEVEL, View

# View name -> (level axis for the rows, the columns and the files).
ORTHO_VIEWS = {"xz": ("z", "x", "y"), "yz": ("z", "y", "x")}


def ortho_source(level, engine, kind: str) -> PlaneSource:
    rows, cols, files = ORTHO_VIEWS[kind]
    return PlaneSource(level, engine, roles={"y": rows, "x": cols, "z": files})


def ortho_reason(level, engine) -> str | None:
    """Why a level has no orthogonal planes, or None."""
    if PlaneSource(level, engine).pos["z"] is None:
        return "no z axis: the image is 2D"
    return unsupported_reason(ortho_source(level, engine, "xz"), "tiff")


def ortho_dir(level, engine, kind: str, mtime: float) -> PlaneDir:
    return PlaneDir(TiffLayout(ortho_source(level, engine, kind)), mtime, letter=ORTHO_VIEWS[kind][2])


def _ortho_view(kind: str) -> View:
    return View(f"{LEVEL}.{kind}/", lambda ctx: ortho_reason(ctx.level, ctx.engine),
                lambda ctx: ortho_dir(ctx.level, ctx.engine, kind, ctx.mtime),
                lambda node, ctx: {"files": node.layout.src.plane_count, "file_size": node.file_size,
                                   "width": node.layout.src.width, "height": node.layout.src.height})


XZ_PLANES, YZ_PLANES = _ortho_view("xz"), _ortho_view("yz")
