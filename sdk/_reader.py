"""Reading back: tasks and artifacts from storage, in any process, no daemon needed.

Storage backends live in ``artisync.daemon.storage`` and are async; this
module imports them only when something is read, and drives them from one
private event-loop thread (safe even when the caller runs its own loop).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from artisync.protocol import IntegrityError, NotFound, Spool
from artisync.protocol._layout import (
    artifact_prefix,
    decode_name,
    object_key,
    parse_index_key,
    project_prefix,
    task_key,
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


def storage(uri: str) -> Any:
    r = _reader()
    with _loop_lock:
        if uri not in r.storages:
            from artisync.daemon.config import load_config
            from artisync.daemon.storage import open_storage

            from ._session import Session

            options = load_config(Session.get().settings).options_for(uri)
            r.storages[uri] = open_storage(uri, options)
        return r.storages[uri]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return _reader().run(coro)


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "artisync" / "objects"


def locate(sha256: str, dest_uri: str, spool: Spool | None) -> Path:
    """A private local copy of object ``sha256``: from the spool if it is still
    there, else downloaded from ``dest_uri``; verified by its SHA-256 either way."""
    from artisync.protocol import copy_file_fast, hash_file

    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / sha256
    if path.exists():
        return path
    tmp = cache / f".{sha256}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        src = spool.blob_path(sha256) if spool is not None else None
        copied = False
        if src is not None:
            try:
                with open(tmp, "wb") as out:
                    copy_file_fast(src, out)
                copied = True
            except FileNotFoundError:
                pass
        if not copied:
            run(storage(dest_uri).get(object_key(sha256), tmp))
        digest, _ = hash_file(tmp)
        if digest != sha256:
            raise IntegrityError(f"object {sha256[:12]} from {dest_uri} does not match its hash")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- tasks in storage -------------------------------------------------------------------
async def _get_json(st: Any, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await st.get_bytes(key))
    return data


def task_record(uri: str, task_id: str) -> dict[str, Any] | None:
    try:
        return run(_get_json(storage(uri), task_key(task_id)))
    except NotFound:
        return None


def find_tasks(
    uri: str, project: str | None, name: str | None, statuses: list[str] | None, limit: int = 1
) -> list[dict[str, Any]]:
    """Newest first. Exact name match; failing that, a case-insensitive one (as ClearML)."""

    async def go() -> list[dict[str, Any]]:
        st = storage(uri)
        entries = []
        prefix = project_prefix(project, name) if project is not None else project_prefix()
        async for info in st.list(prefix):
            parsed = parse_index_key(info.key)
            if parsed:
                entries.append(parsed)
        if not entries and project is not None and name is not None:
            async for info in st.list(project_prefix(project)):
                parsed = parse_index_key(info.key)
                if parsed and parsed[1].casefold() == name.casefold():
                    entries.append(parsed)
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

    return run(go())


def artifact_records(uri: str, task_id: str) -> list[dict[str, Any]]:
    """The newest version of each artifact of a task."""

    async def go() -> list[dict[str, Any]]:
        st = storage(uri)
        newest: dict[str, str] = {}
        async for info in st.list(artifact_prefix(task_id)):
            rest = info.key[len(artifact_prefix(task_id)) :]
            enc_name, _, version = rest.partition("/")
            if version.endswith(".json") and version > newest.get(enc_name, ""):
                newest[enc_name] = version
        recs = []
        for enc_name, version in sorted(newest.items()):
            recs.append(await _get_json(st, f"{artifact_prefix(task_id)}{enc_name}/{version}"))
        for rec in recs:
            rec.setdefault("dest", rec.get("storage", uri))
        return recs

    return run(go())


def list_entries(uri: str, project: str | None, task: str | None) -> Iterator[str]:
    """Lines for ``artisync ls``."""
    if project is None:
        seen: set[str] = set()
        for rec in _index(uri, project_prefix()):
            if rec[0] not in seen:
                seen.add(rec[0])
                yield rec[0]
        return
    if task is None:
        for _project, n, started, task_id in _index(uri, project_prefix(project)):
            yield f"{n}\t{task_id}\t{_iso(started)}"
        return
    found = find_tasks(uri, project, task, None)
    if not found:
        raise NotFound(f"no task {task!r} in project {project!r} at {uri}")
    newest = found[0]
    yield f"# task {newest['task_id']} ({newest.get('status')}) started {_iso(newest['started'])}"
    for art in artifact_records(uri, newest["task_id"]):
        yield f"{art['name']}\t{art['type']}/{art['format']}\t{art['size']}\t{art['sha256'][:12]}"


def _index(uri: str, prefix: str) -> list[tuple[str, str, float, str]]:
    async def go() -> list[tuple[str, str, float, str]]:
        out = []
        async for info in storage(uri).list(prefix):
            parsed = parse_index_key(info.key)
            if parsed:
                out.append(parsed)
        return out

    return run(go())


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def fetch_to(uri: str, project: str, task: str, artifact: str, out: Path | None) -> Path:
    """``artisync get``: the newest task of that name, that artifact's local copy."""
    from ._task import Task

    t = Task.get_task(project_name=project, task_name=task, output_uri=uri)
    if artifact not in t.artifacts:
        raise NotFound(
            f"task {task!r} has no artifact {artifact!r} "
            f"(it has: {', '.join(sorted(t.artifacts)) or 'none'})"
        )
    local = Path(t.artifacts[artifact].get_local_copy(raise_on_error=True) or "")
    if out is None:
        return local
    if local.is_dir():
        shutil.copytree(local, out, dirs_exist_ok=True)
    else:
        shutil.copyfile(local, out)
    return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "artifact_records",
    "decode_name",
    "fetch_to",
    "find_tasks",
    "list_entries",
    "locate",
    "task_record",
]
