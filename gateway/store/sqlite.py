"""The embedded default store: one SQLite file (WAL) under ``gateway.data_dir``.

Every call runs off the event loop: writes on one writer thread (SQLite has one writer at a time
anyway, and one thread keeps batches in order), reads on a small pool of reader threads with their
own connections (WAL lets them read while the writer writes). Several gateway processes
(``--workers``) may share the file: each write is one short transaction, and SQLite's busy timeout
queues them.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, TypeVar

import orjson

from .base import Conversation, History, Record, Store, StoreError, sequence_numbers

T = TypeVar("T")

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
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_creation ON responses (created_at);
CREATE TABLE IF NOT EXISTS events (
    response_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    frames BLOB NOT NULL,
    PRIMARY KEY (response_id, first_seq)
) WITHOUT ROWID;
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


def default_data_dir() -> str:
    """$XDG_DATA_HOME/vllm-gateway, else ~/.local/share/vllm-gateway."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "vllm-gateway")


# Event batches are stored deflated (zlib level 1, on the writer thread: zlib lets go of the GIL
# while it works). SSE frames repeat their field names and ids in every event: the 64 KB of a
# 256-token stream become about 3 KB, one page written where seventeen were (see the store section
# of gateway/bench/README.md). ``store_max_bytes`` still counts the frames as sent (the bound is on
# what is kept, not on the disk it takes). A batch written raw (by an older gateway) starts with "event:" or
# ":", never with zlib's first byte, and is read as it is.
_ZLIB_FIRST_BYTE = 0x78


def _pack(frames: bytes) -> bytes:
    return zlib.compress(frames, 1)


def _unpack(blob: bytes) -> bytes:
    return zlib.decompress(blob) if blob[:1] == bytes((_ZLIB_FIRST_BYTE,)) else blob


class SQLiteStore(Store):
    name = "sqlite"

    def __init__(self, data_dir: str, *, max_bytes: int, clock: Callable[[], float]) -> None:
        self.path = os.path.join(os.path.expanduser(data_dir or default_data_dir()), FILE_NAME)
        self.max_bytes = max_bytes
        self._clock = clock
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="store-read")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # --- connections -----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a crash loses no committed WAL
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            try:
                return fn(self._connection(), *args)
            except sqlite3.Error as exc:
                raise StoreError(f"the SQLite store at {self.path} failed: {exc}") from exc
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._run(self._writer, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._run(self._readers, fn, *args)

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        await self._write(lambda conn: conn.executescript(_SCHEMA))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for pool in (self._writer, self._readers):
            await loop.run_in_executor(None, pool.shutdown)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # --- writes ----------------------------------------------------------------------------------

    async def create(self, record: Record) -> None:
        await self._write(_insert, record)

    async def create_finished(self, record: Record, status: str, response: bytes, first_seq: int,
                              frames: bytes) -> None:
        def create_finished(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                _insert(conn, record)
                _finish(conn, record.id, status, response, first_seq, frames)
        await self._write(create_finished)

    async def append(self, response_id: str, first_seq: int, frames: bytes) -> None:
        def append(conn: sqlite3.Connection) -> None:
            last = _last_seq(first_seq, frames)
            blob = _pack(frames)
            with _transaction(conn):
                conn.execute("INSERT INTO events VALUES (?,?,?,?)", (response_id, first_seq, last, blob))
                conn.execute("UPDATE responses SET last_seq = ?, size = size + ?, "
                             "status = CASE status WHEN 'queued' THEN 'in_progress' ELSE status END WHERE id = ?",
                             (last, len(frames), response_id))
        await self._write(append)

    async def finish(self, response_id: str, status: str, response: bytes, first_seq: int, frames: bytes) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                _finish(conn, response_id, status, response, first_seq, frames)
        await self._write(finish)

    async def renew(self, response_ids: list[str], lease_until: float) -> None:
        def renew(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE responses SET lease_until = ? WHERE id = ? AND lease_until IS NOT NULL",
                             [(lease_until, rid) for rid in response_ids])
        await self._write(renew)

    async def request_cancel(self, owner: str, response_id: str) -> None:
        await self._write(lambda conn: conn.execute(
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
            with _transaction(conn):
                row = conn.execute("SELECT last_seq FROM responses WHERE id = ? AND lease_until < ?",
                                   (response_id, now)).fetchone()
                if row is None or row[0] != first_seq - 1:
                    return False
                _finish(conn, response_id, "failed", response, first_seq, frames)
                return True
        return await self._write(abandon)

    async def delete(self, owner: str, response_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                gone = conn.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)).rowcount
                if gone:
                    conn.execute("DELETE FROM events WHERE response_id = ?", (response_id,))
                return bool(gone)
        return await self._write(delete)

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
            rows = conn.execute("SELECT first_seq, frames FROM events WHERE response_id = ? AND last_seq > ? "
                                "ORDER BY first_seq", (response_id, after_seq)).fetchall()
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
                # Oldest first, until the total is back under the bound.
                doomed = []
                for rid, size in conn.execute("SELECT id, size FROM responses ORDER BY created_at"):
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


def _insert(conn: sqlite3.Connection, record: Record) -> None:
    size = len(record.response) + len(record.input)
    conn.execute(
        f"INSERT INTO responses ({_COLUMNS}, size) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (record.id, record.owner, record.status, record.response, record.input, orjson.dumps(record.chain),
         record.created_at, record.expires_at, int(record.background), record.lease_until,
         int(record.cancel_requested), record.last_seq, size))


def _finish(conn: sqlite3.Connection, response_id: str, status: str, response: bytes, first_seq: int,
            frames: bytes) -> None:
    if frames:
        last = _last_seq(first_seq, frames)
        conn.execute("INSERT INTO events VALUES (?,?,?,?)", (response_id, first_seq, last, _pack(frames)))
        conn.execute("UPDATE responses SET last_seq = ? WHERE id = ?", (last, response_id))
    conn.execute("UPDATE responses SET status = ?, size = size - length(response) + ?, response = ?, "
                 "lease_until = NULL WHERE id = ?", (status, len(response) + len(frames), response, response_id))


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the writer lock is taken up front, so two
    processes never deadlock upgrading a read."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

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
