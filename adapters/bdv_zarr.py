"""BigDataViewer image loaders that point at an OME-Zarr or N5 container.

- `bdv.n5.universe` (Mastodon): `<Url>` (s3://, https://, file:// or a path, relative to the
  XML when `type="relative"`) and `<Dataset>` (a group in it). In OME-Zarr, setup k is the
  k-th channel of the multiscale image and timepoint t its index on the t axis. In N5
  (N5-Viewer layout), setup k is `c<k>/s<level>`.
- `bdv.ome.zarr` (`<ome.zarr>` path) and `bdv.ome.zarr.s3` (`ServiceEndpoint`, `SigningRegion`,
  `BucketName`, `Key`; written `ome.zarr.s3` before it got its `bdv.` prefix) (MoBIE): the
  same channel and t mapping; the setups after the channels are the image's labels, in the
  order `labels/` lists them.
- `bdv.multimg.zarr` (bigdataviewer-omezarr, BigStitcher): one OME-Zarr group per view under
  `<zarr>` (a path, or a prefix in `<s3bucket>`): `<zgroup setup timepoint><path>` (version
  1.0) or `<zgroup setup tp path indicies>` (2.0, 3.0). The view is the 3D volume at index 0
  of every other axis, or at `indicies` (channel first, then time, as Java orders them).

Level factors follow each loader: OME-Zarr level shapes rounded (Mastodon, MoBIE) or scale
ratios (bigdataviewer-omezarr). Pixels come through the OME-Zarr and N5 adapters.
"""

from __future__ import annotations

import logging
import math
import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from . import n5, omezarr
from . import omezarr_groups as groups
from .base import Axis, Image, Level, make_cache_token
from .bdv_xml import PathRef, Setup, SpimData
from .errors import BadMetadata, SourceNotFound, Unsupported
from .storage import Store, parse_json, safe_key
from .urls import has_scheme, redact

MOBIE_S3 = ("bdv.ome.zarr.s3", "ome.zarr.s3")
FORMATS = ("bdv.n5.universe", "bdv.ome.zarr", *MOBIE_S3, "bdv.multimg.zarr")
MAX_N5_LEVELS = 16
log = logging.getLogger("ngffmount")


def _no_data(where: str, t: int, setup: int, why: str) -> list[Level]:
    """A view the XML lists but the container does not hold: left out, with one log line."""
    log.warning("%s: setup %d timepoint %d is left out: %s", redact(where), setup, t, why)
    return []


class SlicedLevel(Level):
    """The z, y, x volume of an OME-Zarr or N5 level at fixed indices of its other axes (a
    channel, a timepoint). A missing z axis becomes one of size 1. Chunks are the source's:
    a chunk spanning several channels is decoded once per channel shown."""

    def __init__(self, inner: Level, fixed: dict[int, int], axes: Sequence[Axis], scale, translation):
        self.inner, self.fixed = inner, dict(fixed)
        self.spatial = [i for i, a in enumerate(inner.axes) if i not in self.fixed]
        if len(self.spatial) not in (2, 3) or len(self.spatial) + len(self.fixed) != len(inner.shape):
            raise BadMetadata(f"{inner.path}: axes {[a.name for a in inner.axes]} do not make a 3D view")
        pad = (1,) * (3 - len(self.spatial))
        self.path = inner.path
        self.shape = pad + tuple(inner.shape[i] for i in self.spatial)
        self.chunk_shape = pad + tuple(inner.chunk_shape[i] for i in self.spatial)
        self.dtype, self.fill_value = inner.dtype, inner.fill_value
        self.axes, self.scale, self.translation = tuple(axes), tuple(scale), tuple(translation)
        self.cache_token = make_cache_token(inner.cache_token, {"fixed": sorted(self.fixed.items())})
        # Where the fixed indices fall inside a source chunk; one element wide means the chunk's
        # bytes are this volume's bytes in C order.
        self._within = {i: v % inner.chunk_shape[i] for i, v in self.fixed.items()}
        self._thin = all(inner.chunk_shape[i] == 1 for i in self.fixed)

    def _source_index(self, idx: tuple[int, ...]) -> tuple[int, ...]:
        full = [0] * len(self.inner.shape)
        for i, v in self.fixed.items():
            full[i] = v // self.inner.chunk_shape[i]
        for i, v in zip(self.spatial, idx[3 - len(self.spatial):]):
            full[i] = v
        return tuple(full)

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        return self.inner.chunk_key(self._source_index(idx))

    def fetch_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        return self.inner.fetch_many(keys)

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        arr = self.inner.decode(self._source_index(idx), raw)
        arr = arr[tuple(self._within.get(i, slice(None)) for i in range(arr.ndim))]
        return arr.reshape(self.chunk_shape)

    def blosc_frame(self, raw: bytes):
        return self.inner.blosc_frame(raw) if self._thin else None


def round_half_up(x: float) -> float:
    """Java's Math.round, as the loaders round level shape ratios."""
    return float(math.floor(x + 0.5))


def shape_factors(levels: Sequence[Level], spatial: Sequence[int]) -> list[list[float]]:
    """x, y, z factors of each level from its shape against level 0 (Mastodon and MoBIE)."""
    base = levels[0].shape
    out = []
    for lv in levels:
        f = [round_half_up(base[i] / lv.shape[i]) or 1.0 for i in spatial[::-1]]
        out.append((f + [1.0, 1.0, 1.0])[:3])
    return out


def scale_factors(levels: Sequence[Level], spatial: Sequence[int]) -> list[list[float]]:
    """x, y, z factors from each level's scale over level 0's, to 4 decimals (bigdataviewer-omezarr)."""
    base = levels[0].scale
    out = []
    for lv in levels:
        f = [round(lv.scale[i] / base[i], 4) if base[i] else 1.0 for i in spatial[::-1]]
        out.append((f + [1.0, 1.0, 1.0])[:3])
    return out


def open_ome_zarr(store: Store) -> Image | None:
    """The multiscale image at a store root; None when no OME-Zarr is there."""
    raw = store.get_many(list(omezarr.ROOT_KEYS))
    root = {k: None if raw[k] is None else parse_json(raw[k], f"{store.url}/{k}") for k in omezarr.ROOT_KEYS}
    found = omezarr.ome_attributes(root)
    if found is None:
        return None
    ome, version = found
    return omezarr.open_image(store, ome, version, posixpath.basename(store.url), 0.0)


def _required_image(store: Store) -> Image:
    image = open_ome_zarr(store)
    if image is None:
        raise BadMetadata(f"{redact(store.url)}: no OME-Zarr multiscales")
    return image


class ZarrViews:
    """One OME-Zarr image whose channels are setups and whose t axis holds the timepoints."""

    def __init__(self, image: Image, where: str):
        self.image, self.where = image, where
        axes = image.levels[0].axes
        self.c = next((i for i, a in enumerate(axes) if a.type == "channel"), None)
        self.t = next((i for i, a in enumerate(axes) if a.type == "time"), None)
        self.spatial = [i for i, a in enumerate(axes) if a.type == "space"]
        self.channels = image.levels[0].shape[self.c] if self.c is not None else 1
        self.factors = shape_factors(image.levels, self.spatial)

    def levels(self, channel: int, t: int, cal, setup: int) -> list[Level]:
        shape = self.image.levels[0].shape
        if channel >= self.channels:
            return _no_data(self.where, t, setup, f"the image has {self.channels} channel(s)")
        if self.t is not None and t >= shape[self.t]:
            return _no_data(self.where, t, setup, f"the image has {shape[self.t]} timepoint(s)")
        fixed = {}
        if self.c is not None:
            fixed[self.c] = channel
        if self.t is not None:
            fixed[self.t] = t
        out = []
        for level, f in zip(self.image.levels, self.factors):
            scale, translation = cal.level(f)
            out.append(SlicedLevel(level, fixed, cal.axes, scale, translation))
        return out


# -- bdv.n5.universe and MoBIE's bdv.ome.zarr(.s3) --------------------------------------------


class ContainerLoader:
    """bdv.n5.universe, bdv.ome.zarr and bdv.ome.zarr.s3: one container for all views."""

    def __init__(self, ctx, data: SpimData, where: str):
        self.ctx, self.data, self.where = ctx, data, where
        fmt = data.loader_format
        self.mobie = fmt != "bdv.n5.universe"
        group = ""
        if fmt in MOBIE_S3:
            url, options = ctx.mobie_s3(data, where)
            candidates = [url]
        elif fmt == "bdv.ome.zarr":
            candidates, options = self._paths("ome.zarr"), None
        else:
            candidates, options = self._paths("Url"), None
            group = safe_key((data.loader.findtext("Dataset") or "").strip().strip("/"))
        if candidates[0].split("?", 1)[0].rstrip("/").lower().endswith((".h5", ".hdf5")):
            raise Unsupported(f"{where}: {fmt} over an HDF5 file is not supported (OME-Zarr and N5 are)")
        self.views: ZarrViews | None = None
        self.labels: list[ZarrViews] | None = None if self.mobie else []  # MoBIE's, opened when a setup needs them
        self.n5: _N5Channels | None = None
        tried = []
        for url in candidates:
            store = ctx.container_store(url, options)
            store = store.child(group) if group else store
            tried.append(redact(store.url))
            if self._open(store):
                return
        raise SourceNotFound(f"{where}: no OME-Zarr image or N5 container found (tried {', '.join(tried)})")

    def _paths(self, tag: str) -> list[str]:
        text = (self.data.loader.findtext(tag) or "").strip()
        if not text:
            raise BadMetadata(f"{self.where}: {self.data.loader_format} loader without a <{tag}> container URL")
        if has_scheme(text):
            return [text]
        # Mastodon writes a path element; a bare path without `type` is read as relative to the XML.
        ref = self.data.path(tag)
        relative = ref.relative or self.data.loader.find(tag).get("type") is None and not text.startswith("/")
        return self.ctx.resolve(self.data, PathRef(text, relative))

    def _open(self, store: Store) -> bool:
        image = open_ome_zarr(store)
        if image is not None:
            self.views, self.store = ZarrViews(image, store.url), store
            return True
        if not self.mobie and store.get(n5.ATTRS) is not None:
            self.n5 = _N5Channels(store)
            return True
        return False

    def _labels(self) -> list[ZarrViews]:
        """MoBIE counts each label image as one more setup, in the order labels/ lists them."""
        if self.labels is None:
            zarr3 = self.views.image.format.endswith("0.5")
            attrs = groups.read_group_attrs(self.store, ["labels"], zarr3)["labels"]
            opened = groups.labels_of(self.store, attrs, zarr3, lambda s, a, name: _required_image(s))
            self.labels = [ZarrViews(img, f"{self.store.url}/labels/{name}") for name, img in opened.items()]
        return self.labels

    def levels(self, t: int, setup: Setup, cal) -> list[Level]:
        if self.n5 is not None:
            return self.n5.levels(t, setup.id, cal)
        views = self.views
        label = setup.id - views.channels
        if 0 <= label < len(self._labels()):
            return self.labels[label].levels(0, t, cal, setup.id)
        return views.levels(setup.id, t, cal, setup.id)


class _N5Channels:
    """An N5-Viewer container as Mastodon reads it: setup k at `c<k>/s0..sN`, a 4th N5
    dimension being time."""

    def __init__(self, store: Store):
        self.store = store
        self._setups: dict[int, list[dict]] = {}
        self._lock = threading.Lock()

    def _metas(self, setup: int) -> list[dict]:
        with self._lock:
            if setup not in self._setups:
                paths = [f"c{setup}/s{lv}/{n5.ATTRS}" for lv in range(MAX_N5_LEVELS)]
                raw = self.store.get_many(paths)
                metas = []
                for p in paths:
                    if raw[p] is None:
                        break
                    meta = parse_json(raw[p], f"{self.store.url}/{p}")
                    if not n5.is_dataset(meta) or len(meta["dimensions"]) not in (3, 4):
                        raise BadMetadata(f"{self.store.url}/{posixpath.dirname(p)}: not a 3D or 4D N5 dataset")
                    metas.append(meta)
                self._setups[setup] = metas
            return self._setups[setup]

    def levels(self, t: int, setup: int, cal) -> list[Level]:
        metas = self._metas(setup)
        if not metas:
            return _no_data(self.store.url, t, setup, f"no c{setup}/s0 dataset")
        dims0 = metas[0]["dimensions"]
        timed = len(dims0) == 4
        if timed and t >= dims0[3]:
            return _no_data(self.store.url, t, setup, f"c{setup} has {dims0[3]} timepoint(s)")
        axes = ((Axis("t", "time"),) if timed else ()) + tuple(cal.axes)
        out = []
        for lv, meta in enumerate(metas):
            dims = meta["dimensions"]
            f = [round_half_up(a / b) or 1.0 for a, b in zip(dims0[:3], dims[:3])]
            scale, translation = cal.level(f)
            path = f"c{setup}/s{lv}"
            level = n5.N5Level(self.store.child(path), path, meta, axes, (1.0,) * len(axes), (0.0,) * len(axes))
            out.append(SlicedLevel(level, {0: t} if timed else {}, cal.axes, scale, translation))
        return out


# -- bdv.multimg.zarr ---------------------------------------------------------------------------


class MultiImageLoader:
    """bdv.multimg.zarr: an OME-Zarr group per view under one root."""

    def __init__(self, ctx, data: SpimData, where: str):
        self.ctx, self.where = ctx, where
        loader = data.loader
        bucket = (loader.findtext("s3bucket") or "").strip()
        root = (loader.findtext("zarr") or "").strip()
        if bucket:
            candidates = [f"s3://{bucket}/{root.strip('/')}".rstrip("/")]
        elif root:
            candidates = [root] if has_scheme(root) else ctx.resolve(data, data.path("zarr"))
        else:
            raise BadMetadata(f"{where}: bdv.multimg.zarr loader without a <zarr> container path")
        self.roots = [ctx.container_store(url) for url in candidates]
        self.zgroups: dict[tuple[int, int], tuple[str, list[int] | None]] = {}
        for z in loader.findall("zgroups/zgroup"):
            t, s = z.get("timepoint", z.get("tp")), z.get("setup")
            path = z.findtext("path") if z.get("path") is None else z.get("path")
            if t is None or s is None or not (path or "").strip():
                raise BadMetadata(f"{where}: a <zgroup> needs setup, timepoint and path")
            try:
                key = (int(t), int(s))
            except ValueError:
                raise BadMetadata(f"{where}: zgroup setup {s!r} / timepoint {t!r} are not integers") from None
            self.zgroups[key] = (safe_key(path.strip()), _indices(z.get("indicies"), where))
        if not self.zgroups:
            raise BadMetadata(f"{where}: bdv.multimg.zarr loader without <zgroups>")
        self._images: dict[str, Image] | None = None

    def _image(self, path: str) -> Image:
        """Every view's image, opened concurrently at the first call (a BigStitcher dataset has
        hundreds of tiles), under the first candidate root that holds the first one (an
        absolute path from the writer's machine falls back to the folder next to the XML)."""
        if self._images is None:
            first = next(iter(self.zgroups.values()))[0]
            for root in self.roots:
                image = open_ome_zarr(root.child(first))
                if image is not None:
                    break
            else:
                tried = ", ".join(redact(f"{r.url}/{first}") for r in self.roots)
                raise SourceNotFound(f"{self.where}: OME-Zarr image not found (tried {tried})")
            rest = sorted({p for p, _ in self.zgroups.values()} - {first})
            with ThreadPoolExecutor(groups.OPEN_THREADS) as pool:
                opened = dict(zip(rest, pool.map(lambda p: _required_image(root.child(p)), rest)))
            self._images = {first: image, **opened}
        return self._images[path]

    def levels(self, t: int, setup: Setup, cal) -> list[Level]:
        entry = self.zgroups.get((t, setup.id))
        if entry is None:
            return _no_data(self.where, t, setup.id, "no <zgroup> names it")
        path, indices = entry
        image = self._image(path)
        axes = image.levels[0].axes
        spatial = [i for i, a in enumerate(axes) if a.type == "space"]
        others = [i for i in range(len(axes)) if i not in spatial][::-1]  # Java order: c, then t
        indices = indices or []
        if len(indices) > len(others):
            raise BadMetadata(f"{self.where}: zgroup {path} gives {len(indices)} indices for {len(others)} non-spatial axes")
        fixed = {axis: (indices[k] if k < len(indices) else 0) for k, axis in enumerate(others)}
        for axis, v in fixed.items():
            if not 0 <= v < image.levels[0].shape[axis]:
                raise BadMetadata(f"{self.where}: zgroup {path} index {v} is outside axis {axes[axis].name!r}")
        out = []
        for level, f in zip(image.levels, scale_factors(image.levels, spatial)):
            scale, translation = cal.level(f)
            out.append(SlicedLevel(level, fixed, cal.axes, scale, translation))
        return out


def _indices(text: str | None, where: str) -> list[int] | None:
    if text is None or text.strip() in ("", "[]"):
        return None
    try:
        return [int(v) for v in text.split()]
    except ValueError:
        raise BadMetadata(f"{where}: zgroup indicies {text!r} are not integers") from None


def loader_for(ctx, data: SpimData, where: str):
    if data.loader_format == "bdv.multimg.zarr":
        return MultiImageLoader(ctx, data, where)
    return ContainerLoader(ctx, data, where)

