"""A Zarr v2 or v3 array as a Level: chunk keys, concurrent fetch (shard-aware) and decode."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import MAX_ARRAY_BYTES, MAX_CHUNK_BYTES, Axis, Level, make_cache_token
from .blosc_frames import BloscFrame
from .errors import BadMetadata, ChunkReadError, NgffMountError, Unsupported
from .lru import LRU, LoadOnce
from .storage import RangeRequest, Store
from .zarr_codecs import V2ChunkDecoder, V3ChunkDecoder, parse_fill_value, v2_dtype

MISSING = np.uint64(2**64 - 1)
SHARD_INDEX_CACHE_BYTES = 64 << 20


def _positive_ints(value, what: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise BadMetadata(f"{where}: {what} must be a list of integers, got {value!r}")
    if any(v < 0 for v in value):
        raise BadMetadata(f"{where}: {what} has a negative entry {value!r}")
    return tuple(value)


class ZarrLevel(Level):
    """One Zarr array. `store` is rooted at the array; `meta` is its .zarray or zarr.json."""

    def __init__(self, store: Store, path: str, meta: dict, axes: Sequence[Axis], scale, translation):
        self.store = store
        self.path = path
        where = f"{store.url}"
        self.axes = tuple(axes)
        self.scale = tuple(float(s) for s in scale)
        self.translation = tuple(float(t) for t in translation)
        self.sharding = None
        if meta.get("zarr_format") == 3:
            self._init_v3(meta, where)
        elif meta.get("zarr_format") == 2:
            self._init_v2(meta, where)
        else:
            raise BadMetadata(f"{where}: unknown zarr_format {meta.get('zarr_format')!r}")
        if len(self.shape) != len(self.axes):
            raise BadMetadata(
                f"{where}: array has {len(self.shape)} dimensions but the multiscales metadata names {len(self.axes)} axes"
            )
        if any(c <= 0 for c in self.chunk_shape):
            raise BadMetadata(f"{where}: chunk shape {list(self.chunk_shape)} has a non-positive entry")
        if any(n == 0 for n in self.shape):
            raise BadMetadata(f"{where}: shape {list(self.shape)} has an empty dimension")
        if self.array_nbytes > MAX_ARRAY_BYTES:
            raise Unsupported(f"{where}: shape {list(self.shape)} is larger than the 2**60 bytes ngffmount serves")
        if self.chunk_nbytes > MAX_CHUNK_BYTES:
            raise Unsupported(f"{where}: chunks of {self.chunk_nbytes} bytes are larger than the 2 GiB ngffmount decodes")
        self.cache_token = make_cache_token(store.identity, meta)
        if self.sharding is not None:
            # Each shard's decoded index: fetched once even when many chunks of one shard are
            # fetched at the same time (the others wait for that request).
            self.shard_indexes = LoadOnce(LRU(max(1, SHARD_INDEX_CACHE_BYTES // self.sharding.index_nbytes)))

    def _init_v2(self, meta: dict, where: str) -> None:
        self.shape = _positive_ints(meta.get("shape"), "shape", where)
        self.chunk_shape = _positive_ints(meta.get("chunks"), "chunks", where)
        if len(self.chunk_shape) != len(self.shape):
            raise BadMetadata(f"{where}: chunks {list(self.chunk_shape)} do not match shape {list(self.shape)}")
        self.dtype = v2_dtype(meta.get("dtype"))
        self.fill_value = parse_fill_value(meta.get("fill_value"), self.dtype)
        self._separator = meta.get("dimension_separator", ".")
        if self._separator not in (".", "/"):
            raise BadMetadata(f"{where}: dimension_separator {self._separator!r} is not '.' or '/'")
        self._prefix = ""
        self._decoder = V2ChunkDecoder(meta, self.dtype, self.chunk_shape)

    def _init_v3(self, meta: dict, where: str) -> None:
        if meta.get("node_type") != "array":
            raise BadMetadata(f"{where}: zarr.json is not an array")
        self.shape = _positive_ints(meta.get("shape"), "shape", where)
        grid = meta.get("chunk_grid") or {}
        if grid.get("name") != "regular":
            raise Unsupported(f"{where}: chunk grid {grid.get('name')!r} is not supported")
        outer = _positive_ints((grid.get("configuration") or {}).get("chunk_shape"), "chunk_shape", where)
        if len(outer) != len(self.shape):
            raise BadMetadata(f"{where}: chunk_shape {list(outer)} does not match shape {list(self.shape)}")
        encoding = meta.get("chunk_key_encoding") or {"name": "default"}
        sep = (encoding.get("configuration") or {}).get("separator")
        if encoding.get("name") == "default":
            self._separator, self._prefix = sep or "/", "c"
        elif encoding.get("name") == "v2":
            self._separator, self._prefix = sep or ".", ""
        else:
            raise Unsupported(f"{where}: chunk_key_encoding {encoding.get('name')!r} is not supported")
        decoder = V3ChunkDecoder(meta.get("codecs"), meta.get("data_type"), outer)
        if decoder.sharding is not None:
            self.sharding = decoder.sharding
            self._decoder = decoder.sharding.inner
            self.chunk_shape = decoder.sharding.inner_shape
        else:
            self._decoder = decoder
            self.chunk_shape = outer
        self.dtype = self._decoder.dtype
        self.fill_value = parse_fill_value(meta.get("fill_value"), self.dtype)

    # -- chunk keys --------------------------------------------------------------------
    def _encode_key(self, idx: Sequence[int]) -> str:
        parts = [str(i) for i in idx]
        if self._prefix:
            return self._separator.join([self._prefix, *parts])
        return self._separator.join(parts) if parts else "0"

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        if self.sharding is None:
            return self._encode_key(idx)
        per = self.sharding.chunks_per_shard
        shard = tuple(i // n for i, n in zip(idx, per))
        inner = tuple(i % n for i, n in zip(idx, per))
        return f"{self._encode_key(shard)}#{'.'.join(map(str, inner))}"

    # -- fetch -----------------------------------------------------------------------
    def fetch_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        if self.sharding is None:
            return self.store.get_many(list(keys))
        split = [(k, *k.split("#", 1)) for k in keys]
        indices = self.shard_indexes.get_many({shard for _, shard, _ in split}, self._load_shard_indices)
        requests, wanted, out = [], [], {}
        for key, shard, inner in split:
            index = indices[shard]
            entry = None if index is None else index[tuple(int(i) for i in inner.split("."))]
            if entry is None or (entry[0] == MISSING and entry[1] == MISSING):
                out[key] = None
                continue
            offset, nbytes = int(entry[0]), int(entry[1])
            requests.append(RangeRequest(shard, offset, offset + nbytes))
            wanted.append(key)
        for key, data in zip(wanted, self.store.get_ranges(requests)):
            out[key] = data
        return out

    layout_fixed = False  # chunks are objects, or shard ranges whose index forget_layout drops
    takes_buffers = True  # numcodecs, numpy and BloscFrame read any buffer

    def _load_shard_indices(self, shards: list[str]) -> dict[str, np.ndarray | None]:
        n = self.sharding.index_nbytes
        reqs = [RangeRequest(s, -n) if self.sharding.index_at_end else RangeRequest(s, 0, n) for s in shards]
        raws = self.store.get_ranges(reqs)
        return {s: None if raw is None else self._decode_index(s, raw) for s, raw in zip(shards, raws)}

    def _decode_index(self, shard: str, raw: bytes) -> np.ndarray:
        try:
            return self.sharding.decode_index(raw)
        except Exception as exc:
            raise ChunkReadError(f"shard index of {self.store.url}/{shard} is corrupt: {exc}") from None

    # -- decode ----------------------------------------------------------------------
    def blosc_frame(self, raw: bytes) -> BloscFrame | None:
        if not self._decoder.blosc_only:
            return None
        return BloscFrame.parse(raw, self.chunk_nbytes, self.dtype.itemsize)

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        try:
            return self._decoder.decode(raw)
        except NgffMountError:
            raise
        except Exception as exc:  # codec libraries raise anything from RuntimeError to ValueError
            raise ChunkReadError(f"cannot decode chunk {self.chunk_key(idx)} of {self.store.url}: {exc}") from None
