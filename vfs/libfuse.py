"""Loading mfusepy on libfuse3, reads straight into libfuse's buffer, and sizing the mount's
kernel readahead.

With libfuse2 the kernel sends reads of at most 128 KiB; libfuse3 negotiates up to 1 MiB,
so serving a GiB costs 1,024 Python calls instead of 8,192. The kernel only sends reads
that large when the mount's readahead window is as large (its default is 128 KiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger("ngffmount")

READAHEAD_KB = 1024  # libfuse3's largest read request (256 pages)


def load_mfusepy():
    """mfusepy, on libfuse3 when it is installed (mfusepy picks libfuse2 first, at import)."""
    if "mfusepy" not in sys.modules and not os.environ.get("FUSE_LIBRARY_PATH"):
        path = ctypes.util.find_library("fuse3")
        if path:
            os.environ["FUSE_LIBRARY_PATH"] = path
            try:
                import mfusepy  # noqa: F401
            finally:
                del os.environ["FUSE_LIBRARY_PATH"]  # not inherited by anything we start
    import mfusepy

    return mfusepy


def fuse_class():
    """mfusepy's FUSE, with reads written into the reply buffer libfuse hands over.

    mfusepy's own read takes the data the operation returns and copies it into that buffer:
    one more copy of every byte served (1 GiB per GiB), after the pixels were assembled."""
    mfusepy = load_mfusepy()

    class FUSE(mfusepy.FUSE):
        def read(self, path, buf, size, offset, fip):
            fh = fip.contents if self.raw_fi else fip.contents.fh
            out = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
            name = None if path is None else path.decode(self.encoding, self.errors)
            return self.operations.read_into(name, out, offset, fh)

    return FUSE


def raise_readahead(mountpoint: str) -> None:
    """Best effort: the kernel's readahead for this mount (needs root; else reads stay small)."""
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path) as f:
            if int(f.read()) >= READAHEAD_KB:
                return
        with open(path, "w") as f:
            f.write(str(READAHEAD_KB))
    except (OSError, ValueError) as exc:
        log.info("kernel readahead of %s left as it was (%s)", mountpoint, exc.strerror or exc)
