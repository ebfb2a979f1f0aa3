"""Every view, in the order the tree lists them (views with LEVEL in the name are listed
for each level in turn, before the views of the whole image). A new view is a module that
declares a view.View, plus one line here.
"""

from __future__ import annotations

from .bdv_views import BDV_H5, BDV_XML
from .crop_views import CROPS
from .hdf5_views import IMAGE_H5, LEVEL_H5
from ..tree.nodes import DirNode
from .ortho_views import XZ_PLANES, YZ_PLANES
from .preview import PREVIEW
from .pyramid_views import PYRAMID_OME_TIFF
from .tiff_views import IMAGEJ_STACK, LEVEL_OME_TIFF, PLANE_FILES
from .view import View

# `labels/`: each label image of the image, with a tree of its own (not listed in info.json).
LABELS = View("labels/", lambda ctx: None if ctx.image.labels else "no labels",
              lambda ctx: DirNode(ctx.mtime, {name: ctx.image_dir(label) for name, label in ctx.image.labels.items()}))

VIEWS: list[View] = [
    PLANE_FILES,       # sN/
    IMAGEJ_STACK,      # sN.tif
    LEVEL_OME_TIFF,    # sN.ome.tif
    LEVEL_H5,          # sN.h5
    XZ_PLANES,         # sN.xz/
    YZ_PLANES,         # sN.yz/
    PYRAMID_OME_TIFF,  # image.ome.tif
    IMAGE_H5,          # image.h5
    BDV_XML,           # bdv.xml
    BDV_H5,            # bdv.h5
    CROPS,             # crop/
    PREVIEW,           # preview.png
    LABELS,            # labels/
]
