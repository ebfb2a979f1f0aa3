"""HDF5 files synthesized around on-demand pixels (docs/formats.md, "HDF5 synthesis").

h5py writes the file's metadata into a recording file object. Big datasets are contiguous,
allocated early and never filled, so HDF5 writes none of their bytes: the recording holds
only metadata, and each dataset's bytes are served from its ArrayView at the offset HDF5
chose. Building the header of a 1 TiB dataset takes milliseconds and a few KB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...adapters.fileobj import SeekableRaw
from ..views.arrays import ArrayView
from ..tree.virtualfile import PixelSegment, StaticSegment, VirtualFile

PAGE = 4096


class PageRecorder(SeekableRaw):
    """A sparse in-memory file: written pages are kept, everything else reads as zeros."""

    def __init__(self):
        self.pages: dict[int, bytearray] = {}

    def writable(self):
        return True

    def truncate(self, size=None):
        self.size = self.pos if size is None else size
        return self.size

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        pos, done = self.pos, 0
        while done < len(data):
            page, at = divmod(pos, PAGE)
            n = min(PAGE - at, len(data) - done)
            self.pages.setdefault(page, bytearray(PAGE))[at:at + n] = data[done:done + n]
            pos, done = pos + n, done + n
        self.pos = pos
        self.size = max(self.size, pos)
        return len(data)

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        pos, done = self.pos, 0
        while done < n:
            page, at = divmod(pos, PAGE)
            k = min(PAGE - at, n - done)
            stored = self.pages.get(page)
            view[done:done + k] = stored[at:at + k] if stored is not None else bytes(k)
            pos, done = pos + k, done + k
        self.pos = pos
        return n

    def flush(self):
        pass

    def runs(self):
        """(offset, bytes) for each run of consecutive written pages."""
        start = prev = None
        for page in sorted(self.pages):
            if start is None or page != prev + 1:
                if start is not None:
                    yield start * PAGE, b"".join(self.pages[p] for p in range(start, prev + 1))
                start = page
            prev = page
        if start is not None:
            yield start * PAGE, b"".join(self.pages[p] for p in range(start, prev + 1))


@dataclass
class Dataset:
    """A big dataset served on demand, or (`data` given) a small one written into the header."""

    path: str
    view: ArrayView | None = None
    data: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    dtype: np.dtype | None = None  # the HDF5 type, when it differs from the view's (BDV's int16)
    labels: list[str] | None = None  # dimension labels (HDF5 dimension scale API)


def hdf5_file(datasets: list[Dataset], group_attrs: dict[str, dict[str, Any]] | None = None) -> VirtualFile:
    import h5py

    recorder = PageRecorder()
    spans = []
    # v108 (the HDF5 1.8 format) keeps the file readable by the HDF5 1.10 tools.
    with h5py.File(recorder, "w", libver=("earliest", "v108")) as f:
        for path, attrs in (group_attrs or {}).items():
            group = f.require_group(path) if path not in ("", "/") else f
            for k, v in attrs.items():
                group.attrs[k] = v
        for ds in datasets:
            parent, _, name = ds.path.strip("/").rpartition("/")
            group = f.require_group(parent) if parent else f
            if ds.data is not None:
                node = group.create_dataset(name, data=ds.data)
            else:
                dtype = np.dtype(ds.dtype or ds.view.dtype)
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_layout(h5py.h5d.CONTIGUOUS)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
                space = h5py.h5s.create_simple(ds.view.shape)
                dsid = h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(dtype), space, dcpl=dcpl)
                spans.append((dsid.get_offset(), ds.view))
                node = group[name]
            for k, v in ds.attrs.items():
                node.attrs[k] = v
            for dim, label in zip(node.dims, ds.labels or []):
                dim.label = label
    size = max([recorder.size] + [a + v.nbytes for a, v in spans])
    segments = []
    holes = sorted((offset, offset + view.nbytes) for offset, view in spans if view.nbytes)
    for offset, data in recorder.runs():
        end = min(size, offset + len(data))  # the last page is padded past the end of file
        segments += [StaticSegment(a, data[a - offset:b - offset]) for a, b in _minus(offset, end, holes)]
    for offset, view in spans:
        if view.nbytes:
            segments.append(PixelSegment(offset, 1, view.nbytes, lambda _i, a, b, out=None, v=view: v.read(a, b, out)))
    return VirtualFile(size, segments)


def _minus(start: int, stop: int, holes: list[tuple[int, int]]):
    """[start, stop) without the holes (pages that share bytes with a dataset's raw data)."""
    pos = start
    for a, b in holes:
        if b <= pos or a >= stop:
            continue
        if a > pos:
            yield pos, a
        pos = max(pos, b)
    if pos < stop:
        yield pos, stop
