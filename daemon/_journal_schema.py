"""The journal's on-disk format and the SQL that needs no connection state.

The state names are stored as text in ``records.state``: :class:`State` keeps
their spelling, so a spool written by an older daemon still opens.
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgpack

from artisync.protocol import is_raw, put_target

from .inline import encoded_at_ingest


class State(enum.StrEnum):
    """Where a record is: ``[encoding ->] pending -> uploading -> uploaded -> committed``,
    or ``failed``."""

    ENCODING = "encoding"  # its raw snapshot is waiting to be encoded (artifacts, puts)
    PENDING = "pending"  # waiting (for its turn, or until next_try)
    UPLOADING = "uploading"  # claimed by a worker
    UPLOADED = "uploaded"  # its payloads are at the destination; the record is not yet
    COMMITTED = "committed"  # published: done
    FAILED = "failed"  # a permanent error, with the reason; retried on request


# acknowledged, not committed
OUTSTANDING = (State.ENCODING, State.PENDING, State.UPLOADING, State.UPLOADED)
DUE = (State.PENDING, State.UPLOADED)  # what a worker may claim

SCHEMA = """
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
-- tasks and puts by name (artifact versions have none: a backlog of them skips it)
CREATE INDEX IF NOT EXISTS records_name ON records(kind, project, name) WHERE name IS NOT NULL;
CREATE TABLE IF NOT EXISTS refs(
    seq INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY(seq, sha256)
);
CREATE INDEX IF NOT EXISTS refs_sha ON refs(sha256);
CREATE TABLE IF NOT EXISTS objects(
    dest TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, uploaded REAL NOT NULL,
    PRIMARY KEY(dest, sha256)
);
CREATE TABLE IF NOT EXISTS compacted(task_id TEXT PRIMARY KEY, owner INTEGER, through REAL);
CREATE TABLE IF NOT EXISTS outbox_logs(name TEXT PRIMARY KEY, offset INTEGER NOT NULL);
"""

# Counters kept by the database itself, in the same transactions as the rows they
# count: ``status`` reads a handful of rows instead of counting over all history
# (and committed records keep counting once compacted away: state ``compacted``).
# Inserted records are counted by the statements that insert them (count_inserted),
# not by a trigger: a trigger's upsert per row was a third of a backlog's ingest.
TOTALS = """
CREATE TABLE totals(state TEXT PRIMARY KEY, n INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO totals SELECT state, count(*), coalesce(sum(size), 0) FROM records GROUP BY state;
INSERT INTO totals SELECT 'objects', count(*), coalesce(sum(size), 0) FROM objects;
CREATE TRIGGER totals_update AFTER UPDATE OF state, size ON records BEGIN
    UPDATE totals SET n = n - 1, bytes = bytes - OLD.size WHERE state = OLD.state;
    INSERT INTO totals VALUES (NEW.state, 1, NEW.size)
        ON CONFLICT(state) DO UPDATE SET n = n + 1, bytes = bytes + NEW.size;
END;
CREATE TRIGGER totals_delete AFTER DELETE ON records BEGIN
    UPDATE totals SET n = n - 1, bytes = bytes - OLD.size WHERE state = OLD.state;
END;
CREATE TRIGGER totals_objects AFTER INSERT ON objects BEGIN
    INSERT INTO totals VALUES ('objects', 1, NEW.size)
        ON CONFLICT(state) DO UPDATE SET n = n + 1, bytes = bytes + NEW.size;
END;
"""


def configure(db: sqlite3.Connection) -> None:
    """The connection's settings (before the schema)."""
    # a new journal returns compacted pages to the disk (an older one reuses them)
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # an ack means durable, power loss included
    # a statement's undo journal in memory: one that rewrites a 64 KiB record spilled it
    # into a temporary file (created, written, removed) in /var/tmp
    db.execute("PRAGMA temp_store=MEMORY")
    # the WAL is checkpointed every 64 pages (256 KiB), not SQLite's 1,000: the log
    # must fit in the disk space the SDK leaves free, or a full disk would leave
    # the journal unable to record the very commits that free the space
    db.execute("PRAGMA wal_autocheckpoint=64")
    db.execute("PRAGMA journal_size_limit=1048576")
    # 16 MiB of page cache (SQLite's default: 2): a backlog's inserts land at
    # random places of the record_id index, which outgrows 2 MiB at ~50k rows
    db.execute("PRAGMA cache_size=-16384")


def create_schema(db: sqlite3.Connection) -> None:
    """The tables, and (once, counting what an older journal holds) the totals."""
    db.executescript(SCHEMA)
    db.execute("DROP TRIGGER IF EXISTS totals_insert")  # older journals: see count_inserted
    if db.execute("SELECT 1 FROM sqlite_master WHERE name='totals'").fetchone() is None:
        try:  # one transaction: counted and kept up to date from the same snapshot
            db.executescript(f"BEGIN IMMEDIATE;{TOTALS}COMMIT;")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


@dataclass(frozen=True)
class Row:
    """One record as the uploader sees it (built only by :func:`to_row`)."""

    seq: int
    record_id: str
    kind: str
    task_id: str
    destination_uri: str  # the record's "dest"
    body: dict[str, Any]
    state: State
    reason: str | None
    peer_uid: int | None


ROW_COLUMNS = "seq, record_id, kind, task_id, dest, body, state, reason, peer_uid"


def to_row(r: sqlite3.Row) -> Row:
    return Row(
        seq=r["seq"],
        record_id=r["record_id"],
        kind=r["kind"],
        task_id=r["task_id"],
        destination_uri=r["dest"],
        body=msgpack.unpackb(r["body"], raw=False),
        state=State(r["state"]),
        reason=r["reason"],
        peer_uid=r["peer_uid"],
    )


@dataclass(frozen=True)
class Incoming:
    record: dict[str, Any]
    peer_uid: int | None
    peer_pid: int | None
    packed: bytes | None = None  # the record as msgpack, when it arrived so (a log's frame)


def marks(values: tuple[Any, ...] | list[Any]) -> str:
    """``?,?,?``: one placeholder per value, for ``IN (...)``."""
    return ",".join("?" * len(values))


def and_where(sql: str, args: list[Any], *conditions: tuple[str, Any]) -> str:
    """``sql`` with `` AND <condition>`` for each (condition, value) whose value is not
    None; the values go into ``args``."""
    for condition, value in conditions:
        if value is not None:
            sql += f" AND {condition}"
            args.append(value)
    return sql


@contextmanager
def transaction(db: sqlite3.Connection, mode: str = "") -> Iterator[None]:
    """BEGIN [mode] ... COMMIT, or ROLLBACK on any exception (if SQLite has not rolled
    back by itself already, as it does on some errors such as a full disk)."""
    db.execute(f"BEGIN {mode}".strip())
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def newest_event(db: sqlite3.Connection, task_id: str) -> dict[str, Any] | None:
    events: list[dict[str, Any]] = [
        msgpack.unpackb(r["body"], raw=False)
        for r in db.execute(
            "SELECT body FROM records WHERE task_id=? AND kind='task' ORDER BY seq", (task_id,)
        )
    ]
    if not events:
        return None
    # a closing event wins over a start that arrived later, and over an update
    # (parameters, tags) that did; a failure (of any process of the job) over any
    # other end; then the newest
    return max(
        events,
        key=lambda e: (
            e.get("event") != "started",
            e.get("status") != "in_progress",
            e.get("status") == "failed",
            e.get("created", 0),
        ),
    )


_INSERT = (
    "INSERT OR IGNORE INTO records(record_id, kind, task_id, project, name, dest, body, size,"
    " state, peer_uid, peer_pid, received, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def _blobs(rec: dict[str, Any]) -> list[Any]:
    return [] if is_raw(rec) else list(rec.get("blobs", []))


def _values(incoming: Incoming, now: float) -> tuple[Any, ...]:
    rec = incoming.record
    raw = is_raw(rec)
    size = int(rec["raw"]["size"]) if raw else sum(int(b[1]) for b in _blobs(rec))
    return (
        rec["record_id"],
        rec["kind"],
        rec["task_id"],
        rec.get("project"),
        _name_column(rec),
        rec["dest"],
        incoming.packed or msgpack.packb(rec, use_bin_type=True),
        size,
        State.ENCODING if raw else State.PENDING,
        incoming.peer_uid,
        incoming.peer_pid,
        now,
        now,
    )


def count_inserted(db: sqlite3.Connection, after: int) -> None:
    """Count the records inserted after ``seq`` ``after`` into ``totals`` (the
    statements that insert records call this; no trigger counts them)."""
    db.execute(
        # NOT INDEXED: the rows after ``seq``, not a scan of records_state for the GROUP BY
        "INSERT INTO totals SELECT state, count(*), sum(size) FROM records NOT INDEXED"
        " WHERE seq > ? GROUP BY state ON CONFLICT(state) DO UPDATE"
        " SET n = n + excluded.n, bytes = bytes + excluded.bytes",
        (after,),
    )


_INSERT_HEAD = _INSERT.split(" VALUES ")[0] + " VALUES "
_ROWS_PER_STATEMENT = 512


def _insert_rows(
    db: sqlite3.Connection, rows: list[tuple[Any, ...]], head: str = _INSERT_HEAD
) -> int:
    """Insert ``rows`` (duplicates ignored), many in one statement; how many were new.

    Not ``executemany``: it releases the GIL around each row's step, and while the
    next batch of outbox frames is checked on another thread, every one of those
    reacquisitions waited for that thread (a convoy): the two sides ran one after
    the other. One statement of 512 rows releases it once."""
    if not rows:
        return 0
    width = len(rows[0])
    limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    per = max(1, min(_ROWS_PER_STATEMENT, limit))
    one = f"({marks(rows[0])})"
    new = 0
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        flat = [value for row in chunk for value in row]
        new += db.execute(head + ",".join([one] * len(chunk)), flat).rowcount
    return new


def _last_seq(db: sqlite3.Connection) -> int:
    """Every record inserted from now on has a larger ``seq`` (AUTOINCREMENT)."""
    return int(db.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0])


def insert_one(db: sqlite3.Connection, incoming: Incoming, now: float) -> bool:
    incoming = encoded(incoming)
    cur = db.execute(_INSERT, _values(incoming, now))
    if cur.rowcount == 0:
        return False
    seq = cur.lastrowid
    assert seq is not None
    count_inserted(db, seq - 1)
    db.executemany(
        "INSERT OR IGNORE INTO refs VALUES (?,?,?)",
        [(seq, b[0], int(b[1])) for b in _blobs(incoming.record)],
    )
    return True


def ingest_batch(
    db: sqlite3.Connection, batch: list[Incoming], log: tuple[str, int] | None
) -> None:
    """Insert records from the outbox in one transaction (duplicates, journaled before,
    are ignored). ``log``: (outbox log, offset read up to), kept in the same
    transaction, so that each record of a log is journaled exactly once."""
    with transaction(db, "IMMEDIATE"):
        insert_all(db, batch, time.time())
        if log is not None:
            db.execute(
                "INSERT INTO outbox_logs VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET offset = excluded.offset",
                log,
            )


def insert_all(db: sqlite3.Connection, batch: list[Incoming], now: float) -> None:
    """Insert a batch (duplicates ignored) in a few statements, and the payloads the new
    ones name: a backlog of a rig's records is what must go fast."""
    batch = [encoded(inc) for inc in batch]
    after = _last_seq(db)
    if not _insert_rows(db, [_values(inc, now) for inc in batch]):
        return
    count_inserted(db, after)  # those inserted (duplicates were ignored)
    named = {inc.record["record_id"]: _blobs(inc.record) for inc in batch if _blobs(inc.record)}
    if named:
        new = db.execute("SELECT seq, record_id FROM records WHERE seq > ?", (after,))
        refs = [(seq, sha, int(n)) for seq, rid in new for sha, n in named.get(rid, ())]
        _insert_rows(db, refs, "INSERT OR IGNORE INTO refs VALUES ")


def encoded(incoming: Incoming) -> Incoming:
    """A record that carries its stored payload is journaled encoded (see :mod:`.inline`)."""
    done = encoded_at_ingest(incoming.record)
    return incoming if done is None else Incoming(done, incoming.peer_uid, incoming.peer_pid)


def _name_column(rec: dict[str, Any]) -> str | None:
    """A task's name (lookups by name), a put's URL (puts of one URL, in order)."""
    if rec["kind"] == "task":
        return str(rec["name"])
    if rec["kind"] == "put":
        return put_target(rec["dest"], rec["key"])
    return None


def make_room(db: sqlite3.Connection, exc: sqlite3.OperationalError) -> None:
    """The disk is full: give the WAL's pages back, so the next try fits."""
    if "full" in str(exc):
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def commit_each(
    db: sqlite3.Connection, fns: Sequence[Callable[[sqlite3.Connection], Any]]
) -> list[Any]:
    """Run ``fns`` in one transaction; if that fails, each in its own. One result per
    function: what it returned, or the ``sqlite3.Error`` it failed with."""
    try:
        with transaction(db, "IMMEDIATE"):
            return [fn(db) for fn in fns]
    except sqlite3.Error as exc:
        if len(fns) == 1:
            if isinstance(exc, sqlite3.OperationalError):
                make_room(db, exc)
            return [exc]
    out: list[Any] = []
    for fn in fns:
        try:
            with transaction(db, "IMMEDIATE"):
                out.append(fn(db))
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError):
                make_room(db, exc)
            out.append(exc)
    return out
