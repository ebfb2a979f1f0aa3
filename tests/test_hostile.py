"""Broken and hostile metadata: a clear error at mount (an NgffMountError), never a crash."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ngffmount.adapters import BadMetadata, NgffMountError, Unsupported, open_source
from ngffmount.cache.engine import ChunkEngine
from ngffmount.vfs.fuse.paths import VirtualFS
from ngffmount.vfs.tree.build import build_tree
from zarr_fixtures import pattern, write_ome_zarr

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


def replace_random_node(doc, data):
    """`doc` with one node anywhere in it (or the whole document) replaced by arbitrary JSON."""
    parent, key, node = None, None, doc
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
    value = data.draw(json_values)
    if parent is None:
        return value
    parent[key] = value
    return doc


def base_store(root: Path) -> tuple[dict, dict]:
    write_ome_zarr(root, pattern((2, 8, 8), "uint16"), "zyx", levels=1, chunks=(1, 4, 4))
    return json.loads((root / ".zattrs").read_text()), json.loads((root / "0" / ".zarray").read_text())


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: a.update(shape=[-1, 8, 8]), BadMetadata, "negative"),
        (lambda a: a.update(shape=[0, 8, 8]), BadMetadata, "empty dimension"),
        (lambda a: a.update(shape=[2**40, 2**40, 8]), Unsupported, "larger than"),
        (lambda a: a.update(chunks=[2**20, 2**20, 8]), Unsupported, "chunks of"),
        (lambda a: a.update(chunks=[1, 4]), BadMetadata, "do not match"),
        (lambda a: a.update(dtype="<U8"), Unsupported, "not a numeric"),
        (lambda a: a.update(dtype="nonsense"), BadMetadata, "unknown Zarr v2 dtype"),
        (lambda a: a.update(dimension_separator="|"), BadMetadata, "dimension_separator"),
        (lambda a: a.update(compressor={"id": "bomb"}), Unsupported, "'bomb' is not supported"),
        (lambda a: a.update(shape="big"), BadMetadata, "list of integers"),
    ],
)
def test_hostile_array_metadata(tmp_path, change, error, message):
    _, zarray = base_store(tmp_path)
    change(zarray)
    (tmp_path / "0" / ".zarray").write_text(json.dumps(zarray))
    with pytest.raises(error, match=message):
        open_source(str(tmp_path))


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b"\xff\xfe", b'{"multiscales": "x"}', b"null"])
def test_truncated_or_wrong_root_documents(tmp_path, raw):
    base_store(tmp_path)
    (tmp_path / ".zattrs").write_bytes(raw)
    with pytest.raises(NgffMountError):
        open_source(str(tmp_path))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from([".zattrs", "0/.zarray"]), data=st.data())
def test_fuzzed_metadata_never_crashes(target, data):
    """Replace one node anywhere in a valid document (or the document) with arbitrary JSON:
    open_source either works or raises one of our errors, a single line shown to the user."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        zattrs, zarray = base_store(root)
        doc = replace_random_node(zattrs if target == ".zattrs" else zarray, data)
        (root / target).write_text(json.dumps(doc))
        try:
            image = open_source(str(root))
        except NgffMountError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            # What opened must also build its tree and stat every file, from metadata alone.
            fs = VirtualFS(build_tree(image, ChunkEngine(memory_bytes=1 << 20)))
            for name in fs.readdir("/"):
                fs.getattr("/" + name)
            json.loads(fs.read("/info.json", 1 << 20, 0))
