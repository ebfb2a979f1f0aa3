"""Decoding Zarr v2 and v3 chunks (codecs from the Zarr specs, codec implementations from numcodecs).

Decoding is done here rather than through zarr-python so that the chunk engine owns
fetching and caching; the tests compare every pixel against zarr-python's own read.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numcodecs
import numpy as np

from .blosc_frames import HEADER as BLOSC_HEADER
from .errors import BadMetadata, ChunkReadError, Unsupported
from .units import SAMPLE_TYPES

# -- dtypes and fill values --------------------------------------------------------------

V3_DTYPES = frozenset({"bool", *SAMPLE_TYPES, "float16", "complex64", "complex128"})


def v2_dtype(spec) -> np.dtype:
    if not isinstance(spec, str):
        raise Unsupported(f"Zarr v2 structured dtype {spec!r} is not supported")
    try:
        dt = np.dtype(spec)
    except TypeError:
        raise BadMetadata(f"unknown Zarr v2 dtype {spec!r}") from None
    if dt.kind not in "biufc":
        raise Unsupported(f"Zarr dtype {spec!r} is not a numeric image type")
    return dt


def v3_dtype(name, endian: str) -> np.dtype:
    if not isinstance(name, str) or name not in V3_DTYPES:
        raise Unsupported(f"Zarr v3 data_type {name!r} is not supported")
    dt = np.dtype(name)
    return dt.newbyteorder("<" if endian == "little" else ">") if dt.itemsize > 1 else dt


def parse_fill_value(value, dtype: np.dtype):
    """Fill values as the Zarr specs write them: numbers, NaN/Infinity names, hex bit patterns."""
    if value is None:
        return 0
    if dtype.kind == "c" and isinstance(value, (list, tuple)) and len(value) == 2:
        return complex(parse_fill_value(value[0], np.dtype("float64")), parse_fill_value(value[1], np.dtype("float64")))
    if isinstance(value, str):
        named = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if value in named:
            return named[value]
        if value.startswith("0x") and dtype.kind == "f":
            raw = int(value, 16).to_bytes(dtype.itemsize, "big")
            return np.frombuffer(raw, dtype.newbyteorder(">"))[0].item()
        raise BadMetadata(f"fill_value {value!r} is not valid for {dtype}")
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return value
    raise BadMetadata(f"fill_value {value!r} is not valid for {dtype}")


# -- decoders ------------------------------------------------------------------------------


def _codec(config, what: str):
    if not isinstance(config, dict):
        raise BadMetadata(f"{what} codec {config!r} is not an object")
    try:
        return numcodecs.get_codec(dict(config))
    except Exception:  # unknown id, bad parameters: numcodecs raises many kinds
        raise Unsupported(f"{what} codec {config.get('id')!r} is not supported") from None


def warm_up_codecs() -> None:
    """Round-trip a few bytes through Blosc (Zarr, N5 and HDF5 all use it): on first use it
    sets up a global lock, importing a module, which took ~9 ms with the GIL held inside
    the first plane read of a fresh mount."""
    codec = numcodecs.Blosc()
    codec.decode(codec.encode(bytes(64)))


def bounded_decode(codec, buf, expected: int):
    """Decode `buf` whose output must be `expected` bytes, refusing decompression bombs
    where the codec allows it: blosc headers state their size, zlib and gzip stream."""
    if isinstance(codec, numcodecs.Blosc):
        head = numcodecs.compat.ensure_bytes(buf)[:BLOSC_HEADER.size]
        nbytes = BLOSC_HEADER.unpack(head)[4] if len(head) == BLOSC_HEADER.size else -1
        if nbytes != expected:
            raise ChunkReadError(f"blosc chunk holds {nbytes} bytes, expected {expected}")
        # Into numpy's memory: from 4 MiB up numpy asks the kernel for huge pages, so an
        # 8 MiB chunk is faulted in as 4 pages, not 2,048 (first warm plane: -25%).
        return codec.decode(buf, out=np.empty(expected, np.uint8))
    if isinstance(codec, (numcodecs.Zlib, numcodecs.GZip)):
        stream = zlib.decompressobj(47)  # 32 + 15: zlib or gzip header, detected
        out = stream.decompress(numcodecs.compat.ensure_bytes(buf), expected + 1)
        if len(out) > expected:
            raise ChunkReadError(f"chunk decompresses to more than the {expected} bytes expected")
        return out
    return codec.decode(buf)


def _to_array(buf, dtype: np.dtype, shape: Sequence[int], order: str = "C") -> np.ndarray:
    expected = int(np.prod(shape)) * dtype.itemsize
    data = np.frombuffer(numcodecs.compat.ensure_contiguous_ndarray(buf), dtype=np.uint8)
    if data.nbytes != expected:
        raise ChunkReadError(f"chunk decodes to {data.nbytes} bytes, expected {expected}")
    return data.view(dtype).reshape(shape, order=order)


class V2ChunkDecoder:
    """compressor, then filters in reverse, then the bytes in C or F order (Zarr v2 spec)."""

    def __init__(self, meta: dict, dtype: np.dtype, chunk_shape: Sequence[int]):
        self.dtype = dtype
        self.shape = tuple(chunk_shape)
        self.order = meta.get("order", "C")
        if self.order not in ("C", "F"):
            raise BadMetadata(f"Zarr v2 order {self.order!r} is not C or F")
        comp = meta.get("compressor")
        self.compressor = _codec(comp, "Zarr compressor") if comp else None
        self.filters = [_codec(f, "Zarr filter") for f in (meta.get("filters") or [])]
        self.nbytes = int(np.prod(self.shape)) * dtype.itemsize
        # The chunk's bytes in C order are one Blosc frame: it can be decoded block by block.
        self.blosc_only = isinstance(self.compressor, numcodecs.Blosc) and not self.filters and self.order == "C"

    def decode(self, raw: bytes) -> np.ndarray:
        buf = raw
        if self.compressor is not None:
            # With filters in between, the compressor's output size is not the chunk's.
            expected = self.nbytes if not self.filters else None
            buf = bounded_decode(self.compressor, buf, expected) if expected else self.compressor.decode(buf)
        for f in reversed(self.filters):
            buf = f.decode(buf)
        return _to_array(buf, self.dtype, self.shape, self.order)


@dataclass
class ShardingSpec:
    """The sharding_indexed codec of a Zarr v3 array."""

    inner_shape: tuple[int, ...]
    chunks_per_shard: tuple[int, ...]
    inner: "V3ChunkDecoder"
    index_bytes_codecs: list
    index_endian: str
    index_at_end: bool

    @property
    def index_nbytes(self) -> int:
        n = int(np.prod(self.chunks_per_shard)) * 16
        return n + sum(4 for c in self.index_bytes_codecs if isinstance(c, numcodecs.CRC32C))

    def decode_index(self, raw: bytes) -> np.ndarray:
        """(offset, nbytes) per inner chunk; 2**64-1 in both marks a missing chunk."""
        buf = raw
        for c in reversed(self.index_bytes_codecs):
            buf = c.decode(buf)
        dt = np.dtype("<u8" if self.index_endian == "little" else ">u8")
        return _to_array(buf, dt, (*self.chunks_per_shard, 2)).astype(np.uint64)


BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _v3_bytes_codec(codec: dict):
    name = codec.get("name")
    conf = codec.get("configuration") or {}
    if name == "blosc":
        return numcodecs.Blosc(
            cname=conf.get("cname", "lz4"),
            clevel=conf.get("clevel", 5),
            shuffle=BLOSC_SHUFFLE.get(conf.get("shuffle", "noshuffle"), 0),
            blocksize=conf.get("blocksize", 0),
        )
    if name == "gzip":
        return numcodecs.GZip(level=conf.get("level", 5))
    if name == "zstd":
        return numcodecs.Zstd(level=conf.get("level", 0))
    if name == "crc32c":
        return numcodecs.CRC32C()
    if isinstance(name, str) and name.startswith("numcodecs."):
        return _codec({"id": name.split(".", 1)[1], **conf}, "Zarr v3")
    raise Unsupported(f"Zarr v3 codec {name!r} is not supported")


class V3ChunkDecoder:
    """array->array (transpose), array->bytes (bytes or sharding), bytes->bytes, per the v3 spec."""

    def __init__(self, codecs: list, data_type, chunk_shape: Sequence[int]):
        if not isinstance(codecs, list) or not codecs:
            raise BadMetadata("Zarr v3 array has no codecs")
        self.shape = tuple(chunk_shape)
        self.transpose: tuple[int, ...] | None = None
        self.bytes_codecs = []
        self.sharding: ShardingSpec | None = None
        endian = "little"
        stage = "array"
        for codec in codecs:
            if not isinstance(codec, dict):
                raise BadMetadata(f"Zarr v3 codec {codec!r} is not an object")
            name = codec.get("name")
            conf = codec.get("configuration") or {}
            if stage == "array" and name == "transpose":
                if self.transpose is not None:
                    raise Unsupported("more than one Zarr v3 transpose codec is not supported")
                order = conf.get("order")
                if sorted(order or []) != list(range(len(self.shape))):
                    raise BadMetadata(f"transpose order {order!r} does not fit {len(self.shape)} dimensions")
                self.transpose = tuple(order)
            elif stage == "array" and name == "bytes":
                endian = conf.get("endian", "little")
                stage = "bytes"
            elif stage == "array" and name == "sharding_indexed":
                if self.transpose is not None:
                    raise Unsupported("a transpose codec before sharding is not supported")
                self.sharding = self._sharding(conf, data_type)
                stage = "bytes"
            elif stage == "bytes" and name not in ("transpose", "bytes", "sharding_indexed"):
                if self.sharding is not None:
                    raise Unsupported("codecs after sharding_indexed are not supported")
                self.bytes_codecs.append(_v3_bytes_codec(codec))
            else:
                raise Unsupported(f"Zarr v3 codec {name!r} is not supported in this position")
        if stage != "bytes":
            raise BadMetadata("Zarr v3 codecs have no array-to-bytes codec")
        self.dtype = v3_dtype(data_type, endian)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.blosc_only = (self.transpose is None and self.sharding is None and len(self.bytes_codecs) == 1
                           and isinstance(self.bytes_codecs[0], numcodecs.Blosc))

    def _sharding(self, conf: dict, data_type) -> ShardingSpec:
        inner = tuple(conf.get("chunk_shape") or ())
        if len(inner) != len(self.shape) or any(i <= 0 or s % i for s, i in zip(self.shape, inner)):
            raise BadMetadata(f"shard shape {list(self.shape)} is not a multiple of inner chunks {list(inner)}")
        inner_decoder = V3ChunkDecoder(conf.get("codecs") or [{"name": "bytes"}], data_type, inner)
        if inner_decoder.sharding is not None:
            raise Unsupported("nested sharding is not supported")
        index_codecs = conf.get("index_codecs") or [{"name": "bytes"}, {"name": "crc32c"}]
        index_endian = "little"
        index_bytes = []
        for c in index_codecs:
            if c.get("name") == "bytes":
                index_endian = (c.get("configuration") or {}).get("endian", "little")
            else:
                index_bytes.append(_v3_bytes_codec(c))
        return ShardingSpec(
            inner_shape=inner,
            chunks_per_shard=tuple(s // i for s, i in zip(self.shape, inner)),
            inner=inner_decoder,
            index_bytes_codecs=index_bytes,
            index_endian=index_endian,
            index_at_end=conf.get("index_location", "end") == "end",
        )

    def decode(self, raw: bytes) -> np.ndarray:
        buf = raw
        last = len(self.bytes_codecs) - 1
        for i, c in enumerate(reversed(self.bytes_codecs)):
            # The last codec undone yields the array's bytes: its size is known.
            buf = bounded_decode(c, buf, self.nbytes) if i == last else c.decode(buf)
        if self.transpose is None:
            return _to_array(buf, self.dtype, self.shape)
        stored_shape = tuple(self.shape[i] for i in self.transpose)
        return _to_array(buf, self.dtype, stored_shape).transpose(np.argsort(self.transpose))
