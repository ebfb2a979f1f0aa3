"""The FUSE layer: a thin adapter over the tree (operations.py), libfuse loading and serving (libfuse.py), and paths to nodes (paths.py)."""
