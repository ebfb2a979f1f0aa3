"""bdv.remote: cells from a BigDataViewer server (bigdataviewer-server CellHandler).

`?p=init` describes every setup's mipmap levels and each view's dimensions; a cell is
`?p=cell/<flat index>/<t>/<setup>/<level>/<dx>/<dy>/<dz>/<minx>/<miny>/<minz>`, answered
with the cell's big-endian uint16 samples, x fastest, clipped at the image edge. The
flat index counts cells x fastest, as RemoteImageLoader.getCellIndex does.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .base import Level, make_cache_token
from .bdv_xml import Setup, SpimData
from .errors import BadMetadata, ChunkReadError
from .storage import parse_json
from .urls import redact

SERVER_DTYPE = np.dtype(">u2")  # the server serves uint16 only


class RemoteLoader:
    def __init__(self, ctx, data: SpimData, where: str, server_url: str | None):
        base = server_url or (data.loader.findtext("baseUrl") or "").strip()
        if not base:
            raise BadMetadata(f"{where}: bdv.remote loader without a <baseUrl>")
        self.store = ctx.store(base)
        raw = self.store.get("?p=init")
        if raw is None:
            raise BadMetadata(f"{redact(base)}: the BigDataViewer server has no ?p=init")
        self.init = parse_json(raw, f"{base}?p=init")
        self.where = redact(base)
        self.mipmaps = self.init.get("perSetupMipmapInfo")
        if not isinstance(self.mipmaps, dict):
            raise BadMetadata(f"{self.where}?p=init has no perSetupMipmapInfo")
        self.dims = _dims_and_existence(self.init.get("dimsAndExistence"), self.where)

    def levels(self, t: int, setup: Setup, cal) -> list[Level]:
        info = self.mipmaps.get(str(setup.id))
        if not isinstance(info, dict):
            raise BadMetadata(f"{self.where}?p=init has no mipmap info for setup {setup.id}")
        resolutions, subdivisions = info.get("resolutions"), info.get("subdivisions")
        if not isinstance(resolutions, list) or not isinstance(subdivisions, list) or len(resolutions) != len(subdivisions):
            raise BadMetadata(f"{self.where}?p=init: setup {setup.id} resolutions and subdivisions do not match")
        levels = []
        for lv, (factors, cell) in enumerate(zip(resolutions, subdivisions)):
            view = self.dims.get((t, setup.id, lv))
            if view is None:
                break
            dims, block, exists = view
            if not exists:
                break  # the server reports a level it has no data for as 1x1x1, not existing
            scale, translation = cal.level(factors)
            levels.append(RemoteCellLevel(self.store, t, setup.id, lv, dims, block or cell, exists, cal.axes, scale, translation))
        return levels


def _dims_and_existence(value, where: str) -> dict[tuple[int, int, int], tuple[list[int], list[int] | None, bool]]:
    """(dimensions, cell grid, exists) per view level. Gson writes this map with complex keys
    as [[key, value], ...]. `blockSize`, when sent, is the grid the server cuts cells on
    (the HDF5 chunks); older servers send none, and then it is `subdivisions`."""
    if not isinstance(value, list):
        raise BadMetadata(f"{where}?p=init has no dimsAndExistence list")
    out = {}
    for pair in value:
        try:
            key, entry = pair
            dims, exists = [int(d) for d in entry["dimensions"]], bool(entry.get("exists", True))
            block = [int(b) for b in entry["blockSize"]] if entry.get("blockSize") else None
            out[(int(key["timepointId"]), int(key["setupId"]), int(key["level"]))] = (dims, block, exists)
        except (TypeError, ValueError, KeyError):
            raise BadMetadata(f"{where}?p=init: malformed dimsAndExistence entry {pair!r}") from None
    return out


class RemoteCellLevel(Level):
    def __init__(self, store, t: int, setup: int, level: int, dims, cell, exists: bool, axes, scale, translation):
        self.exists = exists
        if len(dims) != 3 or len(cell) != 3 or min(dims) <= 0 or min(cell) <= 0:
            raise BadMetadata(f"{store.url}?p=init: view t{t} s{setup} level {level} has dimensions {dims} and cells {cell}")
        self.store, self.t, self.setup, self.level = store, t, setup, level
        self.dims_xyz, self.cell_xyz = [int(d) for d in dims], [int(c) for c in cell]
        self.grid_xyz = [math.ceil(d / c) for d, c in zip(self.dims_xyz, self.cell_xyz)]
        self.path = f"t{t}/s{setup}/{level}"
        self.shape, self.chunk_shape = tuple(self.dims_xyz[::-1]), tuple(self.cell_xyz[::-1])
        self.dtype = SERVER_DTYPE
        self.axes, self.scale, self.translation = tuple(axes), tuple(scale), tuple(translation)
        self.fill_value = 0
        self.cache_token = make_cache_token(store.identity, {"view": self.path, "dims": self.dims_xyz, "cell": self.cell_xyz})

    layout_fixed = False  # each cell is its own request

    def _cell(self, idx: tuple[int, ...]) -> tuple[list[int], list[int]]:
        """Minimum and clipped size of cell `idx` (z, y, x), in x, y, z."""
        pos = list(idx[::-1])
        mins = [p * c for p, c in zip(pos, self.cell_xyz)]
        return mins, [min(c, d - m) for c, d, m in zip(self.cell_xyz, self.dims_xyz, mins)]

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        cx, cy, cz = idx[::-1]
        flat = cx + self.grid_xyz[0] * (cy + self.grid_xyz[1] * cz)
        mins, size = self._cell(idx)
        return "?p=cell/" + "/".join(str(v) for v in (flat, self.t, self.setup, self.level, *size, *mins))

    def fetch_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        if not self.exists:
            return {k: None for k in keys}
        return self.store.get_many(list(keys))

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        _, size = self._cell(idx)
        if len(raw) != math.prod(size) * 2:
            raise ChunkReadError(f"{self.store.url}: cell {self.chunk_key(idx)} has {len(raw)} bytes, expected {math.prod(size) * 2}")
        arr = np.frombuffer(raw, SERVER_DTYPE).reshape(size[::-1])
        if tuple(size[::-1]) == self.chunk_shape:
            return arr
        out = np.zeros(self.chunk_shape, SERVER_DTYPE)
        out[tuple(slice(0, n) for n in size[::-1])] = arr
        return out
