"""N5 (spec 4.0): datasets, block codecs and the multiscale conventions (FORMATS.md, N5).

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

from .base import Axis, Group, Image, Level, inferred_axes, make_cache_token, unit_name
from .errors import BadMetadata, ChunkReadError, NgffMountError, NotAnImage, Unsupported
from .storage import Store, parse_json, safe_key
from .zarr_array import MAX_ARRAY_BYTES, MAX_CHUNK_BYTES

N5_DTYPES = {
    "uint8": "u1", "int8": "i1", "uint16": ">u2", "int16": ">i2", "uint32": ">u4", "int32": ">i4",
    "uint64": ">u8", "int64": ">i8", "float32": ">f4", "float64": ">f8",
}
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
        if math.prod(self.shape) * self.dtype.itemsize > MAX_ARRAY_BYTES or self.chunk_nbytes > MAX_CHUNK_BYTES:
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


def _numbers(value, n: int, where: str, what: str) -> list[float]:
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise BadMetadata(f"{where}: {what} must list {n} numbers, got {value!r}")
    return [float(v) for v in value]


def open_n5(store: Store, attrs: dict, name: str, mtime: float) -> Image:
    """An N5 dataset or multiscale group (COSEM, Neuroglancer or bare s0..sN) as an image."""
    where = store.url
    if is_dataset(attrs):
        ndim = len(attrs["dimensions"])
        level = N5Level(store, "", attrs, inferred_axes(ndim), [1.0] * ndim, [0.0] * ndim)
        return Image(name, [level], source_url=store.url, format="N5 dataset", mtime=mtime)
    if isinstance(attrs.get("multiscales"), list) and attrs["multiscales"]:
        return _cosem(store, attrs, name, mtime)
    paths = _level_paths(store, attrs)
    if not paths:
        raise NotMultiscale(f"{where}: N5 group has no multiscale metadata and no s0 dataset")
    metas = _dataset_attrs(store, paths)
    ndim = len(metas[0]["dimensions"])
    units, base = _resolution(attrs, ndim, where)
    axes = _named_axes(attrs.get("axes"), units, ndim)
    levels = []
    for i, (p, meta) in enumerate(zip(paths, metas)):
        factors = _factors(attrs, meta, i, ndim, where)
        scale = [b * f for b, f in zip(base, factors)]
        # Neuroglancer's convention: a downsampled voxel's centre sits half a voxel in.
        translation = [(f - 1) / 2 * b for b, f in zip(base, factors)]
        # Resolution and factors are in N5 order: reverse them into numpy order.
        levels.append(N5Level(store.child(p), p, meta, axes, scale[::-1], translation[::-1]))
    return Image(name, levels, source_url=store.url, format="N5 multiscale (Neuroglancer)", mtime=mtime)


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
        ndim = len(meta["dimensions"])
        transform = d.get("transform") or meta.get("transform")
        if not isinstance(transform, dict):
            raise BadMetadata(f"{where}/{p}: COSEM dataset has no transform")
        names = transform.get("axes") or [a for a in "zyx"][-ndim:]
        scale = _numbers(transform.get("scale"), ndim, f"{where}/{p}", "transform.scale")
        translate = _numbers(transform.get("translate", [0.0] * ndim), ndim, f"{where}/{p}", "transform.translate")
        units = transform.get("units") or [None] * ndim
        if transform.get("order", "C") == "F":  # lists in N5 order: reverse into numpy order
            names, scale, translate, units = names[::-1], scale[::-1], translate[::-1], units[::-1]
        axes = [Axis(str(n), {"t": "time", "c": "channel"}.get(str(n), "space"), unit_name(u)) for n, u in zip(names, units)]
        levels.append(N5Level(store.child(p), p, meta, axes, scale, translate))
    return Image(str(ms.get("name") or name), levels, source_url=store.url, format="N5 multiscale (COSEM)", mtime=mtime)


def _level_paths(store: Store, attrs: dict) -> list[str]:
    """s0..sN, from `scales` when the group lists them, else by probing (no listing needed)."""
    if isinstance(attrs.get("scales"), list) and attrs["scales"]:
        return [f"s{i}" for i in range(len(attrs["scales"]))]
    probe = [f"s{i}" for i in range(MAX_PROBED_LEVELS)]
    found = store.get_many([posixpath.join(p, ATTRS) for p in probe])
    paths = []
    for p in probe:
        if found[posixpath.join(p, ATTRS)] is None:
            break
        paths.append(p)
    return paths


def _dataset_attrs(store: Store, paths: list[str]) -> list[dict]:
    metas = store.level_documents(paths, ATTRS)
    for p, meta in zip(paths, metas):
        if not is_dataset(meta):
            raise BadMetadata(f"{store.url}/{p}: not an N5 dataset (no dimensions/dataType)")
    return metas


def _resolution(attrs: dict, ndim: int, where: str) -> tuple[list[str | None], list[float]]:
    """Voxel size of s0 and the unit of each axis, in N5 order: pixelResolution (one unit), or
    resolution + units (one per axis)."""
    pr = attrs.get("pixelResolution")
    if isinstance(pr, dict):
        return [unit_name(pr.get("unit"))] * ndim, _numbers(pr.get("dimensions"), ndim, where, "pixelResolution.dimensions")
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
