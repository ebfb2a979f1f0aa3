"""VirtualFS: paths to nodes, attributes and reads. It knows nothing about FUSE."""

from __future__ import annotations

import errno
import os
import stat

from ..tree.nodes import DirNode, FileNode, Node
from ..tree.virtualfile import read_bytes


class VirtualFS:
    def __init__(self, root: DirNode):
        self.root = root
        self.uid, self.gid = os.getuid(), os.getgid()

    def lookup(self, path: str) -> Node:
        node: Node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            child = node.child(part) if isinstance(node, DirNode) else None
            if child is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            node = child
        return node

    def getattr(self, path: str) -> dict:
        """stat() fields from metadata alone: never reads a chunk."""
        node = self.lookup(path)
        mtime_ns = int(node.mtime * 1e9)
        attrs = {"st_uid": self.uid, "st_gid": self.gid, "st_mtime": mtime_ns, "st_ctime": mtime_ns, "st_atime": mtime_ns}
        if isinstance(node, DirNode):
            attrs.update(st_mode=stat.S_IFDIR | 0o555, st_nlink=2, st_size=0)
        else:
            size = node.size
            attrs.update(st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=size, st_blocks=-(-size // 512))
        return attrs

    def readdir(self, path: str) -> list[str]:
        node = self.lookup(path)
        if not isinstance(node, DirNode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        return list(node.names())

    def open(self, path: str) -> FileNode:
        node = self.lookup(path)
        if not isinstance(node, FileNode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        return node

    def read(self, path: str, size: int, offset: int) -> bytes:
        """As a FUSE read: into a buffer of the size asked."""
        return read_bytes(self.open(path).open(), offset, size)
