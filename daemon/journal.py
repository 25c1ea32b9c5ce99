"""The daemon's journal: SQLite in WAL mode, in the spool.

Every record moves ``pending -> uploading -> uploaded -> committed``, or to
``failed`` with a reason (kept, retried on request); an artifact version sent
raw starts in ``encoding`` until encoded (it has no ``refs`` until then: how a
failed one is told apart when retried). ``objects`` remembers which payloads each
destination holds, so they are never sent twice. Committed history is compacted
(:mod:`._journal_compact`). One dedicated thread does all access: SQLite
connections are not shared between threads, and the loop never waits on a sync.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from . import _journal_claims as _claims
from . import _journal_compact as _compact
from . import _journal_reads as _reads
from ._journal_schema import (
    DUE,
    OUTSTANDING,
    Incoming,
    Row,
    State,
    commit_each,
    configure,
    create_schema,
    ingest_batch,
    insert_one,
    make_room,
    marks,
    newest_event,
    transaction,
)
from .group_commit import GroupCommit

__all__ = ["OUTSTANDING", "Incoming", "Journal", "Row", "State"]

T = TypeVar("T")

# where a failed record goes again: back to encoding if it never was encoded
_RETRY_STATE = (
    "(CASE WHEN kind IN ('artifact','put') "
    "AND NOT EXISTS (SELECT 1 FROM refs WHERE refs.seq=records.seq)"
    f" THEN '{State.ENCODING}' ELSE '{State.PENDING}' END)"
)
_RETRY_FAILED = (
    f"UPDATE records SET state={_RETRY_STATE}, reason=NULL, next_try=0, updated=? WHERE state=?"
)
_MAX_SEQ = "SELECT coalesce(max(seq), 0) AS seq FROM records"


class Journal:
    def __init__(self, path: Path, mode: int = 0o600) -> None:
        self.path = path
        self.mode = mode
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="artisync-journal")
        self._db: sqlite3.Connection | None = None
        self._writer: GroupCommit[Callable[[sqlite3.Connection], Any], Any] = GroupCommit(
            self._commit_writes
        )
        # (destination URI, seq) of records whose upload was interrupted by a crash or failed
        # before: their destination may hold an unfinished multipart upload or temp file
        self.suspects: set[tuple[str, int]] = set()
        self._offsets: dict[str, int] | None = None  # see log_offsets

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self._call(fn))

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn()
        try:
            return fn(db)
        except sqlite3.OperationalError as exc:
            make_room(db, exc)
            raise

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in the next group-committed write transaction (see
        :mod:`.group_commit`): a burst of small updates (a state per record, an object
        per upload) costs one fsync, not one each. A write that fails fails alone."""
        result: T = await self._writer.submit(fn)
        return result

    async def _commit_writes(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> Sequence[Any]:
        return await self._run(lambda db: commit_each(db, fns))

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
            db.row_factory = sqlite3.Row
            configure(db)
            create_schema(db)
            self._db = db
        return self._db

    async def open(self) -> int:
        """Create the schema; put uploads interrupted by a crash back to pending."""

        def reset(db: sqlite3.Connection) -> int:
            self.suspects = {
                (r["dest"], r["seq"])
                for r in db.execute(
                    "SELECT dest, seq FROM records WHERE state IN (?,?) "
                    "OR (state=? AND attempts>0)",
                    (State.UPLOADING, State.UPLOADED, State.PENDING),
                )
            }
            cur = db.execute(
                "UPDATE records SET state=?, updated=? WHERE state=?",
                (State.PENDING, time.time(), State.UPLOADING),
            )
            # a restart retries what failed for good before (the fix may have been a
            # configuration change); the reason stays until the next attempt
            db.execute(
                f"UPDATE records SET state={_RETRY_STATE}, next_try=0 WHERE state=?",
                (State.FAILED,),
            )
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
            with transaction(db, "IMMEDIATE"):
                return [insert_one(db, incoming, now) for incoming in batch]

        return await self._run(insert)

    async def ingest(self, batch: list[Incoming], log: tuple[str, int] | None = None) -> None:
        """Insert records from the outbox (see :func:`ingest_batch`)."""
        await self._run(lambda db: ingest_batch(db, batch, log))
        if log is not None and self._offsets is not None:
            self._offsets[log[0]] = log[1]

    async def log_offsets(self) -> dict[str, int]:
        """How far each outbox log has been journaled (read once: then kept up to date
        by this process, the journal's only writer)."""
        if self._offsets is None:
            rows = await self._run(lambda db: db.execute("SELECT * FROM outbox_logs").fetchall())
            self._offsets = dict(rows)
        return dict(self._offsets)

    async def forget_log(self, name: str) -> None:
        """An outbox log read to its end and removed."""
        await self._write(lambda db: db.execute("DELETE FROM outbox_logs WHERE name=?", (name,)))
        if self._offsets is not None:
            self._offsets.pop(name, None)

    async def known_objects(
        self, destination_uri: str, shas: Sequence[str], since: float = 0.0
    ) -> set[str]:
        """Of ``shas``, those the destination is known to hold, uploaded or confirmed
        at ``since`` or later."""
        return await self._run(lambda db: _reads.known_objects(db, destination_uri, shas, since))

    async def add_object(
        self, destination_uri: str, sha256: str, size: int, written: float
    ) -> None:
        """The destination holds the object, written there at ``written`` (uploaded now,
        or found there with that time): what the reuse window counts from."""
        await self._write(
            lambda db: db.execute(
                "INSERT INTO objects VALUES (?,?,?,?) ON CONFLICT(dest, sha256) "
                "DO UPDATE SET uploaded = excluded.uploaded",
                (destination_uri, sha256, size, written),
            )
        )

    async def claim(
        self, limit: int, skip_destinations: Sequence[str], exclude: Sequence[int]
    ) -> list[Row]:
        """Move up to ``limit`` due pending records to ``uploading`` and return them
        (due ``uploaded`` ones too, as they are: only their publishing is left)."""
        skip = list(skip_destinations)
        return await self._run(lambda db: _claims.claim_due(db, limit, skip, exclude))

    async def set_state(
        self,
        seq: int,
        state: State,
        reason: str | None = None,
        next_try: float = 0.0,
        bump: bool = False,
        body: dict[str, Any] | None = None,  # the record's new body, if it changes
    ) -> None:
        sql, args = "", [state, reason, next_try, int(bump), time.time()]
        if body is not None:
            sql, args = ", body=?", [*args, msgpack.packb(body, use_bin_type=True)]
        await self._write(
            lambda db: db.execute(
                "UPDATE records SET state=?, reason=?, next_try=?, attempts=attempts+?, "
                f"updated=?{sql} WHERE seq=?",
                (*args, seq),
            )
        )

    async def make_due(self, destination_uri: str) -> int:
        """A destination is reachable again: its waiting records are due now."""
        return await self._write(
            lambda db: (
                db.execute(
                    "UPDATE records SET next_try=0 WHERE dest=? AND next_try>0 "
                    f"AND state IN ({marks(DUE)})",
                    (destination_uri, *DUE),
                ).rowcount
            )
        )

    async def release_orphans(self, in_flight: Sequence[int]) -> int:
        """Records marked ``uploading`` that no worker holds go back to ``pending``."""
        busy = list(in_flight)
        where = f" AND seq NOT IN ({marks(busy)})" if busy else ""
        return await self._write(
            lambda db: (
                db.execute(
                    f"UPDATE records SET state=? WHERE state=?{where}",
                    (State.PENDING, State.UPLOADING, *busy),
                ).rowcount
            )
        )

    async def newer_put_committed(self, target: str, seq: int, created: float) -> bool:
        """A put of URL ``target`` made after this one (``seq``, ``created``) is committed."""
        return await self._run(lambda db: _reads.newer_put_committed(db, target, seq, created))

    async def latest_task_event(self, task_id: str) -> dict[str, Any] | None:
        """The task's newest event by its creation time (outbox files arrive in any order)."""

        return await self._run(lambda db: newest_event(db, task_id))

    async def collectable(self, shas: Sequence[str], orphans: Sequence[str]) -> list[str]:
        """Of ``shas``, those that only committed records reference; plus the ``orphans``
        (old enough to be abandoned) that no record references at all."""
        return await self._run(lambda db: _reads.collectable(db, shas, orphans))

    async def outstanding(
        self, task_id: str | None = None, max_seq: int | None = None
    ) -> tuple[int, int]:
        """(records, bytes) acknowledged but not yet committed."""
        return await self._count(OUTSTANDING, task_id, max_seq)

    async def failed_count(self, task_id: str | None = None, max_seq: int | None = None) -> int:
        return (await self._count((State.FAILED,), task_id, max_seq))[0]

    async def _count(
        self, states: tuple[State, ...], task_id: str | None, max_seq: int | None
    ) -> tuple[int, int]:
        return await self._run(lambda db: _reads.count(db, states, task_id, max_seq))

    async def max_seq(self) -> int:
        return await self._run(lambda db: int(db.execute(_MAX_SEQ).fetchone()["seq"]))

    async def stats(self) -> dict[str, Any]:
        return await self._run(_reads.stats)

    async def retry_failed(self) -> int:
        args = (time.time(), State.FAILED)
        return await self._run(lambda db: db.execute(_RETRY_FAILED, args).rowcount)

    # -- encoding -----------------------------------------------------------------------
    async def claim_encoding(self, limit: int, exclude: Sequence[int]) -> list[Row]:
        """Up to ``limit`` records waiting to be encoded, oldest first, not in ``exclude``
        (those being encoded now: the claim is in memory, so a crash loses none)."""
        return await self._run(lambda db: _claims.waiting_encoding(db, limit, exclude))

    async def complete_encoding(self, done: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Encoded records (seq, completed body) become pending, in one transaction."""
        await self._run(lambda db: _claims.complete_encoding(db, done))

    async def states_of(self, record_ids: Sequence[str]) -> dict[str, State]:
        """The state of each of these records that the journal holds."""
        return await self._run(lambda db: _reads.states_of(db, record_ids))

    async def record(self, record_id: str) -> tuple[State, dict[str, Any], str | None] | None:
        """(state, body, reason) of one record, or None."""
        return await self._run(lambda db: _reads.record(db, record_id))

    async def compact(self, cutoff: float) -> int:
        """Delete committed history older than ``cutoff`` (see :mod:`._journal_compact`),
        a chunk per transaction. Returns how many records went."""
        cursor: int | None = 0
        gone = 0
        while cursor is not None:
            step = functools.partial(_compact.compact_chunk, cursor=cursor, cutoff=cutoff)
            cursor, n = await self._run(step)
            gone += n
        while await self._run(lambda db: _compact.forget_objects(db, cutoff)) == _compact.CHUNK:
            pass
        while await self._run(_compact.give_back):  # free pages back, 4 MiB at a time
            pass
        return gone

    async def is_compacted(self, task_id: str) -> bool:  # see _journal_reads.is_compacted
        return await self._run(lambda db: _reads.is_compacted(db, task_id))

    async def find_task(
        self,
        task_id: str | None,
        project: str | None,
        name: str | None,
        statuses: Sequence[str] | None,
    ) -> list[dict[str, Any]]:
        """Task events (newest first) matching the query, for read-your-writes."""
        return await self._run(lambda db: _reads.find_task(db, task_id, project, name, statuses))

    async def task_owner(self, task_id: str) -> int | None:
        """The uid that journaled a task's first record (None: unknown task)."""
        return await self._run(lambda db: _reads.task_owner(db, task_id))

    async def versions_of(self, task_id: str, name: str) -> list[dict[str, Any]]:
        """Every version of one artifact of a task, in journal order."""
        return await self._run(lambda db: _reads.versions_of(db, task_id, name))

    async def artifacts_of(self, task_id: str) -> list[dict[str, Any]]:
        """The newest version of each artifact of a task, any state."""
        return await self._run(lambda db: _reads.artifacts_of(db, task_id))
