"""Service use: the systemd template unit (Type=notify), and fstab through mount.fuse.ngffmount."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import ngffmount_cmd
from ngffmount.vfs.command.service import helper_arguments, read_settings, service_arguments


@pytest.mark.integration
def test_service_install_writes_a_unit_systemd_accepts(tmp_path):
    units, conf = tmp_path / "units", tmp_path / "conf"
    out = ngffmount_cmd("service", "install", "lab", "s3://bucket/img.zarr", "/mnt/lab", "--unit-dir", str(units),
                        "--conf-dir", str(conf), "--", "--anon", "--storage-option", "secret=SECRET x").stdout
    assert "systemctl enable --now ngffmount@lab" in out
    settings = conf / "lab.conf"
    assert oct(settings.stat().st_mode & 0o777) == "0o600"
    assert settings.read_text() == ('SOURCE="s3://bucket/img.zarr"\nMOUNTPOINT="/mnt/lab"\n'
                                    "OPTIONS=\"--anon --storage-option 'secret=SECRET x'\"\n")
    unit = (units / "ngffmount@.service").read_text()
    assert "Type=notify" in unit and "Restart=on-failure" in unit and "CacheDirectory=ngffmount" in unit
    assert f"EnvironmentFile={conf}/%i.conf" in unit
    shutil.copy(units / "ngffmount@.service", units / "ngffmount@lab.service")
    verify = subprocess.run(["systemd-analyze", "verify", str(units / "ngffmount@lab.service")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


@pytest.mark.integration
def test_foreground_mount_notifies_systemd_when_ready(tmp_path, tiny_store, cache_args):
    path, data, mnt = tiny_store
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
        proc = subprocess.Popen([sys.executable, "-m", "ngffmount.vfs.command.cli", "mount", "-f", str(path), str(mnt), *cache_args],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert sock.recv(256) == b"READY=1"
            assert os.path.ismount(mnt), "READY comes only once the mountpoint answers"
            np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00002.tif"), data[2])
        finally:
            subprocess.run([sys.executable, "-m", "ngffmount.vfs.command.cli", "unmount", str(mnt)], capture_output=True)
            assert proc.wait(timeout=20) == 0, proc.stderr.read()


def test_mount_options_translate_to_cli_flags():
    args = helper_arguments(["s3://b/i.zarr", "/mnt/i", "-o",
                             "ro,_netdev,nofail,anon,endpoint_url=http://h:9000,cache_size=2G,so.region=eu,x-systemd.automount"])
    assert args == ["mount", "s3://b/i.zarr", "/mnt/i", "--anon", "--endpoint-url", "http://h:9000",
                    "--cache-size", "2G", "--storage-option", "region=eu"]
    with pytest.raises(ValueError, match="unknown mount option 'bogus'"):
        helper_arguments(["a", "b", "-o", "bogus"])


@pytest.mark.integration
def test_mount_t_fuse_ngffmount_through_the_helper(tmp_path, tiny_store):
    path, data, mnt = tiny_store
    link = Path("/sbin/mount.fuse.ngffmount")
    existed = link.exists() or link.is_symlink()
    ngffmount_cmd("service", "install-helper")
    try:
        result = subprocess.run(["mount", "-t", "fuse.ngffmount", str(path), str(mnt), "-o",
                                 f"ro,_netdev,nofail,cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00001.tif"), data[1])
        assert subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0
    finally:
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)
        if not existed:
            link.unlink()


def _unit_command(unit: str, name: str) -> list[str]:
    """The unit's ExecStart for instance `name`, as systemd would run it."""
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("%i", name))


@pytest.mark.integration
def test_the_service_keeps_secrets_off_the_daemons_command_line_and_environment(tmp_path, s3_server):
    """The storage options and the shared cache's password live in the 0600 configuration
    file; the daemon the unit starts reads them from there, and shows none of them in `ps`,
    /proc/PID/cmdline, /proc/PID/environ or its log, while it serves with both."""
    from redis_servers import PASSWORD, RedisServer
    from zarr_fixtures import pattern, write_ome_zarr

    data = pattern((2, 32, 32), "uint16", seed=12)
    write_ome_zarr(tmp_path / "up" / "s.zarr", data, "zyx", levels=1, chunks=(1, 16, 16))
    s3_server.upload_dir(tmp_path / "up", "svc", "")
    storage_secret = "s3cret-storage-option-5b1d"
    units, conf, mnt = tmp_path / "units", tmp_path / "conf", tmp_path / "mnt"
    mnt.mkdir()
    with RedisServer(tmp_path / "redis") as redis_server:
        ngffmount_cmd("service", "install", "lab", "s3://svc/s.zarr", str(mnt), "--unit-dir", str(units),
                      "--conf-dir", str(conf), "--", "--endpoint-url", s3_server.endpoint_url,
                      "--storage-option", "key=testing", "--storage-option", f"secret={storage_secret}",
                      "--shared-cache", redis_server.url, "--shared-cache-prefix", "svc")
        settings = conf / "lab.conf"
        with open(settings, "a") as f:  # what an administrator adds by hand
            f.write(f'SHARED_CACHE_PASSWORD="{PASSWORD}"\n')
        unit = (units / "ngffmount@.service").read_text()
        assert "$OPTIONS" not in unit and "${OPTIONS}" not in unit
        # systemd's environment for the daemon: the file's variables but those the unit unsets.
        unset = next(ln for ln in unit.splitlines() if ln.startswith("UnsetEnvironment=")).split("=", 1)[1].split()
        env = {**os.environ, **{k: v for k, v in read_settings(str(settings)).items() if k not in unset},
               "CACHE_DIRECTORY": str(tmp_path / "cache")}
        assert "OPTIONS" not in env and "SHARED_CACHE_PASSWORD" not in env
        log = tmp_path / "daemon.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(_unit_command(unit, "lab"), env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not os.path.ismount(mnt):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00001.tif"), data[1])
            stats = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
            assert stats["shared_misses"] > 0 and stats["shared_errors"] == 0, "the password from the file was used"
            shown = [Path(f"/proc/{proc.pid}/cmdline").read_bytes(), Path(f"/proc/{proc.pid}/environ").read_bytes(),
                     subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True).stdout]
            for secret in (storage_secret, PASSWORD):
                assert not any(secret.encode() in text for text in shown), "a secret in ps or /proc/PID"
        finally:
            subprocess.run([sys.executable, "-m", "ngffmount.vfs.command.cli", "unmount", str(mnt)], capture_output=True)
            assert proc.wait(timeout=30) == 0, log.read_text()
        text = log.read_text()
        assert storage_secret not in text and PASSWORD not in text


def test_service_settings_are_read_as_systemd_reads_them(tmp_path):
    conf = tmp_path / "x.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write('# a comment\nSOURCE="s3://b/a \\"q\\".zarr"\nMOUNTPOINT=/mnt/x\n'
                "OPTIONS=\"--anon --storage-option 'a=b c'\"\nSHARED_CACHE_PASSWORD=\"p\\\\w\"\n")
    args, fd = service_arguments(str(conf), environ={"CACHE_DIRECTORY": "/var/cache/ngffmount"})
    try:
        assert args[:-2] == ["mount", "-f", 's3://b/a "q".zarr', "/mnt/x", "--cache-dir", "/var/cache/ngffmount",
                             "--anon", "--storage-option", "a=b c"]
        assert args[-2] == "--shared-cache-password-file"
        with open(args[-1]) as f:  # read again by each reader, from the start
            assert f.read() == "p\\w\n"
        with open(args[-1]) as f:
            assert f.readline() == "p\\w\n"
    finally:
        os.close(fd)
    os.chmod(conf, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        service_arguments(str(conf))
