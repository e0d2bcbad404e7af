"""The embedded default store: one SQLite file (WAL) under ``gateway.data_dir``.

Reads run on a small pool of reader threads with their own connections (WAL lets them read while
a write is under way). Several gateway processes (``--workers``) may share the file: each commit is
one short transaction, and they take turns (``_transaction``).

Writes are group-committed: the writes asked for in one turn of the event loop (a thousand streams
each storing its end, a batch of events, a creation) run in one transaction, and their results
reach their callers in that turn. Where a group runs:

- **on the event loop itself**, with a connection of its own, when the group is small (a
  response's end: one row holding its compressed events, ~60 µs of SQL) and the file's write lock is
  free. Handing each write to a thread and its result back cost more than the write: a thread
  woken per write, the GIL passed back and forth around every statement, the loop woken by the
  thread (on the 2-core bench machine, storing cost 1.3x the CPU of not storing at c=1 and c=64;
  on the loop, 1.1x: gateway/bench/README.md). The loop never waits there: the lock is tried once
  (``BEGIN IMMEDIATE`` with no busy wait), and its connection never checkpoints (which writes the
  database file and syncs it): the writer thread does, every ``CHECKPOINT_EVERY`` transactions.
- **on the writer thread** otherwise: a large write (a long prompt, a long answer's events), a
  group that found the lock taken (another worker writing), or one that failed (the thread runs
  its writes again one transaction each, and tells which failed), the writes that manage their
  own transactions (conversations, the sweep), and every write while the thread still has some
  (asked for earlier, they go first), and for a minute after a transaction on the loop took
  more than 10 ms (a slow disk). The thread waits for other processes' transactions
  (``_when_free``) and commits what queued while it was busy in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, TypeVar

import orjson

try:
    from compression import zstd  # Python 3.14
except ImportError:  # before it: the same module, backported (a dependency, see setup.cfg)
    from backports import zstd  # type: ignore[no-redef]

from .base import Conversation, History, Record, Store, StoreError, sequence_numbers

T = TypeVar("T")
log = logging.getLogger("gateway.store")

FILE_NAME = "responses.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    response BLOB NOT NULL,
    input BLOB NOT NULL,
    chain TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    background INTEGER NOT NULL,
    lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT -1,
    size INTEGER NOT NULL,
    end_first_seq INTEGER,
    end_frames BLOB
);
-- end_first_seq, end_frames: the response's last batch of events (compressed, as in events), kept in
-- its own row when it was written with the response's end: nearly always (see _END_COLUMNS).
-- A file made before them gets them at start (_upgrade). Such a file also had an index on created_at,
-- for the size bound's "oldest first": rowid order is the order rows were written, and the index
-- was a third b-tree to write per stored response (_upgrade drops it).
-- A rowid table: its rows (a batch of ~2 KB) are appended, and only the small key goes in an index.
-- It was WITHOUT ROWID, where a row over ~1 KB spills to an overflow page and every row lands at a
-- random place (the key starts with a random id): 160 -> 110 µs of CPU per stored response
-- (gateway/bench/README.md). A file made with the older layout keeps it; every statement works on both.
CREATE TABLE IF NOT EXISTS events (
    response_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    frames BLOB NOT NULL,
    PRIMARY KEY (response_id, first_seq)
);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    metadata BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS conversation_items (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    item BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS conversation_items_by_conversation ON conversation_items (conversation_id, position);
"""
_COLUMNS = "id, owner, status, response, input, chain, created_at, expires_at, background, lease_until, " \
           "cancel_requested, last_seq"
# A response's last batch in its row, not a row of ``events``: one row in one table (and its key in the
# index of ids) per stored response, where there were two rows, in two tables, and three indexes.
# Measured (gateway/bench/README.md, sixth round): the SQL of a stored response 92-114 -> 58-65 µs of
# CPU alone, and 9-10 % of the gateway's CPU per token with the store on, at c=1 and c=64.
_END_COLUMNS = (("end_first_seq", "INTEGER"), ("end_frames", "BLOB"))


def default_data_dir() -> str:
    """$XDG_DATA_HOME/vllm-gateway, else ~/.local/share/vllm-gateway."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "vllm-gateway")


# Event batches are stored compressed with zstd (level 1, on the writer thread, which lets go of
# the GIL while it works). SSE frames repeat their field names and ids in every event: the 55 KB of
# a 256-token stream become about 1 KB, one page written where fourteen were (see the store section
# of gateway/bench/README.md). zstd, not zlib: 14 µs a batch instead of 44-80 (zlib's adler32 alone
# was a tenth of the writer thread's CPU), and half the bytes. ``store_max_bytes`` still counts
# the frames as sent (the bound is on what is kept, not on the disk it takes). A batch written by
# an older gateway, deflated (zlib's first byte) or raw ("event:" or ":"), is read as it is.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZLIB_FIRST_BYTE = 0x78
_compressors = threading.local()  # a ZstdCompressor is not to be shared between threads

# Most writes run in one group transaction (their results are told to the loop in one wake-up).
MAX_GROUP = 512
# A grouped write bigger than this (its frames, Response and input, in bytes) runs on the writer
# thread: compressing and copying it would hold the event loop (256 KB: ~0.1 ms of zstd).
INLINE_MAX_BYTES = 256 * 1024
# The event loop's connection never checkpoints the WAL; after this many of its transactions
# (~5 pages each) the writer thread does, PASSIVE: it neither waits for a writer nor blocks one.
CHECKPOINT_EVERY = 200
# The WAL's bound (in frames, a page each: 64 MB at SQLite's 4 KB pages) and how long the writer
# thread tries to start it over once past it (see _checkpoint).
WAL_RESTART_FRAMES = 16384
RESTART_TRY_S = 0.02
# A transaction on the event loop that took longer than this (a slow or saturated disk: the OS
# holding writes back, pages read from disk) sends every write to the thread for ON_THREAD_S.
SLOW_ON_LOOP_S = 0.01
ON_THREAD_S = 60.0


def _pack(frames: bytes) -> bytes:
    compressor = getattr(_compressors, "zstd", None)
    if compressor is None:  # made once per thread: a new context per batch costs a third more
        compressor = _compressors.zstd = zstd.ZstdCompressor(level=1)
    return compressor.compress(frames, mode=zstd.ZstdCompressor.FLUSH_FRAME)


def _unpack(blob: bytes) -> bytes:
    if blob[:4] == _ZSTD_MAGIC:
        return zstd.decompress(blob)
    return zlib.decompress(blob) if blob[:1] == bytes((_ZLIB_FIRST_BYTE,)) else blob


class SQLiteStore(Store):
    name = "sqlite"

    def __init__(self, data_dir: str, *, max_bytes: int, clock: Callable[[], float]) -> None:
        self.path = os.path.join(os.path.expanduser(data_dir or default_data_dir()), FILE_NAME)
        self.max_bytes = max_bytes
        self._clock = clock
        self._writes: "queue.SimpleQueue[Optional[_Write]]" = queue.SimpleQueue()
        self._writer: Optional[threading.Thread] = None
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="store-read")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Writes on the event loop (see the module docstring): the loop they run on (the first
        # that wrote; another loop's go to the thread), its connection, this turn's writes.
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_conn: Optional[sqlite3.Connection] = None
        self._this_turn: list[_Write] = []
        self._on_thread = 0  # that loop's grouped writes given to the thread, not settled yet
        self._since_checkpoint = 0
        self._thread_only_until = 0.0  # after a slow transaction on the loop (SLOW_ON_LOOP_S)

    # --- connections -----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # The writer waits for other processes' transactions itself (_when_free); readers let
            # SQLite's busy handler wait (WAL readers are refused only while a WAL is reset).
            writer = threading.current_thread() is self._writer
            conn = sqlite3.connect(self.path, timeout=0.0 if writer else LOCK_WAIT_S, isolation_level=None,
                                   check_same_thread=False)
            _when_free(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a crash loses no committed WAL
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            try:
                return fn(self._connection(), *args)
            except sqlite3.Error as exc:
                raise StoreError(self._failed(exc)) from exc
        return await asyncio.get_running_loop().run_in_executor(self._readers, call)

    def _failed(self, exc: BaseException) -> str:
        return f"the SQLite store at {self.path} failed: {exc}"

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on the writer thread, alone, in autocommit mode (it manages its own
        transaction, if any)."""
        return await self._queue(fn, args, grouped=False)

    async def _grouped(self, fn: Callable[..., T], *args: Any, size: int = 0) -> T:
        """``fn(conn, *args)`` inside a transaction it shares with the other writes asked for in
        this turn of the loop (``fn`` must not begin or end one): atomic, and as durable as the
        others. On the event loop when ``size`` (its bytes) is small and the lock free, else on
        the writer thread; ``fn`` may run twice (a group that failed on the loop runs again on the
        thread), its first run rolled back."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        if size > INLINE_MAX_BYTES or loop is not self._loop:
            return await self._queue(fn, args, grouped=True)
        future = loop.create_future()
        if not self._this_turn:
            loop.call_soon(self._write_this_turn)
        self._this_turn.append(_Write(fn, args, True, loop, future))
        return await future

    async def _queue(self, fn: Callable[..., Any], args: tuple[Any, ...], grouped: bool) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._to_thread(_Write(fn, args, grouped, loop, future))
        return await future

    def _to_thread(self, write: "_Write") -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_forever, name="store-write", daemon=True)
            self._writer.start()
        if write.grouped and write.loop is self._loop:
            self._on_thread += 1
            write.future.add_done_callback(self._settled_on_thread)
        self._writes.put(write)

    def _settled_on_thread(self, _: "asyncio.Future[Any]") -> None:
        self._on_thread -= 1

    # --- writes on the event loop ----------------------------------------------------------------

    def _write_this_turn(self) -> None:
        group, self._this_turn = [w for w in self._this_turn if not w.future.cancelled()], []
        if not group:
            return
        on_loop = not self._on_thread and time.monotonic() >= self._thread_only_until
        done = self._run_on_loop(group) if on_loop else None
        if done is None:  # the lock was taken, a write failed, or the thread has earlier writes
            for write in group:
                self._to_thread(write)
            return
        _settle(done)

    def _run_on_loop(self, group: list["_Write"]) -> Optional[list["_Done"]]:
        """The group in one transaction on the loop's connection; None, rolled back, if the lock
        is taken (no wait) or anything fails: the writer thread then runs it."""
        conn = self._loop_connection()
        started = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:  # another process writes now (SQLITE_BUSY), or worse: the thread waits, not the loop
            return None
        try:
            done: list[_Done] = [(w, w.fn(conn, *w.args), None) for w in group]
            conn.execute("COMMIT")
        except Exception:  # noqa: BLE001 - the thread runs them again and tells which failed
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return None
        took = time.monotonic() - started
        if took > SLOW_ON_LOOP_S:
            self._thread_only_until = started + took + ON_THREAD_S
            log.warning("a write of the SQLite store at %s took %.0f ms on the event loop: for the next %.0f s "
                        "every write goes to its writer thread", self.path, took * 1000, ON_THREAD_S)
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            loop = group[0].loop
            checkpoint = loop.create_future()
            checkpoint.add_done_callback(_checkpoint_done)
            self._to_thread(_Write(_checkpoint, (), False, loop, checkpoint))
        return done

    def _loop_connection(self) -> sqlite3.Connection:
        if self._loop_conn is None:
            conn = sqlite3.connect(self.path, timeout=0.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")  # as the others (the file is in WAL mode since start())
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the writer thread checkpoints (CHECKPOINT_EVERY)
            with self._lock:
                self._connections.append(conn)
            self._loop_conn = conn
        return self._loop_conn

    # --- the writer thread -----------------------------------------------------------------------

    def _write_forever(self) -> None:
        after: Optional[_Write] = None  # taken from the queue while a group was gathered; not of it
        while True:
            first, after = (after, None) if after is not None else (self._writes.get(), None)
            if first is None:
                return  # close(): every write queued before it is done
            group = [first]
            while first.grouped and len(group) < MAX_GROUP:
                try:
                    more = self._writes.get_nowait()
                except queue.Empty:
                    break
                if more is None or not more.grouped:
                    after = more
                    if more is None:
                        self._writes.put(None)  # the group first, then stop
                        after = None
                    break
                group.append(more)
            group = [w for w in group if not w.future.cancelled()]  # its caller stopped waiting: skip
            if group:
                self._deliver(self._run_group(group) if first.grouped else [self._run(first)])

    def _run(self, write: "_Write", in_transaction: bool = False) -> "_Done":
        conn = self._connection()
        try:
            if in_transaction:
                with _transaction(conn):
                    return write, write.fn(conn, *write.args), None
            return write, write.fn(conn, *write.args), None
        except Exception as exc:  # noqa: BLE001 - the caller gets it
            return write, None, self._error(exc)

    def _run_group(self, group: list["_Write"]) -> list["_Done"]:
        conn = self._connection()
        try:
            with _transaction(conn):
                done: list[_Done] = [(w, w.fn(conn, *w.args), None) for w in group]
            return done
        except Exception as exc:  # noqa: BLE001 - one write failed, or the commit did
            if len(group) == 1:
                return [(group[0], None, self._error(exc))]
        # Each again in a transaction of its own: the one that fails is told, the others are done.
        return [self._run(w, in_transaction=True) for w in group]

    def _error(self, exc: Exception) -> Exception:
        return StoreError(self._failed(exc)) if isinstance(exc, sqlite3.Error) else exc

    @staticmethod
    def _deliver(done: list["_Done"]) -> None:
        """The results, to the event loop(s) that wait for them: one wake-up per group."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
        for item in done:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        await self._write(lambda conn: _when_free(lambda: conn.executescript(_SCHEMA)))
        await self._write(_upgrade)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._this_turn:
            self._write_this_turn()  # now: before the thread is told to stop
        if self._writer is not None:
            self._writes.put(None)  # after every write queued before it
            await loop.run_in_executor(None, self._writer.join)
            self._writer = None
        await loop.run_in_executor(None, self._readers.shutdown)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._loop_conn = None

    # --- writes ----------------------------------------------------------------------------------

    async def create(self, record: Record) -> None:
        await self._grouped(_insert, record, size=len(record.response) + len(record.input))

    async def create_finished(self, record: Record, status: str, response: bytes, first_seq: int,
                              frames: bytes) -> None:
        await self._grouped(_insert_finished, record, status, response, first_seq, frames,
                            size=len(record.input) + len(response) + len(frames))

    async def append(self, response_id: str, first_seq: int, frames: bytes) -> None:
        def append(conn: sqlite3.Connection) -> None:
            last = _insert_events(conn, response_id, first_seq, frames)
            conn.execute("UPDATE responses SET last_seq = ?, size = size + ?, "
                         "status = CASE status WHEN 'queued' THEN 'in_progress' ELSE status END WHERE id = ?",
                         (last, len(frames), response_id))
        await self._grouped(append, size=len(frames))

    async def finish(self, response_id: str, status: str, response: bytes, first_seq: int, frames: bytes) -> None:
        await self._grouped(_finish, response_id, status, response, first_seq, frames, size=len(response) + len(frames))

    async def renew(self, response_ids: list[str], lease_until: float) -> None:
        def renew(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE responses SET lease_until = ? WHERE id = ? AND lease_until IS NOT NULL",
                             [(lease_until, rid) for rid in response_ids])
        await self._grouped(renew)

    async def request_cancel(self, owner: str, response_id: str) -> None:
        await self._grouped(lambda conn: conn.execute(
            "UPDATE responses SET cancel_requested = 1 WHERE id = ? AND owner = ?", (response_id, owner)))

    async def cancel_requested(self, response_ids: list[str]) -> list[str]:
        def query(conn: sqlite3.Connection) -> list[str]:
            marks = ",".join("?" * len(response_ids))
            rows = conn.execute(f"SELECT id FROM responses WHERE cancel_requested = 1 AND id IN ({marks})",
                                response_ids).fetchall()
            return [row[0] for row in rows]
        return await self._read(query) if response_ids else []

    async def abandon(self, response_id: str, now: float, response: bytes, first_seq: int, frames: bytes) -> bool:
        def abandon(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT last_seq FROM responses WHERE id = ? AND lease_until < ?",
                               (response_id, now)).fetchone()
            if row is None or row[0] != first_seq - 1:
                return False
            _finish(conn, response_id, "failed", response, first_seq, frames)
            return True
        return await self._grouped(abandon, size=len(response) + len(frames))

    async def delete(self, owner: str, response_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            gone = conn.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)).rowcount
            if gone:
                conn.execute("DELETE FROM events WHERE response_id = ?", (response_id,))
            return bool(gone)
        return await self._grouped(delete)

    # --- reads -----------------------------------------------------------------------------------

    async def get(self, owner: str, response_id: str) -> Optional[Record]:
        def get(conn: sqlite3.Connection) -> Optional[Record]:
            row = conn.execute(f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND owner = ? AND expires_at > ?",
                               (response_id, owner, self._clock())).fetchone()
            if row is None:
                return None
            return Record(id=row[0], owner=row[1], status=row[2], response=row[3], input=row[4],
                          chain=orjson.loads(row[5]), created_at=row[6], expires_at=row[7], background=bool(row[8]),
                          lease_until=row[9], cancel_requested=bool(row[10]), last_seq=row[11])
        return await self._read(get)

    async def history(self, owner: str, response_ids: list[str]) -> list[Optional[History]]:
        def history(conn: sqlite3.Connection) -> list[Optional[History]]:
            found: dict[str, History] = {}
            for start in range(0, len(response_ids), 500):  # SQLite's bound on parameters
                part = response_ids[start:start + 500]
                marks = ",".join("?" * len(part))
                for row in conn.execute(
                        f"SELECT id, status, input, response FROM responses WHERE owner = ? AND expires_at > ? "
                        f"AND id IN ({marks})", (owner, self._clock(), *part)):
                    found[row[0]] = History(*row)
            return [found.get(rid) for rid in response_ids]
        return await self._read(history)

    async def events_after(self, response_id: str, after_seq: int) -> list[tuple[int, bytes]]:
        def events(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
            # one statement, one snapshot: the end, in the response's row, is the last batch
            rows = conn.execute("SELECT first_seq, frames FROM events WHERE response_id = ?1 AND last_seq > ?2 "
                                "UNION ALL SELECT end_first_seq, end_frames FROM responses WHERE id = ?1 "
                                "AND end_frames IS NOT NULL AND last_seq > ?2 ORDER BY 1",
                                (response_id, after_seq)).fetchall()
            return [(first, _unpack(blob)) for first, blob in rows]
        return await self._read(events)

    # --- conversations ---------------------------------------------------------------------------

    async def create_conversation(self, conversation: Conversation, items: list[tuple[str, bytes]]) -> None:
        def create(conn: sqlite3.Connection) -> None:
            c = conversation
            with _transaction(conn):
                conn.execute("INSERT INTO conversations VALUES (?,?,?,?,?)",
                             (c.id, c.owner, c.metadata, c.created_at, c.expires_at))
                conn.executemany("INSERT INTO conversation_items (conversation_id, item_id, item) VALUES (?,?,?)",
                                 [(c.id, item_id, item) for item_id, item in items])
        await self._write(create)

    async def get_conversation(self, owner: str, conversation_id: str) -> Optional[Conversation]:
        def get(conn: sqlite3.Connection) -> Optional[Conversation]:
            row = conn.execute("SELECT id, owner, metadata, created_at, expires_at FROM conversations "
                               "WHERE id = ? AND owner = ? AND expires_at > ?",
                               (conversation_id, owner, self._clock())).fetchone()
            return Conversation(*row) if row else None
        return await self._read(get)

    async def update_conversation(self, owner: str, conversation_id: str, metadata: bytes) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                return bool(conn.execute("UPDATE conversations SET metadata = ? WHERE id = ? AND owner = ?",
                                         (metadata, conversation_id, owner)).rowcount)
        return await self._write(update)

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                gone = conn.execute("DELETE FROM conversations WHERE id = ? AND owner = ?",
                                    (conversation_id, owner)).rowcount
                if gone:
                    conn.execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,))
                return bool(gone)
        return await self._write(delete)

    async def add_items(self, owner: str, conversation_id: str, items: list[tuple[str, bytes]]) -> bool:
        def add(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                if conn.execute("SELECT 1 FROM conversations WHERE id = ? AND owner = ?",
                                (conversation_id, owner)).fetchone() is None:
                    return False
                conn.executemany("INSERT INTO conversation_items (conversation_id, item_id, item) VALUES (?,?,?)",
                                 [(conversation_id, item_id, item) for item_id, item in items])
                return True
        return await self._write(add)

    async def conversation_items(self, owner: str, conversation_id: str) -> list[bytes]:
        def items(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute("SELECT i.item FROM conversation_items i JOIN conversations c "
                                "ON c.id = i.conversation_id WHERE c.id = ? AND c.owner = ? ORDER BY i.position",
                                (conversation_id, owner)).fetchall()
            return [row[0] for row in rows]
        return await self._read(items)

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                if conn.execute("SELECT 1 FROM conversations WHERE id = ? AND owner = ?",
                                (conversation_id, owner)).fetchone() is None:
                    return False
                return bool(conn.execute("DELETE FROM conversation_items WHERE conversation_id = ? AND item_id = ?",
                                         (conversation_id, item_id)).rowcount)
        return await self._write(delete)

    # --- housekeeping ----------------------------------------------------------------------------

    async def sweep(self, now: float) -> None:
        def sweep(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM events WHERE response_id IN (SELECT id FROM responses WHERE expires_at <= ?)",
                             (now,))
                conn.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
                conn.execute("DELETE FROM conversation_items WHERE conversation_id IN "
                             "(SELECT id FROM conversations WHERE expires_at <= ?)", (now,))
                conn.execute("DELETE FROM conversations WHERE expires_at <= ?", (now,))
                total = conn.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0]
                if total <= self.max_bytes:
                    return
                # Oldest first (in the order they were written), until the total is back under the bound.
                doomed = []
                for rid, size in conn.execute("SELECT id, size FROM responses ORDER BY rowid"):
                    if total <= self.max_bytes:
                        break
                    doomed.append((rid,))
                    total -= size
                conn.executemany("DELETE FROM events WHERE response_id = ?", doomed)
                conn.executemany("DELETE FROM responses WHERE id = ?", doomed)
        await self._write(sweep)


def _last_seq(first_seq: int, frames: bytes) -> int:
    """The batch's last sequence number: read from its last event (no scan of the batch), or, for
    frames that carry none, counted (frames are dense: the n-th is ``first_seq + n``)."""
    try:
        return sequence_numbers(frames)[1]
    except ValueError:
        return first_seq + frames.count(b"\n\n") - 1


def _insert(conn: sqlite3.Connection, record: Record, status: Optional[str] = None,
            response: Optional[bytes] = None, last_seq: Optional[int] = None, frames_size: int = 0,
            end: tuple[Optional[int], Optional[bytes]] = (None, None)) -> None:
    """The record's row; a response that ended before anything of it was stored gets its end here
    (``status``, ``response``, ``last_seq``, no lease, and ``end``: its events' first sequence number
    and compressed frames)."""
    ended = status is not None
    response = record.response if response is None else response
    conn.execute(
        f"INSERT INTO responses ({_COLUMNS}, size, end_first_seq, end_frames) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (record.id, record.owner, status or record.status, response, record.input, orjson.dumps(record.chain),
         record.created_at, record.expires_at, int(record.background), None if ended else record.lease_until,
         int(record.cancel_requested), record.last_seq if last_seq is None else last_seq,
         len(response) + len(record.input) + frames_size, *end))


def _insert_events(conn: sqlite3.Connection, response_id: str, first_seq: int, frames: bytes) -> int:
    """One batch of events, compressed; its last sequence number."""
    last = _last_seq(first_seq, frames)
    conn.execute("INSERT INTO events VALUES (?,?,?,?)", (response_id, first_seq, last, _pack(frames)))
    return last


def _insert_finished(conn: sqlite3.Connection, record: Record, status: str, response: bytes, first_seq: int,
                     frames: bytes) -> None:
    """``_insert`` and ``_finish`` in one statement: the row is written once, as it ends, its events
    in it (most responses end before their first flush: this is the store's most frequent write)."""
    last, end = _end_batch(first_seq, frames)
    _insert(conn, record, status, response, record.last_seq if last is None else last, len(frames), end)


def _finish(conn: sqlite3.Connection, response_id: str, status: str, response: bytes, first_seq: int,
            frames: bytes) -> None:
    """The end of a response whose row exists: its last batch goes in the row (see _END_COLUMNS)."""
    last, end = _end_batch(first_seq, frames)
    conn.execute("UPDATE responses SET status = ?, size = size - length(response) + ?, response = ?, "
                 "lease_until = NULL, last_seq = COALESCE(?, last_seq), end_first_seq = ?, end_frames = ? "
                 "WHERE id = ?", (status, len(response) + len(frames), response, last, *end, response_id))


def _end_batch(first_seq: int, frames: bytes) -> tuple[Optional[int], tuple[Optional[int], Optional[bytes]]]:
    """A response's last batch as its row keeps it: its last sequence number, then its first and its
    compressed frames; all None for an end without events."""
    if not frames:
        return None, (None, None)
    return _last_seq(first_seq, frames), (first_seq, _pack(frames))


def _upgrade(conn: sqlite3.Connection) -> None:
    """A file made by an older gateway: the columns of a response's last batch added, the index on
    created_at dropped (see _SCHEMA). Several processes may start at once: the columns are looked
    for inside the write transaction that adds them, so the second finds them there."""
    with _transaction(conn):
        have = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
        for name, kind in _END_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE responses ADD COLUMN {name} {kind}")
        conn.execute("DROP INDEX IF EXISTS responses_by_creation")


# How long a write waits for another process's transaction (``--workers`` sharing the file).
LOCK_WAIT_S = 30.0
_RETRY_FIRST_S, _RETRY_MAX_S = 50e-6, 1e-3


def _when_free(attempt: Callable[[], T]) -> T:
    """``attempt()`` (one statement), tried again while another process holds the file's lock:
    from 50 µs apart, doubling up to 1 ms, for at most LOCK_WAIT_S. Not SQLite's busy handler: that
    one sleeps 1, 2, 5, 10 ... 100 ms between tries, for transactions that last a fraction of a
    millisecond, and two workers storing every response spent much of their time asleep (the bench's
    relay at c=64 with --workers 2, three runs each: 197,000 events/s with it, 253,000 without,
    medians). Runs on the writer thread: the event loop goes on meanwhile."""
    delay, deadline = _RETRY_FIRST_S, time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, _RETRY_MAX_S)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the writer lock is taken up front (waiting
    for it in _when_free), so two processes never deadlock upgrading a read, and nothing inside
    the transaction waits for another process."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        _when_free(lambda: self.conn.execute("BEGIN IMMEDIATE"))

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # SQLite may have rolled back by itself (SQLITE_FULL does): the first error is the one to tell.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _checkpoint(conn: sqlite3.Connection) -> None:
    """PASSIVE: the WAL's frames copied into the database file, waiting for nobody. It never
    completes while the event loop goes on writing (new frames arrive as it copies), and only a
    complete checkpoint lets the next writer start the WAL over: under steady load the WAL grew
    by every page written (4 MB/s at c=1 on the bench, 78 MB in 20 s). Past WAL_RESTART_FRAMES a
    RESTART follows: the writer lock for the few frames left, then the WAL starts over. Tried a
    few times a millisecond apart (the lock is held ~0.1 ms at a time); if it stays busy, the
    next checkpoint tries again."""
    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames < WAL_RESTART_FRAMES:
        return
    delay, deadline = _RETRY_FIRST_S, time.monotonic() + RESTART_TRY_S
    while conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(2 * delay, _RETRY_MAX_S)


def _checkpoint_done(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled() and future.exception() is not None:  # retrieved: the next one may do it
        log.warning("the SQLite store could not checkpoint its WAL: %s", future.exception())


class _Write:
    """One write waiting for its turn (on the event loop, or on the writer thread): ``fn(conn,
    *args)``, and the future of the event loop that waits for it."""

    __slots__ = ("fn", "args", "grouped", "loop", "future")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], grouped: bool,
                 loop: asyncio.AbstractEventLoop, future: "asyncio.Future[Any]") -> None:
        self.fn, self.args, self.grouped, self.loop, self.future = fn, args, grouped, loop, future


_Done = tuple[_Write, Any, Optional[Exception]]  # a write, its result, or the exception it raised


def _settle(done: list[_Done]) -> None:
    """On the event loop: each waiting future gets its write's result (a caller that stopped
    waiting, a timeout, has none to get)."""
    for write, result, error in done:
        if not write.future.done():
            if error is not None:
                write.future.set_exception(error)
            else:
                write.future.set_result(result)
