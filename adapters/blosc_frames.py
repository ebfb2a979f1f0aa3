"""A chunk stored as one c-blosc frame, decoded a block at a time.

A Blosc frame is cut into blocks (256 KiB for lz4 at level 5) compressed one by one, so
one z-plane of a 64x256x256 uint16 chunk lies in one block of 32. Decoding just the
blocks a read needs turns the first plane of a deep chunking from 64 chunk decodes into
64 block decodes. c-blosc's blosc_getitem does that; numcodecs builds c-blosc into its
extension module and exports it, so it is reached with ctypes, not a new dependency.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Callable

import numcodecs.blosc
import numpy as np

from .errors import ChunkReadError

# The c-blosc 1.x header: version, versionlz, flags, typesize, nbytes, blocksize, cbytes.
HEADER = struct.Struct("<BBBBIII")
FLAG_MEMCPYED = 0x02  # stored uncompressed after the header, no block table


def _load_getitem():
    try:
        fn = ctypes.CDLL(numcodecs.blosc.__file__).blosc_getitem
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_getitem = _load_getitem()


class BloscFrame:
    """The encoded bytes of one chunk, and how to decode any one of its blocks."""

    memcpyed = False  # stored uncompressed after the header

    def __init__(self, raw: bytes, typesize: int, nbytes: int, block_bytes: int):
        self.raw = raw
        self.typesize = typesize
        self.nbytes = nbytes
        self.block_bytes = block_bytes
        self.nblocks = -(-nbytes // block_bytes)
        # Where decoded blocks' memory comes from: (nbytes) -> a writable uint8 array of
        # that size (a pool of reused buffers); None: new memory.
        self.buffers: Callable[[int], np.ndarray] | None = None
        # A frame read in parts (`raw` a bytearray holding only some of its bytes):
        # fill(start, stop) makes raw[start:stop] present, or raises. None once raw is whole.
        self.fill: Callable[[int, int], None] | None = None
        self._spans: list[tuple[int, int]] | None = None

    @classmethod
    def parse(cls, raw, expected_nbytes: int, itemsize: int) -> BloscFrame | None:
        """The frame, or None when `raw` is not a whole c-blosc 1.x frame of `expected_nbytes`
        whose blocks hold whole items (then the chunk is decoded whole, which checks it)."""
        if _getitem is None or len(raw) < HEADER.size:
            return None
        version, _, flags, typesize, nbytes, block_bytes, cbytes = HEADER.unpack_from(raw)
        if version not in (1, 2) or nbytes != expected_nbytes or cbytes != len(raw) or not typesize:
            return None
        if block_bytes <= 0 or block_bytes % typesize or block_bytes % itemsize or nbytes % typesize:
            return None
        # A bytearray stays itself: a frame read in parts is filled in place (see `fill`); a
        # memoryview (a client's buffer) is read where it lies.
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raw = bytes(raw)
        frame = cls(raw, typesize, nbytes, block_bytes)
        frame.memcpyed = bool(flags & FLAG_MEMCPYED)
        return frame if frame.table_end <= cbytes else None

    @property
    def table_end(self) -> int:
        """Bytes of the header and the block-start table: all a block's place is read from."""
        return HEADER.size + (0 if self.memcpyed else 4 * self.nblocks)

    def block_span(self, block: int) -> tuple[int, int]:
        """Where block `block`'s encoded bytes lie in the frame: from its start in the table to
        the next block's start (c-blosc writes blocks one after the other), or the frame's end."""
        if self.memcpyed:
            start = HEADER.size + block * self.block_bytes
            return start, start + self.block_size(block)
        if self._spans is None:
            starts = np.frombuffer(self.raw, "<i4", self.nblocks, HEADER.size).astype(np.int64)
            ends = np.sort(starts)
            following = np.append(ends, len(self.raw))[np.searchsorted(ends, starts, side="right")]
            if self.nblocks and (starts.min() < self.table_end or following.max() > len(self.raw)):
                raise ChunkReadError("blosc frame has a block table out of its bounds")
            self._spans = list(zip(starts.tolist(), following.tolist()))
        return self._spans[block]

    def complete(self, raw: bytes) -> None:
        """The whole frame, for one read in parts: blocks decode from it from now on."""
        self.raw = raw
        self.fill = None

    def block_size(self, block: int) -> int:
        return min(self.block_bytes, self.nbytes - block * self.block_bytes)

    def decode_block(self, block: int) -> np.ndarray:
        """Block `block` as uint8 memory: from `buffers` if set, else new."""
        fill = self.fill
        if fill is not None:
            fill(*self.block_span(block))
        raw = self.raw  # the whole frame, should it have come meanwhile
        if isinstance(raw, bytearray):
            raw = (ctypes.c_char * len(raw)).from_buffer(raw)
        elif isinstance(raw, memoryview):  # read-only: its address, through numpy
            held = np.frombuffer(raw, np.uint8)
            raw = held.ctypes.data
        size = self.block_size(block)
        out = np.empty(size, np.uint8) if self.buffers is None else self.buffers(size)
        got = _getitem(raw, block * self.block_bytes // self.typesize, size // self.typesize, out.ctypes.data)
        if got != size:
            raise ChunkReadError(f"blosc block {block} does not decode (c-blosc returned {got})")
        return out

    def decode_into(self, out: np.ndarray) -> np.ndarray:
        """The whole frame into `out` (uint8, nbytes long), checked by c-blosc as it goes."""
        if out.nbytes != self.nbytes:
            raise ValueError(f"a buffer of {out.nbytes} bytes for a frame of {self.nbytes}")
        try:
            numcodecs.blosc.decompress(self.raw, out)
        except Exception as exc:  # c-blosc reports a damaged frame as a RuntimeError
            raise ChunkReadError(f"blosc frame does not decode: {exc}") from None
        return out
