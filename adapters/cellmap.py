"""A dataset folder without metadata of its own, as Cellmap publishes one: N5 containers
(`<dataset>.n5/`) beside Neuroglancer precomputed volumes (`neuroglancer/em/<name>.precomputed/`).

Finding them needs listing: on HTTP (and S3 where listing is refused) nothing is found, and
the caller reports the folder as holding no image.
"""

from __future__ import annotations

import logging
import posixpath

from . import n5, precomputed
from .base import Group, Image
from .errors import NgffMountError
from .storage import Store, parse_json

log = logging.getLogger("ngffmount")
MAX_DEPTH = 3  # neuroglancer/em/<name>.precomputed
MAX_LISTED = 256  # folders listed at most: a bucket's root must not cost thousands of listings
SUFFIXES = (".n5", ".precomputed")


def open_dataset_folder(store: Store, name: str) -> Group | None:
    """The N5 containers and precomputed volumes under a folder, at their paths; None when
    there is none (or the folder cannot be listed). One that cannot be opened is left out
    with a log line."""
    found = _containers(store)
    if not found:
        return None
    keys = {path: posixpath.join(path, _document(path)) for path in found}
    docs = store.get_many(list(keys.values()))
    group = Group(name, format="dataset folder")
    for path, key in keys.items():
        try:
            node = _open(store.child(path), path, docs[key], store.mtime(key) or 0.0)
        except (NgffMountError, TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
            log.warning("skipping %s/%s: %s", store.url, path, exc)
            continue
        _place(group, path, node)
    return group if group.images or group.groups else None


def _is_n5(path: str) -> bool:
    return path.lower().endswith(".n5")


def _document(path: str) -> str:
    return n5.ATTRS if _is_n5(path) else precomputed.INFO


def _containers(store: Store) -> list[str]:
    found, frontier, listed = [], [""], 0
    for _ in range(MAX_DEPTH):
        below = []
        for parent in frontier[:MAX_LISTED - listed]:
            listed += 1
            for d in store.list_dirs(parent) or []:
                path = posixpath.join(parent, d)
                (found if d.lower().endswith(SUFFIXES) else below).append(path)
        frontier = below
    return found


def _open(store: Store, path: str, raw: bytes | None, mtime: float) -> Image | Group:
    name = posixpath.basename(path)
    where = f"{store.url}/{_document(path)}"
    if _is_n5(path):
        return n5.open_group(store, parse_json(raw, where) if raw is not None else {}, name, mtime)
    if raw is None:
        raise NgffMountError(f"{store.url}: a .precomputed folder without info")
    return precomputed.open_precomputed(store, parse_json(raw, where), name, mtime)


def _place(group: Group, path: str, node: Image | Group) -> None:
    if isinstance(node, Image):
        group.add(path, node)
        return
    *parents, leaf = path.split("/")
    for part in parents:
        group = group.groups.setdefault(part, Group(part))
    node.name = leaf
    group.groups[leaf] = node
