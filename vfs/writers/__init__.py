"""File-format writers the views use: TIFF structure, synthesized HDF5, OME-XML."""
