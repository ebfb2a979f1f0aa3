"""Shared fixtures. Unit tests build stores on local disk; integration tests add real mounts
and loopback servers (tests/servers.py)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).parent))

from ngffmount.adapters import open_source  # noqa: E402
from ngffmount.cache.engine import ChunkEngine  # noqa: E402
from ngffmount.adapters.fileobj import SeekableRaw  # noqa: E402
from ngffmount.vfs.fuse.paths import VirtualFS  # noqa: E402
from ngffmount.vfs.tree.build import build_tree  # noqa: E402


def vfs_for(url: str, storage_options=None, engine=None) -> VirtualFS:
    source = open_source(url, storage_options)
    return VirtualFS(build_tree(source, engine or ChunkEngine(memory_bytes=64 << 20)))


def read_all(fs: VirtualFS, path: str) -> bytes:
    return fs.read(path, fs.getattr(path)["st_size"], 0)


def walk_files(fs: VirtualFS, path: str = "/"):
    """Every file path under `path` in a VirtualFS."""
    for name in fs.readdir(path):
        child = f"{path.rstrip('/')}/{name}"
        if fs.getattr(child)["st_mode"] & 0o040000:
            yield from walk_files(fs, child)
        else:
            yield child


class VirtualReader(SeekableRaw):
    """A read-only file object over a VirtualFS path: readers fetch only the bytes they seek to."""

    def __init__(self, fs: VirtualFS, path: str):
        self.fs, self.path = fs, path
        self.size = fs.getattr(path)["st_size"]

    def read_at(self, offset, length):
        return self.fs.read(self.path, length, offset)


def tiff_array(data: bytes) -> np.ndarray:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return tif.asarray()


def imagej_order(arr: np.ndarray, axes: str) -> np.ndarray:
    """Reorder a source array to ImageJ's stack order (channel fastest, then z, then t)."""
    present = [a for a in "tzcyx" if a in axes]
    out = np.transpose(arr, [axes.index(a) for a in present])
    return out.reshape((-1, out.shape[-2], out.shape[-1]))


def ngffmount_cmd(*args, check=True, timeout=120, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "ngffmount.vfs.command.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ngffmount {' '.join(args)} failed: {result.stderr}")
    return result


def kill_hard(pid: int, timeout: float = 10.0) -> None:
    """kill -9, then wait until the process is gone (the kernel drops the FUSE connection then)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def mounted(source: str, mountpoint: Path, *extra: str):
    """A real FUSE mount through the CLI, always unmounted afterwards."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    ngffmount_cmd("mount", source, str(mountpoint), *extra)
    try:
        yield mountpoint
    finally:
        subprocess.run(["fusermount", "-u", str(mountpoint)], capture_output=True)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount", "-uz", str(mountpoint)], capture_output=True)


@pytest.fixture
def cache_args(tmp_path) -> list[str]:
    """A private disk cache per test, so tests never share cached chunks."""
    return ["--cache-dir", str(tmp_path / f"cache-{uuid.uuid4().hex[:8]}")]


@pytest.fixture
def tiny_store(tmp_path):
    """A 3 x 16 x 16 uint16 OME-Zarr on local disk, its pixels, and an empty mountpoint."""
    from zarr_fixtures import pattern, write_ome_zarr

    data = pattern((3, 16, 16), "uint16")
    write_ome_zarr(tmp_path / "img.zarr", data, "zyx", levels=1)
    (tmp_path / "mnt").mkdir()
    return tmp_path / "img.zarr", data, tmp_path / "mnt"


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    from servers import RangeHTTPServer

    root = tmp_path_factory.mktemp("www")
    with RangeHTTPServer(str(root), listing=False) as server:
        server.www = root
        yield server


@pytest.fixture(scope="session")
def s3_server():
    from servers import MotoS3Server

    with MotoS3Server() as server:
        yield server
