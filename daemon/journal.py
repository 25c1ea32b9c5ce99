"""The daemon's journal: SQLite in WAL mode, in the spool.

Every record moves ``pending -> uploading -> uploaded -> committed``, or to
``failed`` with a reason (kept, retried on request). ``objects`` remembers
which payloads each destination already holds, so they are never sent twice.
All access goes through one dedicated thread: SQLite connections are not
shared between threads, and the event loop never blocks on a disk sync.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack

T = TypeVar("T")
OUTSTANDING = ("pending", "uploading", "uploaded")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    task_id TEXT NOT NULL,
    project TEXT,
    name TEXT,
    dest TEXT NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    peer_uid INTEGER,
    peer_pid INTEGER,
    received REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_state ON records(state, next_try, seq);
CREATE INDEX IF NOT EXISTS records_task ON records(task_id, kind);
CREATE INDEX IF NOT EXISTS records_name ON records(kind, project, name);
CREATE TABLE IF NOT EXISTS refs(
    seq INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY(seq, sha256)
);
CREATE INDEX IF NOT EXISTS refs_sha ON refs(sha256);
CREATE TABLE IF NOT EXISTS objects(
    dest TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, uploaded REAL NOT NULL,
    PRIMARY KEY(dest, sha256)
);
"""


@dataclass(frozen=True)
class Row:
    seq: int
    record_id: str
    kind: str
    task_id: str
    dest: str
    body: dict[str, Any]
    size: int
    state: str
    reason: str | None
    attempts: int
    peer_uid: int | None


@dataclass(frozen=True)
class Incoming:
    record: dict[str, Any]
    peer_uid: int | None
    peer_pid: int | None


_COLS = "seq, record_id, kind, task_id, dest, body, size, state, reason, attempts, peer_uid"


def _row(t: Sequence[Any]) -> Row:
    return Row(
        t[0],
        t[1],
        t[2],
        t[3],
        t[4],
        msgpack.unpackb(t[5], raw=False),
        t[6],
        t[7],
        t[8],
        t[9],
        t[10],
    )


class Journal:
    def __init__(self, path: Path, mode: int = 0o600) -> None:
        self.path = path
        self.mode = mode
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="artisync-journal")
        self._db: sqlite3.Connection | None = None
        # (dest, seq) of records whose upload was interrupted by a crash or failed
        # before: their destination may hold an unfinished multipart upload or temp file
        self.suspects: set[tuple[str, int]] = set()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._conn()))

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            # created owner-only (or group, in system mode) before SQLite opens it:
            # SQLite gives its -wal and -shm files the database file's mode
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
            try:
                os.fchmod(fd, self.mode)  # whatever the umask
            finally:
                os.close(fd)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an ack means durable, power loss included
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def open(self) -> int:
        """Create the schema; put uploads interrupted by a crash back to pending."""

        def reset(db: sqlite3.Connection) -> int:
            self.suspects = {
                (r[0], r[1])
                for r in db.execute(
                    "SELECT dest, seq FROM records WHERE state IN ('uploading','uploaded') "
                    "OR (state='pending' AND attempts>0)"
                )
            }
            cur = db.execute(
                "UPDATE records SET state='pending', updated=? WHERE state='uploading'",
                (time.time(),),
            )
            # a restart retries what failed for good before (the fix may have been a
            # configuration change); the reason stays until the next attempt
            db.execute("UPDATE records SET state='pending', next_try=0 WHERE state='failed'")
            return cur.rowcount

        return await self._run(reset)

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None

        if self._db is not None:
            await self._run(shut)
        self._pool.shutdown(wait=True)

    async def insert_many(self, batch: Sequence[Incoming]) -> list[bool]:
        """Insert records in one transaction (one fsync). True = new, False = duplicate."""

        def insert(db: sqlite3.Connection) -> list[bool]:
            now = time.time()
            out = []
            db.execute("BEGIN IMMEDIATE")
            try:
                for inc in batch:
                    out.append(_insert_one(db, inc, now))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite rolls back by itself on some errors (disk full)
                    db.execute("ROLLBACK")
                raise
            return out

        return await self._run(insert)

    async def has_object(self, dest: str, sha256: str) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "SELECT 1 FROM objects WHERE dest=? AND sha256=?", (dest, sha256)
                ).fetchone()
                is not None
            )

        return await self._run(q)

    async def add_object(self, dest: str, sha256: str, size: int) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO objects VALUES (?,?,?,?)", (dest, sha256, size, time.time())
            )
        )

    async def claim(
        self, limit: int, skip_dests: Sequence[str], exclude: Sequence[int]
    ) -> list[Row]:
        """Move up to ``limit`` due pending records to ``uploading`` and return them."""

        def q(db: sqlite3.Connection) -> list[Row]:
            now = time.time()
            # offline destinations are skipped in SQL: filtering afterwards let a long
            # backlog for one offline destination hide every other destination's records
            marks = ",".join("?" * len(skip_dests))
            skip = f"AND dest NOT IN ({marks}) " if skip_dests else ""
            rows = db.execute(
                f"SELECT {_COLS} FROM records WHERE state IN ('pending','uploaded') "
                f"AND next_try<=? {skip}ORDER BY seq LIMIT ?",
                (now, *skip_dests, limit + len(exclude)),
            ).fetchall()
            picked = [r for r in rows if r[0] not in exclude][:limit]
            db.execute("BEGIN")
            try:
                for r in picked:
                    if r[7] == "pending":
                        db.execute(
                            "UPDATE records SET state='uploading', updated=? WHERE seq=?",
                            (now, r[0]),
                        )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return [_row(r) for r in picked]

        return await self._run(q)

    async def set_state(
        self,
        seq: int,
        state: str,
        reason: str | None = None,
        next_try: float = 0.0,
        bump: bool = False,
    ) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE records SET state=?, reason=?, next_try=?, attempts=attempts+?, updated=? "
                "WHERE seq=?",
                (state, reason, next_try, int(bump), time.time(), seq),
            )
        )

    async def make_due(self, dest: str) -> int:
        """A destination is reachable again: its waiting records are due now."""
        return await self._run(
            lambda db: (
                db.execute(
                    "UPDATE records SET next_try=0 WHERE dest=? AND next_try>0 "
                    "AND state IN ('pending','uploaded')",
                    (dest,),
                ).rowcount
            )
        )

    async def refs(self, seq: int) -> list[tuple[str, int]]:
        return await self._run(
            lambda db: db.execute(
                "SELECT sha256, size FROM refs WHERE seq=? ORDER BY sha256", (seq,)
            ).fetchall()
        )

    async def latest_task_event(self, task_id: str) -> dict[str, Any] | None:
        """The task's newest event by its creation time (outbox files arrive in any order)."""

        def q(db: sqlite3.Connection) -> dict[str, Any] | None:
            return _newest_event(db, task_id)

        return await self._run(q)

    async def collectable(self, shas: Sequence[str], orphans: Sequence[str]) -> list[str]:
        """Of ``shas``, those that only committed records reference; plus the ``orphans``
        (old enough to be abandoned) that no record references at all. One snapshot,
        a few set queries (not one per blob: a long backlog is scanned every pass)."""
        orphan_set = set(orphans)

        def q(db: sqlite3.Connection) -> list[str]:
            out = []
            db.execute("BEGIN")
            try:
                for i in range(0, len(shas), 500):
                    chunk = list(shas[i : i + 500])
                    marks = ",".join("?" * len(chunk))
                    seen = {
                        sha: bool(done)
                        for sha, done in db.execute(
                            "SELECT refs.sha256, min(records.state='committed') FROM refs "
                            f"JOIN records USING(seq) WHERE refs.sha256 IN ({marks}) "
                            "GROUP BY refs.sha256",
                            chunk,
                        )
                    }
                    out += [s for s in chunk if (seen[s] if s in seen else s in orphan_set)]
            finally:
                db.execute("COMMIT")
            return out

        return await self._run(q)

    async def outstanding(
        self, task_id: str | None = None, max_seq: int | None = None
    ) -> tuple[int, int]:
        """(records, bytes) acknowledged but not yet committed."""
        n, b = await self._count("state IN ('pending','uploading','uploaded')", task_id, max_seq)
        return n, b

    async def failed_count(self, task_id: str | None = None, max_seq: int | None = None) -> int:
        return (await self._count("state='failed'", task_id, max_seq))[0]

    async def _count(
        self, state_sql: str, task_id: str | None, max_seq: int | None
    ) -> tuple[int, int]:
        """(records, bytes) in the given states, optionally of one task and up to a seq."""
        sql = f"SELECT count(*), coalesce(sum(size),0) FROM records WHERE {state_sql}"
        args: list[Any] = []
        if task_id is not None:
            sql += " AND task_id=?"
            args.append(task_id)
        if max_seq is not None:
            sql += " AND seq<=?"
            args.append(max_seq)

        def q(db: sqlite3.Connection) -> tuple[int, int]:
            n, b = db.execute(sql, args).fetchone()
            return int(n), int(b)

        return await self._run(q)

    async def max_seq(self) -> int:
        return await self._run(
            lambda db: int(db.execute("SELECT coalesce(max(seq),0) FROM records").fetchone()[0])
        )

    async def stats(self) -> dict[str, Any]:
        def q(db: sqlite3.Connection) -> dict[str, Any]:
            counts = {s: [0, 0] for s in (*OUTSTANDING, "committed", "failed")}
            for state, n, b in db.execute(
                "SELECT state, count(*), coalesce(sum(size),0) FROM records GROUP BY state"
            ):
                counts[state] = [n, b]
            failed = [
                {"record_id": r[0], "task_id": r[1], "kind": r[2], "dest": r[3], "reason": r[4]}
                for r in db.execute(
                    "SELECT record_id, task_id, kind, dest, reason FROM records "
                    "WHERE state='failed' ORDER BY seq LIMIT 20"
                )
            ]
            retrying = [
                {"record_id": r[0], "dest": r[1], "reason": r[2], "attempts": r[3]}
                for r in db.execute(
                    "SELECT record_id, dest, reason, attempts FROM records "
                    "WHERE state='pending' AND reason IS NOT NULL "
                    "ORDER BY seq LIMIT 5"
                )
            ]
            objects = db.execute("SELECT count(*), coalesce(sum(size),0) FROM objects").fetchone()
            return {
                "records": counts,
                "failed": failed,
                "retrying": retrying,
                "objects_uploaded": objects[0],
                "bytes_uploaded": objects[1],
            }

        return await self._run(q)

    async def retry_failed(self) -> int:
        return await self._run(
            lambda db: (
                db.execute(
                    "UPDATE records SET state='pending', reason=NULL, next_try=0, updated=? "
                    "WHERE state='failed'",
                    (time.time(),),
                ).rowcount
            )
        )

    async def find_task(
        self,
        task_id: str | None,
        project: str | None,
        name: str | None,
        statuses: Sequence[str] | None,
    ) -> list[dict[str, Any]]:
        """Task events (newest first) matching the query, for read-your-writes."""

        def q(db: sqlite3.Connection) -> list[dict[str, Any]]:
            if task_id:
                rows = db.execute(
                    "SELECT task_id FROM records WHERE kind='task' AND task_id=? LIMIT 1",
                    (task_id,),
                ).fetchall()
            else:
                sql = "SELECT DISTINCT task_id FROM records WHERE kind='task'"
                args: list[Any] = []
                if project is not None:
                    sql += " AND project=?"
                    args.append(project)
                if name is not None:
                    sql += " AND name=?"
                    args.append(name)
                rows = db.execute(sql + " ORDER BY seq DESC LIMIT 200", args).fetchall()
            out = []
            for (tid,) in rows:
                body = _newest_event(db, tid)
                if body is None:
                    continue
                if statuses and body.get("status") not in statuses:
                    continue
                out.append(body)
            out.sort(key=lambda b: b.get("started", 0), reverse=True)
            return out

        return await self._run(q)

    async def artifacts_of(self, task_id: str) -> list[dict[str, Any]]:
        """The newest version of each artifact of a task, any state."""

        def q(db: sqlite3.Connection) -> list[dict[str, Any]]:
            latest: dict[str, dict[str, Any]] = {}
            for (body,) in db.execute(
                "SELECT body FROM records WHERE kind='artifact' AND task_id=? ORDER BY seq",
                (task_id,),
            ):
                rec = msgpack.unpackb(body, raw=False)
                latest[rec["name"]] = rec
            return list(latest.values())

        return await self._run(q)


def _newest_event(db: sqlite3.Connection, task_id: str) -> dict[str, Any] | None:
    events: list[dict[str, Any]] = [
        msgpack.unpackb(r[0], raw=False)
        for r in db.execute(
            "SELECT body FROM records WHERE task_id=? AND kind='task' ORDER BY seq", (task_id,)
        )
    ]
    if not events:
        return None
    # a closing event wins over a start that arrived later; then the newest
    return max(events, key=lambda e: (e.get("event") != "started", e.get("created", 0)))


def _insert_one(db: sqlite3.Connection, inc: Incoming, now: float) -> bool:
    rec = inc.record
    blobs = rec.get("blobs", [])
    size = sum(int(b[1]) for b in blobs)
    cur = db.execute(
        "INSERT OR IGNORE INTO records(record_id, kind, task_id, project, name, dest, body, size,"
        " peer_uid, peer_pid, received, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            rec["record_id"],
            rec["kind"],
            rec["task_id"],
            rec.get("project"),
            rec.get("name") if rec["kind"] == "task" else None,
            rec["dest"],
            msgpack.packb(rec, use_bin_type=True),
            size,
            inc.peer_uid,
            inc.peer_pid,
            now,
            now,
        ),
    )
    if cur.rowcount == 0:
        return False
    seq = cur.lastrowid
    db.executemany(
        "INSERT OR IGNORE INTO refs VALUES (?,?,?)", [(seq, b[0], int(b[1])) for b in blobs]
    )
    return True
