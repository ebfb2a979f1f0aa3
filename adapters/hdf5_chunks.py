"""Chunked HDF5 datasets read chunk by chunk through range requests.

h5py reads the file's metadata (object headers, chunk B-trees) through `RangeFile`, a
read-only file object over a Store key with a small block cache. Each dataset's chunk
offsets are indexed once; after that a chunk is one range request, and its bytes are
decoded here (deflate, shuffle, fletcher32, blosc, lz4, zstd), so the whole file is never
downloaded and chunk bytes can go through the shared chunk cache.
"""

from __future__ import annotations

import atexit
import io
import struct
import threading
import weakref
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import h5py
import numcodecs
import numpy as np

from .errors import BadMetadata, ChunkReadError, SourceNotFound, Unsupported
from .storage import RangeRequest, Store, mtime_of, size_of

BLOCK = 64 * 1024
MAX_BLOCKS = 512  # 32 MiB of metadata blocks per open file

DEFLATE, SHUFFLE, FLETCHER32, BLOSC, LZ4, ZSTD = 1, 2, 3, 32001, 32004, 32015
FILTER_NAMES = {4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf", 32008: "bitshuffle"}


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over one Store key, fetched in cached blocks."""

    def __init__(self, store: Store, key: str, size: int):
        self.store, self.key, self.size = store, key, size
        self.pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.pos + len(view), self.size)
        if end <= self.pos:
            return 0
        data = self.read_range(self.pos, end)
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def read_range(self, start: int, end: int) -> bytes:
        first, last = start // BLOCK, (end - 1) // BLOCK
        blocks = range(first, last + 1)
        with self._lock:
            have = {b: self._blocks[b] for b in blocks if b in self._blocks}
            for b in have:
                self._blocks.move_to_end(b)
        wanted = [b for b in blocks if b not in have]
        if wanted:
            got = self.store.get_ranges(
                [RangeRequest(self.key, b * BLOCK, min((b + 1) * BLOCK, self.size)) for b in wanted])
            for b, data in zip(wanted, got):
                if data is None:
                    raise ChunkReadError(f"{self.store.url}/{self.key} vanished while being read")
                have[b] = data
            with self._lock:
                self._blocks.update((b, have[b]) for b in wanted)
                while len(self._blocks) > MAX_BLOCKS:
                    self._blocks.popitem(last=False)
        joined = b"".join(have[b] for b in blocks)
        return joined[start - first * BLOCK: end - first * BLOCK]


@dataclass(frozen=True)
class DatasetLayout:
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    filters: tuple[tuple[int, tuple[int, ...]], ...]  # (filter id, client values) in pipeline order
    dcpl: object = field(default=None, compare=False, repr=False)  # h5py creation property list

    def describe(self) -> dict:
        return {"shape": self.shape, "chunks": self.chunks, "dtype": self.dtype.str, "filters": self.filters}


# h5py files opened on Python file objects, closed before the interpreter goes: HDF5's own
# exit handler would close them after it, calling back into Python (a crash at exit).
_open_on_file_objects: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_files() -> None:
    for h5 in list(_open_on_file_objects):
        try:
            h5.close()
        except Exception:
            pass


class Hdf5File:
    """One HDF5 file of a source, opened by h5py over range reads. h5py is not thread-safe
    for one file: every metadata access holds the lock."""

    def __init__(self, store: Store, key: str, where: str):
        info = store.info(key)  # one request for both size and mtime
        size = size_of(info)
        if size is None:
            raise SourceNotFound(f"HDF5 file not found: {where}")
        self.store, self.key, self.where, self.size = store, key, where, size
        self.mtime = mtime_of(info) or 0.0
        self._lock = threading.Lock()
        self._file = RangeFile(store, key, size)
        try:
            self._h5 = h5py.File(self._file, "r")
            _open_on_file_objects.add(self._h5)
        except OSError as exc:
            raise BadMetadata(f"{where}: not a readable HDF5 file ({exc})") from None
        self._indexes: dict[str, dict[tuple[int, ...], tuple[int, int, int]]] = {}

    @property
    def identity(self) -> str:
        """Names this version of the file: a rewritten file gets new chunk offsets."""
        return f"{self.store.identity}/{self.key}#{self.size}@{self.mtime}"

    def attribute(self, path: str, name: str):
        with self._lock:
            obj = self._h5.get(path)
            return None if obj is None else obj.attrs.get(name)

    def array(self, path: str) -> np.ndarray | None:
        with self._lock:
            obj = self._h5.get(path)
            return obj[()] if isinstance(obj, h5py.Dataset) else None

    def layout(self, path: str) -> DatasetLayout | None:
        """Shape, chunking, dtype and filters of a dataset; None when it does not exist."""
        with self._lock:
            ds = self._h5.get(path)
            if ds is None:
                return None
            if not isinstance(ds, h5py.Dataset):
                raise BadMetadata(f"{self.where}: {path} is not a dataset")
            chunks = ds.chunks or ds.shape  # contiguous: one chunk
            plist = ds.id.get_create_plist()
            filters = tuple((plist.get_filter(i)[0], tuple(plist.get_filter(i)[2])) for i in range(plist.get_nfilters()))
            return DatasetLayout(tuple(ds.shape), tuple(chunks), ds.dtype, filters, plist.copy())

    def chunk_index(self, path: str) -> dict[tuple[int, ...], tuple[int, int, int]]:
        """{chunk grid position: (byte offset, stored size, filter mask)}, built once per dataset."""
        index = self._indexes.get(path)
        if index is not None:
            return index
        with self._lock:
            if path in self._indexes:
                return self._indexes[path]
            ds = self._h5.get(path)
            index = {}
            if isinstance(ds, h5py.Dataset):
                chunks = ds.chunks
                if chunks is None:
                    offset = ds.id.get_offset()
                    if offset is not None:
                        index[(0,) * ds.ndim] = (offset, ds.id.get_storage_size(), 0)
                else:
                    def add(info):
                        pos = tuple(o // c for o, c in zip(info.chunk_offset, chunks))
                        index[pos] = (info.byte_offset, info.size, info.filter_mask)

                    ds.id.chunk_iter(add)
            self._indexes[path] = index
            return index


NATIVE = (DEFLATE, SHUFFLE, FLETCHER32, BLOSC, LZ4, ZSTD)
LIBRARY = (4, 5, 6)  # szip, n-bit and scale-offset (what BigDataViewer's Java exporter writes)


class LibraryDecoder:
    """Decodes chunks with the HDF5 library, for the filters not reimplemented here: each
    chunk is written as-is into a one-chunk dataset of an in-memory file, then read back."""

    def __init__(self, layout: DatasetLayout):
        self._lock = threading.Lock()
        self._file = h5py.File(io.BytesIO(), "w")
        _open_on_file_objects.add(self._file)
        space = h5py.h5s.create_simple(layout.chunks)
        dsid = h5py.h5d.create(self._file.id, b"chunk", h5py.h5t.py_create(layout.dtype), space, dcpl=layout.dcpl.copy())
        self._ds = h5py.Dataset(dsid)
        self._origin = (0,) * len(layout.chunks)

    def decode(self, raw: bytes, filter_mask: int) -> np.ndarray:
        with self._lock:
            self._ds.id.write_direct_chunk(self._origin, bytes(raw), filter_mask)
            return self._ds[()]


_decoders: dict[DatasetLayout, LibraryDecoder] = {}
_decoders_lock = threading.Lock()


def _library_decoder(layout: DatasetLayout) -> LibraryDecoder:
    with _decoders_lock:  # one per layout: equal layouts share the filter parameters
        decoder = _decoders.get(layout)
        if decoder is None:
            decoder = _decoders[layout] = LibraryDecoder(layout)
        return decoder


def decode_chunk(raw: bytes, layout: DatasetLayout, filter_mask: int, where: str) -> np.ndarray:
    """Undo the filter pipeline (last filter first) and shape the bytes as one full chunk."""
    if any(fid not in NATIVE for fid, _ in layout.filters):
        try:
            return _library_decoder(layout).decode(raw, filter_mask)
        except (OSError, ValueError) as exc:
            raise ChunkReadError(f"{where}: cannot decode an HDF5 chunk ({exc})") from None
    nbytes = int(np.prod(layout.chunks)) * layout.dtype.itemsize
    data = raw
    for i in reversed(range(len(layout.filters))):
        if filter_mask & (1 << i):
            continue  # this filter was skipped for this chunk
        fid, values = layout.filters[i]
        if fid == DEFLATE:
            stream = zlib.decompressobj()
            # bounded (no decompression bombs); fletcher32 applied before deflate adds 4 bytes
            data = stream.decompress(data, nbytes + 4 * sum(f == FLETCHER32 for f, _ in layout.filters) + 1)
        elif fid == SHUFFLE:
            data = numcodecs.Shuffle(elementsize=layout.dtype.itemsize).decode(data)
        elif fid == FLETCHER32:
            data = data[:-4]
        elif fid == BLOSC:
            data = numcodecs.Blosc().decode(data)
        elif fid == LZ4:
            data = _lz4_blocks(data, nbytes)
        else:  # ZSTD: other filters went to the library decoder above
            data = numcodecs.Zstd().decode(data)
    data = bytes(data)
    if len(data) != nbytes:
        raise ChunkReadError(f"{where}: an HDF5 chunk decodes to {len(data)} bytes, expected {nbytes}")
    return np.frombuffer(data, layout.dtype).reshape(layout.chunks)


LZ4_HEAD = struct.Struct(">QI")
LZ4_BLOCK = struct.Struct(">I")


def _lz4_blocks(raw, limit: int) -> bytes:
    """The HDF5 LZ4 filter (32004, which Imaris writes): the decoded size and block size (big
    endian), then per block its stored size and bytes; a block stored at full size is raw."""
    raw = memoryview(raw)
    total, block = LZ4_HEAD.unpack_from(raw, 0)
    if total > limit or (block == 0 and total):
        raise ChunkReadError(f"an LZ4 chunk claims {total} bytes in blocks of {block}, more than the chunk")
    out, pos = bytearray(), LZ4_HEAD.size
    while len(out) < total:
        want = min(block, total - len(out))
        (stored,) = LZ4_BLOCK.unpack_from(raw, pos)
        pos += LZ4_BLOCK.size
        chunk = raw[pos:pos + stored]
        pos += stored
        if len(chunk) != stored:
            raise ChunkReadError("an LZ4 chunk ends inside a block")
        out += chunk if stored == want else numcodecs.LZ4().decode(struct.pack("<I", want) + bytes(chunk))
    return bytes(out)


def check_filters(layout: DatasetLayout, where: str) -> None:
    """Refuse at mount time, with a clear message, the filters decode_chunk cannot undo."""
    for fid, _ in layout.filters:
        if fid not in NATIVE and (fid not in LIBRARY or not h5py.h5z.filter_avail(fid)):
            raise Unsupported(f"{where}: HDF5 filter {FILTER_NAMES.get(fid, fid)!r} is not supported")
