"""N5 (spec 4.0): datasets, block codecs and the multiscale conventions (docs/formats.md, N5).

N5 lists dimensions fastest-first; numpy order is the reverse, and block i/j/k lives at
<dataset>/i/j/k in N5 order. Blocks carry a big-endian header; edge blocks may be short.
"""

from __future__ import annotations

import bz2
import logging
import lzma
import math
import posixpath
import struct
import zlib
from typing import Sequence

import numcodecs
import numpy as np

from .base import Axis, Group, Image, Level, inferred_axes, make_cache_token
from .errors import BadMetadata, ChunkReadError, NgffMountError, NotAnImage, Unsupported
from .format import Format, Source
from .storage import Store, parse_json, safe_key
from .units import sample_types, unit_name

N5_DTYPES = sample_types(">")  # N5 blocks are big-endian
ATTRS = "attributes.json"
log = logging.getLogger("ngffmount")
MAX_PROBED_LEVELS = 16


def is_dataset(attrs: dict) -> bool:
    return "dimensions" in attrs and "dataType" in attrs


class N5Compression:
    """raw, gzip (zlib or gzip streams), bzip2, xz, lz4 (the lz4-java block stream, or a bare
    LZ4 block as z5py writes), blosc and zstd."""

    SUPPORTED = ("raw", "gzip", "bzip2", "xz", "lz4", "blosc", "zstd")

    def __init__(self, attrs: dict, where: str):
        comp = attrs.get("compression")
        if comp is None:
            comp = {"type": attrs.get("compressionType", "raw")}  # the legacy key
        if not isinstance(comp, dict) or comp.get("type") not in self.SUPPORTED:
            kind = comp.get("type") if isinstance(comp, dict) else comp
            raise Unsupported(f"{where}: N5 compression {kind!r} is not supported")
        self.type = comp["type"]

    def decompress(self, payload: bytes, nbytes: int) -> bytes:
        """The payload's `nbytes` decoded bytes; more is refused (decompression bombs)."""
        if self.type == "raw":
            out = payload[:nbytes]
        elif self.type == "gzip":
            out = zlib.decompressobj(47).decompress(payload, nbytes + 1)
        elif self.type == "bzip2":
            out = bz2.BZ2Decompressor().decompress(payload, nbytes + 1)
        elif self.type == "xz":
            out = lzma.LZMADecompressor().decompress(payload, nbytes + 1)
        elif self.type == "lz4":
            out = _lz4(payload, nbytes)
        elif self.type == "blosc":
            out = bytes(numcodecs.Blosc().decode(payload))
        else:
            out = bytes(numcodecs.Zstd().decode(payload))
        if len(out) != nbytes:
            raise ChunkReadError(f"N5 block decompresses to {len(out)} bytes, expected {nbytes}")
        return out


LZ4_JAVA_MAGIC = b"LZ4Block"


def _lz4(payload: bytes, nbytes: int) -> bytes:
    if not payload.startswith(LZ4_JAVA_MAGIC):  # z5py: one bare LZ4 block
        return bytes(numcodecs.LZ4().decode(struct.pack("<I", nbytes) + payload))
    # lz4-java LZ4BlockOutputStream: per block, magic, token, compressed and original
    # lengths, a checksum, then the data (method 0x10 raw, 0x20 LZ4); an empty block ends it.
    out, pos = bytearray(), 0
    while pos + 21 <= len(payload) and payload.startswith(LZ4_JAVA_MAGIC, pos):
        token = payload[pos + 8]
        compressed, original = struct.unpack_from("<ii", payload, pos + 9)
        pos += 21
        if original == 0:
            break
        if len(out) + original > nbytes or compressed < 0:
            raise ChunkReadError("lz4 block stream is longer than the block")
        block = payload[pos:pos + compressed]
        pos += compressed
        if token & 0xF0 == 0x10:
            out += block
        else:
            out += numcodecs.LZ4().decode(struct.pack("<I", original) + block)
    return bytes(out)


class N5Level(Level):
    """One N5 dataset. `store` is rooted at the dataset."""

    def __init__(self, store: Store, path: str, attrs: dict, axes: Sequence[Axis], scale, translation):
        where = store.url
        dims, block = attrs.get("dimensions"), attrs.get("blockSize")
        for name, value in (("dimensions", dims), ("blockSize", block)):
            if not isinstance(value, list) or not value or not all(isinstance(v, int) and v > 0 for v in value):
                raise BadMetadata(f"{where}: N5 {name} must be a list of positive integers, got {value!r}")
        if len(dims) != len(block):
            raise BadMetadata(f"{where}: blockSize {block} does not match dimensions {dims}")
        if attrs.get("dataType") not in N5_DTYPES:
            raise Unsupported(f"{where}: N5 dataType {attrs.get('dataType')!r} is not supported")
        self.store, self.path = store, path
        self.shape = tuple(reversed(dims))
        self.chunk_shape = tuple(reversed(block))
        self.dtype = np.dtype(N5_DTYPES[attrs["dataType"]])
        self.fill_value = 0
        if self.beyond_limits():
            raise Unsupported(f"{where}: N5 dataset {dims} with blocks {block} is larger than ngffmount serves")
        if len(axes) != len(self.shape):
            raise BadMetadata(f"{where}: {len(self.shape)} dimensions but {len(axes)} axes")
        self.axes, self.scale, self.translation = tuple(axes), tuple(scale), tuple(translation)
        self.compression = N5Compression(attrs, where)
        self.cache_token = make_cache_token(store.identity, attrs)

    layout_fixed = False  # each block is an object

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        return "/".join(str(i) for i in reversed(idx))

    def fetch_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        return self.store.get_many(list(keys))

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        try:
            return self._decode(raw)
        except NgffMountError:
            raise
        except Exception as exc:
            raise ChunkReadError(f"cannot decode N5 block {self.chunk_key(idx)} of {self.store.url}: {exc}") from None

    def _decode(self, raw: bytes) -> np.ndarray:
        mode, ndim = struct.unpack_from(">HH", raw, 0)
        if ndim != len(self.shape):
            raise ChunkReadError(f"N5 block header has {ndim} dimensions, the dataset {len(self.shape)}")
        block = struct.unpack_from(f">{ndim}I", raw, 4)
        offset = 4 + 4 * ndim
        count = math.prod(block)
        if mode == 1:  # varlength: the element count follows
            (count,) = struct.unpack_from(">I", raw, offset)
            offset += 4
        elif mode != 0:
            raise Unsupported(f"N5 block mode {mode} (object blocks) is not supported")
        full = tuple(reversed(block))
        if any(b > c for b, c in zip(full, self.chunk_shape)) or count != math.prod(block):
            raise ChunkReadError(f"N5 block of size {list(block)} does not fit blocks of {list(reversed(self.chunk_shape))}")
        data = self.compression.decompress(raw[offset:], count * self.dtype.itemsize)
        arr = np.frombuffer(data, self.dtype).reshape(full)
        if full == self.chunk_shape:
            return arr
        # Edge blocks may be stored short: pad to the full block with the fill value (0).
        out = np.zeros(self.chunk_shape, self.dtype)
        out[tuple(slice(0, n) for n in full)] = arr
        return out


class NotMultiscale(BadMetadata):
    """An N5 group that is no image itself (it may hold images)."""


# -- multiscale conventions -----------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(value, n: int, where: str, what: str) -> list[float]:
    if not isinstance(value, list) or len(value) != n or not all(_is_number(v) for v in value):
        raise BadMetadata(f"{where}: {what} must list {n} numbers, got {value!r}")
    return [float(v) for v in value]


def open_n5(store: Store, attrs: dict, name: str, mtime: float, fmt: str = "N5 multiscale (Neuroglancer)") -> Image:
    """An N5 dataset or multiscale group (COSEM, Neuroglancer, N5 Viewer or bare s0..sN) as an image."""
    where = store.url
    if is_dataset(attrs):
        ndim = len(attrs["dimensions"])
        axes, scale, translation = own_calibration(attrs, ndim, where)
        level = N5Level(store, "", attrs, axes, scale, translation)
        return Image(name, [level], source_url=store.url, format="N5 dataset", mtime=mtime)
    if isinstance(attrs.get("multiscales"), list) and attrs["multiscales"]:
        return _cosem(store, attrs, name, mtime)
    found = _levels(store, attrs)
    if not found:
        raise NotMultiscale(f"{where}: N5 group has no multiscale metadata and no s0 dataset")
    paths, metas = [p for p, _ in found], [m for _, m in found]
    ndim = len(metas[0]["dimensions"])
    # The voxel size is the group's, else (N5 Viewer, n5-spark) the one s0 carries itself.
    own = attrs if any(k in attrs for k in RESOLUTION_KEYS) else metas[0]
    units, base = _resolution(own, ndim, where)
    axes = _named_axes(attrs.get("axes", metas[0].get("axes")), units, ndim)
    affine = _axis_aligned_affine(attrs.get("affineTransform", metas[0].get("affineTransform")), ndim, where)
    levels = []
    for i, (p, meta) in enumerate(zip(paths, metas)):
        scale, translation = _level_transform(base, _factors(attrs, meta, i, ndim, where), affine)
        levels.append(N5Level(store.child(p), p, meta, axes, scale, translation))
    return Image(name, levels, source_url=store.url, format=fmt, mtime=mtime)


def _cosem(store: Store, attrs: dict, name: str, mtime: float) -> Image:
    where = store.url
    ms = attrs["multiscales"][0]
    datasets = ms.get("datasets") if isinstance(ms, dict) else None
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) for d in datasets):
        raise BadMetadata(f"{where}: N5 multiscales has no datasets")
    paths = [safe_key(str(d.get("path", ""))) for d in datasets]
    metas = _dataset_attrs(store, paths)
    levels = []
    for d, p, meta in zip(datasets, paths, metas):
        transform = d.get("transform") or meta.get("transform")
        if not isinstance(transform, dict):
            raise BadMetadata(f"{where}/{p}: COSEM dataset has no transform")
        axes, scale, translate = _cosem_transform(transform, len(meta["dimensions"]), f"{where}/{p}")
        levels.append(N5Level(store.child(p), p, meta, axes, scale, translate))
    return Image(str(ms.get("name") or name), levels, source_url=store.url, format="N5 multiscale (COSEM)", mtime=mtime)


def _cosem_transform(transform: dict, ndim: int, where: str) -> tuple[list[Axis], list[float], list[float]]:
    """Axes, scale and translation in numpy order from a COSEM `transform`. Its lists are in C
    order unless `ordering` (or `order`, as some writers spell it) says F."""
    names = transform.get("axes") or [a.name for a in inferred_axes(ndim)]
    scale = _numbers(transform.get("scale"), ndim, where, "transform.scale")
    translate = _numbers(transform.get("translate", [0.0] * ndim), ndim, where, "transform.translate")
    units = transform.get("units") or [None] * ndim
    if not isinstance(names, list) or len(names) != ndim or not isinstance(units, list) or len(units) != ndim:
        raise BadMetadata(f"{where}: transform.axes and transform.units must list {ndim} entries")
    if transform.get("ordering", transform.get("order", "C")) == "F":
        names, scale, translate, units = names[::-1], scale[::-1], translate[::-1], units[::-1]
    axes = [Axis(str(n), {"t": "time", "c": "channel"}.get(str(n), "space"), unit_name(u)) for n, u in zip(names, units)]
    return axes, scale, translate


RESOLUTION_KEYS = ("pixelResolution", "resolution")


def own_calibration(attrs: dict, ndim: int, where: str) -> tuple[list[Axis], list[float], list[float]]:
    """Axes, scale and translation (numpy order) of a dataset from its own attributes: a COSEM
    `transform`, else `pixelResolution` or `resolution` + `units`, times its own
    `downsamplingFactors` (a downsampled voxel's centre sits (f - 1) / 2 voxels in), then an
    axis-aligned `affineTransform`. Without any of them: 1 per axis, inferred axes."""
    if isinstance(attrs.get("transform"), dict):
        return _cosem_transform(attrs["transform"], ndim, where)
    units, base = _resolution(attrs, ndim, where)
    factors = _numbers(attrs["downsamplingFactors"], ndim, where, "downsamplingFactors") \
        if "downsamplingFactors" in attrs else [1.0] * ndim
    scale, translation = _level_transform(base, factors, _axis_aligned_affine(attrs.get("affineTransform"), ndim, where))
    return _named_axes(attrs.get("axes"), units, ndim), scale, translation


def _level_transform(base: list[float], factors: list[float], affine) -> tuple[list[float], list[float]]:
    """Scale and translation in numpy order from N5-ordered voxel size and factors (Neuroglancer
    and n5-viewer: a downsampled voxel's centre sits half a voxel in), then the affine."""
    scale = [b * f for b, f in zip(base, factors)]
    translation = [(f - 1) / 2 * b for b, f in zip(base, factors)]
    if affine is not None:
        diagonal, offset = affine
        scale = [d * s for d, s in zip(diagonal, scale)]
        translation = [d * t + o for d, t, o in zip(diagonal, translation, offset)]
    return scale[::-1], translation[::-1]


def _axis_aligned_affine(value, ndim: int, where: str) -> tuple[list[float], list[float]] | None:
    """n5-viewer's `affineTransform` (rows of a 3 x 4 matrix over x, y, z, applied after the
    voxel size) as (diagonal, offset) in N5 order, when it only scales and shifts. A rotation or
    shear has no place in a per-axis calibration: it is left out, with a log line."""
    if value is None:
        return None
    rows = value if isinstance(value, list) else None
    if (rows is None or len(rows) != 3 or ndim < 3
            or not all(isinstance(r, list) and len(r) == 4 and all(_is_number(v) for v in r) for r in rows)):
        log.warning("%s: affineTransform %r is not a 3 x 4 matrix over x, y, z; left out", where, value)
        return None
    if any(rows[i][j] != 0 for i in range(3) for j in range(3) if i != j) or any(rows[i][i] <= 0 for i in range(3)):
        log.warning("%s: affineTransform rotates or shears; only the voxel size is shown", where)
        return None
    extra = ndim - 3  # dimensions past x, y, z (c, t) are left as they are
    return ([float(rows[i][i]) for i in range(3)] + [1.0] * extra, [float(rows[i][3]) for i in range(3)] + [0.0] * extra)


def _levels(store: Store, attrs: dict) -> list[tuple[str, dict]]:
    """(path, attributes) of s0..sN: the levels `scales` names, else probed (no listing
    needed). Either way only those held, up to the first missing one: a root that names more
    levels than it holds still mounts."""
    scales = attrs.get("scales")
    count = len(scales) if isinstance(scales, list) and scales else MAX_PROBED_LEVELS
    probe = [f"s{i}" for i in range(count)]
    found = store.get_many([posixpath.join(p, ATTRS) for p in probe])
    levels = []
    for p in probe:
        raw = found[posixpath.join(p, ATTRS)]
        if raw is None:
            break
        meta = parse_json(raw, f"{store.url}/{p}/{ATTRS}")
        if not is_dataset(meta):
            raise BadMetadata(f"{store.url}/{p}: not an N5 dataset (no dimensions/dataType)")
        levels.append((p, meta))
    if levels and len(levels) < count and count != MAX_PROBED_LEVELS:
        log.info("%s: scales names %d levels, the store holds %d", store.url, count, len(levels))
    return levels


def _dataset_attrs(store: Store, paths: list[str]) -> list[dict]:
    metas = store.level_documents(paths, ATTRS)
    for p, meta in zip(paths, metas):
        if not is_dataset(meta):
            raise BadMetadata(f"{store.url}/{p}: not an N5 dataset (no dimensions/dataType)")
    return metas


def _resolution(attrs: dict, ndim: int, where: str) -> tuple[list[str | None], list[float]]:
    """Voxel size of s0 and the unit of each axis, in N5 order: pixelResolution (an object with
    one unit, or a bare list without one), or resolution + units (one per axis)."""
    pr = attrs.get("pixelResolution")
    if isinstance(pr, dict):
        return [unit_name(pr.get("unit"))] * ndim, _numbers(pr.get("dimensions"), ndim, where, "pixelResolution.dimensions")
    if isinstance(pr, list):
        return [None] * ndim, _numbers(pr, ndim, where, "pixelResolution")
    units = attrs.get("units")
    units = [unit_name(u) for u in units] if isinstance(units, list) and len(units) == ndim else [None] * ndim
    if "resolution" in attrs:
        return units, _numbers(attrs["resolution"], ndim, where, "resolution")
    return units, [1.0] * ndim


def _named_axes(names, units: list[str | None], ndim: int) -> list[Axis]:
    """Axes in numpy order from N5-ordered names and units (default names when absent)."""
    axes = inferred_axes(ndim)
    if isinstance(names, list) and len(names) == ndim and all(isinstance(n, str) for n in names):
        kinds = {"t": "time", "c": "channel"}
        named = [Axis(n, kinds.get(n, "space")) for n in reversed(names)]
        if 2 <= sum(a.type == "space" for a in named) <= 3 and len({a.name for a in named}) == ndim:
            axes = named
    return [Axis(a.name, a.type, u if a.type != "channel" else None) for a, u in zip(axes, reversed(units))]


def _factors(group: dict, meta: dict, i: int, ndim: int, where: str) -> list[float]:
    scales = group.get("scales")
    if isinstance(scales, list) and i < len(scales):
        return _numbers(scales[i], ndim, where, f"scales[{i}]")
    if "downsamplingFactors" in meta:
        return _numbers(meta["downsamplingFactors"], ndim, where, "downsamplingFactors")
    return [float(2**i)] * min(ndim, 3) + [1.0] * (ndim - 3) if i else [1.0] * ndim


# -- containers ---------------------------------------------------------------------------

MAX_CONTAINER_DEPTH = 4
MAX_CONTAINER_IMAGES = 512
CHANNEL_PROBE = 8  # channel groups probed per batch, until one is missing
MAX_CHANNELS = 256


def open_group(store: Store, attrs: dict, name: str, mtime: float) -> Image | Group:
    """Whatever an N5 root holds: an image (dataset or multiscale group), an N5 Viewer
    container (c0/, c1/, ... each with s0..sN), else every image found by listing."""
    try:
        return open_n5(store, attrs, name, mtime)
    except NotMultiscale:
        pass
    viewer = open_viewer_channels(store, attrs, name, mtime)
    return viewer if viewer is not None else open_container(store, name, mtime)


def open_without_attributes(store: Store, name: str) -> Image | Group | None:
    """An N5 group need not have an attributes.json (z5py and n5-spark leave it out of the
    groups they make): s0/ or c0/s0/ under it still make it an image or an N5 Viewer container.
    None when neither is there."""
    docs = store.get_many([f"s0/{ATTRS}", f"c0/s0/{ATTRS}"])
    key = next((k for k, v in docs.items() if v is not None), None)
    return None if key is None else open_group(store, {}, name, store.mtime(key) or 0.0)


def open_viewer_channels(store: Store, attrs: dict, name: str, mtime: float) -> Group | None:
    """The N5 Viewer layout: the root's attributes (scales, pixelResolution, affineTransform,
    ...) are defaults that each channel group's own attributes override. Channels are probed
    as c0, c1, ... up to the first missing one, so no listing is needed. None when there is
    no c0/s0."""
    channels: list[tuple[str, dict]] = []
    while len(channels) < MAX_CHANNELS:
        batch = [f"c{i}" for i in range(len(channels), len(channels) + CHANNEL_PROBE)]
        docs = store.get_many([k for c in batch for k in (f"{c}/s0/{ATTRS}", f"{c}/{ATTRS}")])
        for c in batch:
            if docs[f"{c}/s0/{ATTRS}"] is None:
                break
            own = docs[f"{c}/{ATTRS}"]
            channels.append((c, parse_json(own, f"{store.url}/{c}/{ATTRS}") if own is not None else {}))
        else:
            continue
        break
    if not channels:
        return None
    group = Group(name, format="N5 Viewer container")
    for c, own in channels:
        inherited = {**attrs, **own}
        group.add(c, open_n5(store.child(c), inherited, c, mtime, fmt="N5 multiscale (N5 Viewer)"))
    return group



def open_container(store: Store, name: str, mtime: float) -> Group:
    """Every image under an N5 group that is no image itself (a Cellmap root such as
    jrc_hela-2.n5 with em/fibsem-uint16 and labels/<name>), at its group path. Finding them
    needs listing; an image that cannot be opened is left out with a log line."""
    top = store.list_dirs("")
    if top is None:
        raise NotAnImage(f"{store.url}: an N5 group without images of its own, and this store cannot be listed; "
                         "mount an image group inside it (for example .../em/fibsem-uint16)")
    group = Group(name, format="N5 container")
    frontier, found = [""], 0
    for _ in range(MAX_CONTAINER_DEPTH):
        dirs = [posixpath.join(p, d) for p in frontier for d in ((top if p == "" else store.list_dirs(p)) or [])]
        docs = store.get_many([posixpath.join(d, ATTRS) for d in dirs])
        frontier = []
        for d in dirs:
            raw = docs[posixpath.join(d, ATTRS)]
            try:
                attrs = parse_json(raw, f"{store.url}/{d}/{ATTRS}") if raw is not None else {}
                group.add(d, open_n5(store.child(d), attrs, posixpath.basename(d), mtime))
                found += 1
            except NotMultiscale:
                frontier.append(d)  # a plain group: look inside
            except NgffMountError as exc:
                log.warning("skipping %s/%s: %s", store.url, d, exc)
            if found >= MAX_CONTAINER_IMAGES:
                return group
    if not found:
        raise NotAnImage(f"{store.url}: N5 container with no images in it")
    return group


# -- registry entries --------------------------------------------------------------------


def _is_n5_root(source: Source) -> bool:
    docs = source.docs
    return docs[ATTRS] is not None and docs["zarr.json"] is None and docs[".zattrs"] is None


N5_GROUP = Format("N5", _is_n5_root,
                  lambda s: open_group(s.store, s.docs[ATTRS], s.name, s.mtime(ATTRS)),
                  documents=(ATTRS, "zarr.json", ".zattrs"))
N5_WITHOUT_ATTRIBUTES = Format("N5 without attributes.json", lambda s: not s.has_documents,
                               lambda s: open_without_attributes(s.store, s.name))
