"""A seekable file object with a position and a size: the seek/tell part of io, shared by
the files h5py and tifffile read through (adapters) and the ones ngffmount writes (vfs)."""

from __future__ import annotations

import io


class SeekableRaw(io.RawIOBase):
    """Subclasses keep `size` and implement `read_at` (or readinto, and write if writable)."""

    pos = 0
    size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset` (fewer at the end)."""
        raise NotImplementedError

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")  # readers pass numpy arrays of any dtype
        data = self.read_at(self.pos, len(view))
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)
