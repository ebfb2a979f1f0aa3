"""HDF5 views of an image: `sN.h5` (one level as /data) and `image.h5` (every level)."""

from __future__ import annotations

import json

import numpy as np

from .arrays import ArrayView
from .hdf5 import Dataset, hdf5_file
from .planes import LENGTH_IN_METERS, tiff_dtype
from .virtualfile import VirtualFile


def unsupported_reason(level) -> str | None:
    if level.dtype.kind not in "biuf":
        return f"HDF5 views cannot hold dtype {level.dtype}"
    return None


def element_size_um(level) -> list[float]:
    """Per axis: the voxel size in micrometers where the unit says so, else the bare scale."""
    sizes = []
    for axis, scale in zip(level.axes, level.scale):
        if axis.type == "space" and axis.unit in LENGTH_IN_METERS:
            sizes.append(scale * LENGTH_IN_METERS[axis.unit] / 1e-6)
        else:
            sizes.append(scale if axis.type == "space" else 1.0)
    return sizes


def level_dataset(path: str, level, engine) -> Dataset:
    view = ArrayView(engine, level, range(len(level.shape)), dtype=tiff_dtype(level.dtype))
    names = [a.name for a in level.axes]
    attrs = {
        "element_size_um": np.array(element_size_um(level)),
        "axes": "".join(names) if all(len(n) == 1 for n in names) else ",".join(names),
        "axis_units": [a.unit or "" for a in level.axes],
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
