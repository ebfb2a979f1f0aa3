"""A chunk tier shared by a cluster of daemons, on Redis or Redis Cluster (see tier.py).

Every node asks it after its own disk cache and before the remote store, so a cluster fetches
each chunk from the remote about once:
- entries are the disk cache's (same key, same checksum and metadata: disk.entry_head), so a
  damaged entry is a miss, fetched again and overwritten, never served. Each is one string,
  its head and then its data (layout below), written at once, evicted at once, and read a
  range at a time (GETRANGE): a large entry is answered as Parts (tier.py), so a plane of a
  deep blosc chunk reads the frame's header, block table and the one block it needs, each
  page checked, while the whole comes behind the reader (partial.py);
- single-flight across nodes: a node that misses takes a lock key (SET NX PX); the others
  poll a bounded time for the holder's bytes, and fetch themselves once the lock expires;
- writes go behind the read, on a thread of their own (a bounded queue: past the bound a
  write is dropped, never waited for);
- Redis down, killed or slow costs speed, never a read: short connect and operation
  timeouts, the trouble logged once, then the tier skipped and tried again with backoff.
The size of the tier is Redis's own `maxmemory` with an LRU policy (README, docs/scaling.md).

An entry's string: LAYOUT (magic, page bytes, data bytes, head bytes), the disk cache's entry
head (checksum of metadata and data, metadata), the CRC32C of each page of the data, the
CRC32C of all the head before it; then the data. Keys of the earlier layout (a hash) are
never read: their key names differ (`:chunk:v2:`), and LRU lets them go.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import struct
import threading
import time
from typing import Callable, Hashable, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import crc32c

from .disk import _split_entry, checked_entry, entry_head
from .readpause import ReadPauses
from .throttledlog import ThrottledLog
from .tier import Parts

log = logging.getLogger("ngffmount")

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
DEFAULT_PREFIX = "ngffmount"
# Below Redis's own value limit (proto-max-bulk-len, 512 MB by default): larger chunks would
# crowd out hundreds of others, and pass by the tier.
DEFAULT_MAX_VALUE = 64 << 20
CONNECT_TIMEOUT_S = 0.05
# The longest wait for an answer (each socket read or write): locks, pings, an entry's first
# bytes. An entry's own reads and writes add time for its bytes (a 5 MB HSET is sent in one
# sendall, whose timeout bounds the whole send): ENTRY_BYTES_PER_S, for the largest entry.
OP_TIMEOUT_S = 0.05
ENTRY_BYTES_PER_S = 256 << 20
LOCK_MS = 10_000  # a lock outlives the holder's fetch by this much at most (a dead holder's too)
POLL_S = (0.005, 0.05)  # waiting for a holder's bytes: first and longest pause
BACKOFF_S = (0.5, 30.0)  # unreachable: first and longest pause before trying again
# Operations failed in a row that make the server taken for away: one slow answer (a busy
# host) sends only its own chunk to the source. A refused connection counts at once.
FAILURES_AWAY = 3
WRITE_BACKLOG_BYTES = 256 << 20
# Chunk reads in flight at once, per daemon. Redis answers one client at a time, 64 KiB per
# turn: sixteen multi-MB GETs at once all end near the end, each woken a hundred times; two
# at a time end one after the other (the reader starts on the first ones) in fewer wakeups.
READS_AT_ONCE = 2
SOCKET_READ_BYTES = 1 << 20  # a multi-MB value in tens of recv calls, not hundreds
_FAILED = object()  # what _call answers when the server could not be asked
_DAMAGED = object()  # what _read answers for an entry whose checksum fails
_WRONG_TYPE = object()  # the key holds something else than a string
LAYOUT = struct.Struct("<4sIQI")  # magic, page bytes, data bytes, head bytes (all before the data)
MAGIC = b"NGc2"
PAGE_BYTES = 16 << 10  # each page of an entry's data has its checksum: a range read is checked
MAX_PAGES = 1024  # larger entries have larger pages (their head stays at most 4 KiB of CRCs)
# The first read of an entry: its head and, mostly, the first pages of its data (a blosc
# frame's header and block table).
FIRST_READ = 32 << 10
# Entries up to this are read whole at once (as Parts, a range would save little).
PARTS_FROM = 1 << 20
# A large entry found is read whole behind its reader once reads pause this long (or at most
# BEHIND_MAX_WAIT_S later): on a small host a whole entry's bytes read meanwhile cost the
# reader more than the blocks it reads.
QUIET_S = 0.25
BEHIND_MAX_WAIT_S = 5.0
# The range read of an entry that reads all of it still missing: a reader that needs a second
# block walks the chunk (a scroll, an XZ plane), and would pay a round trip a block.
WHOLE_AT_READ = 2

# One string, its head then its data, written at once (no copy of the data on either side).
_WRITE = "redis.call('set', KEYS[1], ARGV[1]) redis.call('append', KEYS[1], ARGV[2]) return 1"

# Delete a lock only if it is still ours (it may have expired and been taken by another node).
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class SharedCacheURL(NamedTuple):
    scheme: str
    nodes: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None  # in the URL itself: allowed, never shown (see `redacted`)
    ca_certs: str | None  # rediss: a CA file for a private certificate (?ssl_ca_certs=PATH)
    # Seconds, as redis-py's own URLs say them (?socket_timeout=0.5&socket_connect_timeout=0.1):
    # a server on a host too busy to answer within the defaults (tens of ms).
    socket_timeout: float | None = None
    connect_timeout: float | None = None

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def cluster(self) -> bool:
        return self.scheme.endswith("+cluster")

    @property
    def redacted(self) -> str:
        """For messages: the URL with no password."""
        user = f"{self.username}@" if self.username else ""
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        return f"{self.scheme}://{user}{hosts}" + ("" if self.cluster else f"/{self.db}")


def parse_url(url: str) -> SharedCacheURL:
    """redis://[user@]host:port/db, rediss://..., redis+cluster://host:port[,host:port...]
    (or ';' between hosts).
    Raises ValueError with a message that holds no password."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"--shared-cache must start with {', '.join(s + '://' for s in SCHEMES)}")
    parts = urlsplit("x://" + rest)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    nodes = []
    for part in filter(None, hosts.replace(";", ",").split(",")):  # ';' in fstab, where ',' splits options
        host, colon, port = part.rpartition(":")
        if not colon:
            host, port = part, "6379"
        try:
            nodes.append((host.strip("[]") or "localhost", int(port)))
        except ValueError:
            raise ValueError(f"--shared-cache: not a host:port: {part!r}") from None
    if not nodes:
        raise ValueError("--shared-cache: no host given")
    if len(nodes) > 1 and not scheme.endswith("+cluster"):
        raise ValueError("--shared-cache: several hosts need redis+cluster://")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ValueError(f"--shared-cache: not a database number: {path!r}") from None
    query = parse_qs(parts.query)
    timeouts = []
    for name in ("socket_timeout", "socket_connect_timeout"):
        value = (query.get(name) or [None])[0]
        try:
            timeouts.append(None if value is None else float(value))
        except ValueError:
            raise ValueError(f"--shared-cache: {name} is a number of seconds, not {value!r}") from None
        if timeouts[-1] is not None and not 0 < timeouts[-1] <= 60:
            raise ValueError(f"--shared-cache: {name} must be above 0 and at most 60 seconds")
    return SharedCacheURL(scheme, nodes, db, username, password, (query.get("ssl_ca_certs") or [None])[0],
                          *timeouts)


def read_password(path: str | None) -> str | None:
    """The password file's first line (a file of mode 0600 that only the mount's user reads)."""
    if not path:
        return None
    try:
        with open(path) as f:
            return f.readline().rstrip("\r\n") or None
    except OSError as exc:
        raise ValueError(f"--shared-cache-password-file {path}: {exc.strerror}") from None


def page_bytes(size: int) -> int:
    page = PAGE_BYTES
    while page * MAX_PAGES < size:
        page *= 2
    return page


def _crc(data) -> bytes:
    return struct.pack("<I", crc32c.crc32c(data))


def entry_head_bytes(data, meta: dict | None) -> bytes:
    """What goes before an entry's data in its string (see the layout above)."""
    page = page_bytes(len(data))
    crcs = b"".join(_crc(data[i:i + page]) for i in range(0, len(data), page))
    disk_head = entry_head(data, meta)
    head = LAYOUT.pack(MAGIC, page, len(data), LAYOUT.size + len(disk_head) + len(crcs) + 4) + disk_head + crcs
    return head + _crc(head)


class _Head(NamedTuple):
    page: int
    size: int  # of the data
    nbytes: int  # of the head: the data starts there
    disk_head: bytes
    meta: bytes
    crcs: bytes

    def page_ok(self, page: int, data) -> bool:
        return _crc(data) == self.crcs[4 * page:4 * page + 4]


def _parse_head(value: bytes) -> "_Head | None | int":
    """The head at the start of `value`; None when damaged; the bytes it needs when longer."""
    if len(value) < LAYOUT.size:
        return None
    magic, page, size, nbytes = LAYOUT.unpack_from(value)
    npages = -(-size // page) if page else -1
    if magic != MAGIC or npages < 0 or nbytes < LAYOUT.size + 4 * npages + 4:
        return None
    if len(value) < nbytes:
        return nbytes
    head = value[:nbytes - 4]
    if _crc(head) != value[nbytes - 4:nbytes]:
        return None
    crcs = head[len(head) - 4 * npages:]
    header, meta, _ = _split_entry(head[LAYOUT.size:len(head) - 4 * npages])
    return _Head(page, size, nbytes, header, meta, crcs)


class _Write(NamedTuple):
    key: str
    data: bytes
    meta: dict | None
    nbytes: int
    lock: tuple[str, str] | None  # the lock to let go of once written


class RedisTier(ReadPauses):
    name = "shared"
    counters = ("shared_hits", "shared_misses", "shared_errors", "shared_corrupt", "shared_bytes_read",
                "shared_bytes_written", "shared_lock_waits", "shared_too_large", "shared_partial_hits",
                "shared_part_bytes_read")
    local = False

    def __init__(self, url: str, password: str | None = None, prefix: str = DEFAULT_PREFIX,
                 max_value: int = DEFAULT_MAX_VALUE, connect_timeout: float | None = None,
                 op_timeout: float | None = None, lock_ms: int = LOCK_MS,
                 backlog_bytes: int = WRITE_BACKLOG_BYTES):
        self.url = parse_url(url)
        self._password = password or self.url.password
        self.prefix = prefix or DEFAULT_PREFIX
        self.max_value = max_value
        # Given here, else in the URL, else the defaults.
        self.connect_timeout = connect_timeout or self.url.connect_timeout or CONNECT_TIMEOUT_S
        self.op_timeout = op_timeout or self.url.socket_timeout or OP_TIMEOUT_S
        self.entry_timeout = self.op_timeout + max_value / ENTRY_BYTES_PER_S
        self.lock_ms = lock_ms
        self._backlog_bytes = backlog_bytes
        self.stats = None
        self._client = None
        self._entry_client = None  # the same server, with entry_timeout
        self._client_lock = threading.RLock()  # _failed runs inside _connected too
        self._down_until = 0.0
        self._backoff = BACKOFF_S[0]
        self._failures = 0  # in a row
        self._trouble = ThrottledLog(log)
        self._found = threading.local()  # claim's GET, for the get that follows it
        self._writes: queue.Queue[_Write | None] = queue.Queue()
        self._pending = 0  # writes queued or running
        self.nbytes = 0
        self._cond = threading.Condition()
        self._unlock = self._set = None
        self._reads = threading.BoundedSemaphore(READS_AT_ONCE)
        ReadPauses.__init__(self, self._cond)  # reading(): whole entries wait until reads pause (see later)
        self._behind: queue.Queue[tuple[float, Callable[[], None]]] = queue.Queue()
        self._behind_jobs = 0  # queued or running (flush waits for them)
        self._hurry = 0  # flushes waiting: run whole reads now, without waiting for a pause
        threading.Thread(target=self._write_loop, name="shared-write", daemon=True).start()
        threading.Thread(target=self._behind_loop, name="shared-behind", daemon=True).start()

    # -- the connection

    def check(self) -> None:
        """At mount: say whether the server is reachable, and warn when it would refuse writes
        once full instead of evicting (maxmemory-policy noeviction)."""
        client = self._connected()
        if client is None:
            return
        try:
            policies = client.config_get("maxmemory-policy")
        except Exception:
            return  # CONFIG may be renamed or forbidden on a managed server
        if isinstance(policies, dict):
            # A cluster answers per node: {node: {name: value}} (or merged, depending on redis-py).
            values = [v for d in policies.values() for v in (d.values() if isinstance(d, dict) else [d])]
        else:
            values = []
        values = {v.decode() if isinstance(v, bytes) else str(v) for v in values}
        if "noeviction" in values:
            log.warning("shared cache %s: maxmemory-policy is noeviction: once full it refuses new chunks; "
                        "set maxmemory-policy allkeys-lru (and a maxmemory) on the server", self.url.redacted)

    def _make_client(self, timeout: float, entries: bool = False):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = dict(username=self.url.username, password=self._password,
                       socket_connect_timeout=self.connect_timeout, socket_timeout=timeout,
                       socket_read_size=SOCKET_READ_BYTES,
                       retry=Retry(NoBackoff(), 0), health_check_interval=0)
        if self.url.tls:
            options.update(ssl=True, ssl_ca_certs=self.url.ca_certs)
        if self.url.cluster:
            from redis.cluster import ClusterNode, RedisCluster

            return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.url.nodes],
                                **options)
        host, port = self.url.nodes[0]
        client = redis.Redis(host=host, port=port, db=self.url.db, **options)
        parser = _entry_parser() if entries else None
        if parser is not None:
            client.connection_pool.connection_kwargs["parser_class"] = parser
        return client

    def _connected(self, entries: bool = False):
        """The client (for entries: the one with entry_timeout), or None while the server is
        taken for unreachable (backoff)."""
        if time.monotonic() < self._down_until:
            return None
        client = self._entry_client if entries else self._client
        if client is not None:
            return client
        with self._client_lock:
            if self._client is None and time.monotonic() >= self._down_until:
                try:
                    client = self._make_client(self.op_timeout)
                    client.ping()
                except Exception as exc:
                    self._failed(exc, connecting=True)
                    return None
                self._client = client
                self._entry_client = self._make_client(self.entry_timeout, entries=True)
                self._unlock = client.register_script(_UNLOCK)
                self._set = client.register_script(_WRITE)
                self._reachable()
            return self._entry_client if entries else self._client

    def _failed(self, exc: BaseException, connecting: bool = False) -> None:
        """The server did not answer in time or at all: this operation's chunk comes from the
        source; after FAILURES_AWAY in a row (or a failed connect), go without it for a while."""
        if self.stats is not None:
            self.stats.add("shared_errors")
        with self._client_lock:
            self._failures += 1
            if not connecting and self._failures < FAILURES_AWAY:
                return
            now = time.monotonic()
            if now >= self._down_until:
                self._down_until = now + self._backoff * random.uniform(0.8, 1.2)
                self._backoff = min(self._backoff * 2, BACKOFF_S[1])
            clients = self._client, self._entry_client
            self._client = self._entry_client = None
        for client in clients:
            try:
                if client is not None:
                    client.close()
            except Exception:
                pass
        self._trouble.report("down", "shared cache %s cannot be used (%s): reading from the source, trying it "
                             "again with backoff", self.url.redacted, _reason(exc))

    def _reachable(self) -> None:
        self._backoff = BACKOFF_S[0]
        self._failures = 0
        self._trouble.ended("down", "shared cache %s: in use again", self.url.redacted)

    def _call(self, op: Callable, default=None, entries: bool = False):
        """op(client), or `default` when the server cannot be asked now."""
        client = self._connected(entries)
        if client is None:
            return default
        try:
            result = op(client)
        except Exception as exc:
            self._failed(exc)
            return default
        self._failures = 0
        return result

    # -- the tier

    def attach(self, stats, held_in_memory) -> None:
        self.stats = stats

    def _key(self, key: str) -> str:
        return f"{self.prefix}:chunk:v2:{key}"

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}:lock:{key}"

    def holds(self, key: str) -> bool:
        return False  # asking costs a round trip: the engine asks in get, after the claim

    def _getrange(self, key: str, ranges: list[tuple[int, int]]):
        """The bytes of [start, stop) ranges of a key's string, in one round trip; _WRONG_TYPE
        when it holds no string, _FAILED when the server cannot be asked (counted)."""
        from redis.exceptions import ResponseError

        def getrange(client):
            try:
                if len(ranges) == 1:
                    return [client.getrange(key, ranges[0][0], ranges[0][1] - 1)]
                pipe = client.pipeline(transaction=False)
                for start, stop in ranges:
                    pipe.getrange(key, start, stop - 1)
                return pipe.execute()
            except ResponseError:  # WRONGTYPE: damaged, as far as this tier is concerned
                return _WRONG_TYPE

        got = self._call(getrange, _FAILED, entries=True)
        if isinstance(got, list):
            self.stats.add("shared_bytes_read", sum(map(len, got)))
        return got

    def _damaged(self, key: str):
        self.stats.add("shared_corrupt")
        self._trouble.report("corrupt", "shared cache %s: a damaged entry (%s): fetched again",
                             self.url.redacted, key)
        return _DAMAGED

    def _read(self, key: str):
        """The entry: (bytes, meta), or (Parts, meta) for a large one; None: a miss (or the
        server cannot be asked); _DAMAGED."""
        rkey = self._key(key)
        with self._reads:  # few connections: each new one costs a connect and AUTH first
            got = self._getrange(rkey, [(0, FIRST_READ)])
        if got is _FAILED:
            return None
        first = b"" if got is _WRONG_TYPE else got[0]
        if got is not _WRONG_TYPE and not first:
            return None
        head = _parse_head(first)
        if isinstance(head, int):  # a head longer than the first read
            more = self._getrange(rkey, [(len(first), head)])
            if more is _FAILED:
                return None
            first = first + (b"" if more is _WRONG_TYPE else more[0])
            head = _parse_head(first)
        if not isinstance(head, _Head):
            return self._damaged(key)
        try:
            meta = json.loads(head.meta) if head.meta else None
        except ValueError:
            return self._damaged(key)
        present = first[head.nbytes:]
        if head.size > PARTS_FROM and len(present) >= min(head.page, head.size):
            parts = RedisParts(self, key, head, present)
            if parts.buffer is None:
                return self._damaged(key)
            self.stats.add("shared_part_bytes_read", len(first))
            return parts, meta
        if len(present) < head.size:
            with self._reads:
                rest = self._getrange(rkey, [(head.nbytes + len(present), head.nbytes + head.size)])
            if rest is _FAILED:
                return None
            present = present + (b"" if rest is _WRONG_TYPE else rest[0])
        entry = checked_entry(head.disk_head, head.meta, present[:head.size]) if len(present) >= head.size else None
        return entry if entry is not None else self._damaged(key)

    def get(self, key: str):
        found = getattr(self._found, "entry", None)
        self._found.entry = None
        if found is not None and found[0] == key:
            return found[1]  # what claim read, just before
        entry = self._read(key)
        return None if entry is _DAMAGED else entry

    def claim(self, key: str):
        """The entry is read first (one round trip for a hit; the `get` that follows takes
        what was read here). On a miss, the lock key: held, or waited for until the holder's
        bytes are there (`get` reads them), the lock expires (then taken), or LOCK_MS passed.
        None: nothing held."""
        entry = self._read(key)
        damaged = entry is _DAMAGED
        self._found.entry = (key, None if damaged else entry)
        if entry is not None and not damaged:
            return None
        lock, token = self._lock_key(key), os.urandom(8).hex()
        got = self._call(lambda c: c.set(lock, token, nx=True, px=self.lock_ms), _FAILED)
        if got is _FAILED:
            return None  # unreachable: the source it is
        if got:
            if not damaged:
                # A holder may have written and let go between our read and our lock: `get` reads again.
                self._found.entry = None
            return lock, token
        self.stats.add("shared_lock_waits")
        self._found.entry = None
        deadline = time.monotonic() + self.lock_ms / 1000
        pause = POLL_S[0]
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, POLL_S[1])
            client = self._connected()
            if client is None:
                return None
            try:
                if client.exists(self._key(key)):
                    return None  # the holder's bytes are there: get reads them
                if client.set(lock, token, nx=True, px=self.lock_ms):
                    return lock, token  # the holder let go without bytes, or died
            except Exception as exc:
                self._failed(exc)
                return None
        return None

    def release(self, claim) -> None:
        if claim is not None:
            self._call(lambda c: self._unlock(keys=[claim[0]], args=[claim[1]], client=c))

    def put(self, key: str, data: bytes, meta: dict | None, claim, memory_key: Hashable) -> None:
        """Queue the entry for the writer thread; too large, or the queue full: dropped."""
        if len(data) > self.max_value:
            self.stats.add("shared_too_large")
            self.release(claim)
            return
        if time.monotonic() < self._down_until:
            return  # unreachable: a lock we hold expires by itself
        with self._cond:
            if self.nbytes + len(data) > self._backlog_bytes:
                full = True
            else:
                full = False
                self.nbytes += len(data)
                self._pending += 1
        if full:
            self.release(claim)
            return
        self._writes.put(_Write(self._key(key), data, meta, len(data), claim))

    def _write_loop(self) -> None:
        while True:
            job = self._writes.get()
            try:
                self._write(job)
            finally:
                with self._cond:
                    self.nbytes -= job.nbytes
                    self._pending -= 1
                    self._cond.notify_all()

    def _write(self, job: _Write) -> None:
        head = entry_head_bytes(job.data, job.meta)

        def write(client):
            self._set(keys=[job.key], args=[head, job.data], client=client)
            self.stats.add("shared_bytes_written", job.nbytes)
            if job.lock is not None:
                self._unlock(keys=[job.lock[0]], args=[job.lock[1]], client=client)
            return True

        self._call(write, entries=True)

    def delete(self, key: str) -> None:
        self._call(lambda c: c.delete(self._key(key)))

    def later(self, job: Callable[[], None]) -> None:
        """Run job on this tier's own thread once reads pause for QUIET_S (from now at least),
        or at most BEHIND_MAX_WAIT_S from now (at once while a flush waits)."""
        with self._cond:
            self._behind_jobs += 1
        self._behind.put((time.monotonic(), job))

    def _behind_loop(self) -> None:
        while True:
            queued, job = self._behind.get()
            while True:
                now = time.monotonic()
                # A job comes of a reader's chunk: its time counts as a read (a reader's first
                # chunks may come by a prefetch, before any request of its ended).
                quiet = self._readers == 0 and now - max(queued, self._last_read) >= QUIET_S
                if quiet or self._hurry or now - queued >= BEHIND_MAX_WAIT_S:
                    break
                time.sleep(POLL_S[0] * 4)
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - a failed job costs its disk fill, never the thread
                self._trouble.report("behind", "shared cache: reading an entry behind the reader failed: %r", exc)
            finally:
                with self._cond:
                    self._behind_jobs -= 1
                    self._cond.notify_all()

    def memory_changed(self, memory_key: Hashable) -> None:
        pass

    @property
    def backlog(self) -> int:
        return self.nbytes

    def flush(self, timeout: float | None = None) -> bool:
        """Also the whole reads still behind readers (they fill the tiers nearer the reader,
        flushed after this one: ChunkEngine.flush_disk), run at once."""
        with self._cond:
            self._hurry += 1
            try:
                return self._cond.wait_for(lambda: self._pending == 0 and self._behind_jobs == 0, timeout)
            finally:
                self._hurry -= 1


class RedisParts(Parts):
    """A large entry read a range at a time (see tier.Parts): each range in whole pages, each
    page checked against its CRC32C in the head. A page that does not come or does not check
    fails the read of its range (the engine then waits for the whole chunk, from here or the
    source); the tier's trouble is counted and logged as for whole entries."""

    def __init__(self, tier: RedisTier, key: str, head: _Head, present: bytes):
        self._tier = tier
        self._key = key
        self._head = head
        self.size = head.size
        self._lock = threading.Lock()
        self.partial_hit = False  # counted once, at the first range read
        self._range_reads = 0
        npages = -(-head.size // head.page)
        self._present = bytearray(npages)  # 1: the page is in buffer, checked
        self.buffer = bytearray(head.size)  # zeros cost no memory until written
        whole_pages = len(present) // head.page if len(present) < head.size else npages
        for page in range(whole_pages):
            if not self._put_page(page, present[page * head.page:(page + 1) * head.page]):
                self.buffer = None  # damaged: the tier says so (see _read)
                return

    def _put_page(self, page: int, data: bytes) -> bool:
        start = page * self._head.page
        if len(data) != min(self._head.page, self.size - start) or not self._head.page_ok(page, data):
            return False
        self.buffer[start:start + len(data)] = data
        self._present[page] = 1
        return True

    def later(self, job: Callable[[], None]) -> None:
        self._tier.later(job)

    def read(self, start: int, stop: int) -> bool:
        page = self._head.page
        missing = [p for p in range(start // page, -(-min(stop, self.size) // page)) if not self._present[p]]
        if not missing:
            return True
        tier = self._tier
        if not self.partial_hit:
            self.partial_hit = True
            tier.stats.add("shared_partial_hits")
        self._range_reads += 1
        if self._range_reads >= WHOLE_AT_READ:
            missing = [p for p in range(len(self._present)) if not self._present[p]]
        runs: list[list[int]] = []  # runs of pages next to each other, one GETRANGE each
        for p in missing:
            if runs and runs[-1][1] == p:
                runs[-1][1] = p + 1
            else:
                runs.append([p, p + 1])
        offset = self._head.nbytes
        tier._last_read = time.monotonic()
        got = tier._getrange(tier._key(self._key),
                             [(offset + a * page, offset + min(b * page, self.size)) for a, b in runs])
        if got is _FAILED:
            return False
        tier.stats.add("shared_part_bytes_read", sum(map(len, got)) if isinstance(got, list) else 0)
        if got is _WRONG_TYPE or not all(got):
            return bool(self._gone())
        with self._lock:
            for (a, b), data in zip(runs, got):
                view = memoryview(data)
                for p in range(a, b):
                    if not self._put_page(p, view[(p - a) * page:(p - a + 1) * page]):
                        tier._damaged(self._key)
                        return False
        return True

    def _gone(self):
        """Evicted, deleted or overwritten with something else since its head was read."""
        self._tier.stats.add("shared_errors")
        self._tier._trouble.report("gone", "shared cache %s: an entry went away while read (%s): read from "
                                   "elsewhere", self._tier.url.redacted, self._key)
        return None

    def whole(self) -> bytes | None:
        tier, head = self._tier, self._head
        if all(self._present):  # every part read already: no round trip
            data = bytes(self.buffer)
        else:
            with tier._reads:
                got = tier._getrange(tier._key(self._key), [(head.nbytes, head.nbytes + head.size)])
            if got is _FAILED:
                return None
            if got is _WRONG_TYPE or not got[0]:
                return self._gone()
            data = got[0]
        entry = checked_entry(head.disk_head, head.meta, data)
        if entry is None:
            tier._damaged(self._key)
            return None
        return entry[0]


def _entry_parser():
    """redis-py's hiredis parser, keeping its buffer between replies. hiredis frees a buffer
    once a reply is read, so each multi-MB entry grew a new one by reallocs, copies and page
    faults: with the buffer kept (as large as the largest entry read, on at most
    READS_AT_ONCE + 1 connections), 16 reads of 5.5 MB took a third less CPU. None without
    hiredis (or with a redis-py that moved it): the default parser then."""
    try:
        from redis._parsers import _HiredisParser
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return None
    if not HIREDIS_AVAILABLE:
        return None

    class KeepingBuffer(_HiredisParser):
        def on_connect(self, connection, **kwargs):
            super().on_connect(connection, **kwargs)
            self._reader.setmaxbuf(0)  # 0: never freed

    return KeepingBuffer


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
