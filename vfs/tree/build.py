"""Building the tree a user sees from a source: for each image, the views vfs/views/registry.py lists."""

from __future__ import annotations

import json
from functools import partial
from dataclasses import asdict

from ...adapters import Group, Image
from ..views import registry
from .nodes import DirNode, DynamicFile, LazyDir, static_file
from ..views.planes import PlaneSource
from ..views.tiff_views import TiffLayout
from ..views.view import ImageContext, LevelContext


def build_tree(source: Image | Group, engine, stats_render=None) -> DirNode:
    """The mount root: the image itself when the source is an image, else its groups."""
    root = image_dir(source, engine) if isinstance(source, Image) else group_dir(source, engine)
    if stats_render is not None:
        root.entries[".ngffmount"] = DirNode(root.mtime, {"stats.json": DynamicFile(stats_render, root.mtime)})
    return root


def group_dir(group: Group, engine) -> DirNode:
    d = DirNode(0.0)
    for name, image in group.images.items():
        d.entries[name] = LazyDir(image.mtime, partial(image_dir, image, engine))
    for name, sub in group.groups.items():
        d.entries[name] = group_dir(sub, engine)
    d.mtime = max((n.mtime for n in d.entries.values()), default=0.0)
    return d


def image_dir(image: Image, engine) -> DirNode:
    """An image's folder: info.json, then each registered view it can have (registry.VIEWS)."""
    d = DirNode(image.mtime)
    views: dict[str, dict] = {}
    missing: dict[str, str] = {}
    sources = [PlaneSource(level, engine) for level in image.levels]
    layouts = [TiffLayout(src) for src in sources]
    image_ctx = ImageContext(image, engine, sources, partial(image_dir, engine=engine))
    level_ctxs = [LevelContext(image, engine, sources, image_ctx.image_dir, i, layout)
                  for i, layout in enumerate(layouts)]
    # Each level's views, level after level, then the views of the whole image.
    offers = [(view, ctx) for ctx in level_ctxs for view in registry.VIEWS if view.per_level]
    offers += [(view, image_ctx) for view in registry.VIEWS if not view.per_level]
    for view, ctx in offers:
        name = view.name_for(ctx)
        reason = view.missing(ctx)
        if reason:
            if view.describe is not None:
                missing[name] = reason
            continue
        node = d.entries[name.rstrip("/")] = view.build(ctx)
        if view.describe is not None:
            views[name] = view.describe(node, ctx)
    info = info_document(image, [layout.cal for layout in layouts], views, missing)
    d.entries = {"info.json": static_file(info, image.mtime), **d.entries}
    return d


def info_document(image: Image, calibrations: list, views: dict, missing: dict) -> bytes:
    levels = []
    for i, (level, cal) in enumerate(zip(image.levels, calibrations)):
        levels.append({
            "name": f"s{i}",
            "path": level.path,
            "shape": list(level.shape),
            "dtype": str(level.dtype.newbyteorder("=")) if level.dtype.itemsize > 1 else str(level.dtype),
            "chunk_shape": list(level.chunk_shape),
            "scale": list(level.scale),
            "translation": list(level.translation),
            "voxel_size": {"x": cal.pixel_width, "y": cal.pixel_height, "z": cal.pixel_depth, "unit": cal.unit},
        })
    doc = {
        "name": image.name,
        "format": image.format,
        "source": image.source_url,
        "axes": [{"name": a.name, "type": a.type, "unit": a.unit} for a in image.levels[0].axes],
        "channels": [asdict(c) for c in image.channels],
        "levels": levels,
        "views": views,
        "missing_views": missing,
    }
    if image.labels:
        doc["labels"] = sorted(image.labels)
    return (json.dumps(doc, indent=2) + "\n").encode()
