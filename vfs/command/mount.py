"""Mounting and unmounting: checks with clear messages, the serving process, readiness.

`ngffmount mount` starts a detached child that serves the mount and reports back on a
pipe, so the command returns only once the mountpoint answers (or fails with one line).
The child gets its configuration on stdin: credentials never appear in a process title.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from functools import partial

from ...adapters import NgffMountError, normalize_url, open_source
from ...adapters.storage import TRANSFERS
from ...adapters.zarr_codecs import warm_up_codecs
from ...cache.disk import CacheUnavailable, DiskCache
from ...cache.engine import ChunkEngine
from ...cache.redis_tier import RedisTier, read_password
from .heap import keep_freed_memory
from .metadata_watch import watch_metadata
from .options import MountConfig, storage_options_of
from ..fuse.libfuse import fuse_class, load_mfusepy, raise_readahead

log = logging.getLogger("ngffmount")

STOP_FLUSH_S = 5.0  # on a stop, fetched chunks still waiting for the disk cache get this long
STOP_GRACE_S = 2.0  # and reads under way this long before they fail (the remote may be silent)


class MountError(NgffMountError):
    """The mountpoint or FUSE itself is not usable."""


# -- checks -----------------------------------------------------------------------------


def is_stale(mountpoint: str) -> bool:
    # statfs always reaches the daemon; stat may be answered from the kernel's attribute cache.
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def check_mountpoint(mountpoint: str) -> str:
    path = os.path.abspath(mountpoint)
    if is_stale(path):
        log.info("clearing stale mount at %s", path)
        unmount(path, quiet=True)
    if not os.path.exists(path):
        raise MountError(f"mountpoint {path} does not exist")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"mountpoint {path} is busy: something is already mounted there")
    if os.listdir(path):
        raise MountError(f"mountpoint {path} is not empty")
    return path


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available: /dev/fuse is missing (load the fuse module or install fuse3)")
    if not (shutil.which("fusermount") or shutil.which("fusermount3")):
        raise MountError("FUSE is not available: fusermount is not installed (install fuse3 and libfuse2)")
    try:
        load_mfusepy()  # importing it loads libfuse
    except (OSError, EnvironmentError) as exc:
        raise MountError(f"FUSE is not available: {exc}") from None


# -- serving ----------------------------------------------------------------------------


def build_engine(config: MountConfig) -> ChunkEngine:
    disk = None
    if config.disk_cache:
        try:
            disk = DiskCache(config.cache_dir, config.cache_size, source=normalize_url(config.source))
        except CacheUnavailable as exc:
            log.warning("%s: serving without a disk cache until the next mount", exc)
    tiers = lower_tiers(config)
    engine = ChunkEngine(disk=disk, memory_bytes=config.memory_cache, fetch_threads=config.concurrency,
                         revalidate=config.revalidate, timeout=config.timeout, tiers=tiers)
    for tier in tiers:
        tier.check()
    return engine


def lower_tiers(config: MountConfig) -> list:
    """The cache tiers below the disk cache (cache/tier.py), in the order they are asked:
    each is built here from its own option."""
    tiers = []
    if config.shared_cache:
        tiers.append(shared_tier(config.shared_cache, config.shared_cache_password_file, config.shared_cache_prefix))
    return tiers


def shared_tier(url: str, password_file: str | None, prefix: str) -> RedisTier:
    """The shared tier of --shared-cache (a mount, `cache prefetch`); a bad URL or password
    file is one clear line."""
    try:
        return RedisTier(url, read_password(password_file), prefix)
    except ValueError as exc:
        raise NgffMountError(str(exc)) from None


def stats_renderer(engine: ChunkEngine, source_url: str):
    def render() -> bytes:
        doc = {
            "source": source_url,
            "pid": os.getpid(),
            **TRANSFERS.snapshot(),
            **engine.stats.snapshot(),
            "fetches_pending": engine.fetches_pending,
            "disk_write_backlog_bytes": engine.disk_backlog,
            "memory_cache_bytes": engine.memory.nbytes,
            "memory_cache_chunks": len(engine.memory),
            "readahead_paused": engine.readahead_paused,
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    return render


def serve(config: MountConfig, on_ready) -> None:
    """Open the source, mount and serve until unmounted (blocking). Errors raise NgffMountError."""
    keep_freed_memory()  # first: before the S3 client or FUSE start their threads
    FUSE = fuse_class()

    from ..fuse.paths import VirtualFS
    from ..fuse.operations import FuseOps
    from ..tree.build import build_tree

    mountpoint = check_mountpoint(config.mountpoint)
    check_fuse()
    options = storage_options_of(config)
    source = open_source(config.source, options, config.concurrency)
    warm_up_codecs()
    engine = build_engine(config)
    url = normalize_url(config.source)
    root = build_tree(source, engine, stats_renderer(engine, url))
    # Everything made so far (the tree, the S3 client's service model) lives as long as the
    # mount: out of the collector's sight, each full collection stops walking it (6% of the
    # daemon's CPU on a cold plane went to the collector).
    gc.freeze()
    if config.revalidate:
        watch_metadata(partial(open_source, config.source, options, config.concurrency), source, engine,
                       config.revalidate)
    ops = FuseOps(VirtualFS(root), on_ready=lambda: _when_mounted(mountpoint, on_ready),
                  keep_cache=not config.revalidate)
    options = dict(
        foreground=True,
        nothreads=False,
        ro=True,
        fsname=f"ngffmount:{url}"[:200].replace(",", "%2C"),
        subtype="ngffmount",
        attr_timeout=3600,
        entry_timeout=3600,
        negative_timeout=10,
    )
    if config.allow_other:
        options["allow_other"] = True
    log.info("serving %s at %s", url, mountpoint)
    # After a stop signal, libfuse's loop waits for the requests under way before it unmounts.
    grace = threading.Timer(STOP_GRACE_S, engine.stop_fetching)
    grace.daemon = True

    def on_signal(signum: int) -> None:
        if signum == signal.SIGHUP:
            reopen_log(config.log_file)
        else:
            log.info("%s: unmounting", signal.Signals(signum).name)
            grace.start()

    FUSE(ops, mountpoint, raw_fi=True, read_timeout=config.timeout, on_signal=on_signal, **options)
    grace.cancel()
    engine.stop_fetching()
    # Fetched chunks still waiting for the disk cache: written now, within a bound.
    if not engine.flush_disk(STOP_FLUSH_S):
        log.warning("stopped before every fetched chunk reached the disk cache (%.0f s)", STOP_FLUSH_S)
    log.info("unmounted %s", mountpoint)


def reopen_log(log_file: str | None) -> None:
    """SIGHUP (logrotate): point stdout and stderr at a fresh file at the log's path, when
    they write to a file there (the detached daemon); elsewhere (a service's journal) leave them."""
    try:
        if not log_file or not stat.S_ISREG(os.fstat(2).st_mode):
            log.info("SIGHUP: the log goes to stderr, not to a file: nothing to reopen")
            return
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        log.error("SIGHUP: cannot reopen the log %s: %s", log_file, exc.strerror or exc)
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    log.info("SIGHUP: log reopened")


def _when_mounted(mountpoint: str, on_ready) -> None:
    # init runs before the kernel finishes the mount; wait until the mountpoint answers.
    for _ in range(200):
        if os.path.ismount(mountpoint):
            raise_readahead(mountpoint)
            break
        time.sleep(0.05)
    on_ready()


def notify_systemd(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


# -- background mount -------------------------------------------------------------------


def default_log_file(mountpoint: str) -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    name = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(base, "ngffmount", f"{name}.log")


def mount_background(config: MountConfig, wait_seconds: float = 300.0) -> str:
    """Start the serving child and wait until the mount answers. Returns the log file path."""
    config.mountpoint = check_mountpoint(config.mountpoint)
    check_fuse()
    config.log_file = os.path.abspath(config.log_file or default_log_file(config.mountpoint))
    os.makedirs(os.path.dirname(config.log_file), exist_ok=True)
    read_fd, write_fd = os.pipe()
    with open(config.log_file, "ab") as logf:
        child = subprocess.Popen(
            [sys.executable, "-m", "ngffmount.vfs.command.cli", "_serve", "--ready-fd", str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=logf,
            stderr=logf,
            pass_fds=(write_fd,),
            start_new_session=True,
            close_fds=True,
        )
    os.close(write_fd)
    child.stdin.write(json.dumps(asdict(config)).encode())
    child.stdin.close()
    message = _read_status(read_fd, child, wait_seconds)
    if message == "READY":
        return config.log_file
    if child.poll() is None:
        child.terminate()
    raise NgffMountError(message or f"the mount process exited ({child.poll()}); see {config.log_file}")


def _read_status(fd: int, child: subprocess.Popen, wait_seconds: float) -> str:
    buf = b""
    deadline = time.monotonic() + wait_seconds
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
                if b"\n" in buf:
                    break
            elif child.poll() is not None:
                break
    finally:
        os.close(fd)
    line = buf.decode(errors="replace").strip()
    if line.startswith("ERROR "):
        return line[6:]
    if line == "READY":
        return line
    if not line and time.monotonic() >= deadline:
        return f"the mount did not answer within {wait_seconds:.0f} s"
    return line


# -- unmount ----------------------------------------------------------------------------


def unmount(mountpoint: str, lazy: bool = False, quiet: bool = False) -> None:
    path = os.path.abspath(mountpoint)
    if not (os.path.ismount(path) or is_stale(path)):
        raise MountError(f"{path} is not mounted")
    commands = []
    for tool in ("fusermount", "fusermount3"):
        if shutil.which(tool):
            commands.append([tool, "-uz" if lazy else "-u", path])
    if shutil.which("umount"):
        commands.append(["umount", "-l", path] if lazy else ["umount", path])
    errors = []
    for cmd in commands:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            return
        errors.append(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"{cmd[0]} failed")
    detail = errors[-1] if errors else "no unmount tool found"
    if any("busy" in e.lower() for e in errors):
        detail = "it is busy (files are open there); close them or use --lazy"
    if not quiet:
        raise MountError(f"cannot unmount {path}: {detail}")
