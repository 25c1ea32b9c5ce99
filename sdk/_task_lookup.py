"""Finding tasks: ``Task.get_task`` and ``Task.get_tasks`` (tasks newest first, read
from storage a page at a time).

A :class:`TaskList` is a read-only sequence: iterating it reads the index one page
(default 50 tasks: one LIST and the pages' task.json, 32 at a time) before each
stretch it yields; indexing reads as far as the index; ``len()`` reads to the end.
Tasks this process runs, and those the local daemon holds but has not uploaded
yet, come first in their place by start time (each task once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast, overload

from . import _lookup
from ._checks import resolve_destination
from ._client import DaemonError, DaemonUnavailable
from ._lookup import Query
from ._session import Session

PAGE_SIZE = 50


class Lookups:
    """Task's class methods that find tasks made elsewhere (a mixin: Task subclasses it)."""

    _local: ClassVar[dict[str, Any]]
    _class_lock: ClassVar[threading.RLock]

    if TYPE_CHECKING:

        def __init__(self, record: dict[str, Any], artifacts: Any = None) -> None: ...

    @classmethod
    def get_task(
        cls,
        task_id: str | None = None,
        project_name: str | None = None,
        task_name: str | None = None,
        tags: Any = None,
        allow_archived: bool = True,
        task_filter: Mapping[str, Any] | None = None,
        output_uri: str | None = None,
    ) -> Self:
        """The task with this id, or the newest with this project and name.

        Looks in this process, then the local daemon (acknowledged but not yet
        uploaded), then storage (``output_uri``, else the configured default).
        """
        if task_id is None and project_name is None and task_name is None:
            raise ValueError("get_task needs task_id, or project_name and/or task_name")
        q = _lookup.query(task_id, project_name, task_name, task_filter)
        local = _lookup.in_process(cls._records(), q)
        if local is not None:
            return cast(Self, cls._local[local["task_id"]])
        found = _lookup.elsewhere(Session.get(), q, output_uri)
        if found is None:
            raise ValueError(_lookup.not_found(q))
        return cls(found.record, found.artifacts)

    @classmethod
    def get_tasks(
        cls,
        task_ids: Sequence[str] | None = None,
        project_name: str | None = None,
        task_name: str | None = None,
        tags: Any = None,
        allow_archived: bool = True,
        task_filter: Mapping[str, Any] | None = None,
        output_uri: str | None = None,
    ) -> Sequence[Self]:
        """Tasks newest first: of a project and/or name (exact), or all; read a page
        at a time as the result is used (see :class:`TaskList`)."""
        if task_ids is not None:
            return by_ids(lambda i: cls.get_task(task_id=i, output_uri=output_uri), task_ids)
        q = _lookup.query(None, project_name, task_name, task_filter)
        local = [r for r in cls._records() if _lookup.matches(r, q)]
        page = int((task_filter or {}).get("page_size") or PAGE_SIZE)
        return TaskList(cls._listed, q, local, output_uri, page)

    @classmethod
    def _listed(cls, record: dict[str, Any]) -> Self:
        if record["task_id"] in cls._local:
            return cast(Self, cls._local[record["task_id"]])
        q = _lookup.Query(record["task_id"], None, None, None)
        uri = record.get("dest")
        return cls(record, lambda: _lookup.artifacts_elsewhere(Session.get(), q, uri))

    @classmethod
    def _records(cls) -> list[dict[str, Any]]:
        with cls._class_lock:
            return [t._record for t in cls._local.values()]


class TaskList(Sequence[Any]):
    """Tasks newest first, materialised as they are read (see the module docstring)."""

    def __init__(
        self,
        make: Callable[[dict[str, Any]], Any],
        q: Query,
        local: list[dict[str, Any]],
        output_uri: str | None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._make, self._q, self._output_uri = make, q, output_uri
        self._local = local
        self._page_size = page_size
        self._seen: list[Any] = []
        self._source: Iterator[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _records(self) -> Iterator[dict[str, Any]]:
        session = Session.get()
        nearby = {t["task_id"]: t for t in self._local}
        for t in _in_daemon(session, self._q):
            nearby.setdefault(t["task_id"], t)
        ahead = sorted(nearby.values(), key=lambda t: t.get("started", 0), reverse=True)
        given = set(nearby)
        for page in self._stored(session):
            for rec in page:
                while ahead and ahead[0].get("started", 0) >= rec.get("started", 0):
                    yield ahead.pop(0)
                if rec["task_id"] not in given:
                    yield rec
        yield from ahead

    def _stored(self, session: Session) -> Iterator[list[dict[str, Any]]]:
        from ._reader import Reader

        uri = resolve_destination(self._output_uri or session.settings.output_uri)
        q = self._q
        reader = Reader(session.settings)
        pages = reader.task_pages(uri, q.project, q.name, q.statuses, self._page_size)
        for page in pages:
            for rec in page:
                rec.setdefault("dest", rec.get("storage", uri))
            yield page

    def _fill(self, upto: int | None) -> None:
        """Read until ``upto`` tasks are known (None: all of them)."""
        with self._lock:
            if self._source is None:
                self._source = self._records()
            while upto is None or len(self._seen) < upto:
                rec = next(self._source, None)
                if rec is None:
                    return
                self._seen.append(self._make(rec))

    def __iter__(self) -> Iterator[Any]:
        i = 0
        while True:
            self._fill(i + 1)
            if i >= len(self._seen):
                return
            yield self._seen[i]
            i += 1

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop = index.start or 0, index.stop
            forward = stop is not None and stop >= 0 and start >= 0
            self._fill(stop if forward else None)  # tasks[:10] reads only as far as it needs
        else:
            self._fill(index + 1 if index >= 0 else None)
        return self._seen[index]

    def __len__(self) -> int:
        self._fill(None)
        return len(self._seen)

    def __bool__(self) -> bool:
        self._fill(1)
        return bool(self._seen)

    def __repr__(self) -> str:
        return f"<TaskList: {len(self._seen)} read so far>"


def _in_daemon(session: Session, q: Query) -> list[dict[str, Any]]:
    """The matching tasks the local daemon holds (up to 200, newest first)."""
    try:
        reply = session.request(
            {
                "op": "query_task",
                "task_id": None,
                "project": q.project,
                "name": q.name,
                "statuses": q.statuses,
                "after": 0,  # its artifacts in pages: only the tasks are read here
            },
            timeout=5,
        )
    except (DaemonUnavailable, DaemonError):
        return []
    tasks: list[dict[str, Any]] = reply.get("tasks") or []
    return tasks


def by_ids(get: Callable[[str], Any], task_ids: Sequence[str]) -> list[Any]:
    """``get_tasks(task_ids=[...])``: each by id (one request each), in the order given."""
    return [get(task_id) for task_id in task_ids]
