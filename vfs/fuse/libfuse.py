"""Loading mfusepy on libfuse3, reads straight into libfuse's buffer, the serving loop and
its signals, and sizing the mount's kernel readahead.

With libfuse2 the kernel sends reads of at most 128 KiB; libfuse3 negotiates up to 1 MiB,
so serving a GiB costs 1,024 Python calls instead of 8,192. The kernel only sends reads
that large when the mount's readahead window is as large (its default is 128 KiB).

Each request holds one libfuse worker thread until it is answered, and a read waits for
the remote. libfuse3 runs at most 10 workers (fuse_main ignores `-o max_threads` before
3.14.1), so 10 reads waiting on a silent remote stalled every `stat` and `ls`. We run
libfuse's loop ourselves with MAX_THREADS workers, and let the kernel keep MAX_BACKGROUND
reads in flight (its default is 12; further reads of any file queue behind them).

Signals are ours too (libfuse's handlers end the loop with an error): SIGTERM and SIGINT
end the loop cleanly, SIGHUP calls back (to reopen the log) and the mount goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable

from ...adapters.retry import deadline_at

log = logging.getLogger("ngffmount")

READAHEAD_KB = 1024  # libfuse3's largest read request (256 pages)
MAX_THREADS = 256  # libfuse workers: blocked reads end within --timeout, metadata always finds one
MAX_BACKGROUND = 128  # asynchronous (readahead) reads the kernel keeps in flight
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
    """mfusepy's FUSE, with reads written into the reply buffer libfuse hands over, each
    read given a deadline `read_timeout` seconds after it arrives, and our own loop.

    mfusepy's own read takes the data the operation returns and copies it into that buffer:
    one more copy of every byte served (1 GiB per GiB), after the pixels were assembled.

    `FUSE(ops, mountpoint, read_timeout=S, on_signal=fn, **options)`: `fn(signum)` is called
    on SIGTERM, SIGINT and SIGHUP (on a thread of its own); after a SIGTERM or SIGINT the
    loop ends and FUSE returns normally."""
    mfusepy = load_mfusepy()

    class FUSE(mfusepy.FUSE):
        def __init__(self, operations, mountpoint, *, read_timeout: float | None = None,
                     on_signal: Callable[[int], None] | None = None, **kwargs):
            self.read_timeout = read_timeout
            lib = mfusepy._libfuse
            if not all(hasattr(lib, f) for f in _LOOP_FUNCTIONS):  # libfuse2, or libfuse3 before 3.12
                super().__init__(operations, mountpoint, **kwargs)
                return
            # mfusepy has no hook into the loop: for this call, its fuse_main_real is ours.
            stock = mfusepy.fuse_main_real
            mfusepy.fuse_main_real = lambda argc, argv, ops, size, data: _serve_loop(
                lib, [argv[i] for i in range(argc)], ops, size, data, on_signal)
            try:
                super().__init__(operations, mountpoint, **kwargs)
            finally:
                mfusepy.fuse_main_real = stock

        def init_fuse_3(self, conn, config):
            conn.contents.max_background = MAX_BACKGROUND
            conn.contents.congestion_threshold = MAX_BACKGROUND * 3 // 4
            return super().init_fuse_3(conn, config)

        def read(self, path, buf, size, offset, fip):
            fh = fip.contents if self.raw_fi else fip.contents.fh
            out = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
            name = None if path is None else path.decode(self.encoding, self.errors)
            with deadline_at(None if self.read_timeout is None else time.monotonic() + self.read_timeout):
                return self.operations.read_into(name, out, offset, fh)

    return FUSE


# What _serve_loop calls (the versions fuse_main of libfuse 3.12 and later calls).
_LOOP_FUNCTIONS = ("fuse_new_31", "fuse_mount", "fuse_loop_cfg_create", "fuse_loop_cfg_set_max_threads",
                   "fuse_loop_mt_312", "fuse_loop_cfg_destroy", "fuse_unmount", "fuse_destroy", "fuse_exit")


class _FuseArgs(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


def _serve_loop(lib, args: list[bytes], ops, ops_size, user_data, on_signal) -> int:
    """What libfuse's fuse_main does, with MAX_THREADS workers and our signal handling.
    `args` are mfusepy's: program name, flags, `-o options`, mountpoint. Returns 0 when the
    loop ended by an unmount or a stop signal, non-zero on an error (as fuse_main)."""
    lib.fuse_new_31.restype = ctypes.c_void_p
    lib.fuse_new_31.argtypes = [ctypes.POINTER(_FuseArgs), ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    for name in ("fuse_mount",):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    for name in ("fuse_unmount", "fuse_destroy", "fuse_exit", "fuse_loop"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.fuse_loop_cfg_create.restype = ctypes.c_void_p
    lib.fuse_loop_cfg_set_max_threads.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.fuse_loop_cfg_destroy.argtypes = [ctypes.c_void_p]
    lib.fuse_loop_mt_312.argtypes = [ctypes.c_void_p, ctypes.c_void_p]

    mountpoint = args[-1]
    single = b"-s" in args
    keep = [a for a in args[:-1] if a not in (b"-f", b"-s")]  # fuse_new takes the rest
    argv = (ctypes.c_char_p * (len(keep) + 1))(*keep, None)
    fargs = _FuseArgs(len(keep), ctypes.cast(argv, ctypes.POINTER(ctypes.c_char_p)), 0)
    fuse = lib.fuse_new_31(ctypes.byref(fargs), ops, ops_size, user_data)
    if not fuse:
        return 3
    try:
        if lib.fuse_mount(fuse, mountpoint) != 0:
            return 4
        os.chdir("/")  # as fuse_main does in the foreground: hold no directory busy
        try:
            with _signals_end_loop(lib, fuse, on_signal):
                if single:
                    res = lib.fuse_loop(fuse)
                else:
                    config = lib.fuse_loop_cfg_create()
                    lib.fuse_loop_cfg_set_max_threads(config, MAX_THREADS)
                    try:
                        res = lib.fuse_loop_mt_312(fuse, config)
                    finally:
                        lib.fuse_loop_cfg_destroy(config)
        finally:
            lib.fuse_unmount(fuse)
    finally:
        lib.fuse_destroy(fuse)
    return 8 if res else 0


@contextlib.contextmanager
def _signals_end_loop(lib, fuse, on_signal):
    """While the loop runs: SIGTERM/SIGINT call `on_signal` and end it, SIGHUP calls `on_signal`.

    Python runs signal handlers in the main thread, which sits in libfuse's loop; but its
    C-level handler writes each signal's number to the wakeup fd at once, and a thread of
    ours reads it there. libfuse installs no handler of its own where one is set."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    main = threading.main_thread().ident
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    ended = threading.Event()
    wakers: list[threading.Thread] = []

    def watch() -> None:
        stopping = False
        while True:
            data = reader.recv(64)
            if not data:
                return
            for signum in data:
                if signum == 0:
                    return
                if stopping and signum in STOP_SIGNALS:
                    continue
                if on_signal is not None:
                    try:
                        on_signal(signum)
                    except Exception:
                        log.exception("handling signal %d failed", signum)
                if signum in STOP_SIGNALS:
                    stopping = True
                    lib.fuse_exit(fuse)
                    waker = threading.Thread(target=wake, name="fuse-stop", daemon=True)
                    wakers.append(waker)
                    waker.start()

    def wake() -> None:
        # The loop's main thread sleeps in sem_wait until a signal interrupts it.
        while not ended.is_set():
            signal.pthread_kill(main, signal.SIGTERM)
            ended.wait(0.2)

    handlers = {s: signal.signal(s, lambda *_: None) for s in (*STOP_SIGNALS, signal.SIGHUP)}
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        ended.set()
        writer.send(b"\0")
        watcher.join(5)
        for waker in wakers:
            waker.join()  # no wake-up signal may come once the default handlers are back
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        reader.close()
        writer.close()


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
