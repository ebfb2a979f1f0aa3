"""A read-only-or-not file object with a position and a size: the seek/tell part of io."""

from __future__ import annotations

import io


class SeekableRaw(io.RawIOBase):
    """Subclasses keep `pos` and `size` and implement readinto (and write, if writable)."""

    pos = 0
    size = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def tell(self):
        return self.pos
