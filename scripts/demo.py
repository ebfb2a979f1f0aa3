"""The demo: a generated multiscale OME-Zarr, served over loopback HTTP, mounted, ready to open.

    python scripts/demo.py            # mounts and waits; Ctrl-C unmounts and stops the server
    python scripts/demo.py --check    # mounts, reads a plane, unmounts (what the tests run)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import zarr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from servers import RangeHTTPServer  # noqa: E402  (the loopback Range server the tests use)

SHAPE = (2, 32, 768, 1024)  # c, z, y, x
SCALE = (1.0, 2.0, 0.325, 0.325)  # micrometers


def synthetic_cells(shape=SHAPE, seed=1) -> np.ndarray:
    """Nuclei (channel 0) and their membranes (channel 1), so the demo looks like something."""
    rng = np.random.default_rng(seed)
    _, nz, ny, nx = shape
    out = np.zeros(shape, np.float32)
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    for _ in range(90):
        cz, cy, cx = rng.uniform(0, nz), rng.uniform(0, ny), rng.uniform(0, nx)
        r = rng.uniform(14, 30)
        z0, z1 = max(0, int(cz - r / 2)), min(nz, int(cz + r / 2) + 1)
        y0, y1 = max(0, int(cy - 2 * r)), min(ny, int(cy + 2 * r) + 1)
        x0, x1 = max(0, int(cx - 2 * r)), min(nx, int(cx + 2 * r) + 1)
        d = np.sqrt(((zz[z0:z1] - cz) * 4) ** 2 + (yy[:, y0:y1] - cy) ** 2 + (xx[:, :, x0:x1] - cx) ** 2) / r
        out[0, z0:z1, y0:y1, x0:x1] += 3000 * np.exp(-(d ** 2) * 2)
        out[1, z0:z1, y0:y1, x0:x1] += 2000 * np.exp(-((d - 1.3) ** 2) * 20)
    out += rng.normal(150, 20, shape).astype(np.float32)
    return np.clip(out, 0, 65535).astype(np.uint16)


def write_sample(path: Path) -> None:
    data = synthetic_cells()
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for level in range(3):
        step = 2**level
        arr = data[:, :, ::step, ::step]
        root.create_array(str(level), shape=arr.shape, dtype=arr.dtype, chunks=(1, 8, 256, 256),
                          chunk_key_encoding={"name": "v2", "separator": "/"})[...] = arr
        scale = [SCALE[0], SCALE[1], SCALE[2] * step, SCALE[3] * step]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    root.attrs["multiscales"] = [{"version": "0.4", "name": "demo cells", "axes": axes, "datasets": datasets}]
    root.attrs["omero"] = {"channels": [{"label": "nuclei", "color": "00FFFF"}, {"label": "membranes", "color": "FF00FF"}]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/ngffmount-demo", help="where the sample and the mountpoint go")
    ap.add_argument("--check", action="store_true", help="mount, read a plane, unmount and exit")
    args = ap.parse_args()
    work = Path(args.dir)
    www, mnt = work / "www", work / "mnt"
    store = www / "cells.ome.zarr"
    if not (store / ".zattrs").exists():
        print(f"writing a sample OME-Zarr to {store} ...", flush=True)
        write_sample(store)
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)  # a demo left mounted before

    with RangeHTTPServer(str(www), listing=False) as server:
        url = f"{server.url}/cells.ome.zarr"
        print(f"serving it at {url} (HTTP with Range, no directory listing)", flush=True)
        cmd = [sys.executable, "-m", "ngffmount.vfs.command.cli", "mount", url, str(mnt), "--cache-dir", str(work / "cache")]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr.strip(), file=sys.stderr)
            return 1
        print(result.stdout.strip())
        try:
            print("\nThe mount:")
            for name in sorted(os.listdir(mnt)):
                p = mnt / name
                print(f"  {p}{'/' if p.is_dir() else ''}  {'' if p.is_dir() else f'{p.stat().st_size:,} bytes'}")
            print(f"""
Open these:
  Fiji / ImageJ:  File > Open                    {mnt}/s0.tif   (2 channels x 32 z, calibrated in microns)
                  File > Import > TIFF Virtual Stack {mnt}/s0.tif
                  File > Import > Image Sequence {mnt}/s0/  (tick "Use virtual stack")
  libtiff:        tiffinfo {mnt}/s0/t00000_c000_z00016.tif
  Python:         tifffile.imread("{mnt}/s1.tif")
  Metadata:       cat {mnt}/info.json
  Live counters:  cat {mnt}/.ngffmount/stats.json
""", flush=True)
            plane = tifffile.imread(mnt / "s0" / "t00000_c000_z00016.tif")
            print(f"read one plane through the mount: shape {plane.shape}, dtype {plane.dtype}, max {plane.max()}")
            if args.check:
                return 0
            print("\nPress Ctrl-C to unmount and stop the server.", flush=True)
            # Blocked only now: the mount daemon started above must keep its own signals.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            pass
        finally:
            subprocess.run([sys.executable, "-m", "ngffmount.vfs.command.cli", "unmount", str(mnt)], capture_output=True)
            print(f"unmounted {mnt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
