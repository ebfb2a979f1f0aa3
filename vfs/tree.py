"""Building the tree a user sees (ARCHITECTURE.md, "The tree a user sees") from a source."""

from __future__ import annotations

import json
from functools import partial
from dataclasses import asdict

from ..adapters import Group, Image
from . import bdv_views, hdf5_views, preview, pyramid_views
from .crop_views import CropDir, crop_reason, example_crop
from .ortho_views import ortho_dir, ortho_reason
from .nodes import DirNode, DynamicFile, FileNode, LazyDir, LazyFile, PlaneDir, static_file
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
        d.entries[name] = LazyDir(image.mtime, partial(image_dir, image, engine))
    for name, sub in group.groups.items():
        d.entries[name] = group_dir(sub, engine)
    d.mtime = max((n.mtime for n in d.entries.values()), default=0.0)
    return d


def image_dir(image: Image, engine) -> DirNode:
    d = DirNode(image.mtime)
    views: dict[str, dict] = {}
    missing: dict[str, str] = {}

    def offer(name: str, reason: str | None, make, describe) -> None:
        """Add a view, or record why this image cannot have it."""
        if reason:
            missing[name] = reason
        else:
            node = d.entries[name.rstrip("/")] = make()
            views[name] = describe(node)

    calibrations = []
    sources = []
    for i, level in enumerate(image.levels):
        name = f"s{i}"
        src = PlaneSource(level, engine)
        sources.append(src)
        layout = TiffLayout(src)
        calibrations.append(layout.cal)
        planes = {"planes": src.plane_count}
        offer(f"{name}/", unsupported_reason(src, "tiff"), lambda: PlaneDir(layout, image.mtime),
              lambda n: {"files": src.plane_count, "file_size": n.file_size})
        offer(f"{name}.tif", unsupported_reason(src, "imagej"), lambda: FileNode(layout.stack_file(), image.mtime),
              lambda n: {"size": n.size, **planes})
        offer(f"{name}.ome.tif", unsupported_reason(src, "ome"),
              lambda: FileNode(layout.ome_file(ome_xml(image, src, name)), image.mtime),
              lambda n: {"size": n.size, **planes})
        offer(f"{name}.h5", hdf5_views.unsupported_reason(level),
              lambda: LazyFile(partial(hdf5_views.level_h5, level, engine), image.mtime), lambda n: {"dataset": "/data"})
        for kind in ("xz", "yz"):
            offer(f"{name}.{kind}/", ortho_reason(level, engine), partial(ortho_dir, level, engine, kind, image.mtime),
                  lambda n: {"files": n.layout.src.plane_count, "file_size": n.file_size,
                             "width": n.layout.src.width, "height": n.layout.src.height})
    offer("image.ome.tif", pyramid_views.unsupported_reason(sources),
          lambda: FileNode(pyramid_views.pyramid_file(sources, ome_xml(image, sources[0], "")), image.mtime),
          lambda n: {"size": n.size, "levels": len(sources), "planes": sources[0].plane_count})
    offer("image.h5", next(filter(None, (hdf5_views.unsupported_reason(lv) for lv in image.levels)), None),
          lambda: LazyFile(partial(hdf5_views.image_h5, image, engine), image.mtime),
          lambda n: {"datasets": [f"/s{i}" for i in range(len(image.levels))]})
    bdv_reason = bdv_views.unsupported_reason(image)
    offer("bdv.xml", bdv_reason, lambda: static_file(bdv_views.bdv_xml(image), image.mtime),
          lambda n: {"loader": "bdv.hdf5", "h5": "bdv.h5"})
    offer("bdv.h5", bdv_reason, lambda: LazyFile(partial(bdv_views.bdv_h5, image, engine), image.mtime),
          lambda n: {"volumes": "tTTTTT/sSS/L/cells"})
    offer("crop/", crop_reason(image), lambda: CropDir(image, engine),
          lambda n: {"levels": list(n.levels), "readme": "README.txt", "example": example_crop(image)})
    offer("preview.png", preview.unsupported_reason(image), lambda: preview.PreviewFile(image, engine),
          lambda n: n.about)
    if image.labels:
        labels = {name: image_dir(label, engine) for name, label in image.labels.items()}
        d.entries["labels"] = DirNode(image.mtime, labels)
    info = info_document(image, calibrations, views, missing)
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
