"""Building the tree a user sees (ARCHITECTURE.md, "The tree a user sees") from a source."""

from __future__ import annotations

import json
from functools import partial
from dataclasses import asdict

from ..adapters import Group, Image
from . import bdv_views, hdf5_views
from .nodes import DirNode, DynamicFile, FileNode, LazyFile, PlaneDir, static_file
from .planes import PlaneSource
from .ome_xml import ome_xml
from .tiff_views import TiffLayout, unsupported_reason


def build_tree(source: Image | Group, engine, stats_render=None) -> DirNode:
    """The mount root: the image itself when the source is an image, else its groups."""
    root = image_dir(source, engine) if isinstance(source, Image) else group_dir(source, engine)
    if stats_render is not None:
        root.entries[".ngffmount"] = DirNode(root.mtime, {"stats.json": DynamicFile(stats_render, root.mtime)})
    return root


def group_dir(group: Group, engine) -> DirNode:
    d = DirNode(0.0)
    for name, image in group.images.items():
        d.entries[name] = image_dir(image, engine)
    for name, sub in group.groups.items():
        d.entries[name] = group_dir(sub, engine)
    d.mtime = max((n.mtime for n in d.entries.values()), default=0.0)
    return d


def image_dir(image: Image, engine) -> DirNode:
    d = DirNode(image.mtime)
    views: dict[str, dict] = {}
    missing: dict[str, str] = {}
    for i, level in enumerate(image.levels):
        name = f"s{i}"
        src = PlaneSource(level, engine)
        layout = TiffLayout(src)
        reason = unsupported_reason(src, "tiff")
        if reason:
            missing[f"{name}/"] = reason
        else:
            planes = PlaneDir(layout, image.mtime)
            d.entries[name] = planes
            views[f"{name}/"] = {"files": src.plane_count, "file_size": planes.file_size}
        reason = unsupported_reason(src, "imagej")
        if reason:
            missing[f"{name}.tif"] = reason
        else:
            node = d.entries[f"{name}.tif"] = FileNode(layout.stack_file(), image.mtime)
            views[f"{name}.tif"] = {"size": node.size, "planes": src.plane_count}
        reason = unsupported_reason(src, "ome")
        if reason:
            missing[f"{name}.ome.tif"] = reason
        else:
            node = d.entries[f"{name}.ome.tif"] = FileNode(layout.ome_file(ome_xml(image, src, name)), image.mtime)
            views[f"{name}.ome.tif"] = {"size": node.size, "planes": src.plane_count}
        reason = hdf5_views.unsupported_reason(level)
        if reason:
            missing[f"{name}.h5"] = reason
        else:
            node = d.entries[f"{name}.h5"] = LazyFile(partial(hdf5_views.level_h5, level, engine), image.mtime)
            views[f"{name}.h5"] = {"dataset": "/data"}
    reason = next(filter(None, (hdf5_views.unsupported_reason(lv) for lv in image.levels)), None)
    if reason:
        missing["image.h5"] = reason
    else:
        d.entries["image.h5"] = LazyFile(partial(hdf5_views.image_h5, image, engine), image.mtime)
        views["image.h5"] = {"datasets": [f"/s{i}" for i in range(len(image.levels))]}
    reason = bdv_views.unsupported_reason(image)
    if reason:
        missing["bdv.xml"] = missing["bdv.h5"] = reason
    else:
        d.entries["bdv.xml"] = static_file(bdv_views.bdv_xml(image), image.mtime)
        d.entries["bdv.h5"] = LazyFile(partial(bdv_views.bdv_h5, image, engine), image.mtime)
        views["bdv.xml"] = {"loader": "bdv.hdf5", "h5": "bdv.h5"}
    if image.labels:
        labels = {name: image_dir(label, engine) for name, label in image.labels.items()}
        d.entries["labels"] = DirNode(image.mtime, labels)
    info = info_document(image, views, missing)
    d.entries = {"info.json": static_file(info, image.mtime), **d.entries}
    return d


def info_document(image: Image, views: dict, missing: dict) -> bytes:
    levels = []
    for i, level in enumerate(image.levels):
        cal = PlaneSource(level, None).calibration()
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
