"""What the cache needs from a level of a pyramid: adapters implement it (adapters/base.Level),
the engine and read_region name it. cache/ imports nothing from adapters/ or vfs/."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class ChunkedLevel(Protocol):
    """One array read in whole chunks, padded to `chunk_shape`."""

    shape: tuple[int, ...]
    dtype: np.dtype  # as decoded
    chunk_shape: tuple[int, ...]
    fill_value: object  # what a missing chunk holds
    cache_token: str  # changes when the array's metadata changes: names its chunks in every cache

    @property
    def chunk_nbytes(self) -> int: ...

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        """A key naming the encoded bytes of chunk `idx`, unique within this level."""
        ...

    def fetch_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        """Encoded bytes for each key, fetched concurrently; None where the chunk is missing."""
        ...

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        """One chunk's bytes as an array of exactly `chunk_shape`."""
        ...

    def blosc_frame(self, raw: bytes):
        """The bytes as a BloscFrame whose blocks decode alone, or None."""
        ...
