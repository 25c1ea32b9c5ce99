"""The per-process session: settings, the daemon connection, the background writer.

Serialization, hashing and the socket round trip all happen on one writer
thread, in submission order, so the training loop only pays for the
in-memory snapshot. A record the daemon did not acknowledge goes to the
spool's outbox: acknowledged or on disk, never dropped.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from artisync.protocol import Settings, Spool, load_settings

from ._client import DaemonClient, DaemonError, DaemonUnavailable, autostart_daemon
from ._errors import UploadFailed, UploadTimeout
from ._quota import Quota, SpoolFull, estimate_size

log = logging.getLogger("artisync")


_shutdown_hooks: list[Callable[[], None]] = []


def on_shutdown(hook: Callable[[], None]) -> None:
    """Run ``hook`` when the session shuts down (interpreter exit), before the last
    queued writes are drained; e.g. tasks register their final close here."""
    if hook not in _shutdown_hooks:
        _shutdown_hooks.append(hook)


class Job:
    """One unit of background work; ``done`` is set when it reached the spool."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def forget_in_child(self) -> None:
        """In a forked child: this job is the parent's; waiting on it must not hang."""
        self.error = RuntimeError("written by the parent process, not by this forked child")
        self.done = threading.Event()
        self.done.set()

    def wait(self, timeout: float | None = None) -> Any:
        if not self.done.wait(timeout):
            raise TimeoutError("artifact snapshot not yet written to the spool")
        if self.error is not None:
            raise self.error
        return self.result


class Session:
    _instance: Session | None = None
    _instance_lock = threading.RLock()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._spool: Spool | None = None
        self._last_autostart = 0.0
        self._fresh_state()

    def _fresh_state(self) -> None:
        """Connection, queue, writer thread and locks: what a forked child cannot share."""
        self.client = DaemonClient(self.settings)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running: Job | None = None  # the job the writer thread is on
        self._lock = threading.Lock()
        self._quota: Quota | None = None
        self._lost: SpoolFull | None = None  # a write the disk refused, not yet reported
        self._lost_count = 0

    @classmethod
    def _after_fork_in_child(cls) -> None:
        """The child has this object but not the writer thread, and any lock may have
        been held at the fork: start afresh. Jobs queued before the fork stay the
        parent's to write (its thread goes on in the parent)."""
        cls._instance_lock = threading.RLock()
        inst = cls._instance
        if inst is None:
            return
        inherited, old_jobs, running = inst.client, inst._jobs, inst._running
        inst._fresh_state()
        inherited.forget()
        for job in [running, *old_jobs.queue]:  # not through get(): its mutex may be held
            if job is not None:
                job.forget_in_child()

    @classmethod
    def get(cls) -> Session:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls(load_settings())
                atexit.register(cls._instance.shutdown)
            return cls._instance

    @classmethod
    def reset(cls) -> None:
        """Forget the session (tests and forked workers re-read the settings)."""
        with cls._instance_lock:
            if cls._instance is not None:
                cls._instance.shutdown()
                atexit.unregister(cls._instance.shutdown)
            cls._instance = None

    # -- spool ---------------------------------------------------------------------
    @property
    def spool(self) -> Spool:
        """The daemon's spool when one answers (both must agree), else the configured one."""
        with self._lock:
            if self._spool is None:
                root = self.settings.spool
                try:
                    with self.client.lock:
                        self.client.connect(timeout=1.0)
                        root = self.client.spool or root
                except DaemonUnavailable:
                    pass
                self._spool = Spool(root).ensure()
            return self._spool

    def reserve_space(self, obj: Any, what: str) -> None:
        """Before snapshotting ``obj``: wait for (or insist on) room in the spool.

        :raises SpoolFull: no room, or an earlier artifact could not be written
            because the spool's disk filled up (reported once, here or at flush)."""
        self.raise_lost()
        if self._quota is None:
            self._quota = Quota(self.settings)
        self._quota.reserve(self.spool, estimate_size(obj), what)

    def raise_lost(self) -> None:
        lost, self._lost, self._lost_count = self._lost, None, 0
        if lost is not None:
            raise lost

    # -- background writer ------------------------------------------------------------
    def run(self, fn: Callable[[], Any]) -> Job:
        job = Job(fn)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="artisync-writer", daemon=True
                )
                self._thread.start()
        self._jobs.put(job)
        return job

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._running = job
            try:
                job.result = job.fn()
            except BaseException as exc:  # reported through the job; the thread lives on
                job.error = exc
                log.error("artisync: background write failed: %s", exc)
                if _disk_full(exc):  # nothing kept anywhere: the caller must hear of it
                    self._lost_count += 1
                    self._lost = SpoolFull(
                        f"{self._lost_count} artifact(s) or task event(s) NOT stored: the "
                        f"spool's disk is full ({exc}); free space (or set spool_limit) "
                        "and report them again"
                    )
                    job.error = self._lost
            finally:
                if self._quota is not None and self._jobs.unfinished_tasks == 1:
                    self._quota.settle()  # idle: what was reserved is on disk now
                job.done.set()
                self._jobs.task_done()
        self._jobs.task_done()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued job has reached the spool.

        :raises SpoolFull: a write failed because the spool's disk is full."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._jobs.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        self.raise_lost()
        return True

    def shutdown(self) -> None:
        """At exit (or reset): run the shutdown hooks, then write out what is queued."""
        for hook in list(_shutdown_hooks):
            try:
                hook()
            except Exception as exc:  # at exit, report and go on with the others
                log.error("artisync: shutdown hook failed: %s", exc)
        try:
            self.drain()
        except SpoolFull as exc:
            log.error("artisync: %s", exc)
        self.client.close()

    # -- records ------------------------------------------------------------------------
    def submit(self, record: dict[str, Any]) -> str:
        """Hand a record to the daemon; fall back to the outbox. Returns where it went."""
        try:
            self.client.request(
                {"op": "submit", "record": record}, timeout=self.settings.ack_timeout
            )
            return "daemon"
        except DaemonError as exc:
            if exc.code == "invalid":
                raise
            log.warning(
                "artisync: daemon refused record for now (%s); keeping it in the outbox", exc
            )
        except DaemonUnavailable:
            self._maybe_autostart()
        self.spool.write_outbox(record)
        return "outbox"

    def _maybe_autostart(self) -> None:
        if not self.settings.autostart or time.monotonic() - self._last_autostart < 10:
            return
        self._last_autostart = time.monotonic()
        try:
            autostart_daemon(self.settings, self.spool.root)
        except OSError as exc:
            log.warning("artisync: could not start a daemon: %s", exc)

    def wait_committed(self, task_id: str, timeout: float | None) -> None:
        """Until every record of ``task_id`` acknowledged so far is committed in storage.

        :raises UploadTimeout: not within ``timeout`` (default: ``wait_timeout``).
        :raises UploadFailed: a record failed permanently."""
        limit = self.settings.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        last: Exception | None = None
        while time.monotonic() < deadline:
            left = max(0.1, deadline - time.monotonic())
            try:
                reply = self.request(
                    {"op": "wait", "task_id": task_id, "timeout": left}, timeout=left + 5
                )
            except DaemonUnavailable as exc:
                last = exc
                time.sleep(min(0.2, left))
                continue
            except DaemonError as exc:
                if exc.code == "timeout":
                    break
                raise
            if reply.get("failed"):
                raise UploadFailed(
                    f"{reply['failed']} records of task {task_id} failed; see `artisync status`"
                )
            return
        hint = f" (no daemon answered: {last})" if last else ""
        raise UploadTimeout(
            f"uploads of task {task_id} not committed after {limit:.0f} s{hint}; "
            "they stay in the spool and upload when a daemon runs"
        )

    def request(
        self, msg: dict[str, Any], timeout: float | None = None, on_progress: Any = None
    ) -> dict[str, Any]:
        return self.client.request(msg, timeout=timeout, on_progress=on_progress)


def _disk_full(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


os.register_at_fork(after_in_child=Session._after_fork_in_child)
