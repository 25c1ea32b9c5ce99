"""Reporting to a shared daemon (a node's system service).

Its spool is private to it: a raw snapshot goes into a file the daemon creates
and hands over as a descriptor, and its record is submitted over the socket
(acknowledged once journaled). While the daemon cannot be reached, both wait
in this user's own handover folder (a spool of the same layout, private to the
user) and are handed over the next time it answers: at ``flush()``, at exit,
or when a later process of this user connects.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import msgpack

from artisync.protocol import ArtisyncError, Settings, Spool, atomic_write_bytes, copy_file_fast

from ._client import DaemonError, DaemonUnavailable


class Session(Protocol):
    """What this needs of the session: its settings and a way to ask the daemon."""

    settings: Settings

    def request(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]: ...


log = logging.getLogger("artisync")


class Refused(ArtisyncError):
    """The daemon refused a record (a destination it may not write to, a task of
    another user...): nothing of it is stored."""


class RawHolder:
    """The raw snapshot file of one record: the daemon's when it answers (this keeps a
    descriptor until the record is acknowledged, to hand the bytes over again should
    the daemon go away meanwhile), else one in the handover folder."""

    def __init__(self, session: Session, spool: Spool, record_id: str) -> None:
        self.session, self.spool, self.record_id = session, spool, record_id
        self.fd: int | None = None  # the daemon's file
        self.local = False  # the snapshot went into the handover folder instead

    def open(self) -> int:
        """A descriptor to write the snapshot through (the caller closes it)."""
        try:
            reply = self.session.request(
                {"op": "open_raw", "record_id": self.record_id},
                timeout=self.session.settings.ack_timeout,
            )
        except (DaemonUnavailable, DaemonError) as exc:
            log.debug("artisync: snapshot kept for the daemon: %s", exc)
        else:
            if isinstance(reply.get("fd"), int):
                self.fd = reply["fd"]
                return os.dup(self.fd)
        path = self.spool.raw_path(self.record_id)
        self.local = True
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def keep_locally(self) -> None:
        """The daemon's copy may be lost: copy it into the handover folder."""
        if self.fd is None:
            return
        dst = self.spool.raw_path(self.record_id)
        from artisync.protocol.formats import copy_fd

        try:
            os.lseek(self.fd, 0, os.SEEK_SET)
            out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                copy_fd(self.fd, os.fstat(self.fd).st_size, out)
            finally:
                os.close(out)
        except BaseException:
            dst.unlink(missing_ok=True)
            raise
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def submit(session: Session, record: dict[str, Any]) -> None:
    """Submit one record, acknowledged once journaled.

    :raises DaemonUnavailable: no answer (or the daemon is draining): keep it.
    :raises Refused: the daemon will not take it."""
    _ask(session, {"op": "submit", "record": record}, record)


def _ask(session: Session, msg: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    try:
        return session.request(msg, timeout=session.settings.ack_timeout)
    except DaemonError as exc:
        if exc.code in ("draining", "journal", "stale", "internal"):
            raise DaemonUnavailable(str(exc)) from exc
        raise Refused(f"the daemon refused {describe(record)}: {exc}") from exc


def describe(record: dict[str, Any]) -> str:
    if record.get("kind") == "artifact":
        return f"artifact {record.get('name')!r}"
    return f"task {record.get('task_id')}"


def hand_over(session: Session, spool: Spool) -> list[str]:
    """Hand what waits in the handover folder to the daemon, oldest first. Returns
    why records were refused (each is kept, renamed ``.rejected``).

    :raises DaemonUnavailable: the daemon went away (the rest waits)."""
    refused: list[str] = []
    for path in spool.outbox_oldest_first():
        try:
            record = msgpack.unpackb(path.read_bytes(), raw=False)
        except FileNotFoundError:
            continue  # another process of ours handed it over
        except (OSError, ValueError) as exc:
            refused.append(f"{path.name}: unreadable ({exc})")
            os.replace(path, path.with_name(path.name + ".rejected"))
            continue
        raw = spool.raw_path(str(record.get("record_id")))
        try:
            if raw.exists():
                _send_raw(session, record, raw)
            submit(session, record)
        except Refused as exc:
            refused.append(str(exc))
            os.replace(path, path.with_name(path.name + ".rejected"))
            log.error("artisync: %s (kept as %s.rejected)", exc, path)
            continue
        path.unlink(missing_ok=True)
        raw.unlink(missing_ok=True)
    return refused


def _send_raw(session: Session, record: dict[str, Any], raw: Path) -> None:
    reply = _ask(session, {"op": "open_raw", "record_id": record["record_id"]}, record)
    fd = reply.get("fd")
    if not isinstance(fd, int):
        return  # journaled already (handed over before this process died)
    try:
        with os.fdopen(fd, "wb") as out:
            copy_file_fast(raw, out)
    except OSError as exc:
        raise DaemonUnavailable(f"could not hand over {raw.name}: {exc}") from exc


def pending(spool: Spool) -> int:
    """Records waiting in the handover folder."""
    try:
        return sum(1 for _ in spool.iter_outbox())
    except FileNotFoundError:
        return 0


def remember_offer(spool: Spool, output_uri: str | None) -> None:
    """Keep the destination a shared daemon offers, for runs that start while it is away."""
    path = spool.root / "offered_output_uri"
    try:
        if output_uri and (not path.exists() or path.read_text() != output_uri):
            atomic_write_bytes(path, output_uri.encode(), sync=False)
    except OSError as exc:
        log.debug("artisync: could not keep the offered destination: %s", exc)


def last_offer(spool: Spool) -> str | None:
    try:
        return (spool.root / "offered_output_uri").read_text() or None
    except OSError:
        return None
