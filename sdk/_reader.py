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
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from artisync.protocol import (
    IntegrityError,
    NotFound,
    Settings,
    Spool,
    artifact_prefix,
    batch_prefix,
    copy_file_fast,
    encode_name,
    hash_file,
    object_key,
    parse_index_key,
    project_prefix,
    task_key,
    version_stamp,
)

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


IndexEntry = tuple[str, str, float, str]  # (project, task name, started, task_id)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return _reader().run(coro)


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "artisync" / "objects"


async def _get_json(st: Any, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await st.get_bytes(key))
    return data


class Reader:
    """Tasks, artifact versions and objects of one or more destinations."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

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

        return _cached(sha256, fill)

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
        st = self.storage(uri)

        async def go() -> list[dict[str, Any]]:
            prefix = project_prefix(project, name) if project is not None else project_prefix()
            entries = await _list_index(st, prefix)
            if not entries and project is not None and name is not None:
                folded = name.casefold()
                entries = [
                    e
                    for e in await _list_index(st, project_prefix(project))
                    if e[1].casefold() == folded
                ]
            if name is not None and project is None:
                entries = [e for e in entries if e[1] == name]
            entries.sort(key=lambda e: e[2], reverse=True)
            out = []
            for _, _, _, task_id in entries:
                try:
                    rec = await _get_json(st, task_key(task_id))
                except NotFound:
                    continue
                if statuses and rec.get("status") not in statuses:
                    continue
                out.append(rec)
                if len(out) >= limit:
                    break
            return out

        return _run(go())

    def artifact_records(self, uri: str, task_id: str) -> list[dict[str, Any]]:
        """The newest version of each artifact of a task: of those published alone
        (a key each: only the newest is read) and those published in batches."""
        st = self.storage(uri)
        prefix = artifact_prefix(task_id)

        async def go() -> list[dict[str, Any]]:
            # encoded name -> (version stamp, its key or, from a batch, the record)
            newest: dict[str, tuple[str, str | dict[str, Any]]] = {}
            async for info in st.list(prefix):
                enc_name, _, version = info.key[len(prefix) :].partition("/")
                stamp = version.removesuffix(".json")
                if version.endswith(".json") and stamp > newest.get(enc_name, ("",))[0]:
                    newest[enc_name] = (stamp, info.key)
            async for info in st.list(batch_prefix(task_id)):
                if not info.key.endswith(".json"):
                    continue
                for rec in (await _get_json(st, info.key)).get("records", []):
                    enc_name = encode_name(rec["name"])
                    stamp = version_stamp(rec["created"], rec["record_id"])
                    if stamp > newest.get(enc_name, ("",))[0]:
                        newest[enc_name] = (stamp, rec)
            recs = []
            for _, (_, found) in sorted(newest.items()):
                recs.append(await _get_json(st, found) if isinstance(found, str) else found)
            for rec in recs:
                rec.setdefault("dest", rec.get("storage", uri))
            return recs

        return _run(go())

    def artifact_versions(self, uri: str, task_id: str, name: str) -> list[dict[str, Any]]:
        """Every published version of one artifact of a task, oldest first."""
        st = self.storage(uri)

        async def go() -> list[dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            async for info in st.list(artifact_prefix(task_id, name)):
                if info.key.endswith(".json"):
                    rec = await _get_json(st, info.key)
                    found[rec["record_id"]] = rec
            async for info in st.list(batch_prefix(task_id)):
                if info.key.endswith(".json"):
                    for rec in (await _get_json(st, info.key)).get("records", []):
                        if rec.get("name") == name:
                            found[rec["record_id"]] = rec
            for rec in found.values():
                rec.setdefault("dest", rec.get("storage", uri))
            return sorted(found.values(), key=lambda r: (r["created"], r["record_id"]))

        return _run(go())

    def index(self, uri: str, prefix: str) -> list[IndexEntry]:
        """Every index entry under ``prefix`` (see ``project_prefix``), in listing order."""
        return _run(_list_index(self.storage(uri), prefix))


async def _list_index(st: Any, prefix: str) -> list[IndexEntry]:
    out = []
    async for info in st.list(prefix):
        parsed = parse_index_key(info.key)
        if parsed:
            out.append(parsed)
    return out


def cache_inline(sha256: str, data: bytes) -> Path:
    """A payload that travelled inside its record, checked and kept in the cache."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"inline payload {sha256[:12]} does not match its hash")
    return _cached(sha256, lambda tmp: tmp.write_bytes(data))


def _cached(sha256: str, fill: Callable[[Path], object]) -> Path:
    """The cache's verified copy of ``sha256``; made by ``fill(tmp)`` (which writes
    and checks it) when missing, then renamed into place: never seen half-written."""
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / sha256
    if path.exists():
        return path
    tmp = cache / f".{sha256}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        fill(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _copy_from_spool(spool: Spool, sha256: str, tmp: Path) -> bool:
    try:
        with open(tmp, "wb") as out:
            copy_file_fast(spool.blob_path(sha256), out)
    except FileNotFoundError:  # collected since: read it from storage
        return False
    return True
