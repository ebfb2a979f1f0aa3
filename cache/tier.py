"""The interface of a chunk cache tier: where encoded chunk bytes are kept between the memory
cache and the source.

The engine (engine.py) asks its tiers in order (the local disk cache, then a shared one, ...)
and the source last. A tier keys entries as `{cache token}/{chunk key}` (the cache token names
the source, endpoint and array metadata), keeps each entry's metadata (the source version of
its bytes, when they were last validated; see engine._fetch_source), and never serves damaged
bytes: a damaged entry is a miss. A tier's own trouble (full, gone, unreachable) costs speed,
never a read: its methods never raise for it.

Adding a tier: a module in cache/ with a class that has the methods of `Tier`, built in
`vfs/mount.build_engine` (and `vfs/cache_commands.prefetch`) from its one option.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Hashable, Protocol

Entry = tuple["bytes | Parts", "dict | None"]  # the bytes, and their metadata (None: stored without)
# What a chunk's encoded bytes may be: bytes, a bytearray (a frame read in parts, filled in
# place) or a read-only memoryview (a client's own buffer, see Level.takes_buffers).
BYTES_LIKE = (bytes, bytearray, memoryview)


class Parts:
    """An entry a tier can read a byte range at a time (a tier across the network): `get`
    may answer one instead of the bytes. The engine reads the ranges a read needs while the
    whole entry comes behind it (partial.py). Like the tier, it never raises for its trouble."""

    size: int  # bytes of the entry's data
    # The data's bytes read so far (a bytearray of `size`): what `read` made present is
    # there, checked; the first page of the data at least comes with the entry's head.
    buffer: bytearray

    def read(self, start: int, stop: int) -> bool:
        """Make buffer[start:stop] present, each part checked; False when the tier cannot
        (gone, unreachable, damaged: counted and logged by the tier)."""
        raise NotImplementedError

    def whole(self) -> bytes | None:
        """The whole data, checked against the entry's checksum; None when the tier cannot."""
        raise NotImplementedError

    def later(self, job: Callable[[], None]) -> None:
        """Run job (which reads the whole entry) when the tier sees fit: off the readers' way."""
        job()


class Tier(Protocol):
    name: str  # its counters are `{name}_hits` and `{name}_misses` (counted by the engine)
    counters: tuple[str, ...]  # the tier's own counters, in stats.json
    local: bool  # on this machine: readahead may stage chunks in it (engine.stage)

    def attach(self, stats, held_in_memory: Callable[[Hashable, bytes], bool]) -> None:
        """Called once by the engine: the Stats to count in, and whether the memory cache holds
        these very bytes under a memory key (a write-behind counts only bytes held nowhere else)."""

    def holds(self, key: str) -> bool:
        """Cheaply, without waiting on anything remote: whether the entry is here (or on its
        way here). False is always a safe answer."""

    def get(self, key: str) -> Entry | None:
        """The entry, or None (a miss, a damaged entry, the tier in trouble)."""

    def claim(self, key: str) -> object:
        """Single-flight: wait until no one else (thread, process, node) fetches this chunk for
        this tier, and hold that right until `put` or `release`. Raises only for a reason the
        read itself must fail for."""

    def release(self, claim: object) -> None:
        """Give up a claim without storing anything."""

    def put(self, key: str, data: bytes, meta: dict | None, claim: object, memory_key: Hashable) -> None:
        """Store an entry behind the read (the tier decides when), then let go of `claim`."""

    def delete(self, key: str) -> None: ...

    def reading(self):
        """A context around each reader's request (a write-behind waits for reads to pause)."""

    def memory_changed(self, memory_key: Hashable) -> None:
        """The memory cache took in or let go of this chunk."""

    @property
    def backlog(self) -> int:
        """Bytes waiting to be written to this tier."""

    def flush(self, timeout: float | None = None) -> bool:
        """Write what waits now, and wait for it at most `timeout` seconds (unmount, prefetch,
        tests): whether everything was written."""

    def check(self) -> None:
        """At mount: log what an administrator should know of the tier (unreachable, misconfigured)."""


@contextmanager
def no_reading():
    yield
