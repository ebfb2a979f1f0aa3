"""Source adapters: each turns a URL into a tree of images (interfaces 1 and 2 of ARCHITECTURE.md)."""

from __future__ import annotations

import contextlib
import posixpath
from typing import Any, Mapping

from . import bdv, cellmap, imaris, n5, omezarr, precomputed
from . import omezarr_groups as groups
from .base import Axis, Channel, Group, Image, Level, inferred_axes
from .errors import BadMetadata, ChunkReadError, NgffMountError, NotAnImage, SourceNotFound, Unsupported
from .bdv_xml import looks_like_spimdata
from .storage import Store, parse_json, storage_options_for
from .urls import has_scheme, normalize_url, redact
from .zarr_array import ZarrLevel

__all__ = [
    "Axis", "BadMetadata", "Channel", "ChunkReadError", "Group", "Image", "Level", "NgffMountError",
    "NotAnImage", "SourceNotFound", "Unsupported", "open_source", "normalize_url", "redact",
    "storage_options_for",
]


LABEL_KEYS = ("labels/.zattrs", "labels/zarr.json")


def _opener(zarr3: bool, mtime: float):
    """Opens the images a group points to (fields, series, labels) as OME-Zarr images."""

    def open_image(store: Store, attrs: dict, name: str) -> Image:
        ms = attrs.get("multiscales")
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], dict) else {}
        version = str(attrs.get("version", "0.5")) if zarr3 else str(first.get("version", "0.4"))
        return omezarr.open_image(store, attrs, version, name, mtime)

    return open_image


def _plain_zarr_array(store: Store, meta: dict, name: str, mtime: float | None) -> Image:
    """A Zarr array without multiscale metadata: one level, axes named by dimension_names or
    inferred from the rank (info.json states them)."""
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


def open_source(url: str, storage_options: Mapping[str, Any] | None = None, concurrency: int = 32) -> Image | Group:
    """Open a source by its metadata alone: an Image when the URL is an image, else a Group."""
    if url.split("?", 1)[0].rstrip("/").lower().endswith(".xml"):
        return _open_bdv_xml(url, storage_options, concurrency)
    if imaris.claims(url):
        with _malformed_is_bad_metadata(redact(url)):
            return imaris.open_imaris(url, storage_options, concurrency)
    store = Store(url, storage_options, concurrency)
    keys = [*omezarr.ROOT_KEYS, ".zarray", n5.ATTRS, *LABEL_KEYS]
    # A BigDataViewer server answers its dataset URL itself (and every path under it) with the XML.
    http = has_scheme(url) and url.split("://", 1)[0].lower() in ("http", "https")
    # A precomputed volume's `info` is asked for in the first batch where the name says so;
    # elsewhere only once nothing else is found (other sources' first batch stays as it was).
    named_precomputed = store.url.lower().endswith(".precomputed")
    raw = _reach(store, keys + ([precomputed.INFO] if named_precomputed else []) + ([""] if http else []))
    if looks_like_spimdata(raw.get("")):
        with _malformed_is_bad_metadata(store.url):
            ctx = bdv.Context(url, storage_options, concurrency)
            return bdv.open_bdv(ctx, raw[""], _name_of(store.url), 0.0, server_url=url)
    root = {k: (None if raw[k] is None else parse_json(raw[k], f"{store.url}/{k}")) for k in keys}
    name = _name_of(store.url)
    detected = omezarr.ome_attributes(root)
    with _malformed_is_bad_metadata(store.url):
        zarr3 = root.get("zarr.json") is not None
        meta_key = "zarr.json" if zarr3 else ".zattrs"
        if detected is not None:
            ome, version = detected
            mtime = store.mtime(meta_key) or 0.0
            image = omezarr.open_image(store, ome, version, name, mtime)
            labels_doc = root.get("labels/zarr.json" if zarr3 else "labels/.zattrs")
            image.labels = groups.labels_of(store, groups._attrs_of(labels_doc, zarr3), zarr3, _opener(zarr3, mtime))
            return image
        attrs = groups._attrs_of(root.get(meta_key), zarr3) or {}
        if "plate" in attrs:
            return groups.plate(store, attrs, zarr3, _opener(zarr3, store.mtime(meta_key) or 0.0), name)
        if "bioformats2raw.layout" in attrs:
            return groups.bioformats2raw(store, zarr3, _opener(zarr3, store.mtime(meta_key) or 0.0), name)
        array_meta = root.get(".zarray") or root.get("zarr.json")
        if array_meta is not None and (".zarray" in root and root[".zarray"] is not None
                                       or array_meta.get("node_type") == "array"):
            return _plain_zarr_array(store, array_meta, name, store.mtime(".zarray" if root.get(".zarray") else "zarr.json"))
        if root.get(n5.ATTRS) is not None and root.get("zarr.json") is None and root.get(".zattrs") is None:
            return n5.open_group(store, root[n5.ATTRS], name, store.mtime(n5.ATTRS) or 0.0)
    if all(v is None for v in root.values()):
        info = raw[precomputed.INFO] if named_precomputed else _reach(store, [precomputed.INFO])[precomputed.INFO]
        with _malformed_is_bad_metadata(store.url):
            if info is not None:
                doc = parse_json(info, f"{store.url}/{precomputed.INFO}")
                return precomputed.open_precomputed(store, doc, name, store.mtime(precomputed.INFO) or 0.0)
            found = n5.open_without_attributes(store, name)
        if found is not None:
            return found
        folder = cellmap.open_dataset_folder(store, name)
        if folder is not None:
            return folder
        raise NotAnImage(f"{store.url}: no image metadata found (looked for zarr.json, .zattrs, attributes.json and info)")
    raise NotAnImage(f"{store.url}: Zarr metadata found, but no OME-Zarr multiscales in it")


def _name_of(url: str) -> str:
    return posixpath.basename(url.rstrip("/")) or "image"


def _reach(store: Store, keys: list[str]) -> dict[str, bytes | None]:
    """The first batch of a mount: failing it means the source cannot be reached at all."""
    try:
        return store.get_many(keys)
    except ChunkReadError as exc:
        message = str(exc).replace("cannot read", "cannot reach", 1)
        if "NoCredentialsError" in message:
            message += " (for a public bucket, use anonymous access: --anon)"
        raise SourceNotFound(message) from None


def _open_bdv_xml(url: str, storage_options, concurrency: int) -> Image | Group:
    """A BigDataViewer dataset XML (local, HTTP or S3); the data files are found from it."""
    store = Store(url, storage_options, concurrency)
    raw = _reach(store, [""])[""]
    if raw is None:
        raise SourceNotFound(f"{store.url}: not found")
    name = _name_of(store.url)
    name = name[:-4] if name.lower().endswith(".xml") else name
    with _malformed_is_bad_metadata(store.url):
        return bdv.open_bdv(bdv.Context(url, storage_options, concurrency), raw, name, store.mtime("") or 0.0)


@contextlib.contextmanager
def _malformed_is_bad_metadata(url: str):
    """Metadata of a shape no check foresaw: still one clear line, never a traceback."""
    try:
        yield
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise BadMetadata(f"{url}: malformed metadata ({type(exc).__name__}: {exc})") from None
