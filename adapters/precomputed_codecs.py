"""Neuroglancer precomputed: chunk encodings and the neuroglancer_uint64_sharded_v1 layout.

Chunks are [x, y, z, channel] arrays, x fastest; here they come out as (channel, z, y, x).
The codecs themselves come from libraries (imagecodecs for JPEG and PNG, compressed-segmentation,
mmh3 for the shard hash); this module checks what those libraries would trust blindly.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from .errors import BadMetadata, ChunkReadError, Unsupported
from .units import SAMPLE_TYPES, sample_types

DTYPES = sample_types("<", [n for n in SAMPLE_TYPES if n != "float64"])  # as Neuroglancer reads them
ENCODINGS = ("raw", "jpeg", "png", "compressed_segmentation")
# What each image encoding can hold (as Neuroglancer and tensorstore allow it).
IMAGE_ENCODINGS = {"jpeg": (("uint8",), (1, 3)), "png": (("uint8", "uint16"), (1, 2, 3, 4))}
SHARDING_TYPE = "neuroglancer_uint64_sharded_v1"
MAX_INDEX_BYTES = 8 << 20  # one minishard index, decoded (real ones hold a few hundred chunks)


def check_encoding(encoding, data_type: str, channels: int, where: str) -> None:
    if encoding not in ENCODINGS:
        raise Unsupported(f"{where}: chunk encoding {encoding!r} is not supported ({', '.join(ENCODINGS)})")
    if encoding in IMAGE_ENCODINGS:
        types, counts = IMAGE_ENCODINGS[encoding]
        if data_type not in types or channels not in counts:
            raise BadMetadata(f"{where}: {encoding} chunks hold {'/'.join(types)} with {counts} channels, "
                              f"not {data_type} with {channels}")
    if encoding == "compressed_segmentation" and data_type not in ("uint32", "uint64"):
        raise BadMetadata(f"{where}: compressed_segmentation chunks hold uint32 or uint64, not {data_type}")


def decode_chunk(encoding: str, raw: bytes, shape: tuple[int, int, int, int], dtype: np.dtype,
                 block_size: tuple[int, int, int] | None = None) -> np.ndarray:
    """One stored chunk of `shape` (channel, z, y, x), clipped at the volume's edge as stored."""
    if encoding == "raw":
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise ChunkReadError(f"raw chunk has {len(raw)} bytes, expected {math.prod(shape) * dtype.itemsize}")
        return np.frombuffer(raw, dtype).reshape(shape)
    if encoding in IMAGE_ENCODINGS:
        return _decode_image(encoding, raw, shape, dtype)
    return _decode_compressed_segmentation(raw, shape, dtype, block_size)


def _decode_image(encoding: str, raw: bytes, shape, dtype: np.dtype) -> np.ndarray:
    """JPEG or PNG: any width and height whose pixels, row by row, are the chunk's voxels in
    x, y, z order; the image's colour components are the channels."""
    import imagecodecs

    channels = shape[0]
    decode = imagecodecs.png_decode if encoding == "png" else imagecodecs.jpeg8_decode
    # Decoding into a buffer of the chunk's size: an image claiming more pixels fails before
    # the decoder allocates them.
    img = decode(raw, out=bytearray(math.prod(shape) * dtype.itemsize))
    components = img.shape[2] if img.ndim == 3 else 1
    if img.size != math.prod(shape) or components != channels:
        raise ChunkReadError(f"{encoding} image of {list(img.shape)} pixels does not hold a chunk of "
                             f"{list(shape[1:][::-1])} voxels with {channels} channel(s)")
    if img.dtype.itemsize != dtype.itemsize:
        raise ChunkReadError(f"{encoding} image has {img.dtype} samples, the volume {dtype}")
    zyxc = img.reshape(*shape[1:], channels)
    return np.moveaxis(zyxc, 3, 0).astype(dtype, copy=False)


# Bits per value a compressed_segmentation block may use; the library decodes 32 wrongly.
CSEG_BITS = (0, 1, 2, 4, 8, 16)


def _decode_compressed_segmentation(raw: bytes, shape, dtype: np.dtype, block_size) -> np.ndarray:
    import compressed_segmentation

    channels, xyz = shape[0], shape[1:][::-1]
    padded = _checked_compressed_segmentation(raw, channels, xyz, tuple(block_size), dtype.itemsize // 4)
    xyzc = compressed_segmentation.decompress(padded, (*xyz, channels), np.dtype(dtype.str.lstrip("<")),
                                              tuple(block_size), order="F")
    return np.transpose(xyzc, (3, 2, 1, 0))


def _checked_compressed_segmentation(raw: bytes, channels: int, xyz, block, words_per_value: int) -> bytes:
    """The stream, checked so that no read of the (unchecked) C decoder leaves it.

    Per channel: a header of two words per block (table offset and bit width, value offset),
    then packed values that index the block's lookup table. A value may index past a short
    table: zero words appended keep such reads inside the buffer (they decode as 0)."""
    if len(raw) % 4:
        raise ChunkReadError(f"compressed_segmentation chunk of {len(raw)} bytes is not whole 32-bit words")
    words = np.frombuffer(raw, "<u4")
    n = len(words)
    if n < channels or int(words[0]) != channels:
        raise ChunkReadError("compressed_segmentation chunk does not start with its channel offsets")
    grid = [-(-s // b) for s, b in zip(xyz, block)]
    nblocks, block_voxels = math.prod(grid), math.prod(block)
    pad = 0
    for base in (int(w) for w in words[:channels]):
        if base + 2 * nblocks > n:
            raise ChunkReadError("compressed_segmentation block headers run past the end of the chunk")
        header = words[base:base + 2 * nblocks].reshape(-1, 2).astype(np.int64)
        table, bits, values = header[:, 0] & 0xFFFFFF, header[:, 0] >> 24, header[:, 1]
        if not np.isin(bits, CSEG_BITS).all():
            raise ChunkReadError(f"compressed_segmentation block with {sorted(set(bits.tolist()) - set(CSEG_BITS))} "
                                 f"bits per value (supported: {CSEG_BITS})")
        value_words = -(-block_voxels * bits // 32)
        if ((bits > 0) & (base + values + value_words > n)).any() or (base + table >= n).any():
            raise ChunkReadError("compressed_segmentation block points past the end of the chunk")
        pad = max(pad, int((base + table + (np.int64(1) << bits) * words_per_value).max()) - n)
    return raw + bytes(4 * pad) if pad > 0 else raw


# -- sharding -------------------------------------------------------------------------------


def _bits(doc: dict, name: str, low: int, high: int, where: str) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadMetadata(f"{where}: sharding {name} must be an integer from {low} to {high}, got {value!r}")
    return value


class Sharding:
    """Where a chunk id lives: its shard file and minishard (docs/formats.md, "Neuroglancer precomputed")."""

    def __init__(self, doc, where: str):
        if not isinstance(doc, dict) or doc.get("@type") != SHARDING_TYPE:
            kind = doc.get("@type") if isinstance(doc, dict) else doc
            raise Unsupported(f"{where}: sharding {kind!r} is not supported ({SHARDING_TYPE})")
        self.preshift_bits = _bits(doc, "preshift_bits", 0, 64, where)
        self.minishard_bits = _bits(doc, "minishard_bits", 0, 32, where)
        self.shard_bits = _bits(doc, "shard_bits", 0, 64 - self.minishard_bits, where)
        self.hash = doc.get("hash")
        if self.hash not in ("identity", "murmurhash3_x86_128"):
            raise Unsupported(f"{where}: sharding hash {self.hash!r} is not supported (identity, murmurhash3_x86_128)")
        self.minishard_index_gzip = _gzip_flag(doc, "minishard_index_encoding", where)
        self.data_gzip = _gzip_flag(doc, "data_encoding", where)
        self.index_nbytes = 16 << self.minishard_bits  # the shard index that starts every shard

    def locate(self, chunk_id: int) -> tuple[str, int]:
        """(shard file name, minishard number) of a chunk id."""
        hashed = chunk_id >> self.preshift_bits if self.preshift_bits < 64 else 0
        if self.hash == "murmurhash3_x86_128":
            import mmh3

            hashed = int.from_bytes(mmh3.hash_bytes(hashed.to_bytes(8, "little"), 0, x64arch=False)[:8], "little")
        minishard = hashed & ((1 << self.minishard_bits) - 1)
        shard = (hashed >> self.minishard_bits) & ((1 << self.shard_bits) - 1)
        return f"{shard:0{-(-self.shard_bits // 4)}x}.shard", minishard

    def decode_minishard_index(self, raw: bytes) -> dict[int, tuple[int, int]]:
        """chunk id -> (start, end) in the shard file, from an encoded minishard index."""
        if self.minishard_index_gzip:
            raw = gunzip(raw, MAX_INDEX_BYTES)
        if len(raw) % 24:
            raise ChunkReadError(f"minishard index of {len(raw)} bytes is not a whole number of 24-byte entries")
        table = np.frombuffer(raw, "<u8").reshape(3, -1).astype(object)  # Python ints: no silent wraparound
        ids, gaps, sizes = np.cumsum(table[0]), table[1], table[2]
        ends = self.index_nbytes + np.cumsum(gaps + sizes)
        out = {}
        for chunk_id, end, size in zip(ids, ends, sizes):
            if end >= 1 << 62:
                raise ChunkReadError("minishard index points past any possible shard end")
            out[int(chunk_id) & 0xFFFFFFFFFFFFFFFF] = (int(end - size), int(end))
        return out


def _gzip_flag(doc: dict, name: str, where: str) -> bool:
    value = doc.get(name, "raw")
    if value not in ("raw", "gzip"):
        raise Unsupported(f"{where}: sharding {name} {value!r} is not supported (raw, gzip)")
    return value == "gzip"


def gunzip(raw: bytes, limit: int) -> bytes:
    """A gzip (or zlib) stream, decoded to at most `limit` bytes (a bomb fails instead)."""
    try:
        d = zlib.decompressobj(47)
        out = d.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ChunkReadError(f"broken gzip data: {exc}") from None
    if len(out) > limit:
        raise ChunkReadError(f"gzip data decodes to more than {limit} bytes")
    return out


def compressed_morton_code(cell: tuple[int, int, int], grid: tuple[int, int, int]) -> int:
    """The chunk id of grid cell (x, y, z): its bits interleaved, skipping bits that are zero
    for every cell of the grid (the compressed Morton code: docs/formats.md, "Neuroglancer precomputed")."""
    code, j = 0, 0
    for i in range(max(g - 1 for g in grid).bit_length()):
        for dim in range(3):
            if (1 << i) < grid[dim]:
                code |= ((cell[dim] >> i) & 1) << j
                j += 1
    return code


def morton_bits(grid: tuple[int, int, int]) -> int:
    return sum((g - 1).bit_length() for g in grid)
