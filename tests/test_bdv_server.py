"""The loopback BigDataServer (tests/bdv_server.py) against what bigdataviewer-server sends and
what bdv-core's RemoteImageLoader expects, on BDV XML/HDF5 datasets written by pybdv."""

from __future__ import annotations

import http.client
import itertools
import json
import urllib.parse
import warnings
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pybdv
import pytest

from bdv_server import BdvServer, java_double, java_hashmap_order, java_string_hash
from zarr_fixtures import pattern

SHAPE = (37, 45, 53)  # z, y, x: no multiple of CHUNKS, so every level has edge cells
CHUNKS = (10, 16, 24)  # anisotropic, so a swapped axis shows
SETUPS, TIMEPOINTS, LEVELS = (0, 1), (0, 1), 3


def volume(setup: int, timepoint: int) -> np.ndarray:
    # setup 1 lies above 32767: stored as negative int16, must come back as uint16
    return pattern(SHAPE, "uint16", seed=40000 * setup + 100 * timepoint)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bdv")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Setup .* is present", UserWarning)  # pybdv, per added timepoint
        for s, t in itertools.product(SETUPS, TIMEPOINTS):
            pybdv.make_bdv(volume(s, t), str(root / "embryo.h5"), downscale_factors=[[2, 2, 2], [2, 2, 2]],
                           downscale_mode="mean", resolution=[2.0, 0.5, 0.5], unit="micrometer",
                           setup_id=s, timepoint=t, chunks=CHUNKS)
    pybdv.make_bdv(pattern((5, 7, 9), "uint16", seed=7), str(root / "small.h5"), setup_id=0, timepoint=0)
    (root / "small.settings.xml").write_text("<Settings><ViewerState><Sources/></ViewerState></Settings>")
    return {"embryo": root / "embryo.xml", "small": root / "small.xml"}


@pytest.fixture(scope="module")
def server(datasets):
    with BdvServer(datasets) as srv:
        yield srv


@pytest.fixture(scope="module")
def h5(datasets):
    with h5py.File(datasets["embryo"].with_suffix(".h5"), "r") as f:
        yield f


def get(url: str):
    """(status, headers, body) without following redirects or raising on errors."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""))
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


class RemoteClient:
    """What bdv-core's RemoteImageLoader does with a baseUrl: ?p=init once, then cells."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        status, _, body = get(base_url + "?p=init")
        assert status == 200
        meta = json.loads(body)
        self.mipmap = {int(k): v for k, v in meta["perSetupMipmapInfo"].items()}
        self.dims = {(k["timepointId"], k["setupId"], k["level"]): v for k, v in meta["dimsAndExistence"]}

    def cell_size(self, s, level):
        return self.mipmap[s]["subdivisions"][level]

    def cells_dimensions(self, t, s, level):
        """RemoteImageLoaderMetaData.createCellsDimensions."""
        dims = self.dims[(t, s, level)]["dimensions"]
        return [(d + c - 1) // c for d, c in zip(dims, self.cell_size(s, level))]

    def cell_index(self, t, s, level, min_):
        """RemoteImageLoader.getCellIndex: IntervalIndexer.positionToIndex, x fastest."""
        cx, cy, cz = (m // c for m, c in zip(min_, self.cell_size(s, level)))
        nx, ny, _ = self.cells_dimensions(t, s, level)
        return cx + nx * (cy + ny * cz)

    def cells(self, t, s, level):
        """(min, dims) of every cell of the CellGrid the client builds, x fastest."""
        dims, size = self.dims[(t, s, level)]["dimensions"], self.cell_size(s, level)
        nx, ny, nz = self.cells_dimensions(t, s, level)
        for cz, cy, cx in itertools.product(range(nz), range(ny), range(nx)):
            min_ = [cx * size[0], cy * size[1], cz * size[2]]
            yield min_, [min(c, d - m) for c, d, m in zip(size, dims, min_)]

    def load(self, t, s, level, dims, min_) -> np.ndarray:
        """RemoteVolatileShortArrayLoader.loadArray; returns the cell as (z, y, x) uint16."""
        index = self.cell_index(t, s, level, min_)
        url = "%s?p=cell/%d/%d/%d/%d/%d/%d/%d/%d/%d/%d" % (self.base_url, index, t, s, level, *dims, *min_)
        status, headers, body = get(url)
        assert status == 200 and headers["Content-Type"] == "application/octet-stream"
        n = dims[0] * dims[1] * dims[2]
        assert len(body) == 2 * n  # Java reads n shorts; a short body would leave zeros
        return np.frombuffer(body, ">u2").astype(np.uint16).reshape(dims[::-1])


@pytest.fixture(scope="module")
def client(server):
    return RemoteClient(server.dataset_url("embryo"))


def test_context_redirects(server):
    status, headers, _ = get(server.url + "/embryo")
    assert status == 302 and headers["Location"] == server.dataset_url("embryo")
    status, headers, _ = get(server.url + "/embryo?p=init")
    assert status == 302 and headers["Location"] == server.dataset_url("embryo") + "?p=init"
    status, headers, _ = get(server.url + "/json")
    assert status == 302 and headers["Location"] == server.url + "/json/"


def test_dataset_xml_points_at_the_server(server, datasets):
    status, headers, body = get(server.dataset_url("embryo"))
    assert status == 200 and headers["Content-Type"] == "application/xml;charset=utf-8"
    text = body.decode()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\r\n<SpimData version="0.2">\r\n')
    assert text.endswith("</SpimData>\r\n") and "\n" not in text.replace("\r\n", "")
    served = ET.fromstring(body)
    loader = served.find("SequenceDescription/ImageLoader")
    assert loader.attrib == {"format": "bdv.remote"}
    assert [c.tag for c in loader] == ["baseUrl"] and loader.findtext("baseUrl") == server.dataset_url("embryo")

    def without_loader(root):
        seq = root.find("SequenceDescription")
        seq.remove(seq.find("ImageLoader"))
        for el in root.iter():
            el.text = (el.text or "").strip() or None
            el.tail = None
        return ET.tostring(root)

    assert without_loader(served) == without_loader(ET.parse(datasets["embryo"]).getroot())
    # Any target in the context but /settings and /png answers the XML.
    assert get(server.dataset_url("embryo") + "anything/else")[2] == body


def test_init_metadata_is_what_gson_writes(server, h5):
    status, headers, body = get(server.dataset_url("embryo") + "?p=init")
    assert status == 200 and headers["Content-Type"] == "application/json;charset=utf-8"
    assert b" " not in body and b"\n" not in body  # Gson's compact output
    meta = json.loads(body)
    assert list(meta) == ["maxNumTimepoints", "maxNumSetups", "maxNumLevels", "perSetupMipmapInfo",
                          "dimsAndExistence"]
    assert (meta["maxNumTimepoints"], meta["maxNumSetups"], meta["maxNumLevels"]) == (2, 2, LEVELS)

    # HashMap<Integer, MipmapInfo>: simple keys, so a JSON object with string keys.
    assert list(meta["perSetupMipmapInfo"]) == ["0", "1"]
    for s in SETUPS:
        info = meta["perSetupMipmapInfo"][str(s)]
        assert list(info) == ["resolutions", "transforms", "subdivisions", "maxLevel"]
        res = h5[f"s{s:02d}/resolutions"][()].astype(float).tolist()
        assert info["resolutions"] == res == [[1.0] * 3, [2.0] * 3, [4.0] * 3]
        assert info["subdivisions"] == h5[f"s{s:02d}/subdivisions"][()].tolist()
        assert info["subdivisions"][0] == list(CHUNKS[::-1])
        # MipmapTransforms.getMipmapTransformDefault, AffineTransform3D.toArray (row-packed)
        for r, m in zip(res, info["transforms"]):
            assert m == [r[0], 0, 0, (r[0] - 1) / 2, 0, r[1], 0, (r[1] - 1) / 2, 0, 0, r[2], (r[2] - 1) / 2]
        assert info["maxLevel"] == LEVELS - 1
    assert b'"transforms":[[1.0,0.0,0.0,0.0,0.0,1.0,0.0,0.0,0.0,0.0,1.0,0.0],[2.0,0.0,0.0,0.5,' in body

    # HashMap<ViewLevelId, DimsAndExistence>: complex keys, so [[key, value], ...].
    pairs = meta["dimsAndExistence"]
    assert all(isinstance(p, list) and len(p) == 2 for p in pairs)
    for key, value in pairs:
        assert list(key) == ["timepointId", "setupId", "level"]
        assert list(value) == ["dimensions", "blockSize", "exists"]
        cells = h5[f"t{key['timepointId']:05d}/s{key['setupId']:02d}/{key['level']}/cells"]
        assert value == {"dimensions": list(cells.shape[::-1]), "blockSize": list(cells.chunks[::-1]),
                         "exists": True}
    # Java's HashMap order: hashCode level + 1024*(setup + 32768*t) puts each level in one
    # bucket of the 16, filled in insertion order (setup, then timepoint).
    keys = [(k["timepointId"], k["setupId"], k["level"]) for k, _ in pairs]
    assert keys == [(t, s, lv) for lv in range(LEVELS) for s in SETUPS for t in TIMEPOINTS]


def test_every_cell_matches_hdf5(client, h5, server):
    server.reset_counters()
    fetched = 0
    for t, s, level in itertools.product(TIMEPOINTS, SETUPS, range(LEVELS)):
        cells = h5[f"t{t:05d}/s{s:02d}/{level}/cells"]
        whole = np.zeros(cells.shape, np.uint16)
        for min_, dims in client.cells(t, s, level):
            got = client.load(t, s, level, dims, min_)
            want = cells[tuple(slice(m, m + d) for m, d in zip(min_[::-1], dims[::-1]))].view(np.uint16)
            np.testing.assert_array_equal(got, want)
            whole[tuple(slice(m, m + d) for m, d in zip(min_[::-1], dims[::-1]))] = got
            fetched += 1
        if level == 0:  # the cells tile the image and give back pybdv's uint16 input
            np.testing.assert_array_equal(whole, volume(s, t))
    assert fetched == len(TIMEPOINTS) * len(SETUPS) * (4 * 3 * 3 + 2 * 2 * 2 + 1)
    assert server.requests == fetched and all(q.startswith("p=cell/") for q in server.queries)


def test_edge_cell_of_another_view(client, server):
    # t=1, setup=1, level 0: the last cell, clipped in every axis
    min_, dims = [48, 32, 30], [53 - 48, 45 - 32, 37 - 30]
    assert client.cell_index(1, 1, 0, min_) == 2 + 3 * (2 + 3 * 3) == 35
    got = client.load(1, 1, 0, dims, min_)
    np.testing.assert_array_equal(got, volume(1, 1)[30:, 32:, 48:])
    assert got.min() > 32767
    # CellHandler reads nothing after the level: bogus or missing dims and min change nothing.
    base = server.dataset_url("embryo") + "?p=cell/35/1/1/0"
    expected = got.astype(">u2").tobytes()
    assert get(base)[2] == get(base + "/1/1/1/0/0/0")[2] == get(base + "/x/y")[2] == expected


def test_cells_concurrently(client, h5):
    cells = list(client.cells(0, 1, 0))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: client.load(0, 1, 0, c[1], c[0]), cells * 3))
    data = h5["t00000/s01/0/cells"]
    for (min_, dims), arr in zip(cells * 3, got):
        np.testing.assert_array_equal(arr, data[tuple(slice(m, m + d) for m, d in zip(min_[::-1], dims[::-1]))]
                                      .view(np.uint16))


@pytest.mark.parametrize("path, status", [
    ("/embryo/?p=cell/36/0/0/0", 500),  # off the 3x3x4 grid
    ("/embryo/?p=cell/-1/0/0/0", 500),
    ("/embryo/?p=cell/0/0/2/0", 500),  # no such setup
    ("/embryo/?p=cell/0/5/0/0", 500),  # no such timepoint: no image data
    ("/embryo/?p=cell/0/0/0/3", 500),  # no such level
    ("/embryo/?p=cell/x/0/0/0", 500),
    ("/embryo/?p=cell/0/0/0", 500),
    ("/embryo/?p=/", 500),
    ("/embryo/?p=cells/0/0/0/0", 404),  # neither cell nor init: not handled
    ("/embryo/?p=", 404),
    ("/embryo/settings", 404),  # no embryo.settings.xml
    ("/embryo/png", 404),
    ("/nope/", 404),
    ("/embryos/", 404),
    ("/", 404),
])
def test_errors(server, path, status):
    assert get(server.url + path)[0] == status


def test_settings(server):
    status, headers, body = get(server.dataset_url("small") + "settings")
    assert status == 200 and headers["Content-Type"] == "application/xml;charset=utf-8"
    assert body == (b'<?xml version="1.0" encoding="UTF-8"?>\r\n<Settings>\r\n  <ViewerState>\r\n'
                    b"    <Sources />\r\n  </ViewerState>\r\n</Settings>\r\n")


def test_dataset_list(server):
    status, headers, body = get(server.url + "/json/")
    assert status == 200 and headers["Content-Type"] == "application/json"
    listing = json.loads(body)
    assert sorted(listing) == ["embryo", "small"]
    for name, entry in listing.items():
        assert list(entry) == ["id", "description", "thumbnailUrl", "datasetUrl"]
        assert entry == {"id": name, "description": "NotImplemented",
                         "thumbnailUrl": server.dataset_url(name) + "png", "datasetUrl": server.dataset_url(name)}
    assert body.startswith(b'{\n\t"') and b'\n\t\t"id": "' in body  # JsonWriter with a tab indent
    assert get(server.url + "/json/anything")[2] == body


def test_counters(server):
    server.reset_counters()
    get(server.url + "/small/?p=init")
    assert server.requests == 1 and server.paths == ["/small/"] and server.queries == ["p=init"]
    assert server.bytes_served > 0


def test_reserved_names_are_refused(datasets):
    with pytest.raises(ValueError):
        BdvServer({"json": datasets["small"]})


def test_java_formatting():
    # Double.toString: plain in [1e-3, 1e7), else computerized scientific notation
    cases = {1.0: "1.0", 0.5: "0.5", 100.0: "100.0", 0.001: "0.001", 9999999.0: "9999999.0",
             1e7: "1.0E7", 1.5e-4: "1.5E-4", 123456789.0: "1.23456789E8", -2.5e10: "-2.5E10", 0.0: "0.0"}
    assert {x: java_double(x) for x in cases} == cases
    assert java_string_hash("hello") == 99162322 and java_string_hash("") == 0
    # Integer keys: hash = value, buckets of a 16-entry table; 16 collides with 0.
    assert java_hashmap_order([3, 16, 0, 1], [3, 16, 0, 1]) == [16, 0, 1, 3]
    assert java_hashmap_order(list(range(20)), list(range(20))) == list(range(20))  # table grew to 32
