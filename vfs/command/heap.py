"""The daemon's heap: buffers freed after a read are reused, not page-faulted in afresh.

Every read allocates and frees buffers of 0.1 to 8 MiB: encoded chunks, Blosc's scratch
space, the region handed to FUSE, libfuse's reply buffer. glibc gives each thread its own
heap, maps allocations that large with mmap and unmaps them on free, and trims its heaps,
so each read faulted its buffers in again from the kernel: ~3,000 page faults for one
8 MiB plane of a warm mount, ~6,400 for the first one, a third of its time.

So the daemon uses one heap for all threads, keeps allocations up to 32 MiB in it, keeps
what is freed, and touches PRETOUCH_BYTES of it at start: the first planes after a mount
are served from memory that is already mapped.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("ngffmount")

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed on 64-bit; larger chunks are rare
TRIM_THRESHOLD = 256 << 20  # free memory kept at the heap's top, beyond the pretouched part
PRETOUCH_BYTES = 64 << 20
_PIECE = 16 << 20


def keep_freed_memory(pretouch: int = PRETOUCH_BYTES) -> bool:
    """Set the heap up as above. Call before the process starts any thread: threads that
    already have a heap keep it. False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc, free = libc.mallopt, libc.malloc, libc.free
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    malloc.argtypes, malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
    free.argtypes, free.restype = [ctypes.c_void_p], None
    settings = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD + pretouch))
    if not all(mallopt(param, value) == 1 for param, value in settings):
        log.info("heap left with the C library's defaults (mallopt refused)")
        return False
    # Pieces below the mmap threshold come from the heap; freed, they stay there as one block.
    pieces = [malloc(_PIECE) for _ in range(pretouch // _PIECE)]
    for piece in pieces:
        if piece:
            ctypes.memset(piece, 0, _PIECE)
    for piece in pieces:
        free(piece)
    return True
