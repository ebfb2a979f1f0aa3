"""What a source format is to the registry: how it is recognised and how it is opened.

A format is recognised from the URL and/or the root's metadata documents. Every format's
root documents are fetched together in one batch, the first time any format looks at them
(formats recognised by the URL alone, such as a BigDataViewer XML, cost no fetch of the root).
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterable, Mapping

from .base import Group, Image
from .errors import BadMetadata, ChunkReadError, SourceNotFound
from .storage import Store, parse_json
from .urls import has_scheme


def _no_documents(url: str) -> tuple[str, ...]:
    return ()


class Source:
    """A URL being opened: its store, its name and its root documents, each made on first use."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None, concurrency: int,
                 documents: Iterable[str], raw_documents: Iterable[str]):
        self.url, self.storage_options, self.concurrency = url, storage_options, concurrency
        # The root's own documents parse before its children's (labels/...): with two broken
        # documents, the error names the same one whichever formats are listed.
        self._json_keys = sorted(dict.fromkeys(documents), key=lambda k: k.count("/"))
        self._raw_keys = [k for k in dict.fromkeys(raw_documents) if k not in self._json_keys]

    @cached_property
    def store(self) -> Store:
        return Store(self.url, self.storage_options, self.concurrency)

    @cached_property
    def name(self) -> str:
        return posixpath.basename(self.store.url.rstrip("/")) or "image"

    @cached_property
    def _batch(self) -> dict[str, bytes | None]:
        return self.reach(self._json_keys + self._raw_keys)

    def raw(self, key: str) -> bytes | None:
        """A root document's bytes; one not in the first batch is fetched on its own."""
        if key not in self._batch:
            self._batch.update(self.reach([key]))
        return self._batch[key]

    @cached_property
    def docs(self) -> dict[str, dict | None]:
        """The root's JSON documents (None where absent), parsed together: a broken one is an
        error whichever format would have read it."""
        batch = self._batch
        return {k: None if batch[k] is None else parse_json(batch[k], f"{self.store.url}/{k}") for k in self._json_keys}

    @property
    def has_documents(self) -> bool:
        return any(v is not None for v in self.docs.values())

    def mtime(self, key: str) -> float:
        return self.store.mtime(key) or 0.0

    def reach(self, keys: list[str]) -> dict[str, bytes | None]:
        """A first fetch of a mount: failing it means the source cannot be reached at all."""
        try:
            return self.store.get_many(keys)
        except ChunkReadError as exc:
            message = str(exc).replace("cannot read", "cannot reach", 1)
            if "NoCredentialsError" in message:
                message += " (for a public bucket, use anonymous access: --anon)"
            raise SourceNotFound(message) from None


def errors_at_store_url(source: Source) -> str:
    return source.store.url


@dataclass(frozen=True)
class Format:
    """One entry of the registry (adapters/registry.py).

    - documents: the root JSON documents it reads (parsed into `Source.docs`);
    - raw_documents: other root documents worth fetching in the first batch, by URL;
    - recognise: whether the source is of this format (the first format that says so opens it);
    - open: the Image or Group; None when only opening can tell (formats found by probing or
      listing), and the next format is tried;
    - errors_at: where malformed metadata is reported (None: the opener reports its own).
    """

    name: str
    recognise: Callable[[Source], bool]
    open: Callable[[Source], Image | Group | None]
    documents: tuple[str, ...] = ()
    raw_documents: Callable[[str], tuple[str, ...]] = _no_documents
    errors_at: Callable[[Source], str] | None = errors_at_store_url

    @contextlib.contextmanager
    def reporting_malformed(self, source: Source):
        """Metadata of a shape no check foresaw: still one clear line, never a traceback."""
        try:
            yield
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
            if self.errors_at is None:
                raise
            raise BadMetadata(f"{self.errors_at(source)}: malformed metadata ({type(exc).__name__}: {exc})") from None


def is_http(url: str) -> bool:
    return has_scheme(url) and url.split("://", 1)[0].lower() in ("http", "https")

