"""With --revalidate: the source's metadata is read again every AGE. An array whose metadata
changed (shape, dtype, chunking, codecs) is never served as the old tree with new chunks:
its reads fail with EIO, and the log says once that a remount is needed."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from ...adapters import Group, Image, redact
from .cache_commands import _images

log = logging.getLogger("ngffmount")


def watch_metadata(reopen: Callable[[], Image | Group], tree: Image | Group, engine, interval: float) -> threading.Event:
    """Start a daemon thread that compares `reopen()` with `tree` every `interval` seconds and
    marks changed arrays stale in `engine`. Set the returned event to stop it."""
    stop = threading.Event()

    def run() -> None:
        failing = False
        while not stop.wait(interval):
            try:
                changes = changed_arrays(tree, reopen())
            except Exception as exc:  # unreachable or broken for now: keep serving what we have
                if not failing:
                    log.warning("re-reading the metadata failed (reads go on with the mounted tree): %s",
                                redact(str(exc) or type(exc).__name__))
                failing = True
                continue
            failing = False
            for token in engine.mark_stale(changes):
                log.error("%s; its reads fail with EIO: remount to see the new array", changes[token])

    threading.Thread(target=run, name="metadata-watch", daemon=True).start()
    return stop


def changed_arrays(old: Image | Group, new: Image | Group) -> dict[str, str]:
    """Cache tokens of `old`'s arrays whose metadata differs in `new` (or that are gone), each
    with a line saying what changed. Only arrays whose token is known without a request are
    compared (a BigDataViewer file is opened when first read)."""
    fresh = {(path, i): level for path, image in _with_labels(new) for i, level in enumerate(image.levels)}
    changes = {}
    for path, image in _with_labels(old):
        for i, level in enumerate(image.levels):
            token = _known_token(level)
            if token is None:
                continue
            name = f"{image.source_url or '.'}: {path}s{i}"
            other = fresh.get((path, i))
            if other is None:
                changes[token] = f"{name} is gone from the source"
            elif other.cache_token != token:
                changes[token] = f"{name} changed at the source ({_describe_change(level, other)})"
    return changes


def _with_labels(node: Image | Group):
    for path, image in _images(node):
        yield path, image
        for name, label in image.labels.items():
            yield f"{path}labels/{name}/", label


def _known_token(level) -> str | None:
    state = vars(level)
    return state.get("cache_token") or state.get("_token")


def _describe_change(old, new) -> str:
    parts = []
    for what in ("shape", "dtype", "chunk_shape"):
        a, b = getattr(old, what, None), getattr(new, what, None)
        if a != b:
            parts.append(f"{what} {_show(a)} -> {_show(b)}")
    return ", ".join(parts) or "array metadata"


def _show(value) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)
