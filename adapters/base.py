"""The adapter interfaces: Level, Image and Group (see ARCHITECTURE.md, interfaces 1 and 2)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

AXIS_TYPES = ("time", "channel", "space")


@dataclass(frozen=True)
class Axis:
    name: str
    type: str  # "time", "channel" or "space"
    unit: str | None = None


class Level:
    """One array of a pyramid. Data comes in whole chunks, padded to `chunk_shape`.

    Subclasses set the attributes in __init__ and implement the three chunk methods.
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
    """Hash of (source URL without credentials, array metadata): a changed array gets a new token."""
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


UNIT_NAMES = {
    "nm": "nanometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "mm": "millimeter", "m": "meter", "s": "second", "ms": "millisecond",
}
NO_UNIT = ("pixel", "pixels", "px")


def unit_name(u) -> str | None:
    """A unit as NGFF names it (UDUNITS-2), from the abbreviations other formats use."""
    if not isinstance(u, str) or not u.strip() or u.strip().lower() in NO_UNIT:
        return None
    u = u.strip()
    return UNIT_NAMES.get(u, u)
