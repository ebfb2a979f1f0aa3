"""The views of an image (TIFF, OME-TIFF, HDF5, BigDataViewer, crops, planes, preview) and their registry."""
