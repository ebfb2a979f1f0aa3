"""The mount options, defined once.

Each `MountOption` gives its `MountConfig` field, its command-line flag, its fstab `-o` name,
how its value is parsed, its default and its help. From `OPTIONS` come: the `ngffmount`
flags (`add_options`), the fstab helper's translation (`fstab_arguments`), `MountConfig`
itself, and the fsspec options of a source (`storage_options_of`). The service configuration
file holds `ngffmount mount` flags, so it follows too. A new option is one entry here plus the
code that uses its `MountConfig` field (and its row in README.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable

from ...adapters import storage_options_for
from ...adapters.obstore_transport import TRANSPORTS, default_transport
from ...adapters.storage import DEFAULT_CONCURRENCY, DEFAULT_RETRIES, DEFAULT_TIMEOUT, StorageOptions
from ...cache.disk import DEFAULT_SIZE, default_cache_dir
from ...cache.engine import DEFAULT_MEMORY
from ...cache.redis_tier import DEFAULT_PREFIX

# -- values -----------------------------------------------------------------------------

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in SIZE_UNITS else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 10G, 512M)") from None


def format_size(n: int) -> str:
    """The shortest exact `parse_size` text of `n`: 10G, 768M."""
    for unit in ("T", "G", "M", "K"):
        if n and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit}"
    return str(n)


AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """`30s`, `5m`, `1h`, `2d`, or plain seconds."""
    t = text.strip().lower()
    unit = t[-1] if t and t[-1] in AGE_UNITS else "s"
    try:
        value = float(t[:-1] if t and t[-1] in AGE_UNITS else t) * AGE_UNITS[unit]
    except ValueError:
        value = -1
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (e.g. 30s, 10m, 1h)")
    return value


def parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_transport(text: str) -> str:
    value = text.strip().lower()
    if value not in TRANSPORTS:
        raise argparse.ArgumentTypeError(f"not a transport: {text!r} (one of {', '.join(TRANSPORTS)})")
    return value


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- the table --------------------------------------------------------------------------

# Which commands take each group of options.
SOURCE, CACHE, SHARED, MOUNT = "source", "cache", "shared", "mount"


@dataclass(frozen=True)
class MountOption:
    name: str  # the MountConfig field (and argparse dest)
    flag: str  # on the command line
    fstab: str | None  # the fstab `-o` name; one ending in "." is a prefix: `so.KEY=VALUE`
    type: Any  # the MountConfig field's type
    parse: Callable[[str], Any] | None  # None: a switch, which sets the field to `not default`
    default: Any = None
    help: str = ""
    group: str = MOUNT
    metavar: str | None = None
    default_factory: Callable[[], Any] | None = None  # a default computed per mount (from the environment)
    show: Callable[[Any], str] = _show  # the default as `--help` shows it
    pairs: bool = False  # repeatable KEY=VALUE, collected in a dict
    secret: bool = False  # its value never appears in an error message (the journal keeps them)

    @property
    def switch(self) -> bool:
        return self.parse is None

    def default_value(self) -> Any:
        if self.default_factory is not None:
            return self.default_factory()
        return dict(self.default) if self.pairs else self.default


OPTIONS: tuple[MountOption, ...] = (
    MountOption("anon", "--anon", "anon", bool, None, False, "S3: unsigned requests (public buckets)", SOURCE),
    MountOption("endpoint_url", "--endpoint-url", "endpoint_url", str | None, str, None,
                "S3: endpoint of an S3-compatible server", SOURCE),
    MountOption("storage_options", "--storage-option", "so.", dict, parse_option, {},
                "extra fsspec option (repeatable; VALUE parsed as JSON when it can be)", SOURCE,
                metavar="KEY=VALUE", pairs=True, secret=True),
    MountOption("concurrency", "--concurrency", "concurrency", int, int, DEFAULT_CONCURRENCY,
                "parallel remote requests", SOURCE),
    MountOption("timeout", "--timeout", "timeout", float, float, DEFAULT_TIMEOUT,
                "seconds a read that needs the remote may take, queueing and retries included", SOURCE),
    MountOption("retries", "--retries", "retries", int, int, DEFAULT_RETRIES,
                "attempts per remote request on 5xx, timeouts, resets", SOURCE),
    MountOption("transport", "--transport", "transport", str, parse_transport,
                help="client of chunk GETs: obstore for s3:// and http(s):// where it understands the options, "
                     "else fsspec (auto); obstore; fsspec (s3fs, aiohttp). Default: $NGFFMOUNT_TRANSPORT or auto",
                group=SOURCE, metavar="{" + ",".join(TRANSPORTS) + "}", default_factory=default_transport),
    MountOption("cache_dir", "--cache-dir", "cache_dir", str, str, help="persistent chunk cache", group=CACHE,
                default_factory=default_cache_dir),
    MountOption("cache_size", "--cache-size", "cache_size", int, parse_size, DEFAULT_SIZE, "disk cache bound",
                CACHE, show=format_size),
    MountOption("shared_cache", "--shared-cache", "shared_cache", str | None, str, None,
                "a chunk tier shared by a cluster, below the disk cache: redis://[user@]host:port/db, "
                "rediss://... (TLS), redis+cluster://host:port[,host:port...]", SHARED, metavar="URL"),
    MountOption("shared_cache_password_file", "--shared-cache-password-file", "shared_cache_password_file",
                str | None, str, None, "the shared cache's password: the first line of FILE (mode 0600)", SHARED,
                metavar="FILE"),
    MountOption("shared_cache_prefix", "--shared-cache-prefix", "shared_cache_prefix", str, str, DEFAULT_PREFIX,
                "namespace of the shared cache's keys", SHARED, metavar="PREFIX"),
    MountOption("disk_cache", "--no-disk-cache", "no_disk_cache", bool, None, True, "keep no chunks on disk"),
    MountOption("memory_cache", "--memory-cache", "memory_cache", int, parse_size, DEFAULT_MEMORY,
                "decoded-chunk memory bound", show=format_size),
    MountOption("allow_other", "--allow-other", "allow_other", bool, None, False,
                "let other users read the mount (FUSE allow_other)"),
    MountOption("log_file", "--log-file", "log_file", str | None, str, None,
                "daemon log (default under $XDG_STATE_HOME/ngffmount)"),
    MountOption("revalidate", "--revalidate", "revalidate", float | None, parse_age, None,
                "check cached chunks older than AGE (30s, 1h, ...) against the source, and re-read the metadata "
                "every AGE (default: chunks are immutable while the metadata is unchanged)", metavar="AGE"),
    MountOption("debug", "--debug", "debug", bool, None, False, "log debug messages"),
)


def _config_field(option: MountOption):
    if option.default_factory is not None:
        return field(default_factory=option.default_factory)
    if option.pairs:
        return field(default_factory=lambda: dict(option.default))
    return field(default=option.default)


MountConfig = make_dataclass(
    "MountConfig",
    [("source", str), ("mountpoint", str)] + [(o.name, o.type, _config_field(o)) for o in OPTIONS],
)
MountConfig.__module__ = __name__
MountConfig.__doc__ = "What one mount serves and how: SOURCE, MOUNTPOINT and a field per entry of OPTIONS."


def storage_options_of(config) -> StorageOptions:
    """The fsspec options of `config.source`: the one place they are built from the options."""
    return storage_options_for(config.source, anon=config.anon, endpoint_url=config.endpoint_url,
                               extra=config.storage_options, concurrency=config.concurrency,
                               timeout=config.timeout, retries=config.retries, transport=config.transport)


# -- the command line -------------------------------------------------------------------


class _CollectPairs(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, {**getattr(namespace, self.dest), value[0]: value[1]})


def _quiet(parse: Callable[[str], Any], flag: str) -> Callable[[str], Any]:
    """`parse` whose errors do not repeat the value: argparse would print it."""
    def parse_secret(text: str) -> Any:
        try:
            return parse(text)
        except (argparse.ArgumentTypeError, ValueError):
            raise argparse.ArgumentTypeError(f"not a valid {flag} value (not shown: it may be a secret)") from None
    parse_secret.__name__ = parse.__name__
    return parse_secret


def help_text(option: MountOption) -> str:
    default = option.default_value()
    if option.switch or default is None or option.pairs:
        return option.help
    return f"{option.help} (default {option.show(default)})"


def add_options(parser: argparse.ArgumentParser, *groups: str) -> None:
    for o in OPTIONS:
        if o.group not in groups:
            continue
        if o.switch:
            parser.add_argument(o.flag, dest=o.name, action="store_false" if o.default else "store_true",
                                default=o.default, help=o.help)
            continue
        parse = _quiet(o.parse, o.flag) if o.secret else o.parse
        parser.add_argument(o.flag, dest=o.name, type=parse, default=o.default_value(), metavar=o.metavar,
                            action=_CollectPairs if o.pairs else "store", help=help_text(o))


def option_parents(*groups: str) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_options(parent, *groups)
    return parent


def config_from_args(args: argparse.Namespace):
    """A MountConfig from parsed arguments; options a command does not take keep their defaults."""
    values = {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}
    return MountConfig(source=args.source, mountpoint=getattr(args, "mountpoint", ""), **values)


# -- fstab ------------------------------------------------------------------------------


def fstab_arguments(key: str, sep: str, value: str) -> list[str] | None:
    """`ngffmount mount` arguments for the fstab option `key[=value]`, or None if it is not ours."""
    for o in OPTIONS:
        if o.fstab is None:
            continue
        if o.fstab.endswith("."):
            if key.startswith(o.fstab) and len(key) > len(o.fstab) and sep:
                return [o.flag, f"{key[len(o.fstab):]}={value}"]
        elif key == o.fstab and bool(sep) != o.switch:
            return [o.flag] if o.switch else [o.flag, value]
    return None

