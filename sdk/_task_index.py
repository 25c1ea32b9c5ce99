"""Task lookups in storage: a few requests whatever the history (see
:mod:`artisync.protocol._index` for the keys).

Each question reads one index listing, newest first, a small page at a time,
and fetches ``task.json`` only for the entries it needs (in windows that double,
so a status filter that skips a few of the newest costs a few round trips, not
one per run). Beside the first page, one request of one key asks whether the
bucket still holds entries of the previous, oldest-first layout; if it does,
those are read whole (linear in history, as before) and merged in, until
``artisync migrate-index`` moves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from artisync.protocol import (
    NotFound,
    folded_prefix,
    index_keys,
    legacy_index_prefix,
    names_prefix,
    parse_legacy_index_key,
    parse_newest_first,
    runs_prefix,
    task_key,
    tasks_prefix,
)

log = logging.getLogger("artisync")

LOOKUP_PAGE = 10  # index keys a lookup asks for first: the newest runs
MAX_WINDOW = 32  # task.json reads in flight at most


@dataclass(frozen=True, order=True)
class Entry:
    """One index entry; entries order newest first."""

    newest_first: tuple[float, str]  # (-started, task_id)

    @property
    def task_id(self) -> str:
        return self.newest_first[1]


def _entry(started: float, task_id: str) -> Entry:
    return Entry((-started, task_id))


@dataclass(frozen=True)
class Listing:
    """Where one question's entries are: the index prefix, and the previous layout's
    prefix with which of its entries (project, name) belong."""

    prefix: str
    legacy_prefix: str
    legacy_match: Callable[[str, str], bool]


def listing(project: str | None, name: str | None, *, folded: bool = False) -> Listing:
    if project is not None and name is not None:
        if folded:
            want = name.casefold()
            return Listing(
                folded_prefix(project, name),
                legacy_index_prefix(project),
                lambda _p, n: n.casefold() == want,
            )
        return Listing(runs_prefix(project, name), legacy_index_prefix(project, name), _any)
    if name is not None:
        return Listing(names_prefix(name), legacy_index_prefix(), lambda _p, n: n == name)
    if project is not None:
        return Listing(tasks_prefix(project), legacy_index_prefix(project), _any)
    return Listing(tasks_prefix(None), legacy_index_prefix(), _any)


def _any(_project: str, _name: str) -> bool:
    return True


async def entries(st: Any, where: Listing, page_size: int) -> AsyncGenerator[Entry, None]:
    """The entries of ``where``, newest first, each task once."""
    async with contextlib.aclosing(_index_entries(st, where.prefix, page_size)) as new:
        first, legacy_left = await asyncio.gather(anext(new, None), _has_legacy(st, where))
        if legacy_left:
            legacy = await _legacy_entries(st, where)
            seen: set[str] = set()
            current = first
            while current is not None or legacy:
                if current is None or (legacy and legacy[-1] < current):
                    entry = legacy.pop()
                else:
                    entry, current = current, await anext(new, None)
                if entry.task_id not in seen:
                    seen.add(entry.task_id)
                    yield entry
            return
        if first is not None:
            yield first
        async for entry in new:
            yield entry


async def _index_entries(st: Any, prefix: str, page_size: int) -> AsyncGenerator[Entry, None]:
    async for info in st.list(prefix, page_size=page_size):
        parsed = parse_newest_first(info.key[len(prefix) :])
        if parsed is not None:
            yield _entry(*parsed)


async def _has_legacy(st: Any, where: Listing) -> bool:
    async with contextlib.aclosing(st.list(where.legacy_prefix, page_size=1)) as items:
        async for _ in items:
            return True
    return False


_warned: set[str] = set()


async def _legacy_entries(st: Any, where: Listing) -> list[Entry]:
    """The previous layout's entries for ``where``, oldest last (popped first)."""
    found = []
    async for info in st.list(where.legacy_prefix):
        parsed = parse_legacy_index_key(info.key)
        if parsed is not None and where.legacy_match(parsed[0], parsed[1]):
            found.append(_entry(parsed[2], parsed[3]))
    if st.uri not in _warned:
        _warned.add(st.uri)
        log.warning(
            "%s still has task index entries in the previous layout (read whole, linear "
            "in history); run `artisync migrate-index --uri %s` once",
            st.uri,
            st.uri,
        )
    return sorted(found, reverse=True)


async def task_json(st: Any, task_id: str) -> dict[str, Any] | None:
    try:
        rec: dict[str, Any] = json.loads(await st.get_bytes(task_key(task_id)))
    except NotFound:
        return None  # an entry written before its task.json was: skipped
    return rec


async def matching(
    st: Any,
    found: AsyncGenerator[Entry, None],
    statuses: Sequence[str] | None,
    limit: int,
    window: int = 1,
    *,
    paging: bool = False,
) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` task records of ``found``, in its order, whose status is in
    ``statuses`` (any if None), and whether ``found`` had any entry at all.
    task.json is read a window at a time, the window doubling up to
    :data:`MAX_WINDOW` (``window``: the first one's size). ``paging``: the next
    call goes on where this one stopped, so no entry is read past the limit."""
    out: list[dict[str, Any]] = []
    any_entry = False
    done = False
    while not done and len(out) < limit:
        batch = []
        for _ in range(min(window, limit - len(out)) if paging else window):
            entry = await anext(found, None)
            if entry is None:
                done = True
                break
            batch.append(entry)
        any_entry = any_entry or bool(batch)
        for rec in await asyncio.gather(*(task_json(st, e.task_id) for e in batch)):
            if rec is not None and (not statuses or rec.get("status") in statuses):
                out.append(rec)
        window = min(window * 2, MAX_WINDOW)
    return out[:limit], any_entry


async def find(
    st: Any,
    project: str | None,
    name: str | None,
    statuses: Sequence[str] | None,
    limit: int = 1,
) -> list[dict[str, Any]]:
    """The newest ``limit`` tasks: of that project and name (failing an exact name,
    a case-insensitive one, as ClearML does), of that name in any project, of that
    project, or of all."""
    page = max(limit, LOOKUP_PAGE)
    async with contextlib.aclosing(entries(st, listing(project, name), page)) as found:
        out, any_entry = await matching(st, found, statuses, limit, min(limit, MAX_WINDOW))
    if any_entry or project is None or name is None:
        return out
    where = listing(project, name, folded=True)
    async with contextlib.aclosing(entries(st, where, page)) as found:
        return (await matching(st, found, statuses, limit, min(limit, MAX_WINDOW)))[0]


async def migrate(st: Any, apply: bool, batch: int = 256) -> tuple[int, int]:
    """Move the previous layout's entries into the index: for each, write its new keys,
    then delete it (a crash in between leaves both, read once; a rerun finishes).
    Returns (entries found, entries moved); ``apply=False`` only counts."""
    found = moved = 0
    pending: list[tuple[str, tuple[str, str, float, str]]] = []

    async def flush() -> None:
        nonlocal moved
        keys = {k for _, e in pending for k in index_keys(*e)}
        await _each(st.put_bytes, [(k, b"") for k in sorted(keys)])
        await _each(st.delete, [(old,) for old, _ in pending])
        moved += len(pending)
        pending.clear()

    async for info in st.list(legacy_index_prefix()):
        parsed = parse_legacy_index_key(info.key)
        if parsed is None:
            continue
        found += 1
        if apply:
            pending.append((info.key, parsed))
            if len(pending) >= batch:
                await flush()
    if pending:
        await flush()
    return found, moved


async def _each(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> None:
    gate = asyncio.Semaphore(MAX_WINDOW)

    async def one(args: tuple[Any, ...]) -> None:
        async with gate:
            await fn(*args)

    await asyncio.gather(*(one(a) for a in calls))
