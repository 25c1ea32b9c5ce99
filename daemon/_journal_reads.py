"""The journal's read-only queries: what status, lookups and read-your-writes show.

Plain functions of a connection; :class:`artisync.daemon.journal.Journal` runs
them on its one thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgpack

from ._journal_schema import OUTSTANDING, State, and_where, marks, newest_event, transaction


def count(
    db: sqlite3.Connection, states: tuple[State, ...], task_id: str | None, max_seq: int | None
) -> tuple[int, int]:
    """(records, bytes) in the given states, optionally of one task and up to a seq;
    of all of them from the trigger-kept ``totals`` (no scan: the idle watch asks
    every second, with a million records waiting)."""
    if task_id is None and max_seq is None:
        r = db.execute(
            "SELECT coalesce(sum(n),0) AS n, coalesce(sum(bytes),0) AS bytes "
            f"FROM totals WHERE state IN ({marks(states)})",
            states,
        ).fetchone()
        return int(r["n"]), int(r["bytes"])
    args: list[Any] = [*states]
    sql = and_where(
        "SELECT count(*) AS n, coalesce(sum(size),0) AS bytes FROM records "
        f"WHERE state IN ({marks(states)})",
        args,
        ("task_id=?", task_id),
        ("seq<=?", max_seq),
    )
    r = db.execute(sql, args).fetchone()
    return int(r["n"]), int(r["bytes"])


# where a record goes, as status shows it: a put's own URL, else its destination
_WHERE_TO = "(CASE WHEN kind='put' THEN name ELSE dest END)"


def stats(db: sqlite3.Connection) -> dict[str, Any]:
    """Counts from ``totals`` (kept by triggers: no scan of history); the committed
    include those compacted away."""
    counts: dict[str, list[int]] = {str(s): [0, 0] for s in State}
    kept = {r["state"]: [r["n"], r["bytes"]] for r in db.execute("SELECT * FROM totals")}
    for state, (n, nbytes) in kept.items():
        if state in counts:
            counts[state] = [n, nbytes]
    compacted = kept.get("compacted", [0, 0])
    counts[State.COMMITTED] = [
        a + b for a, b in zip(counts[State.COMMITTED], compacted, strict=True)
    ]
    failed = [
        dict(r)  # "dest" is the status reply's key
        for r in db.execute(
            f"SELECT record_id, task_id, kind, {_WHERE_TO} AS dest, reason, peer_uid "
            "FROM records WHERE state=? ORDER BY seq LIMIT 20",
            (State.FAILED,),
        )
    ]
    retrying = [
        dict(r)
        for r in db.execute(
            f"SELECT record_id, {_WHERE_TO} AS dest, reason, attempts, peer_uid FROM records "
            "WHERE state=? AND reason IS NOT NULL ORDER BY seq LIMIT 5",
            (State.PENDING,),
        )
    ]
    objects = dict(zip(("n", "bytes"), kept.get("objects", [0, 0]), strict=True))
    waiting = [str(s) for s in OUTSTANDING]
    oldest = db.execute(
        f"SELECT min(received) AS t FROM records WHERE state IN ({marks(waiting)})", waiting
    ).fetchone()["t"]
    return {
        "records": counts,
        "failed": failed,
        "retrying": retrying,
        "oldest_waiting": oldest,
        "objects_uploaded": objects["n"],
        "bytes_uploaded": objects["bytes"],
    }


def find_task(
    db: sqlite3.Connection,
    task_id: str | None,
    project: str | None,
    name: str | None,
    statuses: Sequence[str] | None,
) -> list[dict[str, Any]]:
    if task_id:
        rows = db.execute(
            "SELECT task_id FROM records WHERE kind='task' AND task_id=? LIMIT 1",
            (task_id,),
        ).fetchall()
    else:
        args: list[Any] = []
        sql = and_where(
            # (a task's name is never NULL: said, so that the partial index serves)
            "SELECT DISTINCT task_id FROM records WHERE kind='task' AND name IS NOT NULL",
            args,
            ("project=?", project),
            ("name=?", name),
        )
        rows = db.execute(sql + " ORDER BY seq DESC LIMIT 200", args).fetchall()
    out = []
    for r in rows:
        body = newest_event(db, r["task_id"])
        if body is None:
            continue
        if statuses and body.get("status") not in statuses:
            continue
        out.append(body)
    out.sort(key=lambda b: b.get("started", 0), reverse=True)
    return out


def task_owner(db: sqlite3.Connection, task_id: str) -> int | None:
    """Who journaled the task's first record (kept when its records are compacted)."""
    r = db.execute("SELECT owner FROM compacted WHERE task_id=?", (task_id,)).fetchone()
    if r is None:
        r = db.execute(
            "SELECT peer_uid AS owner FROM records WHERE task_id=? ORDER BY seq LIMIT 1",
            (task_id,),
        ).fetchone()
    return None if r is None else r["owner"]


def is_compacted(db: sqlite3.Connection, task_id: str) -> bool:
    """Some of the task's committed records were compacted away (storage has them)."""
    row = db.execute("SELECT 1 FROM compacted WHERE task_id=?", (task_id,)).fetchone()
    return row is not None


def versions_of(db: sqlite3.Connection, task_id: str, name: str) -> list[dict[str, Any]]:
    bodies = (
        msgpack.unpackb(r["body"], raw=False)
        for r in db.execute(
            "SELECT body FROM records WHERE kind='artifact' AND task_id=? ORDER BY seq",
            (task_id,),
        )
    )
    return [b for b in bodies if b.get("name") == name]


def artifacts_of(db: sqlite3.Connection, task_id: str) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for r in db.execute(
        "SELECT body FROM records WHERE kind='artifact' AND task_id=? ORDER BY seq",
        (task_id,),
    ):
        rec = msgpack.unpackb(r["body"], raw=False)
        seen = latest.get(rec["name"])
        # newest by creation: outbox files are journaled in batches, in any order
        if seen is None or rec.get("created", 0) >= seen.get("created", 0):
            latest[rec["name"]] = rec
    return list(latest.values())


def collectable(db: sqlite3.Connection, shas: Sequence[str], orphans: Sequence[str]) -> list[str]:
    """Of ``shas``, those that only committed records reference; plus the ``orphans``
    that no record references at all. One snapshot, a few set queries (not one per
    blob: a long backlog is scanned every pass)."""
    orphan_set = set(orphans)
    out = []
    with transaction(db):  # one snapshot
        for i in range(0, len(shas), 500):
            chunk = list(shas[i : i + 500])
            seen = {
                r["sha256"]: bool(r["done"])
                for r in db.execute(
                    "SELECT refs.sha256 AS sha256, min(records.state=?) AS done "
                    f"FROM refs JOIN records USING(seq) WHERE refs.sha256 IN "
                    f"({marks(chunk)}) GROUP BY refs.sha256",
                    (State.COMMITTED, *chunk),
                )
            }
            out += [s for s in chunk if (seen[s] if s in seen else s in orphan_set)]
    return out


def known_objects(
    db: sqlite3.Connection, destination_uri: str, shas: Sequence[str], since: float = 0.0
) -> set[str]:
    """Of ``shas``, those the destination is known to hold since ``since`` (one query
    per 500)."""
    found: set[str] = set()
    for i in range(0, len(shas), 500):
        chunk = list(shas[i : i + 500])
        found.update(
            r["sha256"]
            for r in db.execute(
                f"SELECT sha256 FROM objects WHERE dest=? AND uploaded >= ? "
                f"AND sha256 IN ({marks(chunk)})",
                (destination_uri, since, *chunk),
            )
        )
    return found


def states_of(db: sqlite3.Connection, record_ids: Sequence[str]) -> dict[str, State]:
    out: dict[str, State] = {}
    for i in range(0, len(record_ids), 500):
        chunk = list(record_ids[i : i + 500])
        for r in db.execute(
            f"SELECT record_id, state FROM records WHERE record_id IN ({marks(chunk)})", chunk
        ):
            out[r["record_id"]] = State(r["state"])
    return out


def record(
    db: sqlite3.Connection, record_id: str
) -> tuple[State, dict[str, Any], str | None] | None:
    r = db.execute(
        "SELECT state, body, reason FROM records WHERE record_id=?", (record_id,)
    ).fetchone()
    if r is None:
        return None
    return State(r["state"]), msgpack.unpackb(r["body"], raw=False), r["reason"]


def newer_put_committed(db: sqlite3.Connection, target: str, seq: int, created: float) -> bool:
    """A put of URL ``target`` made after ``created`` (or at that time and journaled
    after ``seq``) is committed. Made, not journaled: a shared daemon may journal a
    record that waited in a handover folder after a newer one."""
    for r in db.execute(
        "SELECT seq, body FROM records WHERE kind='put' AND project IS NULL AND name=? "
        "AND state=? AND seq!=? ORDER BY seq DESC LIMIT 100",
        (target, State.COMMITTED, seq),
    ):
        made = float(msgpack.unpackb(r["body"], raw=False).get("created", 0))
        if made > created or (made == created and r["seq"] > seq):
            return True
    return False
