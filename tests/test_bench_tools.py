"""The benchmark's CPU bookkeeping and issue 22's target table, and the profile's classifier
of py-spy stacks: pure functions, checked without servers or mounts."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import benchmark as bm  # noqa: E402
import profile_scroll as ps  # noqa: E402


def run(seconds, reader, daemon=None):
    return {"seconds": seconds, "nbytes": 1 << 30, "requests": 10, "bytes": 100, "methods": {"GET": 10},
            "cpu_reader": reader, "cpu_daemon": daemon}


def test_summarize_takes_median_cpu_of_reader_plus_daemon():
    row = bm.summarize("x", [run(1, 0.1, 2.0), run(2, 0.3, 1.0), run(3, 0.2, 5.0)], 10, 100)
    assert row["cpu_reader"] == 0.2 and row["cpu_daemon"] == 2.0
    assert row["cpu"] == 2.1  # median of the sums 2.1, 1.3, 5.2, not a sum of medians
    assert bm.cpu_cell(row) == "2.10 (0.20 + 2.00)"
    direct = bm.summarize("y", [run(1, 0.5), run(1, 0.7)], 10, 100)
    assert "cpu_daemon" not in direct and bm.cpu_cell(direct) == "0.60"


def test_targets_compare_with_tensorstore_from_the_same_rows():
    rows = {"ts_plane": {"median": 0.2}, "ngff_cold_plane": {"median": 0.3},
            "ts_all": {"median": 2.0, "cpu": 1.0},
            "ngff_cold_all": {"median": 2.2, "cpu": 2.5, "pairs": {"ts": [1.1, 1.0, 1.3]}},
            "ngff_warm_all": {"median": 0.9}, "ngff_hot_all": {"median": 0.25, "nbytes": 1 << 30}}
    table = "\n".join(bm.render_targets({"1x512x512": {"rows": rows}}))
    assert "| cold plane ngffmount / tensorstore | ≤ 1 | 1.5, NOT met |" in table
    assert "| cold scroll ngffmount / tensorstore | ≤ 1.2 | 1.1, met (pairs 1.10, 1.00, 1.30) |" in table
    assert "(reader + daemon) / tensorstore | ≤ 2 | 2.5, NOT met |" in table
    assert "| warm scroll ngffmount / tensorstore cold scroll | ≤ 0.5 | 0.45, met |" in table
    assert "| hot re-read GB/s | ≥ 4 | 4.29, met |" in table
    assert "ngffmount / tensorstore's scroll | – | – |" in table  # no source CPU-s: no reference value


def test_reference_row_spreads_reader_daemon_and_source_cpu_over_the_cores(monkeypatch):
    monkeypatch.setattr(bm.os, "cpu_count", lambda: 2)
    rows = {"ts_all": {"median": 2.0, "cpu": 1.0, "cpu_source": 1.5},
            "ngff_cold_all": {"median": 2.6, "cpu": 3.5, "cpu_source": 1.3}}
    assert abs(bm.cpu_floor_ratio(rows) - (3.5 + 1.3) / 2 / 2.0) < 1e-9
    table = "\n".join(bm.render_targets({"64x256x256": {"rows": rows}}))
    assert "allows on 2 cores, ngffmount / tensorstore's scroll | – | 1.2 |" in table
    assert "| 64x256x256 | ngffmount cold, s0.tif plane by plane | – | 2.6 | 3.50 | 1.30 |" in table
    row = bm.summarize("x", [{**run(1, 0.1, 2.0), "cpu_source": 1.0}, {**run(1, 0.1, 2.0), "cpu_source": 3.0},
                             {**run(1, 0.1, 2.0), "cpu_source": 2.5}], 10, 100)
    assert row["cpu_source"] == 2.5


def test_proxy_counts_the_cpu_its_threads_spend_on_requests(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import urllib.request

    from latency_proxy import LatencyProxy
    from servers import RangeHTTPServer

    (tmp_path / "blob").write_bytes(bytes(range(256)) * (64 << 12))  # 64 MiB
    with RangeHTTPServer(tmp_path) as upstream, LatencyProxy(upstream.url, latency_s=0.2) as proxy:
        before = proxy.snapshot()["cpu_s"]
        with urllib.request.urlopen(f"{proxy.url}/blob") as resp:
            assert len(resp.read()) == 64 << 20
        spent = proxy.snapshot()["cpu_s"] - before
    assert 0 < spent < 0.2, "moving 64 MiB costs CPU; the 0.2 s of latency is a sleep, not CPU"


def test_profile_classifies_by_innermost_known_frame():
    engine = "ChunkEngine._fetch_one (ngffmount/cache/engine.py:410)"
    notify = "Condition.notify (threading.py:382)"
    assert ps.classify([engine, "DiskTier.put (ngffmount/cache/disktier.py:70)", notify]) == "disk cache"
    assert ps.classify([engine, "S3FileSystem._cat_file (s3fs/core.py:1)", "HMAC._init_hmac (hmac.py:67)"]) \
        == "fetching / transport"
    assert ps.classify([engine, "BloscFrame.decode_block (/x/ngffmount/adapters/blosc_frames.py:70)"]) == "decode"
    assert ps.classify([engine, notify]) == "engine bookkeeping"
    assert ps.classify(["Thread.run (threading.py:982)", notify]) == "other"


def test_profile_tables_from_collapsed_stacks(tmp_path):
    f = tmp_path / "pyspy.txt"
    f.write_text("a (ngffmount/cache/disk.py:1);b (zlib.py:2) 3\n"
                 "a (fsspec/asyn.py:1) 1\n")
    stacks = ps.read_collapsed(f)
    assert stacks == [(["a (ngffmount/cache/disk.py:1)", "b (zlib.py:2)"], 3), (["a (fsspec/asyn.py:1)"], 1)]
    table = "\n".join(ps.subsystem_table(stacks, 2.0))
    assert "| disk cache | 3 | 75% | 1.50 |" in table
    assert "| fetching / transport | 1 | 25% | 0.50 |" in table
    assert "| all | 4 | 100% | 2.00 |" in table


def test_profile_thread_table_counts_each_kind_over_the_read():
    before = {"11": ("python3", 1.0, 10), "12": ("python3", 0.5, 5), "13": ("tokio-rt-worker", 0.2, 100)}
    after = {"11": ("python3", 1.5, 30), "12": ("python3", 0.75, 6), "13": ("tokio-rt-worker", 0.5, 400),
             "14": ("python3", 0.25, 3), "15": ("python3", 0.0, 0)}  # 14 started during the read; 15 idle
    names = {"11": "fetch", "12": "fetch", "15": "signals"}
    table = ps.thread_table(before, after, names)
    assert table[2:] == ["| fetch | 2 | 0.75 | 21 |",
                         "| tokio runtime (obstore) | 1 | 0.30 | 300 |",
                         "| python3 (libfuse workers and others) | 1 | 0.25 | 3 |"]
