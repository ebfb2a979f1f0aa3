"""The nodes of the mounted tree: directories and files, some built lazily."""

from __future__ import annotations

import re
import threading
from typing import Callable, Iterable

from .virtualfile import StaticSegment, VirtualFile


class Node:
    mtime: float = 0.0


class FileNode(Node):
    """A file whose size is known up front; its content comes from a VirtualFile."""

    dynamic = False  # True: content changes, so the kernel must not cache it

    def __init__(self, vfile: VirtualFile, mtime: float):
        self.vfile, self.mtime = vfile, mtime

    @property
    def size(self) -> int:
        return self.vfile.size

    def open(self) -> VirtualFile:
        return self.vfile


class LazyFile(FileNode):
    """A file whose layout is built on first use (HDF5 headers of many datasets)."""

    def __init__(self, build: Callable[[], VirtualFile], mtime: float):
        self.build, self.mtime = build, mtime
        self._vfile: VirtualFile | None = None
        self._lock = threading.Lock()

    @property
    def vfile(self) -> VirtualFile:
        with self._lock:
            if self._vfile is None:
                self._vfile = self.build()
            return self._vfile


def static_file(data: bytes, mtime: float) -> FileNode:
    return FileNode(VirtualFile(len(data), [StaticSegment(0, data)]), mtime)


class DynamicFile(FileNode):
    """Content made at open time (stats.json). Its size is that of a fresh snapshot."""

    dynamic = True

    def __init__(self, render: Callable[[], bytes], mtime: float):
        self.render, self.mtime = render, mtime

    @property
    def size(self) -> int:
        return len(self.render())

    def open(self) -> VirtualFile:
        data = self.render()
        return VirtualFile(len(data), [StaticSegment(0, data)])


class DirNode(Node):
    def __init__(self, mtime: float, entries: dict[str, Node] | None = None):
        self.mtime = mtime
        self.entries: dict[str, Node] = dict(entries or {})

    def names(self) -> Iterable[str]:
        return self.entries.keys()

    def child(self, name: str) -> Node | None:
        return self.entries.get(name)


class LazyDir(DirNode):
    """A directory built on first use: a group of thousands of images (BigDataViewer
    timepoints) mounts at once, and each image's views are made when someone looks."""

    def __init__(self, mtime: float, build: Callable[[], DirNode]):
        super().__init__(mtime)
        self._build: Callable[[], DirNode] | None = build
        self._lock = threading.Lock()

    def _built(self) -> dict[str, Node]:
        if self._build is not None:
            with self._lock:
                if self._build is not None:
                    self.entries = self._build().entries
                    self._build = None
        return self.entries

    def names(self) -> Iterable[str]:
        return self._built().keys()

    def child(self, name: str) -> Node | None:
        return self._built().get(name)


class PlaneDir(DirNode):
    """One single-plane TIFF per (t, c, z), named and built on demand from the plane counts.
    `letter` names the axis the files step along (z; y or x for orthogonal planes)."""

    def __init__(self, layout, mtime: float, letter: str = "z"):
        super().__init__(mtime)
        self.layout, self.letter = layout, letter
        src = layout.src
        self.counts = (src.nt, src.nc, src.nz)
        self.simple = not (src.has_axis("t") or src.has_axis("c"))
        self.widths = (max(5, len(str(src.nt - 1))), max(3, len(str(src.nc - 1))), max(5, len(str(src.nz - 1))))
        t, c, z = self.widths
        self._pattern = re.compile(rf"{letter}(\d{{{z}}})\.tif" if self.simple else rf"t(\d{{{t}}})_c(\d{{{c}}})_{letter}(\d{{{z}}})\.tif")
        self._header = layout.plane_header()
        # Image Sequence readers open the files in name order: read ahead across files.
        self._readahead = src.readahead(src.tcz)
        self.file_size = self._header.size

    def plane_name(self, t: int, c: int, z: int) -> str:
        wt, wc, wz = self.widths
        if self.simple:
            return f"{self.letter}{z:0{wz}d}.tif"
        return f"t{t:0{wt}d}_c{c:0{wc}d}_{self.letter}{z:0{wz}d}.tif"

    def names(self) -> Iterable[str]:
        nt, nc, nz = self.counts
        return (self.plane_name(t, c, z) for t in range(nt) for c in range(nc) for z in range(nz))

    def child(self, name: str) -> Node | None:
        m = self._pattern.fullmatch(name)
        if m is None:
            return None
        tcz = (0, 0, int(m.group(1))) if self.simple else tuple(int(g) for g in m.groups())
        if any(i >= n for i, n in zip(tcz, self.counts)):
            return None
        t, c, z = tcz
        index = (t * self.counts[1] + c) * self.counts[2] + z
        on_read = lambda: self._readahead.observe(index)  # noqa: E731
        return FileNode(self.layout.plane_file(t, c, z, header=self._header, on_read=on_read), self.mtime)
