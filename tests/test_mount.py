"""Real FUSE mounts of stores served over loopback HTTP (Range, no listing) and moto S3,
read back with tifffile and tiffinfo and compared with zarr-python reading the same URL."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr

from conftest import kill_hard, imagej_order, mounted, ngffmount_cmd
from zarr_fixtures import SAMPLES, pattern, sample, write_metadata_doc, write_ome_zarr

pytestmark = pytest.mark.integration


def served(http_server, name: str) -> tuple[str, object]:
    return f"{http_server.url}/{name}", http_server.www / name


@pytest.fixture(scope="module")
def hcs_image(http_server):
    """The real Fractal HCS image metadata (c, z, y, x; 5 levels, blosc lz4 '<u2', '/' keys), our pixels."""
    url, path = served(http_server, "B03/0")
    attrs = sample("ome-zarr-0.4/hcs-fractal-image-B03-0.zattrs")
    level0 = sample("ome-zarr-0.4/hcs-fractal-image-B03-0-level0.zarray")
    # Keep the sample's level-0 metadata exactly; shrink only y and x to keep the test small.
    shape = level0["shape"][:2] + [216, 512]
    chunks = level0["chunks"][:2] + [216, 256]
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    for lvl, ds in enumerate(attrs["multiscales"][0]["datasets"]):
        s = shape[:2] + [-(-shape[2] // 2**lvl), -(-shape[3] // 2**lvl)]
        c = [min(a, b) for a, b in zip(chunks, s)]
        arr = root.create_array(ds["path"], shape=s, chunks=c, dtype=level0["dtype"], compressors=None,
                                chunk_key_encoding={"name": "v2", "separator": "/"})
        arr[...] = pattern(s, "uint16", seed=lvl)
        meta = json.loads((path / ds["path"] / ".zarray").read_text())
        meta.update({k: v for k, v in level0.items() if k not in ("shape", "chunks")})
        write_metadata_doc(path / ds["path"] / ".zarray", meta)
        # zarr-python wrote raw chunks; recompress them with the sample's blosc settings.
        import numcodecs

        codec = numcodecs.get_codec(level0["compressor"])
        for f in (path / ds["path"]).rglob("*"):
            if f.is_file() and not f.name.startswith("."):
                f.write_bytes(codec.encode(f.read_bytes()))
    (path / ".zattrs").write_text((SAMPLES / "ome-zarr-0.4/hcs-fractal-image-B03-0.zattrs").read_text())
    return url


def test_http_ome_zarr_04_every_plane(tmp_path, http_server, hcs_image, cache_args):
    ref = zarr.open_group(hcs_image, mode="r")  # zarr-python over the same HTTP server
    with mounted(hcs_image, tmp_path / "mnt", *cache_args) as mnt:
        assert set(os.listdir(mnt)) == {".ngffmount", "info.json", "image.ome.tif", "image.h5", "bdv.xml", "bdv.h5", "crop",
                                        "preview.png", *[f"s{i}{ext}" for i in range(5)
                                                         for ext in ("", ".tif", ".ome.tif", ".h5", ".xz", ".yz")]}
        info = json.loads((mnt / "info.json").read_text())
        assert info["levels"][0]["voxel_size"] == {"x": 0.1625, "y": 0.1625, "z": 1.0, "unit": "micron"}
        assert info["channels"][0]["label"] == "DAPI"
        for lvl in range(5):
            arr = ref[str(lvl)][...]
            names = sorted(os.listdir(mnt / f"s{lvl}"))
            assert len(names) == arr.shape[0] * arr.shape[1]
            for name in names:
                c, z = int(name[8:11]), int(name[13:18])
                plane_path = mnt / f"s{lvl}" / name
                np.testing.assert_array_equal(tifffile.imread(plane_path), arr[c, z])
                out = subprocess.run(["tiffinfo", str(plane_path)], capture_output=True, text=True)
                assert out.returncode == 0 and "Image Width: %d" % arr.shape[3] in out.stdout, out.stderr
            np.testing.assert_array_equal(tifffile.imread(mnt / f"s{lvl}.tif").reshape(-1, *arr.shape[2:]),
                                          imagej_order(arr, "czyx"))


def test_s3_ome_zarr_05_sharded_idr_metadata(tmp_path, s3_server, cache_args):
    """The real IDR 4007801 group and sharded level-0 array metadata, declared at full size
    (532 x 2 x 988 x 2048 x 2169, ~9 TB): only a few inner chunks exist."""
    store = tmp_path / "4007801.zarr"
    write_metadata_doc(store / "zarr.json", sample("ome-zarr-0.5/idr-4007801-tczyx-group.zarr.json"))
    level0 = sample("ome-zarr-0.5/idr-4007801-level0-sharded-array.zarr.json")
    write_metadata_doc(store / "0" / "zarr.json", level0)
    for lvl in range(1, 5):
        meta = json.loads(json.dumps(level0))
        meta["shape"] = level0["shape"][:3] + [-(-n // 2**lvl) for n in level0["shape"][3:]]
        write_metadata_doc(store / str(lvl) / "zarr.json", meta)
    arr = zarr.open_array(str(store / "0"), mode="r+")
    block = pattern((1, 1, 32, 64, 96), "uint16", seed=3)
    arr[265:266, 1:2, 494:526, 1000:1064, 1000:1096] = block
    s3_server.upload_dir(store, "idr", "zarr/v0.5/4007801.zarr", public=True)
    url = "s3://idr/zarr/v0.5/4007801.zarr"
    with mounted(url, tmp_path / "mnt", "--anon", "--endpoint-url", s3_server.endpoint_url, *cache_args) as mnt:
        info = json.loads((mnt / "info.json").read_text())
        assert info["format"] == "OME-Zarr 0.5"
        assert info["levels"][0]["shape"] == level0["shape"]
        assert info["levels"][0]["chunk_shape"] == [1, 1, 32, 32, 32]
        assert [c["label"] for c in info["channels"]] == ["H2B-eGFP", "myr-tdTomato"]
        plane = mnt / "s0" / "t00265_c001_z00500.tif"
        assert plane.stat().st_size > 2048 * 2169 * 2
        got = tifffile.imread(plane)
        ref = zarr.open_array(url + "/0", mode="r", storage_options={"anon": True, "client_kwargs": {"endpoint_url": s3_server.endpoint_url}})
        np.testing.assert_array_equal(got, ref[265, 1, 500])
        assert got[1000:1064, 1000:1096].any() and not got[:1000].any()
        stats = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
        assert stats["chunks_missing"] > 0 and stats["errors"] == 0
        # stat of the 9 TB stack never touches a chunk
        before = json.loads((mnt / ".ngffmount" / "stats.json").read_text())["remote_requests"]
        assert (mnt / "s0.tif").stat().st_size > 2**40
        assert json.loads((mnt / ".ngffmount" / "stats.json").read_text())["remote_requests"] == before


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("transport", ["http", "s3"])
def test_every_plane_matches_zarr_python_over_the_same_url(tmp_path, http_server, s3_server, cache_args, version, transport):
    name = f"m-{version}-{transport}.zarr"
    store = tmp_path / name
    data = pattern((2, 2, 5, 70, 90), "uint16", seed=len(name))
    write_ome_zarr(store, data, "tczyx", version=version, levels=3, chunks=(1, 1, 2, 32, 32),
                   shards=(1, 1, 4, 64, 64) if version == "0.5" else None, units={"z": "micrometer", "x": "micrometer"})
    if transport == "http":
        shutil.copytree(store, http_server.www / name)
        url, extra, options = f"{http_server.url}/{name}", [], None
    else:
        s3_server.upload_dir(store, "matrix", name, public=True)
        url, extra = f"s3://matrix/{name}", ["--anon", "--endpoint-url", s3_server.endpoint_url]
        options = {"anon": True, "client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    ref = zarr.open_group(url, mode="r", storage_options=options)
    with mounted(url, tmp_path / "mnt", *extra, *cache_args) as mnt:
        for lvl in range(3):
            arr = ref[str(lvl)][...]
            for t, c, z in np.ndindex(arr.shape[:3]):
                got = tifffile.imread(mnt / f"s{lvl}" / f"t{t:05d}_c{c:03d}_z{z:05d}.tif")
                np.testing.assert_array_equal(got, arr[t, c, z])
            stack = tifffile.imread(mnt / f"s{lvl}.tif")
            np.testing.assert_array_equal(stack.reshape(-1, *arr.shape[3:]), imagej_order(arr, "tczyx"))


def test_foreground_mode_serves_until_unmounted(tiny_store, cache_args):
    store, data, mnt = tiny_store
    proc = subprocess.Popen([sys.executable, "-m", "ngffmount.vfs.command.cli", "mount", "-f", f"file://{store}", str(mnt), *cache_args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("mounted file://")
        assert os.path.ismount(mnt)
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00001.tif"), data[1])
        ngffmount_cmd("unmount", str(mnt))
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)


def test_a_read_fetches_only_the_chunks_it_touches(tmp_path, http_server, cache_args):
    url, path = served(http_server, "counted.zarr")
    data = pattern((8, 96, 128), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(4, 32, 32))
    with mounted(url, tmp_path / "mnt", *cache_args) as mnt:
        http_server.reset_counters()
        os.listdir(mnt / "s0")
        [(mnt / "s0" / n).stat() for n in os.listdir(mnt / "s0")]
        assert http_server.requests == 0, "stat and readdir fetch nothing"
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00005.tif"), data[5])
        chunk_paths = {p for p in http_server.paths if p.startswith("/counted.zarr/0/")}
        assert chunk_paths == {f"/counted.zarr/0/1/{y}/{x}" for y in range(3) for x in range(4)}
        assert http_server.requests == len(chunk_paths), "one request per chunk"
        # The next plane of the same chunks comes from the memory cache.
        tifffile.imread(mnt / "s0" / "z00006.tif")
        assert http_server.requests == len(chunk_paths)


def test_local_path_and_read_only(tmp_path, cache_args):
    store = tmp_path / "img.zarr"
    data = pattern((3, 40, 40), "float32")
    write_ome_zarr(store, data, "zyx", levels=1, chunks=(1, 20, 20))
    with mounted(str(store), tmp_path / "mnt", *cache_args) as mnt:
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00002.tif"), data[2])
        entry = next(line.split() for line in open("/proc/mounts") if line.split()[1] == str(mnt))
        assert entry[2] == "fuse.ngffmount" and "ro" in entry[3].split(",")
        assert "allow_other" not in entry[3], "allow_other only when asked for"
        dev = os.stat(mnt).st_dev
        readahead = open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").read()
        assert readahead.strip() == "1024", "the kernel may send 1 MiB reads (libfuse3), not 128 KiB"
        for attempt in (lambda: open(mnt / "s0.tif", "r+b"), lambda: open(mnt / "new.tif", "wb"),
                        lambda: os.mkdir(mnt / "d"), lambda: os.unlink(mnt / "s0.tif")):
            with pytest.raises(OSError) as exc:
                attempt()
            assert exc.value.errno == errno.EROFS
        mtime = (mnt / "s0.tif").stat().st_mtime
        time.sleep(1.1)
        assert (mnt / "s0.tif").stat().st_mtime == mtime
    assert sorted(os.listdir(store)) == [".zattrs", ".zgroup", "0"]  # nothing written to the source


def test_broken_chunk_gives_eio_and_daemon_keeps_serving(tmp_path, http_server, cache_args):
    url, path = served(http_server, "broken.zarr")
    data = pattern((3, 32, 32), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, 32, 32))
    (path / "0" / "1" / "0" / "0").write_bytes(b"not blosc at all")
    http_server.fail_paths["/broken.zarr/0/2/0/0"] = 500
    log_file = tmp_path / "daemon.log"
    with mounted(url, tmp_path / "mnt", "--log-file", str(log_file), *cache_args) as mnt:
        for z in (1, 2):
            with pytest.raises(OSError) as exc:
                (mnt / "s0" / f"z{z:05d}.tif").read_bytes()
            assert exc.value.errno == errno.EIO
        log = log_file.read_text()
        assert "read /s0/z00001.tif: blosc chunk holds" in log
        assert "read /s0/z00002.tif: cannot read" in log and "500" in log
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00000.tif"), data[0])
        stats = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
        assert stats["errors"] >= 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: None, "no image metadata"),
        (lambda root: (root / ".zattrs").write_text('{"multiscales": [{"axes": '), "broken JSON"),
        (lambda root: (root / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}'),
         "no OME-Zarr multiscales"),
        (lambda root: (root / ".zattrs").write_text(json.dumps({"multiscales": [{"version": "0.4", "axes": [
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}], "datasets": [{"path": "../../etc"}]}]})),
         "outside the source"),
        (lambda root: (root / ".zattrs").write_text(json.dumps({"multiscales": [{"version": "0.4", "axes": [
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}], "datasets": [{"path": "0"}]}]})),
         "has no .zarray"),
    ],
)
def test_bad_stores_fail_with_one_line(tmp_path, http_server, make, message):
    name = f"bad-{abs(hash(message))}.zarr"
    url, path = served(http_server, name)
    path.mkdir(parents=True, exist_ok=True)
    make(path)
    (tmp_path / "mnt").mkdir()
    result = ngffmount_cmd("mount", url, str(tmp_path / "mnt"), check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not os.path.ismount(tmp_path / "mnt")


def test_bad_urls_and_mountpoints(tmp_path, http_server, cache_args):
    store = tmp_path / "img.zarr"
    write_ome_zarr(store, pattern((8, 8), "uint8"), "yx", levels=1)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cases = [
        (["http://127.0.0.1:9/nothing.zarr", str(mnt)], "cannot reach"),
        (["nosuchproto://x/y.zarr", str(mnt)], "nosuchproto"),
        ([str(store), str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "nope.zarr"), str(mnt)], "no image metadata"),
    ]
    for args, message in cases:
        result = ngffmount_cmd("mount", *args, *cache_args, check=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with mounted(str(store), mnt, *cache_args):
        result = ngffmount_cmd("mount", str(store), str(mnt), check=False)
        assert result.returncode != 0 and "busy" in result.stderr
    result = ngffmount_cmd("unmount", str(mnt), check=False)
    assert result.returncode != 0 and "not mounted" in result.stderr


def test_unmount_clears_stale_mount_and_remount_works(tiny_store, cache_args):
    store, data, mnt = tiny_store
    ngffmount_cmd("mount", str(store), str(mnt), *cache_args)
    try:
        pid = json.loads((mnt / ".ngffmount" / "stats.json").read_text())["pid"]
        kill_hard(pid)
        with pytest.raises(OSError) as exc:
            os.listdir(mnt)
        assert exc.value.errno == errno.ENOTCONN
        ngffmount_cmd("unmount", str(mnt))
        assert not os.path.ismount(mnt)
        # A stale mount is also cleared by mount itself.
        ngffmount_cmd("mount", str(store), str(mnt), *cache_args)
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "z00001.tif"), data[1])
    finally:
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)


def test_no_credentials_in_logs_or_files(tmp_path, s3_server, cache_args):
    store = tmp_path / "img.zarr"
    write_ome_zarr(store, pattern((2, 16, 16), "uint16"), "zyx", levels=1)
    s3_server.upload_dir(store, "private", "img.zarr", public=False)
    secret = "SECRETxyz123"
    log_file = tmp_path / "ngffmount.log"
    with mounted("s3://private/img.zarr", tmp_path / "mnt", "--endpoint-url", s3_server.endpoint_url,
                 "--storage-option", "key=AKIDSECRETKEY", "--storage-option", f"secret={secret}",
                 "--log-file", str(log_file), *cache_args) as mnt:
        tifffile.imread(mnt / "s0" / "z00001.tif")
        texts = [(mnt / "info.json").read_text(), (mnt / ".ngffmount" / "stats.json").read_text(), log_file.read_text()]
        ps = subprocess.run(["ps", "axww", "-o", "args"], capture_output=True, text=True).stdout
        mounts = open("/proc/mounts").read()
    for text in [*texts, ps, mounts]:
        assert secret not in text and "AKIDSECRETKEY" not in text
