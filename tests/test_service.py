"""Service use: the systemd template unit (Type=notify), and fstab through mount.fuse.ngffmount."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import ngffmount_cmd
from ngffmount.vfs.command.service import helper_arguments


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
