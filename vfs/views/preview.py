"""`preview.png`: an RGB picture of the image, its size known before any pixel is read.

The PNG holds its pixels in stored (uncompressed) deflate blocks, so the file's size
follows from the picture's width and height alone. The picture is rendered on first read
(middle z, first t, of the smallest level at least PREVIEW_SIZE on its long side) and kept.
"""

from __future__ import annotations

import struct
import threading
import zlib

import numpy as np

from ..tree.nodes import FileNode
from .planes import PlaneSource
from .view import View
from ..tree.virtualfile import Buffer, Segment, VirtualFile

PREVIEW_SIZE = 1024
STORED_BLOCK = 65535  # the most a stored deflate block holds
# Colours for channels that have none, in OMERO's usual order.
DEFAULT_COLORS = ("FF0000", "00FF00", "0000FF", "FF00FF", "FFFF00", "00FFFF", "FFFFFF")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAND_ROWS = 256


def preview_level(image) -> int:
    """The smallest level at least PREVIEW_SIZE on its long side (level 0 if none is)."""
    best = 0
    for i, level in enumerate(image.levels):
        src = PlaneSource(level, None)
        if max(src.height, src.width) >= PREVIEW_SIZE:
            best = i
    return best


def preview_shape(src: PlaneSource) -> tuple[int, int]:
    """(height, width) of the picture of a level: at most PREVIEW_SIZE on its long side."""
    f = min(1.0, PREVIEW_SIZE / max(src.height, src.width))
    return max(1, round(src.height * f)), max(1, round(src.width * f))


def png_size(height: int, width: int) -> int:
    raw = height * (1 + 3 * width)
    blocks = max(1, -(-raw // STORED_BLOCK))
    idat = 2 + raw + 5 * blocks + 4  # zlib header, stored blocks, Adler-32
    return len(PNG_SIGNATURE) + (12 + 13) + (12 + idat) + 12


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array (height, width, 3) as a PNG with stored deflate blocks."""
    height, width, _ = rgb.shape
    rows = np.empty((height, 1 + 3 * width), np.uint8)
    rows[:, 0] = 0  # filter: none
    rows[:, 1:] = rgb.reshape(height, 3 * width)
    raw = rows.tobytes()
    parts = [b"\x78\x01"]
    starts = range(0, max(1, len(raw)), STORED_BLOCK)
    for i, start in enumerate(starts):
        block = raw[start:start + STORED_BLOCK]
        final = 1 if i == len(starts) - 1 else 0
        parts.append(struct.pack("<BHH", final, len(block), 0xFFFF ^ len(block)) + block)
    parts.append(struct.pack(">I", zlib.adler32(raw)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def sampled_plane(src: PlaneSource, t: int, c: int, z: int, height: int, width: int) -> np.ndarray:
    """Plane (t, c, z) at the nearest pixels of a height x width grid, read one band of
    rows at a time (a chunk row, at most BAND_ROWS: never the whole plane at once)."""
    ys = ((np.arange(height) + 0.5) * src.height / height).astype(np.int64)
    xs = ((np.arange(width) + 0.5) * src.width / width).astype(np.int64)
    band = max(1, min(BAND_ROWS, src.level.chunk_shape[src.pos["y"]]))
    out = np.empty((height, width), src.dtype)
    for b in range(0, src.height, band):
        rows = np.flatnonzero((ys >= b) & (ys < b + band))
        if rows.size:
            y0, y1 = int(ys[rows[0]]), int(ys[rows[-1]]) + 1
            region = src.region(t, c, z, (y0, y1), (0, src.width))
            out[rows] = region[ys[rows] - y0][:, xs]
    return out


def _window(channel, values: np.ndarray) -> tuple[float, float]:
    window = (channel.window if channel is not None else None) or {}
    lo, hi = window.get("start"), window.get("end")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and hi > lo:
        return float(lo), float(hi)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.1, 99.9])
    return float(lo), float(hi)


def _rgb(hex6) -> np.ndarray | None:
    try:
        if isinstance(hex6, str) and len(hex6) == 6:
            return np.array([int(hex6[i:i + 2], 16) for i in (0, 2, 4)], np.float64) / 255
    except ValueError:
        pass
    return None


def render(image, level_index: int, engine) -> np.ndarray:
    """The picture as RGB uint8 (height, width, 3): the channels OMERO marks active (all
    when it marks none)."""
    src = PlaneSource(image.levels[level_index], engine)
    height, width = preview_shape(src)
    channels = list(range(src.nc))
    meta = [image.channels[c] if c < len(image.channels) else None for c in channels]
    active = [c for c in channels if meta[c] is None or meta[c].active is not False]
    shown = active or channels
    rgb = np.zeros((height, width, 3), np.float64)
    for n, c in enumerate(shown):
        values = sampled_plane(src, 0, c, src.nz // 2, height, width).astype(np.float64)
        lo, hi = _window(meta[c], values)
        norm = np.clip((values - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(values)
        norm[~np.isfinite(norm)] = 0
        if len(shown) == 1:
            color = np.ones(3)  # a single channel is greyscale
        else:
            color = _rgb(meta[c].color if meta[c] is not None else None)
            if color is None:
                color = _rgb(DEFAULT_COLORS[n % len(DEFAULT_COLORS)])
        rgb += norm[..., None] * color
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


class RenderedSegment(Segment):
    """Bytes made by `make()` on first read and kept."""

    def __init__(self, length: int, make):
        self.offset, self.length, self.make = 0, length, make
        self._data: bytes | None = None
        self._lock = threading.Lock()

    def read(self, rel: int, size: int) -> Buffer:
        with self._lock:
            if self._data is None:
                data = self.make()
                if len(data) != self.length:
                    raise ValueError(f"rendered {len(data)} bytes, planned {self.length}")
                self._data = data
        return self._data[rel:rel + size]


def unsupported_reason(image) -> str | None:
    if image.levels[0].dtype.kind not in "biuf":
        return f"no picture of dtype {image.levels[0].dtype}"
    src = PlaneSource(image.levels[preview_level(image)], None)
    if min(src.height, src.width, src.nc, src.nz) < 1:
        return "the image is empty"
    return None


class PreviewFile(FileNode):
    """`preview.png`; `about` is what info.json says of it."""

    def __init__(self, image, engine):
        index = preview_level(image)
        height, width = preview_shape(PlaneSource(image.levels[index], engine))
        size = png_size(height, width)
        make = lambda: png_bytes(render(image, index, engine))  # noqa: E731
        super().__init__(VirtualFile(size, [RenderedSegment(size, make)]), image.mtime)
        self.about = {"size": size, "level": f"s{index}", "width": width, "height": height}


PREVIEW = View("preview.png", lambda ctx: unsupported_reason(ctx.image), lambda ctx: PreviewFile(ctx.image, ctx.engine),
               lambda node, ctx: node.about)
