"""BigDataViewer views: `bdv.xml` + `bdv.h5` (the bdv.hdf5 format), for BigDataViewer and Mastodon.

Setups are the channels; each (timepoint, setup, level) is a `cells` volume in z, y, x.
uint16 is stored as int16 with the same bits, as BDV reads it; other types carry the
`dataType` attribute on the setup group (docs/formats.md, BigDataViewer).
"""

from __future__ import annotations

from functools import partial
from xml.sax.saxutils import escape

import numpy as np

from .arrays import ArrayView
from ..writers.hdf5 import Dataset, hdf5_file
from ..tree.nodes import LazyFile, static_file
from ..writers.ome_xml import OME_LENGTH_UNIT
from .planes import axis_positions
from .view import View
from ..tree.virtualfile import VirtualFile

BDV_TYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
MAX_DATASETS = 20000  # t x c x levels: the header is built in memory on first use


def _size(level, pos, name) -> int:
    return 1 if pos[name] is None else level.shape[pos[name]]


def unsupported_reason(image) -> str | None:
    level = image.levels[0]
    if level.dtype.name not in BDV_TYPES:
        return f"BigDataViewer cannot hold dtype {level.dtype}"
    pos = axis_positions(level)
    count = _size(level, pos, "t") * _size(level, pos, "c") * len(image.levels)
    if count > MAX_DATASETS:
        return f"{count} volumes (t x c x levels) is more than the {MAX_DATASETS} a bdv.h5 header is built for"
    return None


def _xyz(level, pos, values) -> list[float]:
    return [1.0 if pos[a] is None else float(values[pos[a]]) for a in "xyz"]


def bdv_h5(image, engine) -> VirtualFile:
    levels = image.levels
    pos = axis_positions(levels[0])
    nt, nc = _size(levels[0], pos, "t"), _size(levels[0], pos, "c")
    base = _xyz(levels[0], pos, levels[0].scale)
    resolutions = np.array([[s / b if b else 1.0 for s, b in zip(_xyz(lv, pos, lv.scale), base)] for lv in levels])
    subdivisions = np.array([[int(v) for v in _xyz(lv, pos, lv.chunk_shape)] for lv in levels], dtype=np.int32)
    dtype = levels[0].dtype
    stored = np.dtype("<i2") if dtype.name == "uint16" else dtype.newbyteorder("<")
    datasets, groups = [], {}
    for c in range(nc):
        setup = f"s{c:02d}"
        datasets += [Dataset(f"{setup}/resolutions", data=resolutions), Dataset(f"{setup}/subdivisions", data=subdivisions)]
        if dtype.name != "uint16":
            groups[setup] = {"dataType": dtype.name}
    for t in range(nt):
        for c in range(nc):
            for i, level in enumerate(levels):
                fixed = {p: v for p, v in ((pos["t"], t), (pos["c"], c)) if p is not None}
                view = ArrayView(engine, level, [pos["z"], pos["y"], pos["x"]], fixed, dtype=stored)
                datasets.append(Dataset(f"t{t:05d}/s{c:02d}/{i}/cells", view=view))
    return hdf5_file(datasets, groups)


def bdv_xml(image, h5_name: str = "bdv.h5") -> bytes:
    level = image.levels[0]
    pos = axis_positions(level)
    nt, nc = _size(level, pos, "t"), _size(level, pos, "c")
    size = [_size(level, pos, a) for a in "xyz"]
    voxel = _xyz(level, pos, level.scale)
    origin = [0.0 if pos[a] is None else float(level.translation[pos[a]]) for a in "xyz"]
    unit = level.axes[pos["x"]].unit
    unit_text = OME_LENGTH_UNIT.get(unit, unit) if unit else "pixel"
    names = [(image.channels[c].label if c < len(image.channels) and image.channels[c].label else f"channel {c}")
             for c in range(nc)]
    setups = "".join(
        f"<ViewSetup><id>{c}</id><name>{escape(names[c])}</name><size>{size[0]} {size[1]} {size[2]}</size>"
        f"<voxelSize><unit>{escape(unit_text)}</unit><size>{voxel[0]!r} {voxel[1]!r} {voxel[2]!r}</size></voxelSize>"
        f"<attributes><channel>{c}</channel></attributes></ViewSetup>"
        for c in range(nc)
    )
    channels = "".join(f"<Channel><id>{c}</id><name>{escape(names[c])}</name></Channel>" for c in range(nc))
    affine = (f"{voxel[0]!r} 0.0 0.0 {origin[0]!r} 0.0 {voxel[1]!r} 0.0 {origin[1]!r} "
              f"0.0 0.0 {voxel[2]!r} {origin[2]!r}")
    registrations = "".join(
        f'<ViewRegistration timepoint="{t}" setup="{c}"><ViewTransform type="affine">'
        f"<affine>{affine}</affine></ViewTransform></ViewRegistration>"
        for t in range(nt) for c in range(nc)
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<SpimData version="0.2">'
        '<BasePath type="relative">.</BasePath><SequenceDescription>'
        f'<ImageLoader format="bdv.hdf5"><hdf5 type="relative">{escape(h5_name)}</hdf5></ImageLoader>'
        f'<ViewSetups>{setups}<Attributes name="channel">{channels}</Attributes></ViewSetups>'
        f'<Timepoints type="range"><first>0</first><last>{nt - 1}</last></Timepoints>'
        f"</SequenceDescription><ViewRegistrations>{registrations}</ViewRegistrations></SpimData>\n"
    )
    return xml.encode("utf-8")


# -- the views ----------------------------------------------------------------------------
BDV_XML = View(
    "bdv.xml", lambda ctx: unsupported_reason(ctx.image),
    lambda ctx: static_file(bdv_xml(ctx.image), ctx.mtime),
    lambda node, ctx: {"loader": "bdv.hdf5", "h5": "bdv.h5"})
BDV_H5 = View(
    "bdv.h5", lambda ctx: unsupported_reason(ctx.image),
    lambda ctx: LazyFile(partial(bdv_h5, ctx.image, ctx.engine), ctx.mtime),
    lambda node, ctx: {"volumes": "tTTTTT/sSS/L/cells"})
