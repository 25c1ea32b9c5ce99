"""Task: ClearML's artifact API, backed by the spool and the daemon.

Nothing here waits on the network, or on encoding: ``upload_artifact`` writes a raw
snapshot of the object (or a kernel copy of the file) and its record into the spool
and returns; the daemon, another process, encodes, hashes and uploads it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, cast

from artisync.protocol import TaskRecord, check_name, new_task_record, task_event

from . import _exit, _job, _logger, _lookup
from ._artifact import Artifact
from ._checks import checked_metadata, checked_name, delete_spec, is_dataframe, resolve_destination
from ._clearml import ClearMLSurface, missing
from ._session import Session
from ._task_lookup import Lookups
from ._tracking import Tracked, Tracker, content_hash
from ._versions import origin, store_version

log = logging.getLogger("artisync")


class _TaskType(type):
    if not TYPE_CHECKING:  # mypy goes on checking the names used on the class

        def __getattr__(cls, name: str) -> Any:
            """``Task.enqueue`` raises NotImplementedError as ``task.enqueue`` does."""
            raise missing(f"type object {cls.__name__!r}", name)


class Task(ClearMLSurface, Lookups, metaclass=_TaskType):
    """A run that reports artifacts. Create with :meth:`init`; find with :meth:`get_task`."""

    _current: ClassVar[Task | None] = None
    _local: ClassVar[dict[str, Task]] = {}  # tasks of this process: read-your-writes
    _tracker: ClassVar[Tracker | None] = None
    _class_lock: ClassVar[threading.RLock] = threading.RLock()
    _hook_installed: ClassVar[bool] = False

    def __init__(
        self,
        record: TaskRecord | dict[str, Any],
        artifacts: dict[str, Artifact] | Callable[[], dict[str, Artifact]] | None = None,
        *,
        owned: bool = False,
    ) -> None:
        self._record: dict[str, Any] = dict(record)
        # a task listed by get_tasks reads its artifacts when they are first asked for
        self._load = artifacts if callable(artifacts) else None
        self._artifacts: dict[str, Artifact] = {} if callable(artifacts) else artifacts or {}
        self._closed = not owned  # only a task made by Task.init here is open
        self._leader = owned  # this process started it: it completes it (see _job)
        self._pid = os.getpid()  # a forked child reports into it, but never closes it
        self._lock = threading.RLock()
        self._connected: list[tuple[str, Any]] = []  # (section, object) of connect()

    # -- creation and lookup ---------------------------------------------------------------
    @classmethod
    def init(
        cls,
        project_name: str | None = None,
        task_name: str | None = None,
        task_type: Any = None,
        tags: list[str] | None = None,
        reuse_last_task_id: bool | str = True,
        continue_last_task: bool | str | int = False,
        output_uri: str | bool | None = None,
        auto_connect_arg_parser: Any = True,
        auto_connect_frameworks: Any = True,
        auto_resource_monitoring: Any = True,
        auto_connect_streams: Any = True,
        deferred_init: bool = False,
        **kwargs: Any,
    ) -> Task:
        """Start a task (or join this job's: see ``_job``) and make it current. ClearML's
        other parameters are accepted and ignored (artisync only handles artifacts)."""
        with cls._class_lock:
            if cls._current is not None and not cls._current._closed:
                return cls._current
            session = Session.get()
            project = check_name(project_name or "default", "project_name")
            name = check_name(
                task_name or os.path.basename(sys.argv[0] or "") or "task", "task_name"
            )
            chosen = output_uri if isinstance(output_uri, str) and output_uri else None
            join = _job.joining(project, name)  # a parent's task, or the job's (see _job)
            record: dict[str, Any] = dict(
                (join and join.parent)
                or new_task_record(
                    project=project,
                    name=name,
                    dest=resolve_destination(chosen or session.default_output_uri()),
                    tags=list(tags or []),
                    origin=origin(),
                    task_id=join.task_id if join else None,
                )
            )
            leader = join is None or (join.parent is None and join.leader)
            if leader:  # a shared daemon may refuse it (its destination)
                session.store(dict(record))
            task = cls(record, owned=True)
            task._leader = leader
            _job.export(record)
            cls._local[task.id] = task
            cls._current = task
            cls._install_exit_hook()
        # the format registry is loaded here, once, so that the first upload_artifact
        # costs what the later ones do (~7 ms of imports otherwise land in the loop)
        import artisync.protocol.formats  # noqa: F401

        return task

    @classmethod
    def current_task(cls) -> Task | None:
        return cls._current

    # -- properties ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return str(self._record["task_id"])

    @property
    def name(self) -> str:
        return str(self._record["name"])

    @property
    def project(self) -> str:
        return str(self._record["project"])

    def get_project_name(self) -> str:
        return self.project

    @property
    def status(self) -> str:
        return str(self._record["status"])

    def get_status(self) -> str:
        return self.status

    @property
    def output_uri(self) -> str:
        return str(self._record["dest"])

    @property
    def artifacts(self) -> Mapping[str, Artifact]:
        """Name -> :class:`Artifact` (read-only), newest version of each."""
        with self._lock:
            if self._load is not None:
                self._artifacts, self._load = {**self._load(), **self._artifacts}, None
            return MappingProxyType(dict(self._artifacts))

    def get_artifact_versions(self, name: str, rank: int | None = None) -> list[Artifact]:
        """Every version of artifact ``name``, oldest first (``rank``: that rank's)."""
        return _lookup.versions(Session.get(), self._record, name, rank)

    def __repr__(self) -> str:
        return f"<Task {self.project}/{self.name} {self.id} {self.status}>"

    # -- reporting -------------------------------------------------------------------------------
    def upload_artifact(
        self,
        name: str,
        artifact_object: Any,
        metadata: Mapping[str, Any] | None = None,
        delete_after_upload: bool = False,
        auto_pickle: bool = True,
        preview: Any = None,
        wait_on_upload: bool = False,
        extension_name: str | None = None,
        serialization_function: Callable[[Any], bytes] | None = None,
        retries: int = 0,
        sort_keys: bool = True,
    ) -> bool:
        """Snapshot ``artifact_object`` into the spool now; it is uploaded in the background.

        Returns True once the snapshot and its record are in the spool: later changes to
        the object or file do not affect what is stored, and the process may be killed.
        With ``wait_on_upload=True``, returns once the artifact is committed in storage.

        :raises SerializationError: the object cannot be stored as asked.
        :raises SpoolFull: no room in the spool (nothing was stored).
        """
        from artisync.protocol.formats import snapshot

        from ._lease import leasing

        name = checked_name(name)
        meta = checked_metadata(metadata)
        session = Session.get()
        session.reserve_space(artifact_object, f"artifact {name!r}")  # may raise SpoolFull
        delete_after = delete_spec(artifact_object) if delete_after_upload else None

        def capture(spool: Any, record_id: str, opener: Any) -> Any:
            return snapshot(
                artifact_object,
                spool,
                record_id,
                opener=opener,
                lease=leasing(session, record_id),
                auto_pickle=auto_pickle,
                extension_name=extension_name,
                serialization_function=serialization_function,
                preview=preview,
                room=lambda n: session.quota.check_disk(spool, n, f"artifact {name!r}"),
            )

        self._store(session, name, capture, meta, delete_after)
        if wait_on_upload:
            self.flush(wait_for_uploads=True)
        return True

    def _store(
        self,
        session: Session,
        name: str,
        capture: Callable[[Any, str, Any], Any],
        meta: dict[str, Any] | None,
        delete_after: dict[str, Any] | None,
    ) -> Artifact:
        art = store_version(session, self.id, self.output_uri, name, capture, meta, delete_after)
        with self._lock:
            self._artifacts[name] = art
        return art

    def register_artifact(
        self,
        name: str,
        artifact: Any,
        metadata: Mapping[str, Any] | None = None,
        uniqueness_columns: Any = True,
    ) -> None:
        """Track a DataFrame: a new version is stored whenever its content changes
        (checked in the background), and a last one at close or exit."""
        if not is_dataframe(artifact):
            raise TypeError(
                "register_artifact() tracks pandas DataFrames; "
                f"got {type(artifact).__name__}. Use upload_artifact() instead."
            )
        name = checked_name(name)
        meta = checked_metadata(metadata)
        if uniqueness_columns is not True and uniqueness_columns:
            missing = [c for c in uniqueness_columns if c not in artifact.columns]
            if missing:
                raise ValueError(f"uniqueness_columns not in the DataFrame: {missing}")
        digest = content_hash(artifact, uniqueness_columns)
        item = Tracked(self, name, artifact, meta, uniqueness_columns, digest)
        self._store_tracked(item)
        self._tracker_instance().add(item)

    def _store_tracked(self, item: Tracked) -> None:
        from artisync.protocol.formats import snapshot

        session = Session.get()
        session.reserve_space(item.obj, f"artifact {item.name!r}")  # may raise SpoolFull
        obj = item.obj

        def capture(spool: Any, record_id: str, opener: Any) -> Any:
            return snapshot(obj, spool, record_id, opener=opener)

        self._store(session, item.name, capture, item.metadata, None)

    def unregister_artifact(self, name: str) -> None:
        self._tracker_instance().remove(self.id, name)

    def get_registered_artifacts(self) -> dict[str, Any]:
        """Name -> the live registered object (not a copy)."""
        return {t.name: t.obj for t in self._tracker_instance().of_task(self.id)}

    @classmethod
    def _tracker_instance(cls) -> Tracker:
        with cls._class_lock:
            if cls._tracker is None:
                cls._tracker = Tracker()
            return cls._tracker

    def _final_tracked(self) -> None:
        tracker = self._tracker_instance()
        for item in tracker.of_task(self.id):
            tracker.check(item)
            tracker.remove(self.id, item.name)

    # -- flush, close, status ----------------------------------------------------------------------
    def flush(self, wait_for_uploads: bool = False, timeout: float | None = None) -> bool:
        """Every artifact so far is in the spool already; this asks the daemon to journal
        them now (durable even against a power loss). With ``wait_for_uploads``, waits
        until they are committed in storage.

        :raises UploadTimeout: not committed within ``timeout`` (default: the
            ``wait_timeout`` setting, 300 s), e.g. because no daemon is running.
        :raises UploadFailed: a record failed permanently.
        """
        _logger.Logger.flush_task(self.id)  # what a Logger holds goes into the spool
        if wait_for_uploads:
            Session.get().wait_committed(self.id, timeout)
        else:
            Session.get().ingest(timeout)
        return True

    def mark_completed(self, **kwargs: Any) -> None:
        self._set_status("completed", "closed")

    def mark_failed(
        self, ignore_errors: bool = True, status_reason: str | None = None, **kwargs: Any
    ) -> None:
        self._set_status("failed", "closed")

    def _set_status(self, status: str, event: str, **fields: Any) -> None:
        session = Session.get()
        with self._lock:
            base = cast(TaskRecord, {**self._record, **fields})
            self._record = dict(task_event(base, status=status, event=event, origin=origin()))
            rec = dict(self._record)
        session.store(rec)

    def _update(self, **fields: Any) -> None:
        """Parameters, tags, comment...: the task's next event, its status unchanged."""
        self._set_status(self.status, "updated", **fields)

    def close(self, timeout: float | None = None) -> None:
        """Store the final state of tracked artifacts, mark the task completed, and
        return once all of it is in the spool (never waits on the network; ``timeout``
        bounds the wait for the daemon to journal it, as on SIGTERM)."""
        if os.getpid() != self._pid:  # a forked child: its reports are in the spool already
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._final_tracked()
        _logger.Logger.flush_task(self.id)
        if self._connected:
            self._reconnect()
        if self.status == "in_progress" and self._leader:
            self._set_status("completed", "closed")
        Session.get().ingest(min(timeout, 2.0) if timeout is not None else 2.0)
        with Task._class_lock:
            _job.forget(self.id)  # processes started from now on make tasks of their own
            if Task._current is self:
                Task._current = None

    def __enter__(self) -> Task:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if ev is not None and self.status == "in_progress":
            self.mark_failed()
        self.close()

    # -- interpreter exit ----------------------------------------------------------------------------
    @classmethod
    def _install_exit_hook(cls) -> None:
        if not cls._hook_installed:
            cls._hook_installed = True
            _exit.install(cls._close_all)

    @classmethod
    def _close_all(cls, status: str | None, timeout: float | None = None) -> None:
        """At exit (``failed`` if an exception ends the program), or ``aborted`` on
        SIGTERM/SIGHUP within ``exit_timeout``: close this process's open tasks."""
        for task in list(cls._local.values()):
            if task._closed or task._pid != os.getpid():
                continue
            if status is not None and task.status == "in_progress":
                if task._leader or status == "failed":  # a failing rank fails the task
                    task._set_status(status, "closed")
            try:
                task.close(timeout)
            except Exception as exc:  # at exit, report and go on with the others
                log.error("artisync: closing task %s at exit failed: %s", task.id, exc)

    @classmethod
    def _after_fork_in_child(cls) -> None:
        """Locks may have been held at the fork; registered artifacts stay tracked by
        the parent (the child has no tracker thread)."""
        cls._class_lock = threading.RLock()
        cls._tracker = None
        for task in cls._local.values():
            task._lock = threading.RLock()


os.register_at_fork(after_in_child=Task._after_fork_in_child)


_logger.current_task = Task.current_task
