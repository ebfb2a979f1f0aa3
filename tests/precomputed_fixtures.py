"""Neuroglancer precomputed volumes written by tensorstore's neuroglancer_precomputed driver,
and what that driver reads back (the reference every plane is compared with)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorstore as ts

# Level 0 is not a multiple of the chunks: edge chunks (stored clipped) everywhere.
SIZES = [(45, 37, 11), (23, 19, 6)]  # x, y, z
CHUNK = (16, 16, 4)
SHARDINGS = {
    # identity hash, raw indices: several shards and minishards
    "identity": {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 1, "hash": "identity",
                 "minishard_bits": 2, "shard_bits": 1, "minishard_index_encoding": "raw", "data_encoding": "raw"},
    # what igneous and cloud-volume write: murmurhash and gzip
    "murmur": {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0, "hash": "murmurhash3_x86_128",
               "minishard_bits": 1, "shard_bits": 1, "minishard_index_encoding": "gzip", "data_encoding": "gzip"},
}
DATA_TYPES = {"raw": "uint16", "jpeg": "uint8", "png": "uint8", "compressed_segmentation": "uint64"}
# Several channels: other data types, so each encoding's every type is read somewhere.
MULTICHANNEL_TYPES = {"raw": "float32", "jpeg": "uint8", "png": "uint16", "compressed_segmentation": "uint32"}


def volume_pattern(size_xyz, channels: int, dtype: str, seed: int) -> np.ndarray:
    """Smooth images (JPEG keeps them close), or for uint32/uint64 few labels in blobs, x, y, z, c."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in size_xyz), indexing="ij")
    planes = []
    for c in range(channels):
        if dtype in ("uint32", "uint64"):
            v = (x // 5 + 7 * (y // 6) + 31 * (z // 2) + c + seed) % 9 + 2**40 * (c + 1) * (dtype == "uint64")
        else:
            v = 40 + 3 * x + 2 * y + 5 * z + 20 * c + seed
            if dtype == "uint16":
                v = v * 97 + 30000
            elif dtype == "float32":
                v = v / 7.0 - 3.5
        planes.append(v)
    return np.stack(planes, axis=-1).astype(dtype)


def write_volume(root: Path, encoding: str, sharding: str | dict | None = None, channels: int = 1,
                 kind: str | None = None, voxel_offset=(0, 0, 0), seed: int = 0, sizes=SIZES,
                 chunk=CHUNK) -> list[np.ndarray]:
    """A two-scale volume at `root`; returns each scale as tensorstore reads it, as
    (c,) z, y, x arrays (the order ngffmount shows)."""
    dtype = (MULTICHANNEL_TYPES if channels > 1 else DATA_TYPES)[encoding]
    kind = kind or ("segmentation" if encoding == "compressed_segmentation" else "image")
    kvstore = {"driver": "file", "path": str(root) + "/"}
    for i, size in enumerate(sizes):
        scale = {"size": list(size), "resolution": [4.0 * 2**i, 4.0 * 2**i, 40.0 * 2**i], "encoding": encoding,
                 "chunk_size": list(chunk), "voxel_offset": [o // 2**i for o in voxel_offset]}
        if encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = [8, 8, 2]
        if encoding == "jpeg":
            scale["jpeg_quality"] = 90
        if sharding:
            scale["sharding"] = SHARDINGS[sharding] if isinstance(sharding, str) else sharding
        store = ts.open({
            "driver": "neuroglancer_precomputed", "kvstore": kvstore, "scale_metadata": scale,
            "multiscale_metadata": {"type": kind, "data_type": dtype, "num_channels": channels},
        }, create=True, open=True).result()
        data = volume_pattern(size, channels, dtype, seed + i)
        store[ts.d[:].translate_to[0]][...] = data
        del store
    return read_back(root)


def read_back(root: Path) -> list[np.ndarray]:
    levels = []
    for i in range(len(json.loads((root / "info").read_text())["scales"])):
        store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(root) + "/"},
                         "scale_index": i}, read=True).result()
        xyzc = store[ts.d[:].translate_to[0]].read().result()
        czyx = np.transpose(xyzc, (3, 2, 1, 0))
        levels.append(czyx if czyx.shape[0] > 1 else czyx[0])
    return levels


def write_cloudvolume(root: Path, encoding: str, channels: int = 1, seed: int = 0, dtype: str | None = None) -> list[np.ndarray]:
    """The same two scales written by cloud-volume (its defaults: raw and compressed_segmentation
    chunks gzip-compressed, as `<name>.gz` files on a local disk); returns what cloud-volume
    reads back, as (c,) z, y, x arrays."""
    from cloudvolume import CloudVolume

    dtype = dtype or (MULTICHANNEL_TYPES if channels > 1 else DATA_TYPES)[encoding]
    kind = "segmentation" if encoding == "compressed_segmentation" else "image"
    info = CloudVolume.create_new_info(
        num_channels=channels, layer_type=kind, data_type=dtype, encoding=encoding, resolution=[4, 4, 40],
        voxel_offset=[6, 4, 2], chunk_size=list(CHUNK), volume_size=list(SIZES[0]),
        compressed_segmentation_block_size=[8, 8, 2] if kind == "segmentation" else None)
    url = f"file://{root}"
    vol = CloudVolume(url, info=info, progress=False)
    vol.add_scale([2, 2, 2], chunk_size=list(CHUNK), encoding=encoding)
    vol.commit_info()
    levels = []
    for mip in range(2):
        vol = CloudVolume(url, mip=mip, progress=False, fill_missing=False)
        vol[vol.bounds] = volume_pattern(tuple(int(n) for n in vol.volume_size), channels, dtype, seed + mip)
        xyzc = np.asarray(CloudVolume(url, mip=mip, progress=False)[vol.bounds])
        czyx = np.transpose(xyzc, (3, 2, 1, 0))
        levels.append(czyx if channels > 1 else czyx[0])
    return levels
