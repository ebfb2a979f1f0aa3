"""BigDataViewer datasets: the XML plus a bdv.hdf5, bdv.n5, bdv.n5.s3 or bdv.remote image loader,
or one that points at an OME-Zarr or N5 container (bdv_zarr).

Each (timepoint, setup) view becomes an image at `setup<S>/timepoint<T>` (a single view is
the image itself). Levels come from the loader's resolutions or downsampling factors; the
voxel size and origin follow `Calibration`. Per setup, the first view's level metadata stands for every timepoint
(BDV writes them alike); a view whose data differs fails its reads with a clear error.
"""

from __future__ import annotations

import posixpath
import struct
import threading
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import n5
from .base import Axis, Channel, Group, Image, Level, make_cache_token
from .bdv_remote import RemoteLoader
from .bdv_zarr import FORMATS as CONTAINER_LOADERS
from .bdv_zarr import loader_for as container_loader
from .bdv_xml import PathRef, Setup, SpimData, looks_like_spimdata, parse_spimdata
from .errors import BadMetadata, ChunkReadError, NgffMountError, SourceNotFound, Unsupported
from .format import Format, Source, is_http
from .hdf5_chunks import DatasetLayout, Hdf5File, check_filters, decode_chunk
from .storage import (
    DEFAULT_RETRIES, DEFAULT_TIMEOUT, RangeRequest, StorageOptions, Store, endpoint_of, parse_json, storage_options_for,
)
from .units import SAMPLE_TYPES, is_length, unit_name
from .urls import has_scheme, join_url, normalize_url, parent_url, redact

LOADERS = ("bdv.hdf5", "bdv.n5", "bdv.n5.s3", "bdv.remote", *CONTAINER_LOADERS)


class Context:
    """Where the XML came from, and how to open the other files it names."""

    def __init__(self, xml_url: str, storage_options: Mapping[str, Any] | None, concurrency: int):
        self.xml_url, self.options, self.concurrency = xml_url, storage_options, concurrency
        self._stores: dict[tuple[str, int], Store] = {}
        self._lock = threading.Lock()

    def store(self, url: str, options: Mapping[str, Any] | None = None) -> Store:
        """One Store (and fetch pool) per folder and options: a dataset of a thousand
        partition files in one folder shares one."""
        options = self.options if options is None else options
        with self._lock:
            store = self._stores.get((url, id(options)))
            if store is None:
                store = self._stores[(url, id(options))] = Store(url, options, self.concurrency)
            return store

    def s3_options(self, endpoint: str | None, region: str | None) -> StorageOptions:
        """For the S3 store a bdv.n5.s3 loader names: the caller's options when the XML came
        from S3 on that same endpoint, else anonymous (as MoBIE falls back), so credentials
        never go to an endpoint someone else's XML names."""
        own = self.options or {}
        aws = "https://s3.amazonaws.com"
        timeout, retries = getattr(own, "timeout", DEFAULT_TIMEOUT), getattr(own, "retries", DEFAULT_RETRIES)
        transport = getattr(own, "transport", None)
        if self.xml_url.lower().startswith("s3") and normalize_url(endpoint_of(own) or aws) == normalize_url(endpoint or aws):
            opts = StorageOptions(own)  # the caller's credentials, only for the endpoint they were given for
            opts.timeout, opts.retries, opts.transport = timeout, retries, transport
        else:
            opts = storage_options_for("s3://", anon=True, endpoint_url=endpoint, concurrency=self.concurrency,
                                       timeout=timeout, retries=retries, transport=transport)
        if region:
            opts["client_kwargs"] = {**(opts.get("client_kwargs") or {}), "region_name": region}
        return opts

    def mobie_s3(self, data: SpimData, where: str) -> tuple[str, StorageOptions]:
        """The container of a MoBIE S3 loader (ServiceEndpoint, SigningRegion, BucketName, Key)
        and the options to read it with."""
        bucket, key = (data.loader.findtext(tag, "").strip() for tag in ("BucketName", "Key"))
        if not bucket:
            raise BadMetadata(f"{where}: {data.loader_format} loader without a <BucketName>")
        options = self.s3_options((data.loader.findtext("ServiceEndpoint") or "").strip() or None,
                                  (data.loader.findtext("SigningRegion") or "").strip() or None)
        return f"s3://{bucket}/{key.strip('/')}".rstrip("/"), options

    def container_store(self, url: str, options: Mapping[str, Any] | None = None) -> Store:
        """The store of a container an XML names by URL. An s3:// URL in an XML read from S3
        is on the same service, with the caller's options; from elsewhere it is AWS,
        anonymous. Another protocol than the XML's gets that protocol's defaults."""
        if options is None:
            scheme = url.split("://", 1)[0].lower() if has_scheme(url) else "file"
            own = self.xml_url.split("://", 1)[0].lower() if has_scheme(self.xml_url) else "file"
            if scheme == "s3" and own != "s3":
                options = self.s3_options(None, None)
            elif scheme != own:
                own_options = self.options or {}
                options = storage_options_for(url, concurrency=self.concurrency,
                                              timeout=getattr(own_options, "timeout", DEFAULT_TIMEOUT),
                                              retries=getattr(own_options, "retries", DEFAULT_RETRIES),
                                              transport=getattr(own_options, "transport", None))
        return self.store(url, options)

    def resolve(self, data: SpimData, ref: PathRef) -> list[str]:
        """Candidate URLs for a loader path, most likely first. An absolute path from the
        machine that wrote the XML (e.g. /g/arendt/x.h5) falls back to the same name next
        to the XML."""
        xml_dir = parent_url(self.xml_url)
        if ref.relative:
            base = data.base_path.path if data.base_path.relative else None
            root = join_url(xml_dir, base) if base is not None else data.base_path.path
            return [join_url(root, ref.path)]
        fallback = join_url(xml_dir, posixpath.basename(ref.path.rstrip("/")))
        if has_scheme(ref.path) or not has_scheme(self.xml_url) or self.xml_url.startswith("file://"):
            return [ref.path, fallback]
        return [fallback]


def open_bdv(ctx: Context, raw_xml: bytes, name: str, mtime: float, server_url: str | None = None) -> Image | Group:
    where = redact(ctx.xml_url)
    data = parse_spimdata(raw_xml, where)
    if data.loader_format not in LOADERS:
        raise Unsupported(f"{where}: BigDataViewer image loader {data.loader_format!r} is not supported "
                          f"(supported: {', '.join(LOADERS)})")
    if data.loader_format == "bdv.hdf5":
        levels_of = _Hdf5Loader(ctx, data, where).levels
    elif data.loader_format in ("bdv.n5", "bdv.n5.s3"):
        levels_of = _N5Loader(ctx, data, where).levels
    elif data.loader_format in CONTAINER_LOADERS:
        levels_of = container_loader(ctx, data, where).levels
    else:
        levels_of = RemoteLoader(ctx, data, where, server_url).levels
    setups = {s.id: s for s in data.setups}
    images = {}
    for t, s in data.views():
        setup = setups[s]
        calibration = Calibration(setup, data.registrations.get((t, s)))
        levels = levels_of(t, setup, calibration)
        if levels:
            images[(t, s)] = Image(setup.name, levels, [Channel(label=setup.name)], normalize_url(ctx.xml_url),
                                   f"BigDataViewer {data.loader_format}", mtime)
    if not images:
        raise BadMetadata(f"{where}: the dataset has no views with image data")
    if len(images) == 1:
        image = next(iter(images.values()))
        image.name = name
        return image
    group = Group(name, format=f"BigDataViewer {data.loader_format}")
    for (t, s), image in images.items():
        group.add(f"setup{s}/timepoint{t}", image)
    return group


class Calibration:
    """Voxel size and origin (x, y, z) of a view, and each level's scale and translation.

    A setup's voxelSize in a length unit is the voxel size; the registration only places the
    view (BigStitcher registers in pixels of x: a `1, 1, z/x` calibration, then translations
    in those pixels). Its translation over its own scale, times the voxel size, is the origin.
    Without a length voxelSize, an axis-aligned registration is taken as voxel size and origin
    (MoBIE and Mastodon XMLs register in the physical unit).
    """

    def __init__(self, setup: Setup, affine: list[float] | None):
        unit = unit_name(setup.unit)
        voxel = list(setup.voxel_size or (1.0, 1.0, 1.0))
        origin = [0.0, 0.0, 0.0]
        if is_length(unit) and setup.voxel_size is not None and all(v > 0 for v in voxel):
            scales = _column_norms(affine) if affine is not None else None
            if scales is not None and all(s > 0 for s in scales):
                origin = [affine[i * 4 + 3] / scales[i] * voxel[i] for i in range(3)]
        elif affine is not None and _axis_aligned(affine):
            voxel = [affine[0], affine[5], affine[10]]
            origin = [affine[3], affine[7], affine[11]]
        self.voxel, self.origin = voxel, origin
        self.axes = tuple(Axis(a, "space", unit) for a in "zyx")

    def level(self, factors_xyz: Sequence[float]) -> tuple[list[float], list[float]]:
        """Scale and translation in z, y, x. BDV's mipmap transform puts a downsampled
        voxel's centre (factor - 1) / 2 source voxels in."""
        scale = [v * f for v, f in zip(self.voxel, factors_xyz)]
        translation = [o + (f - 1) / 2 * v for o, v, f in zip(self.origin, self.voxel, factors_xyz)]
        return scale[::-1], translation[::-1]


def _axis_aligned(a: list[float]) -> bool:
    off_diagonal = (a[1], a[2], a[4], a[6], a[8], a[9])
    return all(abs(v) < 1e-12 for v in off_diagonal) and all(d > 0 for d in (a[0], a[5], a[10]))


def _column_norms(a: list[float]) -> list[float]:
    """The scale a registration applies along each source axis (its diagonal when axis-aligned)."""
    return [float(np.hypot.reduce([a[c], a[4 + c], a[8 + c]])) for c in range(3)]


def _factor_rows(value, where: str) -> list[list[float]]:
    rows = np.asarray(value, dtype=float) if value is not None else None
    if rows is None or rows.ndim != 2 or rows.shape[1] != 3 or not len(rows) or not np.all(rows > 0):
        raise BadMetadata(f"{where}: resolutions must be a non-empty list of 3 positive numbers per level, got {value!r}")
    return rows.tolist()


# -- bdv.hdf5 -------------------------------------------------------------------------------


class _Hdf5Loader:
    def __init__(self, ctx: Context, data: SpimData, where: str):
        self.ctx, self.data, self.where = ctx, data, where
        ref = data.path("hdf5")
        if ref is None:
            raise BadMetadata(f"{where}: bdv.hdf5 loader without an <hdf5> path")
        self.main = self._open(ctx.resolve(data, ref))
        self.partitions = [(p, ctx.resolve(data, p.path)) for p in data.partitions()]
        self._files: dict[str, Hdf5File] = {}
        self._setups: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def _open(self, candidates: list[str]) -> Hdf5File:
        for url in candidates:
            store, key = self.ctx.store(parent_url(url)), posixpath.basename(url)
            try:
                return Hdf5File(store, key, redact(url))
            except SourceNotFound:
                continue
        raise SourceNotFound(f"{self.where}: HDF5 file not found (tried {', '.join(redact(c) for c in candidates)})")

    def file_for(self, t: int, s: int) -> tuple[Callable[[], Hdf5File], int, int]:
        """How to open the file holding a view, and the view's ids inside that file. Partition
        files are opened on first use, so a mount does not touch every one of them."""
        for part, candidates in self.partitions:
            if t in part.timepoints and s in part.setups:
                return partial(self._partition, tuple(candidates)), part.timepoints[t], part.setups[s]
        return (lambda: self.main), t, s

    def _partition(self, candidates: tuple[str, ...]) -> Hdf5File:
        with self._lock:
            f = self._files.get(candidates[0])
            if f is None:
                f = self._files[candidates[0]] = self._open(list(candidates))
            return f

    def levels(self, t: int, setup: Setup, cal: Calibration) -> list[Level]:
        s = setup.id
        resolutions, data_type, templates, first_t = self._setup_info(s)
        opener, tm, sm = self.file_for(t, s)
        levels = []
        for lv, (factors, layout) in enumerate(zip(resolutions, templates)):
            if layout is None:
                break
            scale, translation = cal.level(factors)
            path = f"t{tm:05d}/s{sm:02d}/{lv}/cells"
            levels.append(Hdf5CellsLevel(opener, path, layout, data_type, cal.axes, scale, translation, t == first_t))
        return levels

    def _setup_info(self, s: int):
        """Per setup, once: level factors, dataType, and the first view's cells layouts,
        which stand for every timepoint."""
        if s in self._setups:
            return self._setups[s]
        where = f"{self.where}: s{s:02d}/resolutions"
        resolutions = _factor_rows(self.main.array(f"s{s:02d}/resolutions"), where)
        data_type = self.main.attribute(f"s{s:02d}", "dataType")
        if isinstance(data_type, bytes):
            data_type = data_type.decode()
        first_t = self.data.first_timepoint(s)
        opener, tm, sm = self.file_for(first_t, s)
        f = opener()
        templates = []
        for lv in range(len(resolutions)):
            layout = f.layout(f"t{tm:05d}/s{sm:02d}/{lv}/cells")
            if layout is not None:
                check_filters(layout, f.where)
                if len(layout.shape) != 3:
                    raise BadMetadata(f"{f.where}: cells of setup {s} level {lv} are not 3D")
            templates.append(layout)
        self._setups[s] = (resolutions, data_type, templates, first_t)
        return self._setups[s]


MASK = struct.Struct("<I")  # each fetched chunk carries its HDF5 filter mask in front


def visible_dtype(stored: np.dtype, data_type: str | None) -> np.dtype:
    """The dtype users see: the setup's dataType, or uint16 for legacy int16 cells."""
    kind = SAMPLE_TYPES.get(data_type) if data_type is not None else ("u2" if stored.kind == "i" and stored.itemsize == 2 else None)
    if kind is None or np.dtype(kind).itemsize != stored.itemsize:
        return stored
    return np.dtype(kind).newbyteorder(stored.byteorder) if stored.byteorder in "<>" else np.dtype(kind)


class Hdf5CellsLevel(Level):
    """One `t/s/level/cells` dataset. Legacy BDV stores uint16 as int16 with the same bits."""

    def __init__(self, open_file: Callable[[], Hdf5File], path: str, layout: DatasetLayout, data_type: str | None,
                 axes, scale, translation, is_template: bool):
        self._open_file, self._file, self._token = open_file, None, None
        self.path, self.layout = path, layout
        self.shape, self.chunk_shape = layout.shape, layout.chunks
        self.dtype = visible_dtype(layout.dtype, data_type)
        self.axes, self.scale, self.translation = tuple(axes), tuple(scale), tuple(translation)
        self.fill_value = 0
        self._checked = is_template
        self._lock = threading.Lock()

    @property
    def file(self) -> Hdf5File:
        if self._file is None:
            self._file = self._open_file()
        return self._file

    @property
    def cache_token(self) -> str:
        """Names this version of the file too: a rewritten file moves its chunks."""
        if self._token is None:
            self._token = make_cache_token(self.file.identity + "/" + self.path, self.layout.describe())
        return self._token

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        return "/".join(str(i) for i in idx)

    def fetch_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        index = self._index()
        wanted = [(k, index.get(tuple(int(v) for v in k.split("/")))) for k in keys]
        present = [(k, entry) for k, entry in wanted if entry is not None]
        got = self.file.store.get_ranges([RangeRequest(self.file.key, off, off + size) for _, (off, size, _) in present])
        out: dict[str, bytes | None] = {k: None for k in keys}
        for (k, (_, _, mask)), data in zip(present, got):
            if data is None:
                raise ChunkReadError(f"{self.file.where}: {self.path} chunk {k} lies past the end of the file")
            out[k] = MASK.pack(mask) + data
        return out

    def _index(self):
        if not self._checked:
            with self._lock:
                if not self._checked:
                    actual = self.file.layout(self.path)
                    if actual is not None and actual != self.layout:
                        raise ChunkReadError(f"{self.file.where}: {self.path} differs from the setup's first "
                                             f"timepoint ({actual.describe()} vs {self.layout.describe()})")
                    self._checked = True
        return self.file.chunk_index(self.path)

    def decode(self, idx: tuple[int, ...], raw: bytes) -> np.ndarray:
        where = f"{self.file.where}: {self.path}"
        try:
            (mask,) = MASK.unpack_from(raw)
            arr = decode_chunk(memoryview(raw)[MASK.size:], self.layout, mask, where)
        except NgffMountError:
            raise
        except Exception as exc:  # corrupt bytes: zlib, blosc, zstd each fail their own way
            raise ChunkReadError(f"{where}: cannot decode chunk {self.chunk_key(idx)} ({type(exc).__name__}: {exc})") from None
        return arr.view(self.dtype)


# -- bdv.n5 ---------------------------------------------------------------------------------


class _N5Loader:
    """bdv.n5 (a path), or bdv.n5.s3 (MoBIE: ServiceEndpoint, SigningRegion, BucketName, Key)."""

    def __init__(self, ctx: Context, data: SpimData, where: str):
        options = None
        if data.loader_format == "bdv.n5.s3":
            url, options = ctx.mobie_s3(data, where)
            candidates = [url]
        else:
            ref = data.path("n5")
            if ref is None:
                raise BadMetadata(f"{where}: bdv.n5 loader without an <n5> path")
            candidates = ctx.resolve(data, ref)
        self.where = where
        for url in candidates:
            store = ctx.store(url, options)
            docs = store.get_many([f"setup{s.id}/{n5.ATTRS}" for s in data.setups])
            if any(v is not None for v in docs.values()):
                break
        else:
            raise SourceNotFound(f"{where}: N5 container not found (tried {', '.join(redact(c) for c in candidates)})")
        self.store, self.data = store, data
        self.setup_attrs = {}
        for s in data.setups:
            raw = docs[f"setup{s.id}/{n5.ATTRS}"]
            if raw is not None:
                self.setup_attrs[s.id] = parse_json(raw, f"{store.url}/setup{s.id}/{n5.ATTRS}")
        self._templates: dict[int, list[dict]] = {}

    def levels(self, t: int, setup: Setup, cal: Calibration) -> list[Level]:
        attrs = self.setup_attrs.get(setup.id)
        if attrs is None:
            raise BadMetadata(f"{self.store.url}: setup{setup.id} has no attributes.json")
        factors = _factor_rows(attrs.get("downsamplingFactors", [[1, 1, 1]]), f"{self.store.url}/setup{setup.id}: downsamplingFactors")
        first = self.data.first_timepoint(setup.id)
        if setup.id not in self._templates:
            paths = [f"setup{setup.id}/timepoint{first}/s{lv}" for lv in range(len(factors))]
            self._templates[setup.id] = self.store.level_documents(paths, n5.ATTRS)
        levels = []
        for lv, (f, meta) in enumerate(zip(factors, self._templates[setup.id])):
            if not n5.is_dataset(meta) or len(meta["dimensions"]) != 3:
                raise BadMetadata(f"{self.store.url}/setup{setup.id}/s{lv}: not a 3D N5 dataset")
            scale, translation = cal.level(f)
            path = f"setup{setup.id}/timepoint{t}/s{lv}"
            level = n5.N5Level(self.store.child(path), path, meta, cal.axes, scale, translation)
            if t != first:
                level = CheckedN5Level.of(level, meta)
            levels.append(level)
        return levels


class CheckedN5Level(n5.N5Level):
    """A timepoint that borrowed the first timepoint's attributes: its own are compared on
    first fetch, so a differing dataset fails clearly instead of reading cropped or padded."""

    @classmethod
    def of(cls, level: n5.N5Level, template: dict) -> "CheckedN5Level":
        checked = cls.__new__(cls)
        checked.__dict__.update(level.__dict__)
        checked._template, checked._checked, checked._check_lock = template, False, threading.Lock()
        return checked

    def fetch_many(self, keys):
        if not self._checked:
            with self._check_lock:
                if not self._checked:
                    raw = self.store.get(n5.ATTRS)
                    own = parse_json(raw, f"{self.store.url}/{n5.ATTRS}") if raw is not None else None
                    fields = ("dimensions", "blockSize", "dataType", "compression", "compressionType")
                    if own is not None and any(own.get(f) != self._template.get(f) for f in fields):
                        raise ChunkReadError(f"{self.store.url}: differs from the setup's first timepoint "
                                             f"({ {f: own.get(f) for f in fields[:3]} })")
                    self._checked = True
        return super().fetch_many(keys)


# -- registry entries --------------------------------------------------------------------


def _is_xml(url: str) -> bool:
    return url.split("?", 1)[0].rstrip("/").lower().endswith(".xml")


def _open_xml(source: Source) -> Image | Group:
    """A dataset XML (local, HTTP or S3); the data files are found from it."""
    raw = source.reach([""])[""]
    if raw is None:
        raise SourceNotFound(f"{source.store.url}: not found")
    name = source.name[:-4] if source.name.lower().endswith(".xml") else source.name
    return open_bdv(Context(source.url, source.storage_options, source.concurrency), raw, name, source.mtime(""))


def _server_documents(url: str) -> tuple[str, ...]:
    # A BigDataViewer server answers its dataset URL itself (and every path under it) with the XML.
    return ("",) if is_http(url) else ()


def _open_server(source: Source) -> Image | Group:
    ctx = Context(source.url, source.storage_options, source.concurrency)
    return open_bdv(ctx, source.raw(""), source.name, 0.0, server_url=source.url)


BDV_XML = Format("BigDataViewer XML", lambda s: _is_xml(s.url), _open_xml)
BDV_SERVER = Format("BigDataViewer server", lambda s: is_http(s.url) and looks_like_spimdata(s.raw("")), _open_server,
                    raw_documents=_server_documents)
