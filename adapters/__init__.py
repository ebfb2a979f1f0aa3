"""Source adapters: each turns a URL into a tree of images (docs/architecture.md, "The interfaces").

Which formats there are, and in which order they are tried: adapters/registry.py.
"""

from __future__ import annotations

from .base import Axis, Channel, Group, Image, Level
from .errors import BadMetadata, ChunkReadError, NgffMountError, NotAnImage, SourceNotFound, Unsupported
from .registry import open_source
from .storage import storage_options_for
from .urls import normalize_url, redact

__all__ = [
    "Axis", "BadMetadata", "Channel", "ChunkReadError", "Group", "Image", "Level", "NgffMountError",
    "NotAnImage", "SourceNotFound", "Unsupported", "open_source", "normalize_url", "redact",
    "storage_options_for",
]
