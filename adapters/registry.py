"""Every source format, once, in the order they are tried.

Order matters where two formats could claim one source: a URL's suffix decides first (a
BigDataViewer XML, an Imaris file), then the root's documents (an OME-Zarr image before the
groups whose attributes it may share), and last the formats found only by probing or listing.
A new format is one module that defines its `Format` entry, plus one line here.
"""

from __future__ import annotations

from typing import Any, Mapping

from . import bdv, cellmap, imaris, n5, omezarr_groups, precomputed, zarr_plain
from .base import Group, Image
from .errors import NotAnImage
from .format import Format, Source

FORMATS: tuple[Format, ...] = (
    bdv.BDV_XML,
    imaris.IMARIS_FILE,
    bdv.BDV_SERVER,
    omezarr_groups.OME_ZARR_IMAGE,
    omezarr_groups.OME_ZARR_PLATE,
    omezarr_groups.BIOFORMATS2RAW,
    zarr_plain.ZARR_ARRAY,
    n5.N5_GROUP,
    precomputed.PRECOMPUTED_VOLUME,
    n5.N5_WITHOUT_ATTRIBUTES,
    cellmap.CELLMAP_FOLDER,
)


def open_with_format(url: str, storage_options: Mapping[str, Any] | None = None,
                     concurrency: int = 32) -> tuple[Format, Image | Group]:
    """The first format that recognises the source, and what it opened."""
    source = Source(url, storage_options, concurrency, (k for f in FORMATS for k in f.documents),
                    (k for f in FORMATS for k in f.raw_documents(url)))
    for fmt in FORMATS:
        with fmt.reporting_malformed(source):
            if fmt.recognise(source) and (opened := fmt.open(source)) is not None:
                return fmt, opened
    if not source.has_documents:
        raise NotAnImage(f"{source.store.url}: no image metadata found (looked for zarr.json, .zattrs, "
                         "attributes.json and info)")
    raise NotAnImage(f"{source.store.url}: Zarr metadata found, but no OME-Zarr multiscales in it")


def open_source(url: str, storage_options: Mapping[str, Any] | None = None, concurrency: int = 32) -> Image | Group:
    """Open a source by its metadata alone: an Image when the URL is an image, else a Group."""
    return open_with_format(url, storage_options, concurrency)[1]
