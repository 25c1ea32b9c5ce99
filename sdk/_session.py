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
import functools
import getpass
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from artisync.protocol import Origin, Settings, Spool, check_folder, format_size, load_settings

from . import _handover
from ._client import DaemonClient, DaemonError, DaemonUnavailable, autostart_daemon
from ._errors import UploadFailed, UploadTimeout
from ._job import rank_fields
from ._quota import Quota, estimate_size

log = logging.getLogger("artisync")
PROGRESS_EVERY = 10.0  # seconds between lines while flush(wait_for_uploads=True) waits
MINE_MAX = 10_000  # records a process remembers, to name one the daemon refuses


_shutdown_hooks: list[Callable[[], None]] = []
_HOST = socket.gethostname()


@functools.cache  # getpass.getuser() reads the password database when $USER is unset
def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def origin() -> Origin:
    """This process, as every record names it."""
    ranks = rank_fields()
    return Origin(
        host=_HOST,
        user=_user(),
        pid=os.getpid(),
        rank=ranks.get("rank"),
        local_rank=ranks.get("local_rank"),
        world_size=ranks.get("world_size"),
    )


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
        self.shared = False  # reporting to a node's shared daemon (see _handover)
        self._waiting = 0  # records this process left in the handover folder
        # outbox records of this process (the newest MINE_MAX), by id: what each is, to
        # name it should the daemon refuse it
        self._mine: dict[str, str] = {}
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
        """The daemon's spool when one answers (both must agree), else the configured
        one; with a shared daemon, this user's handover folder.

        :raises NotAllowed, UntrustedDaemon, UnsafeFolder: see DaemonClient.connect."""
        with self._lock:
            if self._spool is None:
                root, served = self.settings.spool, False
                try:
                    with self.client.lock:
                        self.client.connect(timeout=1.0)
                        self.shared = self.client.shared
                        root = self.settings.handover if self.shared else self.client.spool or root
                        served = not self.shared
                except DaemonUnavailable:
                    if self._shared_expected():
                        self.shared, root = True, self.settings.handover
                    else:
                        self._maybe_autostart(root)
                check_folder(root, (os.getuid(),), "spool")
                self._spool = Spool(root).ensure()
                # a private daemon answered: it encodes (and so recycles) snapshots soon,
                # and fsyncs one written over a recycled file before journaling it
                self._spool.recycle = served
                if self.shared:
                    self._waiting = _handover.pending(self._spool)
                    _handover.remember_offer(self._spool, self.client.output_uri)
            return self._spool

    def default_output_uri(self) -> str:
        """Where tasks go unless told: the configured ``output_uri``, else what a shared
        daemon offers (the first of its allowed destinations), else the local default.
        Touches no spool (a process that only reads back must not make one)."""
        if self.settings.output_chosen:
            return self.settings.output_uri
        try:
            with self.client.lock:
                self.client.connect(timeout=1.0)
        except DaemonUnavailable:  # a shared daemon away: what it offered last time
            if self._shared_expected():
                offered = _handover.last_offer(Spool(self.settings.handover))
                return offered or self.settings.output_uri
        return self.client.output_uri or self.settings.output_uri

    def _shared_expected(self) -> bool:
        """No daemon answers, but this user reports to a shared one (its socket is there)."""
        sock, own = self.settings.system_socket, self.settings.socket
        if len(self.client.paths) < 2 or os.path.lexists(own):  # this user has a daemon
            return False
        return os.path.lexists(sock) or sock.parent.is_dir()

    def daemon_expected(self) -> bool:
        """A daemon answers now, or this process starts one when it does not (autostart;
        never for a shared daemon: systemd starts that one).

        :raises NotAllowed, UntrustedDaemon, UnsafeFolder: see DaemonClient.connect."""
        try:
            with self.client.lock:
                self.client.connect(timeout=1.0)
            return True
        except DaemonUnavailable:
            return self.settings.autostart and not self._shared_expected()

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
        if self._spool is not None:
            self._spool.close_outbox_log()  # its end: the daemon removes it once read
        if self.shared and self._spool is not None:
            try:
                self.hand_over()
            except UploadFailed as exc:
                log.error("artisync: %s", exc)
            if _handover.pending(self._spool):
                log.warning(
                    "artisync: the daemon did not answer; %d reports wait in %s and are "
                    "handed over by the next artisync process of yours (or `artisync wait`)",
                    _handover.pending(self._spool),
                    self._spool.root,
                )
        self.client.close()

    # -- records ------------------------------------------------------------------------
    def store(self, record: dict[str, Any], raw: _handover.RawHolder | None = None) -> None:
        """Put a record into the outbox, for the daemon (now, or whenever one runs); a
        shared daemon gets it at once (``raw``: its snapshot, if it has one).

        :raises OSError: the spool cannot be written (e.g. its disk is full).
        :raises Refused: the shared daemon refused it."""
        spool = self.spool
        self.raise_refused(f"{_describe(record)} not stored: ")
        if self.shared and not (raw is not None and raw.local):
            try:
                _handover.submit(self, record)
                if self._waiting:
                    self.hand_over()
                return
            except DaemonUnavailable:
                if raw is not None:
                    raw.keep_locally()
            finally:
                if raw is not None:
                    raw.close()
        if self.shared:  # the handover folder: a file a record, handed over one by one
            spool.write_outbox(record, sync=False)
        else:  # appended to this process's outbox log: one write, no new file
            spool.append_outbox(record)
        self._mine[record["record_id"]] = _describe(record)
        if len(self._mine) > MINE_MAX:
            del self._mine[next(iter(self._mine))]
        if self.shared:
            self._waiting += 1

    def raise_refused(self, prefix: str = "") -> None:
        """Raise what the daemon refused of this process's records (once each).

        :raises UploadFailed: naming each refused record and why."""
        if not self._mine or self._spool is None:
            return
        found = [(r, why) for r, why in self._spool.iter_rejected() if r in self._mine]
        if found:
            what = "; ".join(
                f"{self._mine.pop(r)} was refused by the daemon: {w}" for r, w in found
            )
            raise UploadFailed(prefix + what)

    def hand_over(self) -> None:
        """Give a shared daemon what waits in the handover folder.

        :raises UploadFailed: it refused some of it (each is kept, ``.rejected``)."""
        try:
            refused = _handover.hand_over(self, self.spool)
        except DaemonUnavailable:
            return
        self._waiting = 0
        if refused:
            raise UploadFailed("records refused by the daemon: " + "; ".join(refused))

    def ingest(self, timeout: float | None = None) -> bool:
        """Ask the daemon to journal what the outbox holds now (durable even against
        power loss once this returns True); False: no daemon answered.

        :raises UploadFailed: a shared daemon refused records that waited here."""
        if self.shared:
            self.hand_over()
            if self._waiting:
                return False
        try:
            self.request({"op": "ingest"}, timeout=timeout or self.settings.ack_timeout)
            self.raise_refused()
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
        if (
            self.shared
            or not self.settings.autostart
            or time.monotonic() - self._last_autostart < 10
        ):
            return
        self._last_autostart = time.monotonic()
        try:
            autostart_daemon(self.settings, spool_root)
        except OSError as exc:
            log.warning("artisync: could not start a daemon: %s", exc)

    def wait_committed(self, task_id: str, timeout: float | None, what: str = "") -> None:
        """Until every record of ``task_id`` acknowledged so far is committed in storage
        (``what``: how messages name them; "task <id>" by default).

        :raises UploadTimeout: not within ``timeout`` (default: ``wait_timeout``).
        :raises UploadFailed: a record failed permanently."""
        limit = self.settings.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        last: Exception | None = None
        what = what or f"task {task_id}"
        progress = _WaitReport(what)
        while time.monotonic() < deadline:
            left = max(0.1, deadline - time.monotonic())
            if self.shared:
                self.hand_over()  # what waited while the daemon was away counts too
            try:
                reply = self.request(
                    {"op": "wait", "task_id": task_id, "timeout": left, "progress": True},
                    timeout=left + 5,
                    on_progress=progress,
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
            self.raise_refused()
            if reply.get("failed"):
                raise UploadFailed(
                    f"{reply['failed']} records of {what} failed; see `artisync status`"
                )
            return
        hint = f" (no daemon answered: {last})" if last else ""
        raise UploadTimeout(
            f"uploads of {what} not committed after {limit:.0f} s{hint}; "
            "they stay in the spool and upload when a daemon runs"
        )

    def request(
        self, msg: dict[str, Any], timeout: float | None = None, on_progress: Any = None
    ) -> dict[str, Any]:
        return self.client.request(msg, timeout=timeout, on_progress=on_progress)


class _WaitReport:
    """While ``flush(wait_for_uploads=True)`` waits: one line every PROGRESS_EVERY
    seconds with what is left (nothing for a short wait: training logs stay clean)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = self.said = time.monotonic()

    def __call__(self, p: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.said < PROGRESS_EVERY:
            return
        self.said = now
        offline = f"; offline: {', '.join(p['offline'])}" if p.get("offline") else ""
        log.warning(
            "artisync: waiting %.0f s for %s: %d records (%s) left to upload%s",
            now - self.started,
            self.what,
            p.get("remaining", 0),
            format_size(int(p.get("bytes", 0))),
            offline,
        )


def _describe(record: dict[str, Any]) -> str:
    if record.get("kind") == "put":
        return f"upload to {str(record.get('dest')).rstrip('/')}/{record.get('key')}"
    return _handover.describe(record)


os.register_at_fork(after_in_child=Session._after_fork_in_child)
