"""A loopback BigDataServer: BDV XML/HDF5 datasets (bdv.hdf5) served over the remote protocol
of bigdataviewer-server (CellHandler, JsonDatasetListHandler), read with h5py.

    with BdvServer({"embryo": Path("embryo.xml")}) as srv:
        urllib.request.urlopen(srv.dataset_url("embryo") + "?p=init")

Routes, answered as Jetty and the Java handlers answer them:
  /<name>               302 to /<name>/ (query kept), Jetty's ContextHandler redirect
  /<name>/<anything>    the dataset XML, its ImageLoader replaced by
                        <ImageLoader format="bdv.remote"><baseUrl>URL/<name>/</baseUrl>
  ?p=init               RemoteImageLoaderMetaData as Gson serializes it
  ?p=cell/<index>/<t>/<setup>/<level>/...   one cell of the cell grid, big-endian shorts;
                        the fields after <level> (dims, min) are ignored as in CellHandler
  /<name>/settings      <xml base>.settings.xml if it exists, else 404
  /<name>/png           404 (no thumbnails are made)
  /json, /json/...      the dataset list (JsonDatasetListHandler)
A `p` that is neither cell nor init is not handled (404); what throws in Java (bad numbers,
unknown setup, missing image data, a cell index off the grid, non-16-bit data) answers 500.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import h5py
import numpy as np

from servers import LoopbackHTTPServer, RequestCounters

__all__ = ["BdvServer", "java_double", "java_hashmap_order"]

RESERVED = ("json", "manager")  # bdv.server.Constants.RESERVED_CONTEXT_NAMES
LINE = "\r\n"  # JDOM's default line separator
XML_TYPE = "application/xml;charset=utf-8"  # Jetty appends the charset set by respondWithString
JSON_TYPE = "application/json;charset=utf-8"
# n5 DataType labels; the loader maps the 16-bit ones to a short[] cell, any other known
# label gives a cell CellHandler cannot cast (500); unknown or absent means legacy int16.
N5_TYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
            "float32", "float64"}


class ServerError(Exception):
    """What makes the Java handler throw, so Jetty answers 500."""


# --------------------------------------------------------------------------- Java output


def java_double(x: float) -> str:
    """Double.toString (JDK 19+, shortest digits), which Gson writes for doubles."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError("Gson refuses NaN and infinities")
    if x == 0:
        return "-0.0" if math.copysign(1, x) < 0 else "0.0"
    if 1e-3 <= abs(x) < 1e7:
        return repr(x)  # Python also prints this range plainly, with ".0" for integers
    _, digits, exp = Decimal(repr(abs(x))).as_tuple()
    power = len(digits) + exp - 1
    digits = "".join(map(str, digits)).rstrip("0")
    return f"{'-' if x < 0 else ''}{digits[0]}.{digits[1:] or '0'}E{power}"


def java_hashmap_order(keys: list, hashes: list[int]) -> list:
    """The iteration order of a java.util.HashMap filled with `keys` in order, given their
    hashCode()s: by bucket, then insertion order. Exact unless a bucket exceeds 8 entries
    in a table of 64 or more (Java keeps that bucket as a tree, which iterates differently)."""
    spread = [(h & 0xFFFFFFFF) ^ ((h & 0xFFFFFFFF) >> 16) for h in hashes]
    cap = 16
    for n in range(1, len(keys) + 1):
        same_bin = sum(1 for s in spread[: n - 1] if s & (cap - 1) == spread[n - 1] & (cap - 1))
        if same_bin + 1 > 8 and cap < 64:
            cap *= 2  # treeifyBin resizes small tables instead
        if n > cap * 3 // 4:
            cap *= 2
    order = sorted(range(len(keys)), key=lambda i: spread[i] & (cap - 1))
    return [keys[i] for i in order]


def java_string_hash(s: str) -> int:
    h = 0
    units = s.encode("utf-16-le")
    for (u,) in struct.iter_unpack("<H", units):
        h = (31 * h + u) & 0xFFFFFFFF
    return h


def _json_list(values, fmt=str) -> str:
    return "[" + ",".join(fmt(v) for v in values) + "]"


def jdom_pretty(root: ET.Element) -> str:
    """XMLOutputter(Format.getPrettyFormat()) of a document: two-space indent, trimmed text,
    `<a />` for empty elements, CRLF line ends including a final one."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>']

    def text(s):
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#xD;")

    def attr(s):
        return (text(s).replace('"', "&quot;").replace("\t", "&#x9;").replace("\n", "&#xA;"))

    def walk(el, pad):
        head = el.tag + "".join(f' {k}="{attr(v)}"' for k, v in el.attrib.items())
        inner = (el.text or "").strip()
        if len(el) == 0:
            lines.append(f"{pad}<{head}>{text(inner)}</{el.tag}>" if inner else f"{pad}<{head} />")
            return
        lines.append(f"{pad}<{head}>")
        if inner:
            lines.append(pad + "  " + text(inner))
        for child in el:
            walk(child, pad + "  ")
            tail = (child.tail or "").strip()
            if tail:
                lines.append(pad + "  " + text(tail))
        lines.append(f"{pad}</{el.tag}>")

    walk(root, "")
    return LINE.join(lines) + LINE


# --------------------------------------------------------------------------- datasets


def _timepoints(elem: ET.Element | None) -> list[int]:
    """XmlIoTimePoints: range, list of <Timepoint><id>, or an IntegerPattern."""
    if elem is None:
        raise ValueError("no Timepoints")
    kind = elem.get("type")
    if kind == "range":
        return list(range(int(elem.findtext("first")), int(elem.findtext("last")) + 1))
    if kind == "list":
        return sorted(int(tp.findtext("id")) for tp in elem.findall("Timepoint"))
    if kind == "pattern":
        out = []
        for entry in filter(None, (e.strip() for e in (elem.findtext("integerpattern") or "0").split(","))):
            m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(-?\d+)(?:\s*:\s*(\d+))?)?", entry)
            if not m:
                raise ValueError(f"bad timepoint pattern {entry!r}")
            first, last, step = int(m[1]), int(m[2] or m[1]), int(m[3] or 1)
            out += range(first, last + 1, step) if last >= first else range(first, last - 1, -step)
        return sorted(set(out))
    raise ValueError(f"unknown Timepoints type {kind!r}")


def _load_path(elem: ET.Element, base: Path) -> Path:
    """XmlHelpers.loadPath: type="relative" resolves against base, else absolute."""
    p = Path((elem.text or "").strip())
    return base / p if elem.get("type") == "relative" else p


class _Dataset:
    """One CellHandler: everything it caches at construction, plus the open HDF5 file."""

    def __init__(self, name: str, xml_path: Path, base_url: str):
        self.name, self.xml_path, self.base_url = name, xml_path, base_url
        tree = ET.parse(xml_path)
        root = tree.getroot()
        xml_dir = xml_path.resolve().parent
        bp = root.find("BasePath")
        base = _load_path(bp, xml_dir) if bp is not None else xml_dir
        seq = root.find("SequenceDescription")
        loader = seq.find("ImageLoader")
        if loader is None or loader.get("format") != "bdv.hdf5":
            raise ValueError(f"{xml_path}: BigDataServer serves bdv.hdf5 only")
        self.h5 = h5py.File(_load_path(loader.find("hdf5"), base), "r")
        self.setups = sorted(int(vs.findtext("id")) for vs in seq.find("ViewSetups").findall("ViewSetup"))
        self.timepoints = _timepoints(seq.find("Timepoints"))

        # Hdf5ImageLoader.SetupImgLoader: mipmap info and cell type per setup
        self.resolutions, self.subdivisions, self.memtype = {}, {}, {}
        for s in self.setups:
            self.resolutions[s] = [[float(v) for v in row] for row in self.h5[f"s{s:02d}/resolutions"][()]]
            self.subdivisions[s] = [[int(v) for v in row] for row in self.h5[f"s{s:02d}/subdivisions"][()]]
            label = self.h5[f"s{s:02d}"].attrs.get("dataType")
            label = label.decode() if isinstance(label, bytes) else label
            self.memtype[s] = (np.dtype(label) if label in ("int16", "uint16")
                               else None if label in N5_TYPES else np.dtype("int16"))

        # buildRemoteDatasetXML: same document, remote image loader in place of the local one
        remote = ET.Element("ImageLoader", {"format": "bdv.remote"})
        ET.SubElement(remote, "baseUrl").text = base_url
        remote.tail = loader.tail
        seq[list(seq).index(loader)] = remote
        self.xml = jdom_pretty(root).encode()
        self.init_json = self._metadata_json().encode()
        base_name = str(xml_path)[:-4] if str(xml_path).endswith(".xml") else str(xml_path)
        settings = Path(base_name + ".settings.xml")
        self.settings = jdom_pretty(ET.parse(settings).getroot()).encode() if settings.is_file() else None

    def close(self):
        self.h5.close()

    def cells(self, t: int, s: int, level: int) -> h5py.Dataset | None:
        try:
            obj = self.h5.get(f"t{t:05d}/s{s:02d}/{level}/cells")
        except (KeyError, OSError):  # broken external link: H5Oget_info fails in Java too
            return None
        return obj if isinstance(obj, h5py.Dataset) else None

    def dims_and_existence(self, t: int, s: int, level: int) -> str:
        """HDF5Access.getDimsAndExistence as Gson writes it (null blockSize omitted)."""
        ds = self.cells(t, s, level)
        if ds is None:
            return '{"dimensions":[1,1,1],"exists":false}'
        block = f',"blockSize":{_json_list(ds.chunks[::-1])}' if ds.chunks else ""
        return f'{{"dimensions":{_json_list(ds.shape[::-1])}{block},"exists":true}}'

    def _metadata_json(self) -> str:
        """RemoteImageLoaderMetaData through Gson with enableComplexMapKeySerialization:
        fields in declaration order, HashMaps in Java's iteration order, Integer keys as
        strings, ViewLevelId keys (objects) turn the map into [[key, value], ...]."""
        infos, views = [], []
        for s in self.setups:
            res = self.resolutions[s]
            # MipmapTransforms.getMipmapTransformDefault, row-packed by AffineTransform3D.toArray
            transforms = []
            for r in res:
                m = [0.0] * 12
                for d in range(3):
                    m[4 * d + d], m[4 * d + 3] = r[d], 0.5 * (r[d] - 1)
                transforms.append(m)
            info = (f'{{"resolutions":{_json_list(res, lambda row: _json_list(row, java_double))},'
                    f'"transforms":{_json_list(transforms, lambda row: _json_list(row, java_double))},'
                    f'"subdivisions":{_json_list(self.subdivisions[s], _json_list)},'
                    f'"maxLevel":{len(res) - 1}}}')
            infos.append((s, info))
            for t in self.timepoints:
                for level in range(len(res)):
                    views.append((t, s, level))
        infos = java_hashmap_order(infos, [s for s, _ in infos])
        views = java_hashmap_order(views, [lv + 1024 * (s + 32768 * t) for t, s, lv in views])
        setup_map = "{" + ",".join(f'"{s}":{info}' for s, info in infos) + "}"
        view_list = ",".join(f'[{{"timepointId":{t},"setupId":{s},"level":{lv}}},'
                             f'{self.dims_and_existence(t, s, lv)}]' for t, s, lv in views)
        return (f'{{"maxNumTimepoints":{self.timepoints[-1] + 1},"maxNumSetups":{self.setups[-1] + 1},'
                f'"maxNumLevels":{max(len(r) for r in self.resolutions.values())},'
                f'"perSetupMipmapInfo":{setup_map},"dimsAndExistence":[{view_list}]}}')

    def cell(self, index: int, t: int, s: int, level: int) -> bytes:
        """CellHandler's cell: the cell grid of the level's image (HDF5 chunk size, else the
        subdivisions), the flat index x fastest, the edge-clipped block as big-endian shorts."""
        if s not in self.memtype:
            raise ServerError(f"no setup {s}")  # getSetupImgLoader(setup) is null
        memtype = self.memtype[s]
        ds = self.cells(t, s, level)
        if ds is None or memtype is None:
            raise ServerError("missing image data or not 16-bit")  # the cast to a short cell fails
        dims = ds.shape[::-1]
        if ds.chunks:
            size = ds.chunks[::-1]
        elif level < len(self.subdivisions[s]):
            size = self.subdivisions[s][level]
        else:
            raise ServerError(f"no subdivisions for level {level}")
        grid = [-(-n // c) for n, c in zip(dims, size)]
        if not 0 <= index < math.prod(grid):
            raise ServerError(f"cell {index} is off the grid {grid}")
        pos = []
        for n in grid:  # IntervalIndexer.indexToPosition
            index, p = divmod(index, n)
            pos.append(p)
        lo = [p * c for p, c in zip(pos, size)]
        hi = [min(a + c, n) for a, c, n in zip(lo, size, dims)]
        block = ds[tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1]))]
        if block.dtype != memtype:
            # H5Dread converts; JHDF5's transfer list aborts on overflow
            info = np.iinfo(memtype)
            if block.dtype.kind not in "iu" or (block.size and (block.min() < info.min or block.max() > info.max)):
                raise ServerError(f"cannot read {block.dtype} as {memtype}")
        return block.astype(memtype.newbyteorder(">")).tobytes()


# --------------------------------------------------------------------------- HTTP


class _BdvHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Jetty
    timeout = 30  # idle keep-alive connections must not pin handler threads forever
    server: "BdvServer"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    def _reply(self, status: int, ctype: str | None, payload: bytes, body: bool, headers=()):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body and payload:
            self.server._count_bytes(len(payload))  # before the client can see them: no race
            self.wfile.write(payload)

    def _serve(self, body: bool):
        srv = self.server
        raw_path, _, query = self.path.partition("?")
        path = urllib.parse.unquote(raw_path.partition("#")[0])
        srv._record(self.command, path, query)
        context, _, rest = path[1:].partition("/")
        if context != "json" and context not in srv.datasets:
            return self._reply(404, "text/plain", b"Not Found", body)
        if path == "/" + context:  # ContextHandler: a context request must end with /
            host = self.headers.get("Host") or srv.url.split("//", 1)[1]
            location = f"http://{host}{raw_path}/" + (f"?{query}" if query else "")
            return self._reply(302, None, b"", body, [("Location", location)])
        if context == "json":
            return self._reply(200, "application/json", srv.dataset_list().encode(), body)
        try:
            status, ctype, payload = self._dataset(srv.datasets[context], "/" + rest, query)
        except ServerError as e:
            status, ctype, payload = 500, "text/plain", f"Server Error: {e}".encode()
        self._reply(status, ctype, payload, body)

    def _dataset(self, ds: _Dataset, target: str, query: str):
        """CellHandler.doHandle; (status, content type, payload)."""
        if target == "/settings":
            return (200, XML_TYPE, ds.settings) if ds.settings is not None else (404, "text/plain", b"Not Found")
        if target == "/png":
            return 404, "text/plain", b"Not Found"
        p = urllib.parse.parse_qs(query, keep_blank_values=True).get("p")
        if p is None:
            return 200, XML_TYPE, ds.xml
        parts = p[0].split("/")
        while len(parts) > 1 and parts[-1] == "":  # String.split drops trailing empty strings
            parts.pop()
        if parts == [""] and p[0]:
            raise ServerError("ArrayIndexOutOfBoundsException")  # "/".split("/") is empty
        if parts[0] == "init":
            return 200, JSON_TYPE, ds.init_json
        if parts[0] != "cell":
            return 404, "text/plain", b"Not Found"
        if len(parts) < 5:
            raise ServerError("ArrayIndexOutOfBoundsException")
        index, t, s, level = (_parse_int(v) for v in parts[1:5])
        with self.server._h5_lock:  # h5py is not safe across threads
            return 200, "application/octet-stream", ds.cell(index, t, s, level)


def _parse_int(s: str) -> int:
    """Integer.parseInt: optional sign, digits, within int32."""
    if not re.fullmatch(r"[+-]?[0-9]+", s) or not -(2**31) <= int(s) < 2**31:
        raise ServerError(f"NumberFormatException: {s!r}")
    return int(s)


class BdvServer(RequestCounters, LoopbackHTTPServer):
    """BigDataServer on an ephemeral 127.0.0.1 port for `datasets` {name: dataset XML path}.

    Counters as RangeHTTPServer: requests, bytes_served, log [(method, path, query)],
    paths, queries, reset_counters(). HDF5 files stay open until stop()."""

    def __init__(self, datasets: dict[str, os.PathLike | str]):
        for name in datasets:
            if name in RESERVED or not name or "/" in name:
                raise ValueError(f"cannot use dataset name {name!r}")
        self._start_counting()
        self._h5_lock = threading.Lock()
        super().__init__(_BdvHandler)
        self.datasets: dict[str, _Dataset] = {}
        try:
            for name, xml in datasets.items():
                self.datasets[name] = _Dataset(name, Path(xml), self.dataset_url(name))
        except BaseException:
            self.stop()
            raise

    def dataset_url(self, name: str) -> str:
        """The dataset's baseUrl, as in the served XML (with the trailing slash)."""
        return f"{self.url}/{name}/"

    def dataset_list(self) -> str:
        """JsonDatasetListHandler: Gson JsonWriter with a tab indent, datasets in the
        iteration order of BigDataServer's HashMap of names."""
        names = java_hashmap_order(list(self.datasets), [java_string_hash(n) for n in self.datasets])
        doc = {n: {"id": n, "description": "NotImplemented", "thumbnailUrl": self.dataset_url(n) + "png",
                   "datasetUrl": self.dataset_url(n)} for n in names}
        return json.dumps(doc, indent="\t", ensure_ascii=False)

    def stop(self) -> None:
        super().stop()
        with self._h5_lock:
            for ds in getattr(self, "datasets", {}).values():
                ds.close()

    @property
    def queries(self) -> list[str]:
        return [q for _, _, q in self.log]
