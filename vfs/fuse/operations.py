"""The FUSE adapter: a thin layer over VirtualFS that maps errors to errno values in one place.

Virtual files never change, so opens ask the kernel to keep their pages (keep_cache);
only dynamic files (stats.json) bypass the page cache (direct_io).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
from typing import Callable

from ...adapters import NgffMountError, redact
from ...adapters.errors import SourceChanged
from .paths import VirtualFS
from ..tree.virtualfile import read_bytes
from .libfuse import load_mfusepy

fuse = load_mfusepy()

log = logging.getLogger("ngffmount")

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if isinstance(exc, NotADirectoryError):
        return errno.ENOTDIR
    if isinstance(exc, IsADirectoryError):
        return errno.EISDIR
    return errno.EIO


class FuseOps(fuse.Operations):
    use_ns = True

    def __init__(self, vfs: VirtualFS, on_ready: Callable[[], None] | None = None, keep_cache: bool = True):
        """`keep_cache=False` (with --revalidate): the kernel drops a file's pages when it is
        opened again, so a reopened file shows revalidated chunks."""
        self.vfs = vfs
        self.keep_cache = keep_cache
        self.on_ready = on_ready
        self._handles: dict[int, object] = {}
        self._next_fh = itertools.count(1)
        self._lock = threading.Lock()

    def _call(self, what: str, path: str, fn, *args):
        try:
            return fn(*args)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise fuse.FuseOSError(_errno_of(exc)) from None
        except fuse.FuseOSError:
            raise
        except SourceChanged:  # logged once where the change was found
            raise fuse.FuseOSError(errno.EIO) from None
        except NgffMountError as exc:
            log.error("%s %s: %s", what, path, redact(str(exc)))
            raise fuse.FuseOSError(errno.EIO) from None
        except Exception as exc:  # a bug or an unexpected library error: EIO, and keep serving
            log.exception("%s %s failed: %s", what, path, redact(repr(exc)))
            raise fuse.FuseOSError(errno.EIO) from None

    # -- lifecycle -------------------------------------------------------------------
    def init(self, path):
        if self.on_ready is not None:
            threading.Thread(target=self.on_ready, name="ready", daemon=True).start()

    # -- reading -----------------------------------------------------------------------
    def getattr(self, path, fh=None):
        return self._call("getattr", path, self.vfs.getattr, path)

    def readdir(self, path, fh):
        return [".", "..", *self._call("readdir", path, self.vfs.readdir, path)]

    def open(self, path, fi):
        if fi.flags & WRITE_FLAGS:
            raise fuse.FuseOSError(errno.EROFS)
        node = self._call("open", path, self.vfs.open, path)
        vfile = self._call("open", path, node.open)
        with self._lock:
            fh = next(self._next_fh)
            self._handles[fh] = vfile
        fi.fh = fh
        fi.keep_cache = 0 if node.dynamic or not self.keep_cache else 1
        fi.direct_io = 1 if node.dynamic else 0
        return 0

    def read(self, path, size, offset, fi):
        """For mfusepy's stock FUSE class; libfuse.fuse_class() calls read_into instead."""
        return self._call("read", path, read_bytes, self._file(fi), offset, size)

    def read_into(self, path, out: memoryview, offset: int, fi) -> int:
        """Bytes from `offset` into libfuse's reply buffer; returns how many."""
        return self._call("read", path, self._file(fi).read_into, offset, out)

    def _file(self, fi):
        vfile = self._handles.get(fi.fh)
        if vfile is None:
            raise fuse.FuseOSError(errno.EBADF)
        return vfile

    def release(self, path, fi):
        with self._lock:
            self._handles.pop(fi.fh, None)
        return 0

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    def access(self, path, amode):
        self._call("access", path, self.vfs.lookup, path)
        if amode & os.W_OK:
            raise fuse.FuseOSError(errno.EROFS)
        return 0

    def getxattr(self, path, name, position=0):
        raise fuse.FuseOSError(errno.ENODATA)

    def listxattr(self, path):
        return []

    # -- everything that would write: read-only filesystem ------------------------------
    def _read_only(self, *args, **kwargs):
        raise fuse.FuseOSError(errno.EROFS)

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = _read_only
    setxattr = removexattr = symlink = truncate = unlink = utimens = write = _read_only
