"""Neuroglancer precomputed volumes: the `info` document, its scales as levels, and chunks
stored one per file or in uint64 shards (docs/formats.md, "Neuroglancer precomputed").

A scale's chunks cover [x, y, z] boxes from `voxel_offset`, clipped at the volume's edge.
Levels are (c,) z, y, x: channels lead when there is more than one.
"""

from __future__ import annotations

import math
import struct
from typing import Sequence

import numpy as np

from .base import Axis, Image, Level, make_cache_token
from .errors import BadMetadata, ChunkReadError, NotAnImage, Unsupported
from .format import Format, Source
from .lru import LRU, LoadOnce
from .precomputed_codecs import (
    DTYPES, MAX_INDEX_BYTES, Sharding, check_encoding, compressed_morton_code, decode_chunk, gunzip, morton_bits,
)
from .storage import RangeRequest, Store, parse_json, safe_key
from .urls import normalize_url

INFO = "info"
VOLUME_TYPE = "neuroglancer_multiscale_volume"
INDEX_CACHE_BYTES = 64 << 20
FORMAT = "Neuroglancer precomputed"


def looks_like_volume(doc) -> bool:
    """An `info` document of a multiscale volume (not of a mesh, skeleton or annotation set)."""
    if not isinstance(doc, dict):
        return False
    kind = doc.get("@type")
    return kind == VOLUME_TYPE or (kind is None and isinstance(doc.get("scales"), list) and "data_type" in doc)


def open_precomputed(store: Store, info: dict, name: str, mtime: float) -> Image:
    where = f"{store.url}/{INFO}"
    if not looks_like_volume(info):
        raise NotAnImage(f"{where}: a precomputed info of @type {info.get('@type')!r}, not a multiscale volume")
    kind = info.get("type")
    if kind not in ("image", "segmentation"):
        raise BadMetadata(f"{where}: type must be 'image' or 'segmentation', got {kind!r}")
    data_type = info.get("data_type")
    data_type = data_type.lower() if isinstance(data_type, str) else data_type
    if data_type not in DTYPES:
        raise Unsupported(f"{where}: data_type {data_type!r} is not supported ({', '.join(DTYPES)})")
    channels = info.get("num_channels")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise BadMetadata(f"{where}: num_channels must be a positive integer, got {channels!r}")
    scales = info.get("scales")
    if not isinstance(scales, list) or not scales or not all(isinstance(s, dict) for s in scales):
        raise BadMetadata(f"{where}: scales must be a non-empty list of objects")
    levels = [PrecomputedLevel(store, scale, data_type, channels, f"{where} scales[{i}]")
              for i, scale in enumerate(scales)]
    return Image(name, levels, source_url=store.url, format=f"{FORMAT} {kind}", mtime=mtime)


def _triple(value, what: str, where: str, positive: bool = True, integer: bool = True) -> tuple:
    kinds = (int,) if integer else (int, float)
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
            or (positive and not all(v > 0 for v in value))):
        rule = "positive " if positive else ""
        raise BadMetadata(f"{where}: {what} must list 3 {rule}{'integers' if integer else 'numbers'} (x, y, z), got {value!r}")
    return tuple(value)


class PrecomputedLevel(Level):
    """One scale. `store` is rooted at the volume (the folder of `info`)."""

    def __init__(self, store: Store, scale: dict, data_type: str, channels: int, where: str):
        key = scale.get("key")
        if not isinstance(key, str) or not key.strip("/"):
            raise BadMetadata(f"{where}: key must be a non-empty path, got {key!r}")
        self.path = safe_key(key.strip("/"))
        self.store = store.child(self.path)
        self.size = _triple(scale.get("size"), "size", where)
        resolution = _triple(scale.get("resolution"), "resolution", where, integer=False)
        offset = _triple(scale.get("voxel_offset", [0, 0, 0]), "voxel_offset", where, positive=False)
        sizes = scale.get("chunk_sizes")
        if not isinstance(sizes, list) or not sizes:
            raise BadMetadata(f"{where}: chunk_sizes must be a non-empty list of [x, y, z], got {sizes!r}")
        self.chunk = _triple(sizes[0], "chunk_sizes[0]", where)  # further sizes are copies in other chunkings
        self.offset = offset
        self.encoding = scale.get("encoding")
        check_encoding(self.encoding, data_type, channels, where)
        self.block_size = None
        if self.encoding == "compressed_segmentation":
            self.block_size = _triple(scale.get("compressed_segmentation_block_size"),
                                      "compressed_segmentation_block_size", where)
        self.grid = tuple(-(-s // c) for s, c in zip(self.size, self.chunk))
        self.sharding = None
        if scale.get("sharding") is not None:
            self.sharding = Sharding(scale["sharding"], where)
            if morton_bits(self.grid) > 64:
                raise BadMetadata(f"{where}: a grid of {list(self.grid)} chunks needs more than 64 bits of chunk id")
        self.channels = channels
        self.dtype = np.dtype(DTYPES[data_type])
        lead = (channels,) if channels > 1 else ()
        self.shape = lead + self.size[::-1]
        self.chunk_shape = lead + self.chunk[::-1]
        space = tuple(Axis(n, "space", "nanometer") for n in "zyx")
        self.axes = ((Axis("c", "channel"),) if channels > 1 else ()) + space
        self.scale = (1.0,) * len(lead) + tuple(float(r) for r in resolution[::-1])
        self.translation = (0.0,) * len(lead) + tuple(float(o * r) for o, r in zip(offset[::-1], resolution[::-1]))
        self.fill_value = 0
        if self.beyond_limits():
            raise Unsupported(f"{where}: a volume of {list(self.size)} in chunks of {list(self.chunk)} is larger "
                              "than ngffmount serves")
        self.cache_token = make_cache_token(self.store.identity, {"scale": scale, "data_type": data_type,
                                                                  "num_channels": channels})
        # Minishard indexes weigh what _load_minishard_index reports; the newest is kept.
        if self.sharding is not None:
            self.shard_indexes = LoadOnce(LRU(INDEX_CACHE_BYTES, lambda loaded: loaded[1], keep_last=True))
        self._gz_files = False
        # No encoding (gzip over raw, JPEG of noise, compressed_segmentation) makes a chunk
        # this large: a longer entry is a corrupt index, not a download to start.
        self._max_encoded = 4 * self.chunk_nbytes + (1 << 20)

    # -- chunk keys --------------------------------------------------------------------
    def _cell(self, idx: tuple[int, ...]) -> tuple[int, int, int]:
        """Grid cell (x, y, z) of a chunk index in level order."""
        return tuple(idx[-3:][::-1])

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        cell = self._cell(idx)
        if self.sharding is not None:
            chunk_id = compressed_morton_code(cell, self.grid)
            shard, _ = self.sharding.locate(chunk_id)
            return f"{shard}#{chunk_id}"
        box = []
        for g, c, s, o in zip(cell, self.chunk, self.size, self.offset):
            box.append(f"{o + g * c}-{o + min((g + 1) * c, s)}")
        return "_".join(box)

    # -- fetch -------------------------------------------------------------------------
    layout_fixed = False  # chunks are objects, or shard ranges whose indices forget_layout drops

    def fetch_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        if self.sharding is None:
            return self._fetch_files(list(keys))
        out: dict[str, bytes | None] = {}
        requests, wanted = [], []
        for key in keys:
            shard, chunk_id = key.split("#", 1)
            _, minishard = self.sharding.locate(int(chunk_id))
            index = self.shard_indexes.get((shard, minishard), lambda: self._load_minishard_index(shard, minishard))[0]
            span = None if index is None else index.get(int(chunk_id))
            if span is None:
                out[key] = None
                continue
            if span[1] - span[0] > self._max_encoded:
                raise ChunkReadError(f"minishard index of {self.store.url}/{shard} gives chunk {chunk_id} "
                                     f"{span[1] - span[0]} bytes, more than any encoding of it takes")
            requests.append(RangeRequest(shard, *span))
            wanted.append(key)
        for key, req, data in zip(wanted, requests, self.store.get_ranges(requests)):
            if data is None:
                raise ChunkReadError(f"{self.store.url}/{req.key} vanished while its chunks were read")
            if len(data) != req.end - req.start:
                raise ChunkReadError(f"minishard index of {self.store.url}/{req.key} points past the end of the "
                                     f"shard (bytes {req.start}-{req.end}, {len(data)} read)")
            out[key] = data
        return out

    def _fetch_files(self, keys: list[str]) -> dict[str, bytes | None]:
        """Unsharded chunks. cloud-volume writes gzip-compressed chunks to local disks as
        `<name>.gz`: a chunk not found under its name is looked for there too (and once one is
        found, `.gz` is asked for first)."""
        gz_first = self._gz_files  # one reading: other threads may change it meanwhile
        first, second = (".gz", "") if gz_first else ("", ".gz")
        found = self.store.get_many([k + first for k in keys])
        out = {k: found[k + first] for k in keys}
        missing = [k for k in keys if out[k] is None]
        if missing:
            again = self.store.get_many([k + second for k in missing])
            for k in missing:
                out[k] = again[k + second]
                if out[k] is not None and second:
                    self._gz_files = True
        return out

    def _load_minishard_index(self, shard: str, minishard: int) -> tuple[dict[int, tuple[int, int]] | None, int]:
        """One minishard's index: its 16-byte entry of the shard index, then its bytes (two
        range requests; the shard itself is never read whole). None: the shard is missing."""
        where = f"{self.store.url}/{shard}"
        entry = self.store.get_ranges([RangeRequest(shard, 16 * minishard, 16 * minishard + 16)])[0]
        if entry is None:
            return None, 0
        if len(entry) != 16:
            raise ChunkReadError(f"{where}: shorter than its shard index of {self.sharding.index_nbytes} bytes")
        start, end = struct.unpack("<QQ", entry)
        if start == end:
            return {}, 0
        if end < start or end - start > MAX_INDEX_BYTES:
            raise ChunkReadError(f"{where}: shard index entry {minishard} is corrupt (bytes {start}-{end})")
        base = self.sharding.index_nbytes
        raw = self.store.get_ranges([RangeRequest(shard, base + start, base + end)])[0]
        if raw is None or len(raw) != end - start:
            raise ChunkReadError(f"{where}: shard index entry {minishard} points past the end of the shard")
        index = self.sharding.decode_minishard_index(raw)
        return index, 64 * len(index) + 64

    # -- decode ------------------------------------------------------------------------
    def _gzipped(self, raw: bytes, shape: tuple[int, ...]) -> bool:
        """A gzip stream where an unsharded chunk should be: a `.gz` file, or an object stored
        with Content-Encoding gzip that the client did not undo (S3). No JPEG, PNG or
        compressed_segmentation stream starts with gzip's magic; a raw chunk is that only
        when its length is not a raw chunk's."""
        if raw[:2] != b"\x1f\x8b":
            return False
        return self.encoding != "raw" or len(raw) != math.prod(shape) * self.dtype.itemsize

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        cell = self._cell(idx)
        stored = tuple(min(c, s - g * c) for g, c, s in zip(cell, self.chunk, self.size))
        shape = (self.channels, *stored[::-1])
        try:
            if (self.sharding is not None and self.sharding.data_gzip) or self._gzipped(raw, shape):
                raw = gunzip(raw, self._max_encoded)
            arr = decode_chunk(self.encoding, raw, shape, self.dtype, self.block_size)
        except Exception as exc:  # codec libraries raise anything from RuntimeError to ValueError
            raise ChunkReadError(f"cannot decode chunk {self.chunk_key(idx)} of {self.store.url}: {exc}") from None
        if stored != self.chunk:  # an edge chunk: stored clipped, served padded with zeros
            full = np.zeros((self.channels, *self.chunk[::-1]), self.dtype)
            full[:, :stored[2], :stored[1], :stored[0]] = arr
            arr = full
        return arr if self.channels > 1 else arr[0]


# -- registry entry ----------------------------------------------------------------------


def _documents(url: str) -> tuple[str, ...]:
    # Asked for in the first batch where the name says so; elsewhere only once nothing else
    # is found (other sources' first batch stays as it was).
    return (INFO,) if normalize_url(url).lower().endswith(".precomputed") else ()


def _open(source: Source) -> Image:
    doc = parse_json(source.raw(INFO), f"{source.store.url}/{INFO}")
    return open_precomputed(source.store, doc, source.name, source.mtime(INFO))


PRECOMPUTED_VOLUME = Format(
    "Neuroglancer precomputed", lambda s: not s.has_documents and s.raw(INFO) is not None, _open,
    raw_documents=_documents,
)
