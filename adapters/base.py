"""The adapter interfaces: Level, Image and Group (docs/architecture.md, "The interfaces")."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .lru import LoadOnce

AXIS_TYPES = ("time", "channel", "space")

# -- limits every adapter applies to a level -----------------------------------------------
# Bounds that keep every offset a 64-bit number and every chunk decodable in memory.
MAX_ARRAY_BYTES = 2**60
MAX_CHUNK_BYTES = 2**31


@dataclass(frozen=True)
class Axis:
    name: str
    type: str  # "time", "channel" or "space"
    unit: str | None = None


class Level:
    """One array of a pyramid. Data comes in whole chunks, padded to `chunk_shape`.

    Subclasses set the attributes in __init__ and implement the three chunk methods. This is
    what cache/level.ChunkedLevel, the engine's view of a level, asks for.
    """

    path: str  # relative path of the array in the source
    shape: tuple[int, ...]
    dtype: np.dtype  # as decoded (byte order as stored)
    chunk_shape: tuple[int, ...]
    axes: tuple[Axis, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    fill_value: object
    cache_token: str

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        """A key naming the encoded bytes of chunk `idx`, unique within this level."""
        raise NotImplementedError

    def fetch_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        """Encoded bytes for each key, fetched concurrently; None where the chunk is missing.

        Raises ChunkReadError when a fetch fails for another reason.
        """
        raise NotImplementedError

    def fetch_versioned(self, key: str, condition: dict | None = None) -> tuple[bytes | None, dict | None]:
        """One chunk's bytes (None if missing) and the version the store gave them (see
        storage.SourceVersion, as a dict; None when nothing was fetched). With `condition`
        (such a dict), the fetch is conditional on it: raises storage.NotModified on a 304."""
        from .storage import SourceVersion, observe

        with observe(SourceVersion(**condition) if condition else None, self.takes_buffers) as seen:
            data = self.fetch_many([key])[key]
        return data, None if seen.version is None else seen.version.as_dict()

    # Whether fetch_versioned may hand on the client's read-only buffer (a memoryview) instead
    # of bytes: levels whose decoding takes any buffer say True (no copy of every chunk).
    takes_buffers = False
    # Whether where chunks lie is read once per mount (an HDF5 file's chunk index), so that a
    # chunk found changed means the level can only be read again after a remount. Levels whose
    # chunks are whole objects, or that re-read their layout (forget_layout), say False.
    layout_fixed = True
    # Where chunks lie inside shards, read from the source and kept: what forget_layout drops.
    shard_indexes: LoadOnce | None = None

    def forget_layout(self) -> bool:
        """Forget where chunks lie, where that was read from the source (shard indices), so the
        next fetches read it again. Whether there was anything to forget."""
        if self.shard_indexes is None:
            return False
        self.shard_indexes.clear()
        return True

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        """Decode one chunk's bytes into an array of exactly `chunk_shape`."""
        raise NotImplementedError

    def blosc_frame(self, raw: bytes):
        """The chunk's bytes as a BloscFrame when they are one c-blosc frame holding the
        chunk in C order (so its blocks can be decoded alone), else None."""
        return None

    @property
    def chunk_nbytes(self) -> int:
        n = 1
        for c in self.chunk_shape:  # Python ints: a hostile chunk shape must not overflow
            n *= c
        return n * self.dtype.itemsize

    @property
    def array_nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def beyond_limits(self) -> bool:
        """Larger than MAX_ARRAY_BYTES, or chunks larger than MAX_CHUNK_BYTES."""
        return self.array_nbytes > MAX_ARRAY_BYTES or self.chunk_nbytes > MAX_CHUNK_BYTES


@dataclass
class Channel:
    label: str | None = None
    color: str | None = None  # 6 hex digits
    window: Mapping[str, float] | None = None
    active: bool | None = None  # OMERO: shown by default


@dataclass
class Image:
    """A named multiscale pyramid; levels[0] is full resolution."""

    name: str
    levels: list[Level]
    channels: list[Channel] = field(default_factory=list)
    source_url: str = ""  # without credentials
    format: str = ""  # e.g. "OME-Zarr 0.4"
    mtime: float = 0.0  # stable: from the source, never "now"
    labels: dict[str, "Image"] = field(default_factory=dict)  # OME-Zarr labels/<name>


@dataclass
class Group:
    """A group of the source tree: images and subgroups, at relative paths."""

    name: str
    images: dict[str, Image] = field(default_factory=dict)
    groups: dict[str, "Group"] = field(default_factory=dict)
    format: str = ""

    def add(self, path: str, image: Image) -> None:
        """Put an image at a relative path ("B/03/0"), making the groups on the way."""
        *parents, leaf = path.strip("/").split("/")
        group = self
        for part in parents:
            group = group.groups.setdefault(part, Group(part))
        group.images[leaf] = image


def make_cache_token(source_identity: str, array_metadata: Mapping) -> str:
    """Hash of (source URL without credentials, array metadata): a changed array gets a new token.
    Chunks rewritten under unchanged metadata keep it (they are revalidated, see --revalidate)."""
    doc = json.dumps({"url": source_identity, "meta": array_metadata}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def inferred_axes(ndim: int) -> list[Axis]:
    """Axes for arrays that name none: the last 2-3 are space (z, y, x), then c, then t."""
    from .errors import Unsupported

    names = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}.get(ndim)
    if names is None:
        raise Unsupported(f"{ndim}-dimensional arrays are not supported as images (2 to 5 dimensions)")
    kinds = {"t": "time", "c": "channel"}
    return [Axis(n, kinds.get(n, "space")) for n in names]

