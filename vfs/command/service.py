"""Running ngffmount as a system service: the systemd template unit and the fstab mount helper.

The unit's daemon reads SOURCE, OPTIONS and SHARED_CACHE_PASSWORD from the instance's
configuration file (mode 0600) itself (`python -m ngffmount.vfs.command.service FILE`), so
no secret among them is ever on its command line (`ps`, /proc/PID/cmdline) or in its
environment."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from .options import fstab_arguments

UNIT_NAME = "ngffmount@.service"
UNIT_TEMPLATE = """\
# One instance per mount: /etc/ngffmount/NAME.conf holds SOURCE=, MOUNTPOINT=, OPTIONS= and,
# for --shared-cache, SHARED_CACHE_PASSWORD= (mode 0600: it may hold credentials).
# Start with: systemctl enable --now ngffmount@NAME
[Unit]
Description=ngffmount: %i as read-only TIFF/HDF5 files
After=network-online.target
Wants=network-online.target

[Service]
# READY=1 is sent once the mountpoint answers.
Type=notify
NotifyAccess=main
EnvironmentFile={conf_dir}/%i.conf
# The daemon reads the file itself: what may be secret stays off its command line and out
# of its environment. (MOUNTPOINT is left for ExecStop.)
UnsetEnvironment=SOURCE OPTIONS SHARED_CACHE_PASSWORD
# The chunk cache lives in the service's own cache directory.
CacheDirectory=ngffmount
CacheDirectoryMode=0700
ExecStart={python} -m ngffmount.vfs.command.service {conf_dir}/%i.conf
ExecStop=-{command} unmount --lazy ${{MOUNTPOINT}}
# A stop (SIGTERM, SIGINT, an unmount) exits 0 after writing pending chunks to the cache, and
# is not restarted; a failure (exit 1, a crash) is. Exit 2 is a usage error in OPTIONS: a
# restart cannot fix it. SIGHUP reopens a log file and keeps the mount.
Restart=on-failure
RestartPreventExitStatus=2
RestartSec=5
TimeoutStartSec=120

[Install]
WantedBy=multi-user.target
"""

HELPER_NAME = "mount.fuse.ngffmount"
# mount(8) options that concern mount itself or systemd, not ngffmount.
MOUNT_ONLY = {"ro", "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "exec",
              "noexec", "suid", "nosuid", "dev", "nodev", "async", "sync", "atime", "noatime", "relatime"}


def ngffmount_command() -> str:
    """The absolute command a unit can run: the console script beside this interpreter."""
    script = Path(sys.executable).parent / "ngffmount"
    return str(script) if script.exists() else f"{sys.executable} -m ngffmount.vfs.command.cli"


def unit_text(conf_dir: str = "/etc/ngffmount") -> str:
    return UNIT_TEMPLATE.format(command=ngffmount_command(), python=sys.executable, conf_dir=conf_dir)


def install(name: str, source: str, mountpoint: str, options: list[str],
            unit_dir: str = "/etc/systemd/system", conf_dir: str = "/etc/ngffmount") -> str:
    if not name or "/" in name or "@" in name:
        raise ValueError(f"service name {name!r} must be a plain word")
    os.makedirs(unit_dir, exist_ok=True)
    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    unit = Path(unit_dir) / UNIT_NAME
    unit.write_text(unit_text(conf_dir))
    conf = Path(conf_dir) / f"{name}.conf"
    # Written 0600 from the start: OPTIONS may hold a secret.
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"SOURCE={_env_quote(source)}\nMOUNTPOINT={_env_quote(os.path.abspath(mountpoint))}\n"
                f"OPTIONS={_env_quote(' '.join(shlex.quote(o) for o in options))}\n")
    return (f"wrote {unit} and {conf}\n"
            f"start it with: systemctl daemon-reload && systemctl enable --now ngffmount@{name}")


def _env_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_settings(path: str) -> dict[str, str]:
    """An instance's configuration file, as systemd's EnvironmentFile= reads it: KEY=value
    lines, a value in double quotes with backslash escapes (as `install` writes it) or bare."""
    settings = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")) or "=" not in line:
                continue
            key, _, value = line.partition("=")
            value = value.strip()
            if value.startswith('"'):
                out, escaped = [], False
                for ch in value[1:]:
                    if escaped:
                        out.append(ch)
                        escaped = False
                    elif ch == "\\":
                        escaped = True
                    elif ch == '"':
                        break
                    else:
                        out.append(ch)
                value = "".join(out)
            settings[key.strip()] = value
    return settings


def service_arguments(conf: str, environ=os.environ) -> tuple[list[str], int | None]:
    """`ngffmount mount -f` arguments from an instance's configuration file, and the file
    descriptor that holds SHARED_CACHE_PASSWORD (named by --shared-cache-password-file as
    /proc/self/fd/N: a memory file, so the password is never on a command line or on disk
    elsewhere). Raises ValueError with a message that holds no secret."""
    try:
        settings = read_settings(conf)
        mode = os.stat(conf).st_mode & 0o777
    except OSError as exc:
        raise ValueError(f"{conf}: {exc.strerror}") from None
    missing = [k for k in ("SOURCE", "MOUNTPOINT") if not settings.get(k)]
    if missing:
        raise ValueError(f"{conf}: no {' or '.join(missing)}=")
    password = settings.get("SHARED_CACHE_PASSWORD")
    if password and mode & 0o077:
        raise ValueError(f"{conf} holds SHARED_CACHE_PASSWORD but others may read it (mode {mode:o}): chmod 600 it")
    args = ["mount", "-f", settings["SOURCE"], settings["MOUNTPOINT"]]
    if environ.get("CACHE_DIRECTORY"):  # systemd's CacheDirectory=
        args += ["--cache-dir", environ["CACHE_DIRECTORY"]]
    try:
        args += shlex.split(settings.get("OPTIONS", ""))
    except ValueError:
        raise ValueError(f"{conf}: OPTIONS= is not a valid shell-quoted list (not shown: it may hold a secret)") from None
    fd = None
    if password:
        fd = os.memfd_create("shared-cache-password")
        os.write(fd, password.encode() + b"\n")
        args += ["--shared-cache-password-file", f"/proc/self/fd/{fd}"]
    return args, fd


def service_main(argv: list[str]) -> int:
    """ExecStart of the unit: `python -m ngffmount.vfs.command.service CONF`."""
    from .cli import main

    if len(argv) != 1:
        print("usage: python -m ngffmount.vfs.command.service /etc/ngffmount/NAME.conf", file=sys.stderr)
        return 2
    try:
        args, _ = service_arguments(argv[0])
    except ValueError as exc:
        print(f"ngffmount: error: {exc}", file=sys.stderr)
        return 2  # the unit does not restart it: the file must be fixed first
    return main(args)


def install_helper(sbin: str = "/sbin") -> str:
    """Put mount.fuse.ngffmount where mount(8) looks for helpers."""
    target = Path(sys.executable).parent / HELPER_NAME
    link = Path(sbin) / HELPER_NAME
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)
    return f"{link} -> {target}\nfstab: SOURCE MOUNTPOINT fuse.ngffmount _netdev,nofail,ro[,anon,...] 0 0"


def helper_arguments(argv: list[str]) -> list[str]:
    """`mount.fuse.ngffmount SOURCE MOUNTPOINT [-o opts]` -> `ngffmount mount` arguments."""
    positional, options = [], []
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            options += next(it, "").split(",")
        elif arg.startswith("-o"):
            options += arg[2:].split(",")
        elif arg.startswith("-"):
            continue  # -n, -s, -v, -f from mount(8): nothing for us
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise ValueError("usage: mount.fuse.ngffmount SOURCE MOUNTPOINT [-o options]")
    out = ["mount", *positional]
    for opt in filter(None, options):
        key, sep, value = opt.partition("=")
        if key in MOUNT_ONLY or key == "comment" or key.startswith("x-"):
            continue
        arguments = fstab_arguments(key, sep, value)
        if arguments is None:  # named without its value: that may be a misplaced secret
            raise ValueError(f"unknown mount option {key + ('=...' if sep else '')!r} for ngffmount")
        out += arguments
    return out


def helper_main() -> int:
    try:
        args = helper_arguments(sys.argv[1:])
    except ValueError as exc:
        print(f"{HELPER_NAME}: {exc}", file=sys.stderr)
        return 1
    return subprocess.call([sys.executable, "-m", "ngffmount.vfs.command.cli", *args])


if __name__ == "__main__":
    sys.exit(service_main(sys.argv[1:]))
