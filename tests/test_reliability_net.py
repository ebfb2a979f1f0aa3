"""An operator's world, network side: a remote that goes silent, and the signals a service
gets. Real mounts through a loopback proxy (tests/faults.py) in front of a Range-honouring
HTTP server, every byte checked against the written array."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import diskcache
import numpy as np
import pytest
import tifffile

from conftest import mounted, ngffmount_cmd, vfs_for
from faults import FaultyProxy
from test_engine import pixel_offset
from zarr_fixtures import pattern, write_ome_zarr

from ngffmount.adapters.errors import ChunkReadError
from ngffmount.adapters.retry import deadline_at
from ngffmount.adapters.storage import Store, storage_options_for
from ngffmount.cache.engine import ChunkEngine
from ngffmount.cache.fetchhealth import READAHEAD_BACKOFF_AFTER

pytestmark = pytest.mark.integration

PLANES, SIDE, CHUNK = 48, 64, 32  # 4 chunks per plane
TIMEOUT = 4.0
METADATA_BOUND_S = 2.0  # stat/ls/info.json answer in milliseconds; this only catches a stall
EIO_MARGIN_S = 1.5


@pytest.fixture(scope="module")
def served_image(http_server, tmp_path_factory):
    """A 48-plane uint16 OME-Zarr on the HTTP origin (no directory listing), and its pixels."""
    data = pattern((PLANES, SIDE, SIDE), "uint16", seed=3)
    path = tmp_path_factory.mktemp("net") / "net.zarr"
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, CHUNK, CHUNK))
    shutil.copytree(path, http_server.www / "net.zarr")
    pixels_at = pixel_offset(str(path))  # where s0.tif's pixels start, from the local copy
    return "net.zarr", data, pixels_at, path


def timed(fn, *args):
    started = time.monotonic()
    value = fn(*args)
    return value, time.monotonic() - started


def read_failing(path: Path, results: list, lock: threading.Lock) -> None:
    """Read a whole file that should fail; record (path, errno or None, arrival, seconds taken)."""
    started = time.monotonic()
    err = None
    try:
        path.read_bytes()
    except OSError as exc:
        err = exc.errno
    with lock:
        results.append((path.name, err, started, time.monotonic() - started))


@pytest.mark.parametrize("remote", ["http", "s3"])
def test_silent_remote_fails_reads_in_time_and_never_stalls_metadata(tmp_path, request, served_image, cache_args,
                                                                      remote):
    """16 readers blocked on different chunks, readahead queued behind them: stat of a path
    never seen, ls, info.json and stats.json answer at once; each read fails with EIO within
    --timeout of its arrival; after the outage every plane reads back exact."""
    name, data, _, path = served_image
    if remote == "s3":
        s3 = request.getfixturevalue("s3_server")
        s3.upload_dir(path, "outage", name, public=True)
        origin = s3.endpoint_url
    else:
        origin = request.getfixturevalue("http_server").url
    with FaultyProxy(origin) as proxy:
        url, extra = f"{proxy.url}/{name}", []
        if remote == "s3":
            url, extra = f"s3://outage/{name}", ["--anon", "--endpoint-url", proxy.url]
        with mounted(url, tmp_path / "mnt", "--timeout", str(TIMEOUT), *extra, *cache_args) as mnt:
            proxy.blackhole()
            results: list = []
            lock = threading.Lock()
            # A whole read of the stack walks its planes in order: readahead over the rest of the level.
            stack = [threading.Thread(target=read_failing, args=(mnt / "s0.tif", results, lock))]
            stack[0].start()
            time.sleep(0.3)
            readers = [threading.Thread(target=read_failing, args=(mnt / "s0" / f"z{z:05d}.tif", results, lock))
                       for z in range(20, 36)]
            for t in readers:
                t.start()
            time.sleep(1.0)  # every reader is now waiting on the silent remote
            assert proxy.counts["blackholed"] >= 16, proxy.counts

            st, stat_s = timed(os.stat, mnt / "s0" / "z00047.tif")  # never looked up before
            listing, ls_s = timed(os.listdir, mnt / "s0")
            info, info_s = timed(lambda: json.loads((mnt / "info.json").read_text()))
            stats, stats_s = timed(lambda: json.loads((mnt / ".ngffmount" / "stats.json").read_text()))
            assert st.st_size > SIDE * SIDE * 2 and len(listing) == PLANES
            assert info["levels"][0]["shape"] == [PLANES, SIDE, SIDE]
            assert stats["in_flight"] >= 16
            # More fetches than all the readers' chunks: readahead is queued (and stuck) too.
            assert stats["fetches_pending"] > 16 * 4 + 2 * 4, stats["fetches_pending"]
            for what, took in (("stat", stat_s), ("ls", ls_s), ("info.json", info_s), ("stats.json", stats_s)):
                assert took < METADATA_BOUND_S, f"{what} took {took:.1f} s while readers were blocked"

            for t in stack + readers:
                t.join(4 * TIMEOUT)
            assert len(results) == 17
            for plane, err, _, took in results:
                assert err == errno.EIO, f"{plane}: {err}"
                assert took < TIMEOUT + EIO_MARGIN_S, f"{plane}: EIO after {took:.1f} s (--timeout {TIMEOUT:g})"
            stats = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
            assert stats["readahead_paused"] is True

            # Still silent: a read arriving now fails in time too, readahead no longer queued ahead.
            _, took = timed(read_failing, mnt / "s0" / "z00040.tif", results, lock)
            assert results[-1][1] == errno.EIO and took < TIMEOUT + EIO_MARGIN_S, results[-1]

            proxy.restore()
            for z in range(PLANES):
                np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), data[z], err_msg=str(z))
            with tifffile.TiffFile(mnt / "s0.tif") as tif:
                np.testing.assert_array_equal(tif.asarray(), data)
            assert json.loads((mnt / ".ngffmount" / "stats.json").read_text())["readahead_paused"] is False


@pytest.mark.parametrize("sync_client", [False, True])
def test_a_reads_deadline_cuts_the_retry_budget_short(http_server, served_image, sync_client):
    """Store requests made under `deadline_at` give up at that deadline, not after --timeout:
    the reader's clock started before its fetch did."""
    import fsspec.implementations.http_sync as http_sync

    name, data, *_ = served_image
    http_sync.unregister()  # importing it took over http://; keep only sync-http:// for it
    with FaultyProxy(http_server.url, delay=30) as proxy:
        proxy.fail_permanently(f"/{name}/0/0/0/0", "delay")
        url = ("sync-" if sync_client else "") + f"{proxy.url}/{name}"
        store = Store(url, storage_options_for(url, timeout=20.0))
        assert store._is_async is not sync_client
        started = time.monotonic()
        with deadline_at(started + 1.0), pytest.raises(ChunkReadError):
            store.get("0/0/0/0")
        assert time.monotonic() - started < 2.5
        with deadline_at(time.monotonic() - 0.1), pytest.raises(ChunkReadError, match="deadline passed"):
            store.get("0/0/0/1")  # out of time before it was sent: never sent
        assert proxy.requests_for(f"/{name}/0/0/0/1") == 0
        assert store.get("0/0/1/0") == (http_server.www / name / "0" / "0" / "1" / "0").read_bytes()


def test_readahead_backs_off_while_fetches_fail_and_resumes(http_server, served_image):
    """Without FUSE: after READAHEAD_BACKOFF_AFTER failed fetches in a row, reads queue no
    readahead (only their own chunks reach the remote); one success brings readahead back."""
    name, data, offset, _ = served_image
    with FaultyProxy(http_server.url) as proxy:
        url = f"{proxy.url}/{name}"
        engine = ChunkEngine(memory_bytes=64 << 20, readahead_bytes=8 * CHUNK * CHUNK * 2 * 4)  # 8 planes
        fs = vfs_for(url, storage_options_for(url, timeout=2.0, retries=1), engine=engine)
        plane = SIDE * SIDE * 2
        proxy.set_rates(error=1.0)  # every request: 500
        for z in range(READAHEAD_BACKOFF_AFTER):
            with pytest.raises(ChunkReadError):
                fs.read("/s0.tif", plane, offset + z * plane)
            assert engine.wait_idle(10)
        assert engine.readahead_paused
        before = proxy.requests
        for z in range(3, 8):  # a forward scroll: would read ahead, but backs off
            with pytest.raises(ChunkReadError):
                fs.read("/s0.tif", plane, offset + z * plane)
            assert engine.wait_idle(10)
        assert proxy.requests - before == 5 * 4, "each read fetched its own 4 chunks, and nothing ahead"

        proxy.set_rates()
        assert fs.read("/s0.tif", plane, offset + 8 * plane) == data[8].astype("<u2").tobytes()
        assert not engine.readahead_paused
        before = proxy.requests
        assert fs.read("/s0.tif", plane, offset + 9 * plane) == data[9].astype("<u2").tobytes()
        assert engine.wait_idle(10)
        assert proxy.requests - before > 4 * 4, "planes after 9 were read ahead again"
        for z in range(10, 14):
            assert fs.read("/s0.tif", plane, offset + z * plane) == data[z].astype("<u2").tobytes()


# -- signals ----------------------------------------------------------------------------


def cache_keys(cache_dir: str) -> list[str]:
    with diskcache.Cache(cache_dir) as raw:
        return list(raw.iterkeys())


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def foreground_mount(url: str, mnt: Path, log_path: Path, *extra: str):
    """`ngffmount mount -f`, as a systemd unit runs it: the test owns the daemon and its exit code."""
    mnt.mkdir(exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ngffmount.vfs.command.cli", "mount", "-f", url, str(mnt), *extra],
                                stdout=log, stderr=log)
    try:
        assert wait_for(lambda: os.path.ismount(mnt) and (mnt / "info.json").exists()), log_path.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_flushes_unmounts_and_exits_0(tmp_path, http_server, served_image, signum):
    """As under systemd (`mount -f`): a stop signal right after a scroll writes the chunks
    still waiting for the disk cache, unmounts, and exits 0."""
    name, data, *_ = served_image
    mnt, cache_dir, log_path = tmp_path / "mnt", str(tmp_path / "cache"), tmp_path / "daemon.log"
    with foreground_mount(f"{http_server.url}/{name}", mnt, log_path, "--cache-dir", cache_dir) as proc:
        with tifffile.TiffFile(mnt / "s0.tif") as tif:
            np.testing.assert_array_equal(tif.asarray(), data)
        stats = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
        assert stats["disk_write_backlog_bytes"] > 0, "chunks wait for the disk cache (write-behind)"
        proc.send_signal(signum)
        assert proc.wait(30) == 0, log_path.read_text()
    assert not os.path.ismount(mnt)
    keys = cache_keys(cache_dir)
    assert len(keys) == stats["chunks_fetched"] == PLANES * 4, "every fetched chunk reached the disk cache"
    assert "Traceback" not in log_path.read_text()


# EIO from the daemon; or, for the kernel's retry of the page once the loop stopped taking
# requests, what the kernel answers when the mount goes away.
STOPPED_ERRORS = (errno.EIO, errno.ECONNABORTED, errno.ENOTCONN)


def test_stop_during_an_outage_ends_within_seconds(tmp_path, http_server, served_image, cache_args):
    """SIGTERM while reads wait on a silent remote with a long --timeout: the reads fail, the
    mount goes away and the daemon exits 0 within seconds, not after the timeout."""
    name, data, *_ = served_image
    timeout, results, lock = 40.0, [], threading.Lock()
    with FaultyProxy(http_server.url) as proxy:
        with foreground_mount(f"{proxy.url}/{name}", tmp_path / "mnt", tmp_path / "daemon.log",
                              "--timeout", str(timeout), *cache_args) as proc:
            mnt = tmp_path / "mnt"
            np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00000.tif"), data[0])
            proxy.blackhole()
            readers = [threading.Thread(target=read_failing, args=(mnt / "s0" / f"z{z:05d}.tif", results, lock))
                       for z in range(10, 14)]
            for t in readers:
                t.start()
            assert wait_for(lambda: proxy.counts["blackholed"] >= 4, 10)
            started = time.monotonic()
            proc.terminate()
            code = proc.wait(timeout)
            took = time.monotonic() - started
            for t in readers:
                t.join(timeout)
    assert code == 0 and took < 10, f"exit {code} after {took:.1f} s"
    assert not os.path.ismount(tmp_path / "mnt")
    assert len(results) == 4 and all(err in STOPPED_ERRORS for _, err, _, _ in results), results


def test_sighup_reopens_the_log_and_keeps_serving(tmp_path, http_server, served_image, cache_args):
    """logrotate: rename the log, SIGHUP; new lines go to a new file at the old path, and
    the mount keeps serving."""
    name, data, *_ = served_image
    log_path = tmp_path / "logs" / "mount.log"
    with mounted(f"{http_server.url}/{name}", tmp_path / "mnt", "--log-file", str(log_path), *cache_args) as mnt:
        pid = json.loads((mnt / ".ngffmount" / "stats.json").read_text())["pid"]
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00001.tif"), data[1])
        rotated = log_path.with_suffix(".log.1")
        log_path.rename(rotated)
        os.kill(pid, signal.SIGHUP)
        assert wait_for(log_path.exists, 10), "a new log file at the old path"
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00002.tif"), data[2])
        assert os.path.ismount(mnt) and os.path.exists(f"/proc/{pid}")
        os.kill(pid, signal.SIGHUP)  # twice: still serving
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00003.tif"), data[3])
        assert wait_for(lambda: log_path.read_text().count("SIGHUP: log reopened") == 2, 10), log_path.read_text()
    assert "serving" in rotated.read_text() and "serving" not in log_path.read_text()
    assert wait_for(lambda: "unmounted" in log_path.read_text(), 20), "the daemon's last lines go to the new file"


# -- the systemd unit ---------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def systemd_restarts(unit: dict[str, str], exit_code: int) -> bool:
    """systemd's decision after the main process exits with `exit_code` (Restart=on-failure)."""
    assert unit.get("Restart") == "on-failure"
    success = {0, *map(int, unit.get("SuccessExitStatus", "").split())}
    prevented = set(map(int, unit.get("RestartPreventExitStatus", "").split()))
    return exit_code not in success and exit_code not in prevented


def test_unit_restarts_only_on_real_failures(tmp_path, tiny_store, cache_args):
    """The unit `ngffmount service unit` prints, against the exit codes the daemon really gives:
    a stop signal (exit 0) and a usage error (exit 2, a restart cannot fix it) are not
    restarted; a failed mount (exit 1) is."""
    unit = unit_settings(ngffmount_cmd("service", "unit").stdout)
    path, data, mnt = tiny_store
    proc = subprocess.Popen([sys.executable, "-m", "ngffmount.vfs.command.cli", "mount", "-f", str(path), str(mnt), *cache_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: os.path.ismount(mnt))
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00001.tif"), data[1])
        proc.terminate()  # a plain `kill`
        stopped = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)
    failed = ngffmount_cmd("mount", "-f", str(tmp_path / "missing.zarr"), str(mnt), *cache_args, check=False).returncode
    usage = ngffmount_cmd("mount", "-f", str(path), str(mnt), "--no-such-option", check=False).returncode
    assert (stopped, failed, usage) == (0, 1, 2)
    assert not systemd_restarts(unit, stopped)
    assert systemd_restarts(unit, failed)
    assert not systemd_restarts(unit, usage)
