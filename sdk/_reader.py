"""Reading back: tasks and artifacts from storage, in any process, no daemon needed.

Storage backends live in ``artisync.daemon.storage`` and are async; this
module imports them only when something is read, and drives them from one
private event-loop thread (safe even when the caller runs its own loop).
A :class:`Reader` is built from the settings it is given, so it resolves a
destination's options (``[storage]`` tables) exactly as the daemon does.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from artisync.protocol import (
    PROJECTS_PREFIX,
    IntegrityError,
    NotFound,
    Settings,
    Spool,
    artifact_prefix,
    batch_prefix,
    copy_file_fast,
    encode_name,
    hash_file,
    legacy_index_prefix,
    object_key,
    parse_legacy_index_key,
    project_of,
    task_key,
    version_stamp,
)

from . import _cache, _task_index
from ._cache import cached

T = TypeVar("T")


class _Loop:
    """A background event loop that owns the storage clients used for reading."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="artisync-reader", daemon=True
        )
        self.thread.start()
        self.storages: dict[str, Any] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self, timeout: float = 5.0) -> None:
        """Close the storage clients (their connection pools) and stop the loop."""

        async def close_all() -> None:
            for st in self.storages.values():
                with contextlib.suppress(Exception):
                    await st.aclose()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


_loop: _Loop | None = None
_loop_lock = threading.Lock()


def _reader() -> _Loop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = _Loop()
            atexit.register(_close)
        return _loop


def _close() -> None:
    """At exit: without it, every client's pool is reported as unclosed on stderr."""
    global _loop
    with _loop_lock:
        r, _loop = _loop, None
    if r is not None:
        atexit.unregister(_close)
        r.close()


def _forget_after_fork() -> None:
    # a forked child has the loop object but not its thread: start afresh when needed
    global _loop, _loop_lock
    _loop, _loop_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return _reader().run(coro)


async def _get_json(st: Any, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await st.get_bytes(key))
    return data


class Reader:
    """Tasks, artifact versions and objects of one or more destinations."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        _cache.limit = settings.cache_limit

    def storage(self, uri: str) -> Any:
        """The (cached) backend for ``uri``, with the options the daemon would use."""
        r = _reader()
        with _loop_lock:
            if uri not in r.storages:
                from artisync.daemon.storage import StorageOptions, open_storage

                table = self.settings.raw.get("storage", {})
                options = StorageOptions.from_table(table).options_for(uri)
                r.storages[uri] = open_storage(uri, options)
            return r.storages[uri]

    def locate(self, sha256: str, dest_uri: str, spool: Spool | None) -> Path:
        """A private local copy of object ``sha256``: from the spool if it is still
        there, else downloaded from ``dest_uri``; verified by its SHA-256 either way."""

        def fill(tmp: Path) -> None:
            # a spool copy that does not match (a small blob written without fsync,
            # then a power loss) is not an answer: storage has the object
            spooled = spool is not None and _copy_from_spool(spool, sha256, tmp)
            if not spooled or hash_file(tmp)[0] != sha256:
                _run(self.storage(dest_uri).get(object_key(sha256), tmp))
                if hash_file(tmp)[0] != sha256:
                    raise IntegrityError(
                        f"object {sha256[:12]} from {dest_uri} does not match its hash"
                    )

        return cached(sha256, fill)

    def task_record(self, uri: str, task_id: str) -> dict[str, Any] | None:
        try:
            return _run(_get_json(self.storage(uri), task_key(task_id)))
        except NotFound:
            return None

    def find_tasks(
        self,
        uri: str,
        project: str | None,
        name: str | None,
        statuses: list[str] | None,
        limit: int = 1,
    ) -> list[dict[str, Any]]:
        """Newest first. Exact name match; failing that, a case-insensitive one (as ClearML)."""
        return _run(_task_index.find(self.storage(uri), project, name, statuses, limit))

    def task_pages(
        self,
        uri: str,
        project: str | None,
        name: str | None,
        statuses: list[str] | None,
        page_size: int = 50,
    ) -> Iterator[list[dict[str, Any]]]:
        """Task records newest first, a page at a time, each read only when asked for."""
        st = self.storage(uri)
        found = _task_index.entries(st, _task_index.listing(project, name), page_size)
        window = min(page_size, _task_index.MAX_WINDOW)
        try:
            while True:
                page, more = _run(
                    _task_index.matching(st, found, statuses, page_size, window, paging=True)
                )
                if page:
                    yield page
                if not more:
                    return
        finally:  # maybe at exit, from the garbage collector: never wait for the loop here
            r = _loop
            if r is not None and r.loop.is_running():
                asyncio.run_coroutine_threadsafe(found.aclose(), r.loop)

    def task_page(
        self, uri: str, project: str | None, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Tasks ``offset`` .. ``offset + limit`` of a project (of all: None), newest
        first, and whether more follow. The entries skipped cost LIST pages only
        (1,000 keys each); task.json is read for the page's own tasks alone."""
        st = self.storage(uri)
        where = _task_index.listing(project, None)

        async def go() -> tuple[list[dict[str, Any]], bool]:
            page = min(offset + limit + 1, 1000)
            async with contextlib.aclosing(_task_index.entries(st, where, page)) as found:
                kept: list[_task_index.Entry] = []
                position = 0
                async for entry in found:
                    if position >= offset:
                        kept.append(entry)
                        if len(kept) > limit:
                            break
                    position += 1
            recs = await asyncio.gather(
                *(_task_index.task_json(st, e.task_id) for e in kept[:limit])
            )
            return [r for r in recs if r is not None], len(kept) > limit

        return _run(go())

    def migrate_index(self, uri: str, apply: bool) -> tuple[int, int]:
        """(entries of the previous index layout found, moved); see ``_task_index.migrate``."""
        return _run(_task_index.migrate(self.storage(uri), apply))

    def projects(self, uri: str) -> list[str]:
        """Every project's name, sorted (those of the previous layout's entries too)."""
        st = self.storage(uri)

        async def go() -> set[str]:
            names = {p async for info in st.list(PROJECTS_PREFIX) if (p := project_of(info.key))}
            async for info in st.list(legacy_index_prefix()):
                parsed = parse_legacy_index_key(info.key)
                if parsed is not None:
                    names.add(parsed[0])
            return names

        return sorted(_run(go()))

    def artifact_records(self, uri: str, task_id: str) -> list[dict[str, Any]]:
        """The newest version of each artifact of a task: of those published alone
        (a key each: only the newest is read) and those published in batches."""
        st = self.storage(uri)
        prefix = artifact_prefix(task_id)

        async def go() -> list[dict[str, Any]]:
            # both listings at once; then the newest version of each name, read 32 at a time
            listed, batches = await asyncio.gather(_keys(st, prefix), _batches(st, task_id))
            # encoded name -> (version stamp, its key or, from a batch, the record)
            newest: dict[str, tuple[str, str | dict[str, Any]]] = {}
            for key in listed:
                enc_name, _, version = key[len(prefix) :].partition("/")
                stamp = version.removesuffix(".json")
                if version.endswith(".json") and stamp > newest.get(enc_name, ("",))[0]:
                    newest[enc_name] = (stamp, key)
            for rec in batches:
                enc_name = encode_name(rec["name"])
                stamp = version_stamp(rec["created"], rec["record_id"])
                if stamp > newest.get(enc_name, ("",))[0]:
                    newest[enc_name] = (stamp, rec)
            chosen = [found for _, (_, found) in sorted(newest.items())]
            read = iter(await _get_all(st, [f for f in chosen if isinstance(f, str)]))
            recs = [next(read) if isinstance(f, str) else f for f in chosen]
            for rec in recs:
                rec.setdefault("dest", rec.get("storage", uri))
            return recs

        return _run(go())

    def artifact_versions(self, uri: str, task_id: str, name: str) -> list[dict[str, Any]]:
        """Every published version of one artifact of a task, oldest first."""
        st = self.storage(uri)

        async def go() -> list[dict[str, Any]]:
            keys, batches = await asyncio.gather(
                _keys(st, artifact_prefix(task_id, name)), _batches(st, task_id)
            )
            found = {
                rec["record_id"]: rec
                for rec in await _get_all(st, [k for k in keys if k.endswith(".json")])
            }
            found.update((r["record_id"], r) for r in batches if r.get("name") == name)
            for rec in found.values():
                rec.setdefault("dest", rec.get("storage", uri))
            return sorted(found.values(), key=lambda r: (r["created"], r["record_id"]))

        return _run(go())


READ_CONCURRENCY = 32  # small GETs in flight at once, per read


async def _keys(st: Any, prefix: str) -> list[str]:
    return [info.key async for info in st.list(prefix)]


async def _get_all(st: Any, keys: list[str]) -> list[dict[str, Any]]:
    """The JSON objects at ``keys``, in order, :data:`READ_CONCURRENCY` at a time."""
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(key: str) -> dict[str, Any]:
        async with gate:
            return await _get_json(st, key)

    return list(await asyncio.gather(*(one(k) for k in keys)))


async def _batches(st: Any, task_id: str) -> list[dict[str, Any]]:
    """Every version record in the task's batches."""
    keys = [k for k in await _keys(st, batch_prefix(task_id)) if k.endswith(".json")]
    return [rec for batch in await _get_all(st, keys) for rec in batch.get("records", [])]


def cache_inline(sha256: str, data: bytes) -> Path:
    """A payload that travelled inside its record, checked and kept in the cache."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"inline payload {sha256[:12]} does not match its hash")
    return cached(sha256, lambda tmp: tmp.write_bytes(data))


def _copy_from_spool(spool: Spool, sha256: str, tmp: Path) -> bool:
    try:
        with open(tmp, "wb") as out:
            copy_file_fast(spool.blob_path(sha256), out)
    except FileNotFoundError:  # collected since: read it from storage
        return False
    return True
