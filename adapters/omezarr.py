"""OME-Zarr (NGFF 0.1-0.4 on Zarr v2, 0.5 on Zarr v3): multiscale images from metadata alone."""

from __future__ import annotations

from .base import AXIS_TYPES, Axis, Channel, Image
from .errors import BadMetadata, Unsupported
from .storage import Store, safe_key
from .zarr_array import ZarrLevel

ROOT_KEYS = ("zarr.json", ".zattrs")
AXIS_TYPE_BY_NAME = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def ome_attributes(root: dict[str, dict | None]) -> tuple[dict, str] | None:
    """The OME attributes and NGFF version if the root is an OME-Zarr multiscale image."""
    v3 = root.get("zarr.json")
    if v3 is not None:
        ome = (v3.get("attributes") or {}).get("ome")
        if isinstance(ome, dict) and "multiscales" in ome:
            return ome, str(ome.get("version", "0.5"))
        return None
    attrs = root.get(".zattrs")
    if attrs is not None and "multiscales" in attrs:
        ms = attrs["multiscales"]
        version = ms[0].get("version", "0.4") if isinstance(ms, list) and ms and isinstance(ms[0], dict) else "0.4"
        return attrs, str(version)
    return None


def open_image(store: Store, ome: dict, version: str, name: str, mtime: float) -> Image:
    where = store.url
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise BadMetadata(f"{where}: 'multiscales' must be a non-empty list of objects")
    ms = multiscales[0]
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise BadMetadata(f"{where}: multiscales has no datasets")
    zarr3 = version.startswith("0.5")
    meta_name = "zarr.json" if zarr3 else ".zarray"
    paths = []
    for ds in datasets:
        if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
            raise BadMetadata(f"{where}: every dataset needs a 'path' string")
        paths.append(safe_key(ds["path"]))
    metas = store.level_documents(paths, meta_name)
    ndim = len(metas[0].get("shape") or [])
    axes = parse_axes(ms.get("axes"), ndim, version, where)
    global_scale, global_translation = parse_transforms(ms.get("coordinateTransformations"), len(axes), where)
    levels = []
    for ds, p, meta in zip(datasets, paths, metas):
        scale, translation = parse_transforms(ds.get("coordinateTransformations"), len(axes), f"{where}/{p}")
        # The multiscale-level transform is applied after the dataset's own.
        total_scale = [s * g for s, g in zip(scale, global_scale)]
        total_translation = [t * g + gt for t, g, gt in zip(translation, global_scale, global_translation)]
        levels.append(ZarrLevel(store.child(p), p, meta, axes, total_scale, total_translation))
    return Image(
        name=str(ms.get("name") or name),
        levels=levels,
        channels=parse_channels(ome.get("omero")),
        source_url=store.url,
        format=f"OME-Zarr {version}",
        mtime=mtime,
    )


def parse_axes(raw, ndim: int, version: str, where: str) -> tuple[Axis, ...]:
    if raw is None:
        # NGFF 0.1 and 0.2 had no axes: always 5D t, c, z, y, x.
        if ndim != 5:
            raise BadMetadata(f"{where}: multiscales has no 'axes' and the array is not 5D")
        raw = list("tczyx")
    if not isinstance(raw, list) or not 2 <= len(raw) <= 5:
        raise BadMetadata(f"{where}: 'axes' must list 2 to 5 axes, got {raw!r}")
    axes = []
    for a in raw:
        if isinstance(a, str):  # NGFF 0.3 lists bare names
            a = {"name": a}
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            raise BadMetadata(f"{where}: axis {a!r} has no name")
        name = a["name"]
        kind = a.get("type") or AXIS_TYPE_BY_NAME.get(name.lower())
        if kind not in AXIS_TYPES:
            raise Unsupported(f"{where}: axis {name!r} of type {kind!r} is not supported (time, channel, space)")
        unit = a.get("unit")
        axes.append(Axis(name, kind, unit if isinstance(unit, str) and unit else None))
    kinds = [a.type for a in axes]
    if kinds.count("time") > 1 or kinds.count("channel") > 1 or not 2 <= kinds.count("space") <= 3:
        raise Unsupported(f"{where}: axes {[a.name for a in axes]} are not a subset of t, c, z, y, x")
    return tuple(axes)


def parse_transforms(raw, ndim: int, where: str) -> tuple[list[float], list[float]]:
    scale, translation = [1.0] * ndim, [0.0] * ndim
    if raw is None:
        return scale, translation
    if not isinstance(raw, list):
        raise BadMetadata(f"{where}: coordinateTransformations must be a list")
    for t in raw:
        if not isinstance(t, dict):
            raise BadMetadata(f"{where}: transform {t!r} is not an object")
        kind = t.get("type")
        if kind == "identity":
            continue
        if kind not in ("scale", "translation"):
            raise Unsupported(f"{where}: coordinate transform {kind!r} is not supported")
        if "path" in t and kind not in t:
            raise Unsupported(f"{where}: {kind} stored in a separate array is not supported")
        values = t.get(kind)
        if not isinstance(values, list) or len(values) != ndim or not all(_is_number(v) for v in values):
            raise BadMetadata(f"{where}: {kind} {values!r} must list {ndim} numbers")
        if kind == "scale":
            scale = [float(v) for v in values]
        else:
            translation = [float(v) for v in values]
    return scale, translation


def parse_channels(omero) -> list[Channel]:
    if not isinstance(omero, dict) or not isinstance(omero.get("channels"), list):
        return []
    out = []
    for ch in omero["channels"]:
        ch = ch if isinstance(ch, dict) else {}
        window = ch.get("window") if isinstance(ch.get("window"), dict) else None
        active = ch.get("active") if isinstance(ch.get("active"), bool) else None
        out.append(Channel(label=ch.get("label"), color=ch.get("color"), window=window, active=active))
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
