"""The journal's claims: the records the uploader and the encoder take next, and the
encoder's completed records (SQL on the journal's thread, see :mod:`.journal`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import msgpack

from ._journal_schema import DUE, ROW_COLUMNS, Row, State, marks, to_row, transaction


def claim_due(
    db: sqlite3.Connection, limit: int, skip: list[str], exclude: Sequence[int]
) -> list[Row]:
    """Up to ``limit`` due records not in ``exclude``, oldest first, the pending ones
    moved to ``uploading``; records for the destinations in ``skip`` (offline) wait."""
    now = time.time()
    seqs = [seq for seq in _due(db, limit + len(exclude), skip, now) if seq not in exclude]
    picked = _rows(db, seqs[:limit])
    pending = [row.seq for row in picked if row.state is State.PENDING]
    if pending:
        with transaction(db):
            for seq in pending:
                db.execute(
                    "UPDATE records SET state=?, updated=? WHERE seq=?",
                    (State.UPLOADING, now, seq),
                )
    return picked


def _due(db: sqlite3.Connection, n: int, skip: list[str], now: float) -> list[int]:
    """The first ``n`` due records (their seq), read from the ``records_state`` index in
    its order: those due at once (``next_try`` 0: new, or their destination is back)
    come in ``seq`` order, so the scan stops after ``n``; those waiting for a retry that
    is due now are few. One query ordering every due record by ``seq`` sorted them
    all, so each claim of a 30,000-record backlog read all 30,000 rows."""
    # offline destinations are skipped in SQL: filtering afterwards let a long
    # backlog for one offline destination hide every other destination's records
    skip_sql = f" AND dest NOT IN ({marks(skip)})" if skip else ""
    seqs: list[int] = []
    for state in DUE:
        for when, args in (("next_try=0", ()), ("next_try>0 AND next_try<=?", (now,))):
            sql = f"SELECT seq FROM records WHERE state=? AND {when}{skip_sql} ORDER BY seq LIMIT ?"
            seqs += [r[0] for r in db.execute(sql, (state, *args, *skip, n))]
    return sorted(seqs)[:n]


def waiting_encoding(db: sqlite3.Connection, limit: int, exclude: Sequence[int]) -> list[Row]:
    """Up to ``limit`` records to encode not in ``exclude``, oldest first (from the index
    in its order, as :func:`_due`; their ``next_try`` is 0 but in a journal edited by hand)."""
    seqs: list[int] = []
    for when in ("next_try=0", "next_try>0"):
        sql = f"SELECT seq FROM records WHERE state=? AND {when} ORDER BY seq LIMIT ?"
        seqs += [r[0] for r in db.execute(sql, (State.ENCODING, limit + len(exclude)))]
    return _rows(db, [seq for seq in sorted(seqs) if seq not in exclude][:limit])


def _rows(db: sqlite3.Connection, seqs: list[int]) -> list[Row]:
    if not seqs:
        return []
    sql = f"SELECT {ROW_COLUMNS} FROM records WHERE seq IN ({marks(seqs)}) ORDER BY seq"
    return [to_row(r) for r in db.execute(sql, seqs)]


def complete_encoding(db: sqlite3.Connection, done: Sequence[tuple[int, dict[str, Any]]]) -> None:
    now = time.time()
    with transaction(db, "IMMEDIATE"):
        for seq, body in done:
            blobs = [(seq, sha, int(size)) for sha, size in body["blobs"]]
            db.execute(
                "UPDATE records SET body=?, size=?, state=?, reason=NULL, updated=? "
                "WHERE seq=? AND state=?",
                (
                    msgpack.packb(body, use_bin_type=True),
                    sum(n for _, _, n in blobs),
                    State.PENDING,
                    now,
                    seq,
                    State.ENCODING,
                ),
            )
            db.executemany("INSERT OR IGNORE INTO refs VALUES (?,?,?)", blobs)
