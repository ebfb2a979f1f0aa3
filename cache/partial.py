"""A chunk read in parts from a tier (tier.Parts: the shared tier's large entries), its whole
bytes coming behind the reader.

A plane of a 64-deep blosc chunk needs one block of its 32: a node reading it from the
shared tier reads the frame's header and block table, then the blocks its reads decode,
instead of the whole entry. The fetch thread that found the entry reads it whole behind the
reader (ChunkEngine._fetch_one), checks it, hands it to the frame (whose blocks then decode
without a round trip each) and to the tiers above. A part that does not come (the server
gone or slow, the entry evicted or damaged) makes its read wait for the whole chunk, from
the tier, else the source: a part that does not check is never decoded.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ..adapters.errors import ChunkReadError
from ..adapters.retry import current_deadline
from .tier import BYTES_LIKE, Parts


class PartialChunk:
    def __init__(self, parts: Parts, meta: dict | None, refetch: Callable[[], tuple[object, dict | None]]):
        """`refetch()`: the chunk from elsewhere (bytes, None or an exception; and its metadata)."""
        self.parts = parts
        self._refetch = refetch
        self._once = threading.Lock()  # held by whoever reads the whole
        self._lock = threading.Lock()
        self._frames: list = []
        self.done = False
        self.data: object = None  # once done: bytes, None (gone at the source) or the exception that stopped it
        self.meta = meta
        self.refetched = False  # the tier's entry failed: the data came from elsewhere

    def __len__(self) -> int:
        return self.parts.size

    def frame(self, level, min_blocks: int):
        """The chunk as a blosc frame of at least `min_blocks` blocks whose blocks are read as
        they are decoded; None when it is none (or already whole): then read it whole."""
        frame = level.blosc_frame(self.parts.buffer)
        if frame is None or frame.nblocks < min_blocks or not self.parts.read(0, frame.table_end):
            return None
        with self._lock:
            if self.done:
                return None
            frame.fill = self._fill
            self._frames.append(frame)
        return frame

    def _fill(self, start: int, stop: int) -> None:
        """A frame's bytes [start, stop) before a block of it is decoded: from the tier, else the whole chunk."""
        if not self.done and self.parts.read(start, stop):
            return
        deadline = current_deadline()
        data = self.whole(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if isinstance(data, BaseException):
            raise data
        if not isinstance(data, BYTES_LIKE):
            raise ChunkReadError("the chunk is gone at the source")

    def whole(self, timeout: float | None = None):
        """The whole chunk (bytes, None or an exception), read once: the first caller reads it,
        from the tier, else the source; the others wait for that."""
        if not self._once.acquire(timeout=-1 if timeout is None else timeout):
            return ChunkReadError("no whole chunk by the read's deadline")
        try:
            if not self.done:
                try:
                    data, meta = self.parts.whole(), self.meta
                    if data is None:
                        data, meta = self._refetch()
                        self.refetched = True
                except BaseException as exc:  # noqa: BLE001 - handed to every reader of the chunk
                    data = exc
                with self._lock:  # the frames whole before anyone is told it is done
                    if isinstance(data, BYTES_LIKE):
                        for frame in self._frames:
                            frame.complete(data)
                    self._frames = []
                    self.data, self.meta, self.done = data, meta, True
        finally:
            self._once.release()
        return self.data
