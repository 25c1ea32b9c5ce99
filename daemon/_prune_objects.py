"""Object collection for ``prune``: mark what the records reference, sweep the rest.

**Why it is safe with writers running.** Objects are content-addressed and shared,
so a writer may reuse one that is already there instead of sending it again. It
does so only for an object written (or found written) within the reuse window W,
and publishes the record pointing to it within W of that check (the daemon checks
again when publishing is retried later: see ``Uploader._process``); an older
object is written again, which renews its modification time. This sweep deletes
an object only if no record read by the mark (which starts after ``started``)
references it and its modification time is older than ``started - 2W`` (minus a
margin for clocks, :data:`CLOCK_MARGIN` or W if less), also when asked again just
before the delete. A record referencing such an object
was then published before ``started``, so the mark saw it: the object is kept.
The last look and the delete happen under a sweep lock, so that a writer renewing
an object cannot land between them (see :mod:`.sweeps`).

What the mark reads is kept in a scratch SQLite file, not in memory: a bucket of a
million objects costs disk, not RAM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import tempfile
from types import TracebackType
from typing import Any, Self

from artisync.protocol import NotFound

from .storage.base import ObjectInfo, Storage
from .sweeps import Sweep

OBJECTS = "objects/sha256/"
CLOCK_MARGIN = 600.0  # seconds of clock difference allowed (at most the window itself)
CHUNK = 256  # keys read or deleted per round
IN_FLIGHT = 32  # requests at once


class Marks:
    """The scratch set: referenced objects, and what this run deletes (or would)."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="artisync-prune-", suffix=".db")
        os.close(fd)
        # autocommit: an open transaction would hold every page it wrote in memory
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-8192;"
            "CREATE TABLE refs(sha TEXT PRIMARY KEY) WITHOUT ROWID;"
            "CREATE TABLE tasks(id TEXT PRIMARY KEY) WITHOUT ROWID;"
            "CREATE TABLE records(key TEXT PRIMARY KEY) WITHOUT ROWID;"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.db.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def add_task(self, task_id: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO tasks VALUES (?)", (task_id,))

    def has_task(self, task_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM tasks WHERE id=?", (task_id,)).fetchone() is not None

    def add_record_key(self, key: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO records VALUES (?)", (key,))

    def has_record_key(self, key: str) -> bool:
        row = self.db.execute("SELECT 1 FROM records WHERE key=?", (key,)).fetchone()
        return row is not None

    def reference(self, shas: list[str]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO refs VALUES (?)", [(s,) for s in shas])
        self.db.execute("COMMIT")

    def referenced(self, shas: list[str]) -> set[str]:
        marks = ",".join("?" * len(shas))
        rows = self.db.execute(f"SELECT sha FROM refs WHERE sha IN ({marks})", shas)
        return {r[0] for r in rows}


async def collect(
    st: Storage, started: float, grace: float, apply: bool, marks: Marks
) -> tuple[int, int]:
    """Mark, then sweep: (objects deleted or to delete, their bytes). Deletes happen
    under a sweep lock (:class:`.sweeps.Sweep`), taken at the first page that has
    something to delete."""
    await _mark(st, marks)
    cutoff = started - grace - min(CLOCK_MARGIN, grace / 2)
    count = size = 0
    page: list[ObjectInfo] = []
    async with contextlib.AsyncExitStack() as stack:
        sweep: Sweep | None = None

        async def sweep_page() -> None:
            nonlocal count, size, sweep
            keep = marks.referenced([_sha(i.key) for i in page])
            old = [i for i in page if _sha(i.key) not in keep and _older(i, cutoff)]
            page.clear()
            if apply and old:
                if sweep is None:
                    sweep = await stack.enter_async_context(Sweep(st))
                await sweep.keep()
                old = [i for i in await gather([_still_old(st, i, cutoff) for i in old]) if i]
                sweep.check()
                await st.delete_many([i.key for i in old])
            count += len(old)
            size += sum(i.size for i in old)

        async for info in st.list(OBJECTS):
            page.append(info)
            if len(page) >= CHUNK:
                await sweep_page()
        await sweep_page()
    return count, size


def _sha(key: str) -> str:
    return key.rpartition("/")[2]


def _older(info: ObjectInfo | None, cutoff: float) -> bool:
    # an object whose age the backend cannot tell is kept
    return info is not None and info.modified is not None and info.modified < cutoff


async def _still_old(st: Storage, info: ObjectInfo, cutoff: float) -> ObjectInfo | None:
    """Asked again just before the delete: a writer may have renewed it meanwhile."""
    now = await st.head(info.key)
    return info if _older(now, cutoff) else None


async def _mark(st: Storage, marks: Marks) -> None:
    """Every object the records left (not deleted by this run) reference."""
    keys: list[str] = []

    async def read() -> None:
        for rec_key, body in zip(keys, await gather([read_json(st, k) for k in keys]), strict=True):
            if body is None:
                continue
            records = body.get("records", []) if "/batches/" in rec_key else [body]
            shas = []
            for rec in records:
                if not isinstance(rec, dict):
                    continue
                if marks.has_record_key(f"{rec_key}#{rec.get('record_id')}"):
                    continue
                shas.extend(_shas(rec))
            marks.reference(shas)
        keys.clear()

    async for info in st.list("tasks/"):
        parts = info.key.split("/")
        if (
            len(parts) < 4
            or not info.key.endswith(".json")
            or parts[2]
            not in (
                "artifacts",
                "batches",
            )
        ):
            continue  # task.json: no objects
        if marks.has_task(parts[1]) or marks.has_record_key(info.key):
            continue
        keys.append(info.key)
        if len(keys) >= CHUNK:
            await read()
    await read()


def _shas(rec: dict[str, Any]) -> list[str]:
    out = [rec["sha256"]] if isinstance(rec.get("sha256"), str) else []
    for blob in rec.get("blobs") or []:
        if isinstance(blob, list | tuple) and blob and isinstance(blob[0], str):
            out.append(blob[0])
    return out


async def read_json(st: Storage, key: str) -> dict[str, Any] | None:
    try:
        body = json.loads(await st.get_bytes(key))
    except (NotFound, ValueError):
        return None
    return body if isinstance(body, dict) else None


async def gather(coros: list[Any]) -> list[Any]:
    """The results of ``coros``, in order, :data:`IN_FLIGHT` running at a time."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))
