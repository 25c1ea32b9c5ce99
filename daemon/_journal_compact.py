"""Keeping the journal small: committed history older than ``journal_keep`` goes.

Storage holds every committed record, so the journal needs only what is not
committed yet, what read-your-writes on this node shows (recent versions), and
what refuses other users' records for a task (its owner). A pass walks the
records in ``seq`` order a chunk at a time (one short transaction each, so the
journal's thread serves acks between chunks) and deletes:

- committed artifact versions last changed before the cutoff; their task is
  marked ``compacted`` (with its owner), so a lookup through the daemon merges
  what storage holds; committed puts (StorageManager) likewise, marking nothing;
- committed task events, once every record of their task is committed and older
  than the cutoff (the whole task is then in storage only);
- ``objects`` rows older than the cutoff: dedup of a payload uploaded long ago
  falls back to looking at the destination (large ones) or sending it again
  (small ones), never to a wrong answer.

The ``totals`` counters move the deleted records to ``compacted``, so
``status`` still counts them as committed.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ._journal_schema import State, marks, transaction

CHUNK = 5000  # records looked at per transaction


def compact_chunk(db: sqlite3.Connection, cursor: int, cutoff: float) -> tuple[int | None, int]:
    """Look at the records after ``seq`` ``cursor``: (the next cursor, or None when
    the pass is over; records deleted)."""
    rows = db.execute(
        "SELECT seq, task_id, kind, state, received, updated, size FROM records "
        "WHERE seq>? ORDER BY seq LIMIT ?",
        (cursor, CHUNK),
    ).fetchall()
    if not rows:
        return None, 0
    done = [r for r in rows if r["state"] == State.COMMITTED and r["updated"] < cutoff]
    # records journaled after the cutoff come later in seq order: nothing past them is old
    over = len(rows) < CHUNK or rows[-1]["received"] >= cutoff
    doomed = [r["seq"] for r in done if r["kind"] in ("artifact", "put")]
    with transaction(db, "IMMEDIATE"):
        events = [r for r in done if r["kind"] == "task"]
        finished = {t for t in {r["task_id"] for r in events} if _all_done(db, t, cutoff)}
        doomed += [r["seq"] for r in events if r["task_id"] in finished]
        going = set(doomed)
        gone = [r for r in done if r["seq"] in going]
        for task_id in {r["task_id"] for r in gone if r["kind"] != "put"}:
            _mark(db, task_id, cutoff)  # (a put's task_id names its call, not a task)
        for i in range(0, len(doomed), 500):
            chunk = doomed[i : i + 500]
            db.execute(f"DELETE FROM refs WHERE seq IN ({marks(chunk)})", chunk)
            db.execute(f"DELETE FROM records WHERE seq IN ({marks(chunk)})", chunk)
        if gone:
            db.execute(
                "INSERT INTO totals VALUES ('compacted', ?, ?) ON CONFLICT(state) DO UPDATE "
                "SET n = n + excluded.n, bytes = bytes + excluded.bytes",
                (len(gone), sum(r["size"] for r in gone)),
            )
    return (None if over else rows[-1]["seq"]), len(gone)


def _mark(db: sqlite3.Connection, task_id: str, cutoff: float) -> None:
    """Remember the task's owner before its first records go (the first record's uid)."""
    first: Any = db.execute(
        "SELECT peer_uid FROM records WHERE task_id=? ORDER BY seq LIMIT 1", (task_id,)
    ).fetchone()
    db.execute(
        "INSERT INTO compacted VALUES (?,?,?) ON CONFLICT(task_id) DO UPDATE SET through=?",
        (task_id, None if first is None else first["peer_uid"], cutoff, cutoff),
    )


def _all_done(db: sqlite3.Connection, task_id: str, cutoff: float) -> bool:
    """Every record of the task is committed and older than the cutoff."""
    row = db.execute(
        "SELECT 1 FROM records WHERE task_id=? AND (state!=? OR updated>=?) LIMIT 1",
        (task_id, State.COMMITTED, cutoff),
    ).fetchone()
    return row is None


def forget_objects(db: sqlite3.Connection, cutoff: float) -> int:
    """Delete up to :data:`CHUNK` ``objects`` rows uploaded before the cutoff (oldest
    rowids first: rows are added as uploads finish). Returns how many."""
    rows = db.execute(
        "SELECT rowid, uploaded FROM objects ORDER BY rowid LIMIT ?", (CHUNK,)
    ).fetchall()
    old = [r["rowid"] for r in rows if r["uploaded"] < cutoff]
    with transaction(db, "IMMEDIATE"):
        for i in range(0, len(old), 500):
            chunk = old[i : i + 500]
            db.execute(f"DELETE FROM objects WHERE rowid IN ({marks(chunk)})", chunk)
    return len(old)


def give_back(db: sqlite3.Connection, pages: int = 1024) -> bool:
    """Return up to ``pages`` free pages to the file system (a journal created with
    ``auto_vacuum=INCREMENTAL``; an older one keeps and reuses them). True while
    more are free."""
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return False
    db.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
    return bool(db.execute("PRAGMA freelist_count").fetchone()[0])
