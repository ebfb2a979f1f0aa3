"""The `ngffmount` command. Errors end as one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ...adapters import NgffMountError, normalize_url, redact
from .options import CACHE, MOUNT, SHARED, SOURCE, MountConfig, add_options, config_from_args, option_parents
from .options import parse_age  # noqa: F401  (tests and scripts parse ages as the command does)
from .options import storage_options_of

log = logging.getLogger("ngffmount")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ngffmount", description="Mount remote OME-Zarr images as TIFF files (read-only FUSE).")
    sub = p.add_subparsers(dest="command", required=True)

    source_opts, cache_opts, shared_opts = option_parents(SOURCE), option_parents(CACHE), option_parents(SHARED)

    m = sub.add_parser("mount", parents=[source_opts, cache_opts, shared_opts],
                       help="mount SOURCE (path, file://, http(s)://, s3://, ...) at MOUNTPOINT")
    m.add_argument("source")
    m.add_argument("mountpoint")
    m.add_argument("-f", "--foreground", action="store_true", help="stay attached (for services)")
    add_options(m, MOUNT)

    st = sub.add_parser("stats", help="print the live counters of a mount")
    st.add_argument("mountpoint")

    c = sub.add_parser("cache", help="look at or manage the persistent chunk cache")
    csub = c.add_subparsers(dest="cache_command", required=True)
    csub.add_parser("info", parents=[cache_opts], help="where the cache is and how full")
    cc = csub.add_parser("clear", parents=[cache_opts], help="remove every cached chunk, or one source's")
    cc.add_argument("source", nargs="?", help="only the chunks fetched through this source URL (and sources under it)")
    pf = csub.add_parser("prefetch", parents=[source_opts, cache_opts, shared_opts],
                         help="fetch chunks into the cache ahead of use (with --shared-cache: into the shared cache)")
    pf.add_argument("source")
    pf.add_argument("--level", help="only this level (s0, s1, ...); default: all")
    pf.add_argument("--region", help="z0:z1,y0:y1,x0:x1 (or one start:stop per axis); default: everything")

    u = sub.add_parser("unmount", aliases=["umount"], help="unmount MOUNTPOINT (also clears a stale mount)")
    u.add_argument("mountpoint")
    u.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open")

    sv = sub.add_parser("service", help="run mounts as systemd services, or from fstab")
    svsub = sv.add_subparsers(dest="service_command", required=True)
    si = svsub.add_parser("install", help="write the ngffmount@.service template and NAME's settings")
    si.add_argument("name")
    si.add_argument("source")
    si.add_argument("mountpoint")
    si.add_argument("--unit-dir", default="/etc/systemd/system")
    si.add_argument("--conf-dir", default="/etc/ngffmount")
    si.epilog = "Options for `ngffmount mount` go after --, e.g. -- --anon --endpoint-url URL"
    su = svsub.add_parser("unit", help="print the template unit")
    su.add_argument("--conf-dir", default="/etc/ngffmount")
    sh = svsub.add_parser("install-helper", help="link mount.fuse.ngffmount into /sbin for fstab and mount -t")
    sh.add_argument("--sbin", default="/sbin")

    s = sub.add_parser("_serve", help=argparse.SUPPRESS)
    s.add_argument("--ready-fd", type=int, required=True)
    return p


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # fsspec and botocore log URLs and headers at debug level: keep them out of our log.
    for noisy in ("fsspec", "botocore", "aiobotocore", "s3fs", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_mount(args) -> int:
    from . import mount

    config = config_from_args(args)
    if args.foreground:
        setup_logging(args.debug)

        def ready():
            print(f"mounted {normalize_url(args.source)} at {os.path.abspath(args.mountpoint)}", flush=True)
            mount.notify_systemd("READY=1")

        mount.serve(config, ready)
        return 0
    log_file = mount.mount_background(config)
    print(f"mounted {normalize_url(args.source)} at {os.path.abspath(args.mountpoint)} (log: {log_file})")
    return 0


def cmd_serve(args) -> int:
    """The detached child of `ngffmount mount`: configuration on stdin, status on --ready-fd."""
    from . import mount

    config = MountConfig(**json.loads(sys.stdin.read()))
    setup_logging(config.debug)
    status = os.fdopen(args.ready_fd, "w")

    def report(line: str) -> None:
        if not status.closed:
            status.write(line + "\n")
            status.close()

    try:
        mount.serve(config, lambda: report("READY"))
    except NgffMountError as exc:
        log.error("%s", redact(str(exc)))
        report("ERROR " + redact(str(exc)))
        return 1
    except Exception as exc:
        log.exception("mount failed")
        report(f"ERROR mount failed: {redact(str(exc)) or type(exc).__name__}")
        return 1
    return 0


def source_options(args) -> dict:
    return storage_options_of(config_from_args(args))


def shared_tier(args):
    """`cache prefetch --shared-cache URL`: the shared tier to warm, or None."""
    if not args.shared_cache:
        return None
    from .mount import shared_tier as make

    return make(args.shared_cache, args.shared_cache_password_file, args.shared_cache_prefix)


def cmd_stats(args) -> int:
    from .cache_commands import stats_table

    print(stats_table(args.mountpoint))
    return 0


def cmd_cache(args) -> int:
    from . import cache_commands

    if args.cache_command == "info":
        print(cache_commands.cache_info(args.cache_dir))
    elif args.cache_command == "clear":
        print(cache_commands.cache_clear(args.cache_dir, args.source))
    else:
        print(cache_commands.prefetch(args.source, source_options(args), args.concurrency, args.cache_dir,
                                      args.cache_size, args.level, args.region, shared_tier(args)))
    return 0


def cmd_service(args) -> int:
    from . import service

    if args.service_command == "unit":
        print(service.unit_text(args.conf_dir), end="")
    elif args.service_command == "install-helper":
        print(service.install_helper(args.sbin))
    else:
        try:
            print(service.install(args.name, args.source, args.mountpoint, args.options, args.unit_dir, args.conf_dir))
        except ValueError as exc:
            raise NgffMountError(str(exc)) from None
    return 0


def cmd_unmount(args) -> int:
    from .mount import unmount

    unmount(args.mountpoint, lazy=args.lazy)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = []
    if "--" in argv:  # everything after -- is passed through (service install's mount options)
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    args.options = passthrough
    handler = {"mount": cmd_mount, "unmount": cmd_unmount, "umount": cmd_unmount, "stats": cmd_stats,
               "cache": cmd_cache, "service": cmd_service, "_serve": cmd_serve}[args.command]
    try:
        return handler(args)
    except NgffMountError as exc:
        print(f"ngffmount: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
