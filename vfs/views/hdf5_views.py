"""HDF5 views of an image: `sN.h5` (one level as /data) and `image.h5` (every level)."""

from __future__ import annotations

import json
from functools import partial

import numpy as np

from .arrays import ArrayView
from ..writers.hdf5 import Dataset, hdf5_file
from ..tree.nodes import LazyFile
from .planes import LENGTH_IN_METERS, axis_positions, tiff_dtype
from .view import LEVEL, View
from ..tree.virtualfile import VirtualFile


def unsupported_reason(level) -> str | None:
    if level.dtype.kind not in "biuf":
        return f"HDF5 views cannot hold dtype {level.dtype}"
    return None


def element_size_um(level) -> list[float]:
    """The spatial voxel size, z (when present), y, x, in micrometers where the unit says so,
    else the bare scale: the ImageJ HDF5 plugin reads [z, y, x] (or [y, x]) whatever the
    dataset's rank, so a t or c entry would be taken for a length."""
    return [scale * LENGTH_IN_METERS[axis.unit] / 1e-6 if axis.unit in LENGTH_IN_METERS else scale
            for axis, scale in zip(level.axes, level.scale) if axis.type == "space"]


# vigra's axis type flags, as ilastik reads them from `axistags`.
VIGRA_TYPE_FLAGS = {"channel": 1, "space": 2, "time": 8}


def ilastik_attributes(level) -> dict[str, str]:
    """`axistags` (vigra JSON: axis keys, types and pixel sizes) and `axis_units` (JSON of
    axis key -> unit), which ilastik reads to know the axis order and calibration."""
    keys = {p: k for k, p in axis_positions(level).items() if p is not None}
    axes, units = [], {}
    for i, (axis, scale) in enumerate(zip(level.axes, level.scale)):
        key = keys[i]
        resolution = 0.0 if axis.type == "channel" else float(scale)
        axes.append({"key": key, "typeFlags": VIGRA_TYPE_FLAGS[axis.type], "resolution": resolution, "description": ""})
        if axis.unit and axis.type != "channel":
            units[key] = axis.unit
    return {"axistags": json.dumps({"axes": axes}, indent=2), "axis_units": json.dumps(units)}


def level_dataset(path: str, level, engine) -> Dataset:
    view = ArrayView(engine, level, range(len(level.shape)), dtype=tiff_dtype(level.dtype))
    names = [a.name for a in level.axes]
    attrs = {
        "element_size_um": np.array(element_size_um(level)),
        "axes": "".join(names) if all(len(n) == 1 for n in names) else ",".join(names),
        **ilastik_attributes(level),
        "scale": np.array(level.scale),
        "translation": np.array(level.translation),
    }
    return Dataset(path, view=view, attrs=attrs, labels=names)


def level_h5(level, engine) -> VirtualFile:
    return hdf5_file([level_dataset("data", level, engine)])


def image_h5(image, engine) -> VirtualFile:
    levels = image.levels
    multiscales = [{
        "name": image.name,
        "axes": [{"name": a.name, "type": a.type, **({"unit": a.unit} if a.unit else {})} for a in levels[0].axes],
        "datasets": [
            {"path": f"s{i}", "coordinateTransformations": [
                {"type": "scale", "scale": list(lv.scale)},
                {"type": "translation", "translation": list(lv.translation)},
            ]}
            for i, lv in enumerate(levels)
        ],
    }]
    datasets = [level_dataset(f"s{i}", lv, engine) for i, lv in enumerate(levels)]
    return hdf5_file(datasets, {"/": {"multiscales": json.dumps(multiscales), "source": image.source_url}})


# -- the views ----------------------------------------------------------------------------
LEVEL_H5 = View(
    f"{LEVEL}.h5", lambda ctx: unsupported_reason(ctx.level),
    lambda ctx: LazyFile(partial(level_h5, ctx.level, ctx.engine), ctx.mtime),
    lambda node, ctx: {"dataset": "/data"})
IMAGE_H5 = View(
    "image.h5", lambda ctx: next(filter(None, (unsupported_reason(lv) for lv in ctx.image.levels)), None),
    lambda ctx: LazyFile(partial(image_h5, ctx.image, ctx.engine), ctx.mtime),
    lambda node, ctx: {"datasets": [f"/s{i}" for i in range(len(ctx.image.levels))]})
