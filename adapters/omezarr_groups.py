"""OME-Zarr groups found through metadata alone: labels of an image, HCS plates (plate ->
wells -> fields) and bioformats2raw series. Every image of a group opens concurrently."""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor

from . import omezarr
from .base import Group, Image
from .errors import BadMetadata, NotAnImage
from .format import Format, Source
from .storage import Store, parse_json, safe_key

OPEN_THREADS = 8
MAX_PROBED_SERIES = 64


def _attrs_of(doc: dict | None, zarr3: bool) -> dict | None:
    """The OME attributes of a group document (.zattrs, or zarr.json's attributes.ome)."""
    if doc is None:
        return None
    if zarr3:
        ome = (doc.get("attributes") or {}).get("ome")
        return ome if isinstance(ome, dict) else {}
    return doc


def read_group_attrs(store: Store, paths: list[str], zarr3: bool) -> dict[str, dict | None]:
    key = "zarr.json" if zarr3 else ".zattrs"
    raw = store.get_many([posixpath.join(p, key) for p in paths])
    out = {}
    for p in paths:
        doc = raw[posixpath.join(p, key)]
        out[p] = _attrs_of(None if doc is None else parse_json(doc, f"{store.url}/{p}/{key}"), zarr3)
    return out


def open_images(store: Store, paths: list[str], zarr3: bool, open_image) -> dict[str, Image]:
    """Images at relative paths, opened concurrently (a plate has hundreds of fields)."""
    attrs = read_group_attrs(store, paths, zarr3)

    def one(p: str) -> Image:
        a = attrs[p]
        if not a or "multiscales" not in a:
            raise NotAnImage(f"{store.url}/{p}: no multiscales where the metadata points")
        return open_image(store.child(p), a, posixpath.basename(p))

    with ThreadPoolExecutor(min(OPEN_THREADS, max(1, len(paths)))) as pool:
        return dict(zip(paths, pool.map(one, paths)))


def labels_of(store: Store, labels_attrs: dict | None, zarr3: bool, open_image) -> dict[str, Image]:
    if not labels_attrs or not isinstance(labels_attrs.get("labels"), list):
        return {}
    names = [safe_key(str(n)) for n in labels_attrs["labels"]]
    images = open_images(store.child("labels"), names, zarr3, open_image)
    return images


def plate(store: Store, attrs: dict, zarr3: bool, open_image, name: str) -> Group:
    """plate/ROW/COL/FIELD/: the wells listed by the plate, the fields listed by each well."""
    wells = attrs["plate"].get("wells") if isinstance(attrs.get("plate"), dict) else None
    if not isinstance(wells, list) or not all(isinstance(w, dict) and isinstance(w.get("path"), str) for w in wells):
        raise BadMetadata(f"{store.url}: plate metadata has no wells with paths")
    well_paths = [safe_key(w["path"]) for w in wells]
    fields = []
    for wp, wa in read_group_attrs(store, well_paths, zarr3).items():
        images = (wa or {}).get("well", {}).get("images") if isinstance((wa or {}).get("well"), dict) else None
        if not isinstance(images, list):
            raise BadMetadata(f"{store.url}/{wp}: well metadata has no images")
        fields += [posixpath.join(wp, safe_key(str(i.get("path")))) for i in images if isinstance(i, dict)]
    group = Group(name, format="OME-Zarr plate")
    for path, image in open_images(store, fields, zarr3, open_image).items():
        group.add(path, image)
    return group


def bioformats2raw(store: Store, zarr3: bool, open_image, name: str) -> Group:
    """Series 0/, 1/, ...: listed by OME/ when it says so, else probed in order."""
    ome = read_group_attrs(store, ["OME"], zarr3)["OME"]
    series = ome.get("series") if isinstance(ome, dict) else None
    if isinstance(series, list) and series:
        paths = [safe_key(str(s)) for s in series]
    else:
        probe = [str(i) for i in range(MAX_PROBED_SERIES)]
        found = read_group_attrs(store, probe, zarr3)
        paths = []
        for p in probe:
            if not found[p]:
                break
            paths.append(p)
    if not paths:
        raise NotAnImage(f"{store.url}: bioformats2raw layout without series")
    group = Group(name, format="OME-Zarr bioformats2raw")
    for path, image in open_images(store, paths, zarr3, open_image).items():
        group.add(path, image)
    return group


# -- registry entries --------------------------------------------------------------------

LABEL_KEYS = ("labels/.zattrs", "labels/zarr.json")


def opener(zarr3: bool, mtime: float):
    """Opens the images a group points to (fields, series, labels) as OME-Zarr images."""

    def open_image(store: Store, attrs: dict, name: str) -> Image:
        ms = attrs.get("multiscales")
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], dict) else {}
        version = str(attrs.get("version", "0.5")) if zarr3 else str(first.get("version", "0.4"))
        return omezarr.open_image(store, attrs, version, name, mtime)

    return open_image


def _zarr3(source: Source) -> bool:
    return source.docs["zarr.json"] is not None


def _group_key(source: Source) -> str:
    return "zarr.json" if _zarr3(source) else ".zattrs"


def _root_attrs(source: Source) -> dict:
    return _attrs_of(source.docs[_group_key(source)], _zarr3(source)) or {}


def _open_image(source: Source) -> Image:
    ome, version = omezarr.ome_attributes(source.docs)
    zarr3, mtime = _zarr3(source), source.mtime(_group_key(source))
    image = omezarr.open_image(source.store, ome, version, source.name, mtime)
    labels_doc = source.docs["labels/zarr.json" if zarr3 else "labels/.zattrs"]
    image.labels = labels_of(source.store, _attrs_of(labels_doc, zarr3), zarr3, opener(zarr3, mtime))
    return image


def _images_opener(source: Source):
    return opener(_zarr3(source), source.mtime(_group_key(source)))


OME_ZARR_IMAGE = Format("OME-Zarr image", lambda s: omezarr.ome_attributes(s.docs) is not None, _open_image,
                        documents=(*omezarr.ROOT_KEYS, *LABEL_KEYS))
OME_ZARR_PLATE = Format(
    "OME-Zarr plate", lambda s: "plate" in _root_attrs(s),
    lambda s: plate(s.store, _root_attrs(s), _zarr3(s), _images_opener(s), s.name), documents=omezarr.ROOT_KEYS,
)
BIOFORMATS2RAW = Format(
    "OME-Zarr bioformats2raw", lambda s: "bioformats2raw.layout" in _root_attrs(s),
    lambda s: bioformats2raw(s.store, _zarr3(s), _images_opener(s), s.name), documents=omezarr.ROOT_KEYS,
)
