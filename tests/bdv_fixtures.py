"""BigDataViewer test stores, written by third-party writers where one exists.

- `write_bdv_hdf5` / `write_bdv_n5`: pybdv (`pybdv.make_bdv`), one call per view. pybdv writes
  N5 with z5py. The expected arrays are read back from the files (h5py / z5py), so they are
  what was really written, downsampled levels included.
- `write_partitioned_bdv_hdf5`: pybdv cannot write partitions. The files are laid out the way
  bdv-core's `WriteSequenceToHdf5.writeHdf5PartitionFile` / `writeHdf5PartitionLinkFile` and
  `Partition.split` lay them out, written with h5py. pybdv writes the XML, and ElementTree adds
  the `<partition>` elements as `XmlIoHdf5ImageLoader.partitionToXml` writes them.
- `write_sample_platy_hdf5` / `write_sample_platy_n5`: the real platybrowser XMLs from
  tests/data/samples/bdv, copied byte for byte. Each store is declared at its full size, but only
  a few chunks are written. The expected values come back as `SparseVolume`s.

Every function returns `(xml_path, expected)`. `expected` maps `(timepoint, setup, level)` to a
z,y,x array (a `SparseVolume` for the samples) in the dtype a user should see. Legacy int16
cells without a `dataType` attribute are uint16. With a `dataType` attribute, the cells are that
type.

Layout facts (checked in pybdv 0.6.0 and bigdataviewer-core @ 19911bd6):
- pybdv 0.6.0 writes every dataset with h5py/z5py `compression="gzip"`. It has no option for
  anything else. For HDF5 it maps uint16 to int16 (`convert_to_bdv_dtype`). uint8 stays uint8,
  and float32 stays float32. It writes NO `sNN@dataType` attribute, for any dtype. It writes
  `sNN/resolutions` as float32 and `sNN/subdivisions` as int64. Java writes float64 and int32.
  Downsampled shapes are floored (`sample_shape`). A downsampled level's chunks are
  `min(level shape, previous level's chunks)`.
- The bdv-core export (`HDF5Access.createDataset`, since 10.4.7) writes uint16 as real uint16
  plus `sNN@dataType="uint16"`. Readers know the attribute since 10.4.6 (bfa60e7b). Before that,
  the export wrote int16 with no attribute.
  Its integer cells use JHDF5 `INT_AUTO_SCALING_DEFLATE`: the HDF5 scale-offset filter
  (H5Z_SO_INT, minbits 0 = auto), then deflate level 6. Floats use shuffle, then deflate. With
  deflate off, it uses no filter (legacy: scale-offset only). `compression="java"` reproduces
  this.
- Partition files are named `<master base>-TT-SS.h5`, where TT/SS are the index of the
  timepoint/setup *batch* (`Partition.split`), not ids. Links live at the cells datasets: master
  `tTTTTT/sSS/L/cells` is an external link to (partition path relative to the master's folder,
  `tTTTTT/sSS/L/cells` with the partition's ids and no leading slash). Each partition file also
  holds `sSS/resolutions`, `sSS/subdivisions` (and `sSS@dataType`) for its setups.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

SAMPLES = Path(__file__).parent / "data" / "samples" / "bdv"
HDF5_SAMPLE = "platybrowser-prospr-AChE-MED.bdv-hdf5.xml"
N5_SAMPLE = "platybrowser-sbem-6dpf-1-whole-raw.bdv-n5.xml"

# uint16 views start here so that half the values are >= 32768 (negative as int16 bits)
UINT16_BASE = 30000


# -- deterministic pixels ------------------------------------------------------------------------


def pattern_at(start, shape, dtype, seed: int = 0) -> np.ndarray:
    """`zarr_fixtures.pattern` at a given origin: the value depends on the global position, so a
    region cut out of a big declared volume shows a misplaced byte."""
    grids = np.indices(shape, dtype=np.int64)
    value = np.int64(seed)
    n = len(shape)
    for i, (g, s0) in enumerate(zip(grids, start)):
        value = value + (g + int(s0)) * (7 ** (n - 1 - i) + 13 * i)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (value * 0.25 - 1000).astype(dtype)
    info = np.iinfo(dtype)
    return (value % (int(info.max) - int(info.min) + 1) + int(info.min)).astype(dtype)


def view_data(shape, dtype, t: int, s: int, seed: int = 0) -> np.ndarray:
    """The full-resolution pixels of view (t, s): different for every view."""
    dtype = np.dtype(dtype)
    base = UINT16_BASE if dtype == np.uint16 else 0
    return pattern_at((0,) * len(shape), shape, dtype, seed=base + seed + 1000 * t + 100 * s)


def relative_factors(levels: int) -> list[list[int]]:
    """pybdv `downscale_factors` (z,y,x, each relative to the previous level)."""
    return [[1, 2, 2]] + [[2, 2, 2]] * max(0, levels - 2) if levels > 1 else []


def absolute_factors(levels: int) -> list[list[int]]:
    """Per-level factors relative to level 0, z,y,x."""
    out = [[1, 1, 1]]
    for f in relative_factors(levels):
        out.append([a * b for a, b in zip(out[-1], f)])
    return out


# -- expected values for mostly-empty stores -----------------------------------------------------


@dataclass
class SparseVolume:
    """Expected content of a big declared array where only a few blocks were written: zeros
    everywhere except `blocks` ((z,y,x) origin, array). Index it like a numpy array (ints and
    step-1 slices) to get the expected values of a region."""

    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: list[tuple[tuple[int, ...], np.ndarray]] = field(default_factory=list)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def region(self, start, stop) -> np.ndarray:
        out = np.zeros([b - a for a, b in zip(start, stop)], self.dtype)
        for origin, arr in self.blocks:
            lo = [max(a, o) for a, o in zip(start, origin)]
            hi = [min(b, o + n) for b, o, n in zip(stop, origin, arr.shape)]
            if all(l < h for l, h in zip(lo, hi)):
                dst = tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, start))
                src = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, origin))
                out[dst] = arr[src]
        return out

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        start, stop, squeeze = [], [], []
        for i, (k, n) in enumerate(zip(key, self.shape)):
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if k < 0 else int(k)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} out of range for axis {i} of size {n}")
                start.append(k), stop.append(k + 1), squeeze.append(i)
            else:
                a, b, step = k.indices(n)
                if step != 1:
                    raise IndexError("SparseVolume supports step-1 slices only")
                start.append(a), stop.append(max(a, b))
        out = self.region(start, stop)
        return out.squeeze(axis=tuple(squeeze)) if squeeze else out

    def __array__(self, dtype=None, copy=None):
        out = self.region((0,) * self.ndim, self.shape)
        return out if dtype is None else out.astype(dtype)


# -- helpers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """pybdv prints progress (print + tqdm) and warns when it adds a view to an existing setup."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


BDV_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")


def visible_dtype(stored: np.dtype, data_type: str | None) -> np.dtype:
    """What a user sees: the `dataType` attribute if present, else uint16 for legacy int16."""
    if data_type is not None:
        return np.dtype(data_type)
    return np.dtype("uint16") if stored == np.int16 else stored


def _attr_str(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def read_hdf5_views(h5_path, views, levels: int) -> dict:
    """{(t, s, level): array} read from a bdv.hdf5 master file (links followed), as users see it."""
    out = {}
    with h5py.File(h5_path, "r") as f:
        for t, s in views:
            data_type = _attr_str(f[f"s{s:02d}"].attrs.get("dataType"))
            for lv in range(levels):
                arr = f[f"t{t:05d}/s{s:02d}/{lv}/cells"][()]
                out[(t, s, lv)] = arr.view(visible_dtype(arr.dtype, data_type))
    return out


def _fixed_string(value: str) -> np.bytes_:
    """JHDF5 `string().setAttr` writes a fixed-length string of the value's length."""
    return np.bytes_(value.encode("ascii"))


H5_FILTERS = {"gzip", "java", None}


def _h5_filter_kwargs(compression, dtype) -> dict:
    """h5py create_dataset filter options. "java" is JHDF5 INT_AUTO_SCALING_DEFLATE (integers) /
    FLOAT_SHUFFLE_DEFLATE (floats), as bdv-core's HDF5 export creates cells datasets."""
    if compression not in H5_FILTERS:
        raise ValueError(f"compression must be one of {H5_FILTERS}, got {compression!r}")
    if compression is None:
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 6}
    if np.dtype(dtype).kind in "iu":
        return {"scaleoffset": 0, "compression": "gzip", "compression_opts": 6}
    return {"shuffle": True, "compression": "gzip", "compression_opts": 6}


def _rewrite_h5_cells(h5_path, views, levels: int, compression) -> None:
    """Re-create pybdv's gzip cells datasets with other filters (same dtype, shape and chunks)."""
    with h5py.File(h5_path, "a") as f:
        for t, s in views:
            for lv in range(levels):
                key = f"t{t:05d}/s{s:02d}/{lv}/cells"
                old = f[key]
                data, chunks = old[()], old.chunks
                del f[key]
                f.create_dataset(key, data=data, chunks=chunks, **_h5_filter_kwargs(compression, data.dtype))


def _pybdv_views(out_path, shape=(20, 70, 90), *, setups: int = 2, timepoints: int = 2, dtype="uint16",
                 levels: int = 3, resolution=(2.0, 0.5, 0.5), unit: str = "micrometer", chunks=(16, 32, 32),
                 seed: int = 0, downscale_mode: str = "nearest", setup_names=None) -> list[tuple[int, int]]:
    """Every (timepoint, setup) view written by pybdv.make_bdv, in z,y,x (the options the
    bdv.hdf5 and bdv.n5 writers share). Returns the views."""
    import pybdv

    for s in range(setups):
        for t in range(timepoints):
            data = view_data(shape, dtype, t, s, seed)
            with _quiet():
                pybdv.make_bdv(
                    data, str(out_path),
                    downscale_factors=relative_factors(levels) or None,
                    downscale_mode=downscale_mode,
                    resolution=list(resolution), unit=unit,
                    setup_id=s, timepoint=t,
                    setup_name=None if setup_names is None else setup_names[s],
                    attributes={"channel": {"id": s}},
                    chunks=tuple(chunks),
                )
    return [(t, s) for t in range(timepoints) for s in range(setups)]


# -- 1. bdv.hdf5 through pybdv ---------------------------------------------------------------------


def write_bdv_hdf5(
    dir,
    shape=(20, 70, 90),
    *,
    compression: str | None = "gzip",
    data_type_attr: bool = False,
    name: str = "dataset",
    **options,
) -> tuple[Path, dict]:
    """A bdv.hdf5 dataset `dir/<name>.xml` + `dir/<name>.h5` written by `pybdv.make_bdv`.

    shape/resolution/chunks are z,y,x. The default shape is not a multiple of the chunks.
    Levels: [1,1,1], [1,2,2], [2,4,4], ... (z,y,x), floored as pybdv does.
    compression: "gzip" leaves pybdv's own output as it is. None and "java" (scale-offset +
    deflate, as bdv-core's export) re-create each cells dataset with h5py, with the same chunks.
    data_type_attr: add `sNN@dataType` (bdv-core >= 10.4.6 reads it). pybdv writes none. So
    without it, a uint8/float32 setup is only described by its stored dtype.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    h5_path = dir / f"{name}.h5"
    views = _pybdv_views(h5_path, shape, **options)
    levels = options.get("levels", 3)
    if compression != "gzip":
        _rewrite_h5_cells(h5_path, views, levels, compression)
    if data_type_attr:
        with h5py.File(h5_path, "a") as f:
            for s in sorted({s for _, s in views}):
                f[f"s{s:02d}"].attrs["dataType"] = _fixed_string(np.dtype(options.get("dtype", "uint16")).name)
    return dir / f"{name}.xml", read_hdf5_views(h5_path, views, levels)


# -- 2. bdv.n5 through pybdv (z5py) ----------------------------------------------------------------


def read_n5_views(n5_path, views, levels: int) -> dict:
    import z5py

    out = {}
    f = z5py.File(str(n5_path), "r")
    for t, s in views:
        for lv in range(levels):
            out[(t, s, lv)] = f[f"setup{s}/timepoint{t}/s{lv}"][:]
    return out


def write_bdv_n5(
    dir,
    shape=(20, 70, 90),
    *,
    compression: str | None = "gzip",
    name: str = "dataset",
    **options,
) -> tuple[Path, dict]:
    """A bdv.n5 dataset `dir/<name>.xml` + `dir/<name>.n5` (setupN/timepointN/sN) written by
    `pybdv.make_bdv` through z5py. It holds the native dtype, with no int16 mapping. The setup
    group gets `downsamplingFactors` + `dataType`. The timepoint group gets `multiScale` +
    `resolution`, and each level gets `downsamplingFactors`. pybdv writes gzip
    (`{"type":"gzip","level":5}`, gzip not zlib). compression=None re-creates the datasets raw
    with z5py."""
    import z5py

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    n5_path = dir / f"{name}.n5"
    views = _pybdv_views(n5_path, shape, **options)
    levels = options.get("levels", 3)
    if compression not in ("gzip", None):
        raise ValueError("compression must be 'gzip' or None")
    if compression is None:
        f = z5py.File(str(n5_path), "a")
        for t, s in views:
            g = f[f"setup{s}/timepoint{t}"]
            for lv in range(levels):
                old = g[f"s{lv}"]
                data, ch, attrs = old[:], old.chunks, dict(old.attrs)
                del g[f"s{lv}"]
                new = g.create_dataset(f"s{lv}", data=data, chunks=ch, compression="raw")
                for k, v in attrs.items():
                    if k not in ("dimensions", "blockSize", "dataType", "compression", "compressionType"):
                        new.attrs[k] = v
    return dir / f"{name}.xml", read_n5_views(n5_path, views, levels)


# -- 3. partitioned bdv.hdf5 (bdv-core layout, h5py) -----------------------------------------------


def _split(n: int, per: int) -> list[list[int]]:
    """Partition.split: batches of `per` consecutive indices (all in one batch if per <= 0)."""
    if per <= 0:
        return [list(range(n))]
    return [list(range(a, min(a + per, n))) for a in range(0, n, per)]


def write_partitioned_bdv_hdf5(
    dir,
    shape=(20, 70, 90),
    *,
    setups: int = 2,
    timepoints: int = 2,
    dtype="uint16",
    levels: int = 3,
    resolution=(2.0, 0.5, 0.5),
    unit: str = "micrometer",
    chunks=(16, 32, 32),
    timepoints_per_partition: int = 1,
    setups_per_partition: int = 1,
    compression: str | None = "gzip",
    legacy: bool = True,
    remap_ids: bool = False,
    name: str = "dataset",
    seed: int = 0,
) -> tuple[Path, dict]:
    """A bdv.hdf5 dataset split into partition files, as bdv-core's export writes it.

    Files: `dir/<name>.xml`, the master `dir/<name>.h5` and `dir/<name>-TT-SS.h5` per (timepoint
    batch, setup batch). The master holds `sSS/resolutions` (float64 [levels][3], x,y,z) and
    `sSS/subdivisions` (int32, x,y,z). It also holds an external link per view and level:
    `tTTTTT/sSS/L/cells` -> (`<name>-TT-SS.h5`, `tTTTTT/sSS/L/cells`). Each partition holds its
    views' cells, chunked by the subdivisions, plus its setups' resolutions/subdivisions.
    legacy=True: uint16 stored as int16, no `dataType` (bdv-core before 2023; uint16 only).
    legacy=False: the native dtype, with `sSS@dataType` in the master and the partitions.
    remap_ids=True: each partition stores its views under partition-local ids 0..n-1. The XML
    then carries `<timepointsMapped>`/`<setupsMapped>`. bdv-core's own `split` never does this,
    but its XML reader supports it.
    Levels are strided (nearest), and their shapes round up. bdv-core >= 10.6.2 uses
    `Downsample.getDownsampledDimensions`, which is ceil. Before that it used
    max(1, floor(n / f)).
    """
    from pybdv.metadata import indent_xml, validate_attributes, write_xml_metadata

    dtype = np.dtype(dtype)
    if legacy and dtype != np.uint16:
        raise ValueError("legacy BDV HDF5 holds uint16 (as int16) only; use legacy=False")
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    master, xml_path = dir / f"{name}.h5", dir / f"{name}.xml"
    factors = absolute_factors(levels)  # z,y,x
    resolutions = np.array([f[::-1] for f in factors], dtype="float64")  # x,y,z
    level_shapes = [tuple(math.ceil(n / f) for n, f in zip(shape, fac)) for fac in factors]
    level_chunks = [tuple(min(c, n) for c, n in zip(chunks, ls)) for ls in level_shapes]
    subdivisions = np.array([c[::-1] for c in level_chunks], dtype="int32")  # x,y,z
    stored = np.dtype("int16") if legacy else dtype
    expected = {}

    partitions = []  # (file name, {t: t_part}, {s: s_part})
    for ti, tbatch in enumerate(_split(timepoints, timepoints_per_partition)):
        for si, sbatch in enumerate(_split(setups, setups_per_partition)):
            tmap = {t: (i if remap_ids else t) for i, t in enumerate(tbatch)}
            smap = {s: (i if remap_ids else s) for i, s in enumerate(sbatch)}
            partitions.append((f"{name}-{ti:02d}-{si:02d}.h5", tmap, smap))

    for fname, tmap, smap in partitions:
        with h5py.File(dir / fname, "w") as f:
            for s, sp in smap.items():
                f.create_dataset(f"s{sp:02d}/resolutions", data=resolutions)
                f.create_dataset(f"s{sp:02d}/subdivisions", data=subdivisions)
                if not legacy:
                    f[f"s{sp:02d}"].attrs["dataType"] = _fixed_string(dtype.name)
            for t, tp in tmap.items():
                for s, sp in smap.items():
                    full = view_data(shape, dtype, t, s, seed)
                    for lv, fac in enumerate(factors):
                        arr = full[tuple(slice(None, None, k) for k in fac)]
                        assert arr.shape == level_shapes[lv]
                        f.create_dataset(f"t{tp:05d}/s{sp:02d}/{lv}/cells", data=arr.view(stored) if legacy else arr,
                                         chunks=level_chunks[lv], **_h5_filter_kwargs(compression, stored))
                        expected[(t, s, lv)] = arr

    with h5py.File(master, "w") as f:
        for s in range(setups):
            f.create_dataset(f"s{s:02d}/resolutions", data=resolutions)
            f.create_dataset(f"s{s:02d}/subdivisions", data=subdivisions)
            if not legacy:
                f[f"s{s:02d}"].attrs["dataType"] = _fixed_string(dtype.name)
        for fname, tmap, smap in partitions:
            for t, tp in tmap.items():
                for s, sp in smap.items():
                    for lv in range(levels):
                        f[f"t{t:05d}/s{s:02d}/{lv}/cells"] = h5py.ExternalLink(fname, f"t{tp:05d}/s{sp:02d}/{lv}/cells")

    # the XML: pybdv's writer (it reads each view's shape through the master's links) ...
    if xml_path.exists():
        xml_path.unlink()
    with _quiet():
        for s in range(setups):
            for t in range(timepoints):
                attrs = validate_attributes(str(xml_path), {"channel": {"id": s}}, s, False)
                write_xml_metadata(str(xml_path), str(master), unit, list(resolution), True,
                                   setup_id=s, timepoint=t, setup_name=None, affine=None,
                                   attributes=attrs, overwrite=False, overwrite_data=False,
                                   enforce_consistency=False)
    # ... plus <partition> elements after <hdf5>, as XmlIoHdf5ImageLoader.partitionToXml writes them
    tree = ET.parse(xml_path)
    root = tree.getroot()
    loader = root.find("SequenceDescription/ImageLoader")
    for fname, tmap, smap in partitions:
        p = ET.SubElement(loader, "partition")
        path = ET.SubElement(p, "path", {"type": "relative"})
        path.text = fname
        ts, ss = sorted(tmap), sorted(smap)
        ET.SubElement(p, "timepoints").text = " ".join(str(t) for t in ts)
        if [tmap[t] for t in ts] != ts:
            ET.SubElement(p, "timepointsMapped").text = " ".join(str(tmap[t]) for t in ts)
        ET.SubElement(p, "setups").text = " ".join(str(s) for s in ss)
        if [smap[s] for s in ss] != ss:
            ET.SubElement(p, "setupsMapped").text = " ".join(str(smap[s]) for s in ss)
    for el in root.iter():
        if el.text is not None and not el.text.strip():
            el.text = None
        if el.tail is not None and not el.tail.strip():
            el.tail = None
    indent_xml(root)
    tree.write(xml_path)
    return xml_path, {k: expected[k] for k in sorted(expected)}


# -- 4. the real platybrowser samples, sparse pixels -----------------------------------------------


def _write_sample_blocks(ds, shape, chunks, dtype: str, seed: int, middle: bool, stored=lambda block: block):
    """Write a few blocks of a big declared dataset `ds`: the first chunk, the last (edge)
    chunk of the grid, and with `middle` one in the middle; everything else reads as 0.
    `stored` maps a block to what the dataset holds. Returns the expected SparseVolume."""
    last = tuple((n - 1) // c * c for n, c in zip(shape, chunks))
    origins = [(0,) * len(shape)] + ([last] if any(last) else [])
    if middle:
        origins.insert(1, tuple((n // c // 2) * c for n, c in zip(shape, chunks)))
    vol = SparseVolume(shape, np.dtype(dtype))
    for o in origins:
        size = tuple(min(c, n - a) for c, n, a in zip(chunks, shape, o))
        block = pattern_at(o, size, dtype, seed=seed)
        ds[tuple(slice(a, a + n) for a, n in zip(o, size))] = stored(block)
        vol.blocks.append((o, block))
    return vol


def write_sample_platy_hdf5(
    dir,
    *,
    levels: int = 3,
    chunks=(64, 64, 64),
    compression: str | None = "gzip",
    seed: int = 0,
) -> tuple[Path, dict]:
    """The real AChE-MED bdv.hdf5 XML (copied byte for byte) and an `AChE-MED.h5` next to it.

    The XML's `<hdf5 type="absolute">` path (/g/arendt/...) does not exist here, so a reader has
    to fall back to the file name next to the XML. The file is legacy BDV: int16 cells (uint16
    values, no dataType), float64 resolutions, int32 subdivisions. Each level is declared at its
    full size (level 0: 570x518x550 z,y,x; then max(1, floor(n / 2**level)), the rule before
    bdv-core 10.6.2), chunked by `chunks`. Only the corner chunk and the last edge chunk of each
    level are written (a middle chunk too at level 0). Every other voxel reads as the fill
    value 0.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    xml_path = dir / HDF5_SAMPLE
    shutil.copyfile(SAMPLES / HDF5_SAMPLE, xml_path)
    setup = ET.parse(xml_path).getroot().find("SequenceDescription/ViewSetups/ViewSetup")
    shape0 = tuple(int(v) for v in setup.findtext("size").split())[::-1]  # x y z -> z,y,x
    factors = [[2 ** lv] * 3 for lv in range(levels)]
    expected = {}
    with h5py.File(dir / "AChE-MED.h5", "w") as f:
        f.create_dataset("s00/resolutions", data=np.array([fac[::-1] for fac in factors], "float64"))
        shapes = [tuple(max(1, n // k) for n, k in zip(shape0, fac)) for fac in factors]
        level_chunks = [tuple(min(c, n) for c, n in zip(chunks, sh)) for sh in shapes]
        f.create_dataset("s00/subdivisions", data=np.array([c[::-1] for c in level_chunks], "int32"))
        for lv, (sh, ch) in enumerate(zip(shapes, level_chunks)):
            ds = f.create_dataset(f"t00000/s00/{lv}/cells", shape=sh, dtype="int16", chunks=ch,
                                  **_h5_filter_kwargs(compression, "int16"))
            expected[(0, 0, lv)] = _write_sample_blocks(ds, sh, ch, "uint16", UINT16_BASE + seed + 10 * lv,
                                                        middle=lv == 0, stored=lambda b: b.view("int16"))
    return xml_path, expected


N5_SAMPLE_DIRS = ("1.0.1", "images", "local")  # where the XML sat in mobie/platybrowser-project (data/...)


def write_sample_platy_n5(
    dir,
    *,
    levels: int = 6,
    block=(64, 64, 64),
    seed: int = 0,
) -> tuple[Path, dict]:
    """The real sbem-6dpf-1-whole-raw bdv.n5 XML (copied byte for byte) and the N5 container its
    relative path names.

    Layout: `dir/1.0.1/images/local/<xml>`, and `dir/rawdata/sbem-6dpf-1-whole-raw.n5` (the
    XML's `../../../rawdata/...`). `setup0` has `downsamplingFactors` [[1,1,1],[2,2,1],[4,4,2],
    [8,8,4],...] (x,y,z) and `dataType` "uint8". `setup0/timepoint0/sN` is declared at its full
    size (level 0: N5 dimensions [27499,25916,11416]; then floored), with gzip blocks of `block`
    (z,y,x; isotropic by default). Only a handful of blocks are written with z5py: the corner
    block and the last edge block of each level, plus a middle block at level 0. A missing block
    reads as 0.
    """
    import z5py

    dir = Path(dir)
    xml_dir = dir.joinpath(*N5_SAMPLE_DIRS)
    xml_dir.mkdir(parents=True, exist_ok=True)
    xml_path = xml_dir / N5_SAMPLE
    shutil.copyfile(SAMPLES / N5_SAMPLE, xml_path)
    root = ET.parse(xml_path).getroot()
    rel = root.findtext("SequenceDescription/ImageLoader/n5")
    n5_path = (xml_dir / rel).resolve()
    assert n5_path.is_relative_to(dir.resolve()), n5_path
    setup = root.find("SequenceDescription/ViewSetups/ViewSetup")
    shape0 = tuple(int(v) for v in setup.findtext("size").split())[::-1]  # z,y,x

    factors_xyz = [[1, 1, 1]] + [[2 ** lv, 2 ** lv, 2 ** (lv - 1)] for lv in range(1, levels)]
    f = z5py.File(str(n5_path), "w")
    g = f.require_group("setup0")
    g.attrs["downsamplingFactors"] = factors_xyz
    g.attrs["dataType"] = "uint8"
    tg = g.require_group("timepoint0")
    expected = {}
    for lv, fac in enumerate(factors_xyz):
        sh = tuple(max(1, n // k) for n, k in zip(shape0, fac[::-1]))
        ch = tuple(min(b, n) for b, n in zip(block, sh))
        ds = tg.create_dataset(f"s{lv}", shape=sh, chunks=ch, dtype="uint8", compression="gzip")
        expected[(0, 0, lv)] = _write_sample_blocks(ds, sh, ch, "uint8", seed + 10 * lv, middle=lv == 0)
    return xml_path, expected
