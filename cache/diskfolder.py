"""A cache folder seen from outside an open DiskCache: what it holds (read without writing,
for `cache info` on a full file system), removing its oldest entry files to make room for
opening it, removing stray entry files, and sizing SQLite's log to its file system."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse

import diskcache


def log_bound(directory: str) -> dict:
    """SQLite's write-ahead log takes ~20 KB per entry written, up to 1000 pages (4 MB)
    before it starts over, and its file never shrinks: on a small file system that is
    room taken from the entries. Keep it to about 1/64 of the file system."""
    try:
        st = os.statvfs(directory)
        pages = max(16, min(1000, st.f_blocks * st.f_frsize // 64 // 4096))
    except OSError:
        pages = 1000
    # SQLite's defaults (1000 pages, a log never cut) where the file system is large enough.
    return {"sqlite_wal_autocheckpoint": pages, "sqlite_journal_size_limit": pages * 4096 if pages < 1000 else -1}


def human(n: float) -> str:
    """A byte count for people: 512 B, 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def oldest_entries(db_path: str) -> tuple[int, list]:
    """The volume and the (rowid, filename, size) rows, least recently used first, read
    without writing anything (SQLite's immutable mode: what the main database file holds)."""
    con = sqlite3.connect(f"file:{urllib.parse.quote(db_path)}?immutable=1", uri=True)
    try:
        (page_count,), = con.execute("PRAGMA page_count").fetchall()
        (page_size,), = con.execute("PRAGMA page_size").fetchall()
        (size,), = con.execute("SELECT value FROM Settings WHERE key = 'size'").fetchall()
        rows = con.execute("SELECT rowid, filename, size FROM Cache ORDER BY access_time").fetchall()
    finally:
        con.close()
    return page_count * page_size + size, rows


def remove_oldest(rows, directory: str, nbytes: float) -> tuple[list[int], int]:
    """Remove the files of the first rows until `nbytes` are freed; returns (rowids, bytes
    freed: those of rows kept in SQLite, freed once the rows go, and of files removed). A
    file holds the entries of one batch: the rows of its other entries go too."""
    victims, freed, removed = [], 0, set()
    for rowid, filename, size in rows:
        if freed >= nbytes:
            break
        victims.append(rowid)
        if filename:
            path = os.path.join(directory, filename)
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except OSError:
                continue  # gone already: frees nothing
            removed.add(filename)
        freed += size
    taken = set(victims)
    victims += [rowid for rowid, filename, _ in rows if filename in removed and rowid not in taken]
    return victims, freed


def remove_oldest_files(directory: str, nbytes: float) -> int:
    """Remove the entry files written longest ago until `nbytes` are freed; returns the
    bytes freed. For when the index cannot be trusted to name them (see DiskCache)."""
    files = []
    for path in entry_files(directory):
        with contextlib.suppress(OSError):
            st = os.stat(path)
            files.append((st.st_mtime, st.st_size, path))
    freed = 0
    for _, size, path in sorted(files):
        if freed >= nbytes:
            break
        with contextlib.suppress(OSError):
            os.unlink(path)
            freed += size
    return freed


def delete_rows(cache: diskcache.Cache, rowids: list[int]) -> int:
    """Best effort: a row whose file is gone reads as a miss and is dropped then. Returns
    how many rows went (a full file system can refuse the deletes)."""
    deleted = 0
    try:
        for i in range(0, len(rowids), 500):
            batch = rowids[i:i + 500]
            with cache._transact() as (sql, _):
                n = sql(f"DELETE FROM Cache WHERE rowid IN ({','.join('?' * len(batch))})", batch).rowcount
            deleted += n  # counted once the transaction is in
    except Exception:
        pass
    return deleted


def entry_files(directory: str) -> list[str]:
    """The paths of entry files (in diskcache's two levels of folders)."""
    out = []
    for root, dirs, files in os.walk(directory):
        depth = 0 if root == directory else os.path.relpath(root, directory).count(os.sep) + 1
        if depth >= 2:
            dirs[:] = []
        if depth:
            out += [os.path.join(root, name) for name in files if name.endswith(".val")]
    return out


def remove_entry_files(directory: str, keep: set[str]) -> int:
    """Remove entry files whose names (relative to the folder) are not in `keep`."""
    removed = 0
    for path in entry_files(directory):
        if os.path.relpath(path, directory) not in keep:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
    return removed


def describe(directory: str) -> dict:
    """What `cache info` shows, read without writing anything (so it works on a full file
    system): entries, size, limit (as last stored by a mount), free bytes on its file system."""
    db_path = os.path.join(directory, diskcache.core.DBNAME)
    if not os.path.exists(db_path):
        raise FileNotFoundError(db_path)
    quoted = urllib.parse.quote(db_path)
    try:  # read-only: SQLite's shared-memory file must exist or be made...
        out = _settings(f"file:{quoted}?mode=ro")
    except sqlite3.Error:  # ... which a full file system refuses: the main database file alone
        out = _settings(f"file:{quoted}?immutable=1")
    st = os.statvfs(directory)
    out["free"] = st.f_bavail * st.f_frsize
    return out


def _settings(uri: str) -> dict:
    con = sqlite3.connect(uri, uri=True)
    try:
        settings = dict(con.execute("SELECT key, value FROM Settings WHERE key IN ('count', 'size', 'size_limit')"))
        (page_count,), = con.execute("PRAGMA page_count").fetchall()
        (page_size,), = con.execute("PRAGMA page_size").fetchall()
    finally:
        con.close()
    return {"entries": settings.get("count", 0), "size": page_count * page_size + settings.get("size", 0),
            "limit": settings.get("size_limit", 0)}


def remove_cache_files(directory: str) -> None:
    """Remove the database and every entry file of a cache folder that cannot be opened
    (`cache clear` on a file system full of other files). Mounts using it make it again."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(diskcache.core.DBNAME):
            with contextlib.suppress(OSError):
                os.unlink(path)
    remove_entry_files(directory, keep=set())
