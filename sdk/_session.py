"""The per-process session: settings, the spool, the daemon connection.

There is no background thread: a report is a raw snapshot and a record,
both written into the spool on the caller's thread before the call returns
(no fsync: that, the encoding and the hashing are the daemon's), so nothing
accepted waits in this process's memory, and a forked child or a signal
handler finds nothing half-done. The daemon picks records up from the outbox
(inotify tells it at once); ``flush`` asks it to journal them right away.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from artisync.protocol import Settings, Spool, load_settings

from ._client import DaemonClient, DaemonError, DaemonUnavailable, autostart_daemon
from ._errors import UploadFailed, UploadTimeout
from ._quota import Quota, estimate_size

log = logging.getLogger("artisync")


_shutdown_hooks: list[Callable[[], None]] = []


def on_shutdown(hook: Callable[[], None]) -> None:
    """Run ``hook`` when the session shuts down (interpreter exit), e.g. tasks
    register their final close here."""
    if hook not in _shutdown_hooks:
        _shutdown_hooks.append(hook)


class Session:
    _instance: Session | None = None
    _instance_lock = threading.RLock()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._spool: Spool | None = None
        self._last_autostart = 0.0
        self._fresh_state()

    def _fresh_state(self) -> None:
        """Connection and locks: what a forked child cannot share."""
        self.client = DaemonClient(self.settings)
        self._lock = threading.Lock()
        self._quota: Quota | None = None

    @classmethod
    def _after_fork_in_child(cls) -> None:
        """Any lock may have been held at the fork, and the socket is the parent's:
        start afresh (the spool is shared, as it is between processes)."""
        cls._instance_lock = threading.RLock()
        inst = cls._instance
        if inst is None:
            return
        inherited = inst.client
        inst._fresh_state()
        inherited.forget()

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
                    self._maybe_autostart(root)
                self._spool = Spool(root).ensure()
            return self._spool

    def reserve_space(self, obj: Any, what: str) -> None:
        """Before snapshotting ``obj``: wait for (or insist on) room in the spool.

        :raises SpoolFull: no room."""
        self.quota.reserve(self.spool, estimate_size(obj), what)

    @property
    def quota(self) -> Quota:
        if self._quota is None:
            self._quota = Quota(self.settings)
        return self._quota

    def shutdown(self) -> None:
        """At exit (or reset): run the shutdown hooks, then hang up."""
        for hook in list(_shutdown_hooks):
            try:
                hook()
            except Exception as exc:  # at exit, report and go on with the others
                log.error("artisync: shutdown hook failed: %s", exc)
        self.client.close()

    # -- records ------------------------------------------------------------------------
    def store(self, record: dict[str, Any]) -> None:
        """Put a record into the outbox, for the daemon (now, or whenever one runs).

        :raises OSError: the spool cannot be written (e.g. its disk is full)."""
        self.spool.write_outbox(record, sync=False)

    def ingest(self, timeout: float | None = None) -> bool:
        """Ask the daemon to journal what the outbox holds now (durable even against
        power loss once this returns True); False: no daemon answered."""
        try:
            self.request({"op": "ingest"}, timeout=timeout or self.settings.ack_timeout)
            return True
        except (DaemonUnavailable, DaemonError):
            self._maybe_autostart(self.spool.root)
            return False

    def resolve(self, record_id: str, wait: float) -> dict[str, Any] | None:
        """The record as the daemon holds it once encoded (waiting up to ``wait``);
        None if no daemon answers or it does not know the record.

        :raises UploadFailed: the daemon could not encode it."""
        try:
            reply = self.request(
                {"op": "record", "record_id": record_id, "wait": wait}, timeout=wait + 5
            )
        except (DaemonUnavailable, DaemonError):
            return None
        if reply.get("state") == "failed" and "sha256" not in reply["record"]:
            raise UploadFailed(f"artifact not stored: {reply.get('reason')}")
        record: dict[str, Any] = reply["record"]
        return record

    def _maybe_autostart(self, spool_root: Any) -> None:
        if not self.settings.autostart or time.monotonic() - self._last_autostart < 10:
            return
        self._last_autostart = time.monotonic()
        try:
            autostart_daemon(self.settings, spool_root)
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
                self._maybe_autostart(self.spool.root)
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


os.register_at_fork(after_in_child=Session._after_fork_in_child)
