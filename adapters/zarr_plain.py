"""A plain Zarr array (v2 or v3) without multiscale metadata: one level, axes named by
dimension_names or inferred from the rank (info.json states them)."""

from __future__ import annotations

from . import omezarr
from .base import Image, inferred_axes
from .errors import NgffMountError
from .format import Format, Source
from .zarr_array import ZarrLevel


def open_array(store, meta: dict, name: str, mtime: float | None) -> Image:
    shape = meta.get("shape")
    ndim = len(shape) if isinstance(shape, list) else 0
    axes = inferred_axes(ndim)
    names = meta.get("dimension_names")
    if isinstance(names, list) and len(names) == ndim and all(isinstance(n, str) and n for n in names):
        try:
            axes = list(omezarr.parse_axes(names, ndim, "0.5", store.url))
        except NgffMountError:
            pass  # names that do not say t, c, z, y, x: keep the inferred axes
    level = ZarrLevel(store, "", meta, axes, [1.0] * ndim, [0.0] * ndim)
    fmt = "Zarr v3 array" if meta.get("zarr_format") == 3 else "Zarr v2 array"
    return Image(name, [level], source_url=store.url, format=fmt, mtime=mtime or 0.0)


def _array_meta(source: Source) -> dict | None:
    docs = source.docs
    meta = docs[".zarray"] or docs["zarr.json"]
    if meta is not None and (docs[".zarray"] is not None or meta.get("node_type") == "array"):
        return meta
    return None


def _open(source: Source) -> Image:
    key = ".zarray" if source.docs[".zarray"] else "zarr.json"
    return open_array(source.store, _array_meta(source), source.name, source.store.mtime(key))


ZARR_ARRAY = Format("Zarr array", lambda s: _array_meta(s) is not None, _open, documents=(".zarray", "zarr.json"))
