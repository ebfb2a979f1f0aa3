"""What the cache needs from a level of a pyramid: adapters implement it (adapters/base.Level),
the engine and read_region name it. The protocol keeps cache/ from depending on adapters/'
classes (it takes only their error types, the read deadline and fetch versions)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class ChunkedLevel(Protocol):
    """One array read in whole chunks, padded to `chunk_shape`."""

    path: str  # within the source, for messages
    shape: tuple[int, ...]
    dtype: np.dtype  # as decoded
    chunk_shape: tuple[int, ...]
    fill_value: object  # what a missing chunk holds
    cache_token: str  # changes when the array's metadata changes: names its chunks in every cache
    layout_fixed: bool  # where chunks lie is read once per mount: a changed chunk needs a remount

    @property
    def chunk_nbytes(self) -> int: ...

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        """A key naming the encoded bytes of chunk `idx`, unique within this level."""
        ...

    def fetch_versioned(self, key: str, condition: dict | None = None) -> tuple[bytes | None, dict | None]:
        """One chunk's bytes (None if missing) and the version the source gave them; with
        `condition`, only if changed since (else the adapter's NotModified)."""
        ...

    def forget_layout(self) -> bool:
        """Read where chunks lie again on the next fetch; whether there was anything to forget."""
        ...

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        """One chunk's bytes as an array of exactly `chunk_shape`."""
        ...

    def blosc_frame(self, raw: bytes):
        """The bytes as a BloscFrame whose blocks decode alone, or None."""
        ...
