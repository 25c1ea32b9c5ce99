"""Read leases: a big file reported to this user's own daemon is copied here.

Copying a 16 MiB file into the spool costs a trainer ~2.5 ms on ext4 (no reflinks),
4 % of a loop that reports one every 60 ms. So the SDK asks this daemon instead
(``lease``: the file's path and the device and inode it has open), and the daemon:

1. opens the file and takes a read lease on it (``F_SETLEASE F_RDLCK``). The kernel
   grants it only while no one has the file open for writing, and from then on makes
   anyone who opens it for writing (or truncates it) wait until the daemon lets go,
   up to ``/proc/sys/fs/lease-break-time`` (45 s by default). Renaming a new file
   over it, or unlinking it, does not wait: the daemon's descriptor keeps the old one;
2. answers with the file's identity (device, inode, size, mtime, ctime): the caller
   writes it into the record and returns;
3. copies the file into a temp file, checks that nothing could have written it
   meanwhile (see :func:`_untouched`), links the copy in as the record's raw
   snapshot, and lets the lease go. This runs on threads at the daemon's ``nice``
   (not ``work_nice``): a trainer that rewrites the file soon waits for it.

The SIGIO the kernel sends the holder when a writer arrives is ignored: the copy is
under way already, and nothing else would change.

What this changes in the durability point: the snapshot is the file itself until the
copy is done (milliseconds). A trainer killed meanwhile loses nothing. If the daemon
dies before the copy, its next start copies the file from its path if its identity
still matches, ctime included; if the file was written, replaced or even renamed
meanwhile, the record is refused, saying so, and the caller's next call raises it. ``file_lease = false`` turns
leases off (the SDK copies every file itself).

Only a daemon of the caller's own user leases: a shared daemon would open files with
its own rights, and the path in a record is the caller's word.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import signal
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from artisync.protocol import Spool
from artisync.protocol.formats import copy_fd

log = logging.getLogger("artisync.daemon")

COPIERS = 2  # threads copying leased files
FORGET_AFTER = 3600.0  # seconds a copy no record claimed is remembered


class Changed(Exception):
    """The leased file is not what the record names any more."""


def identity(path: str, st: os.stat_result) -> dict[str, Any]:
    """What the record says of a leased file: enough to know it unchanged."""
    return {
        "path": path,
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _same(st: os.stat_result, ident: dict[str, Any]) -> bool:
    """Is it the file ``ident`` names, unchanged? Strict: ctime moves with any write,
    truncation, chmod, rename or unlink, and no caller can set it back."""
    return identity(ident["path"], st) == ident


ROOM = 256 * 1024 * 1024  # free bytes a leased file's copy must leave on the spool's disk


def _room(spool: Spool, size: int) -> bool:
    """Is there room for the copy? A copy that hit a full disk would lose a version
    the caller was told is stored."""
    try:
        st = os.statvfs(spool.tmp)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= size + ROOM


def _break_time() -> float:
    """Seconds the kernel waits for a lease's holder before it breaks the lease itself."""
    try:
        return float(Path("/proc/sys/fs/lease-break-time").read_text())
    except (OSError, ValueError):
        return 45.0


def _untouched(fd: int, since: float, ident: dict[str, Any]) -> bool:
    """After copying under a lease taken at ``since``: could nothing have written the
    file meanwhile? The lease still held says so, and so does a copy shorter than the
    time the kernel makes a writer wait (the writer waits still). Past that, a writer
    may have gone ahead: its size and mtime say whether one did (not its ctime: a
    rename over the file or an unlink moves that, and leave the bytes as they were)."""
    with contextlib.suppress(OSError):
        if fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK:
            return True
    if time.monotonic() - since < _break_time() - 1:
        return True
    st = os.fstat(fd)
    return (st.st_size, st.st_mtime_ns) == (ident["size"], ident["mtime_ns"])


class Leases:
    """The leases this daemon holds, and the copies made under them (by record id)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._copies: dict[str, tuple[Future[None], float]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.taken = 0  # leases taken since the start (in status)
        # a lease's holder is sent SIGIO when a writer arrives; its default action
        # would end the daemon (see the module's docstring)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGIO, signal.SIG_IGN)

    def take(self, record_id: str, path: str, dev: int, ino: int) -> dict[str, Any] | str:
        """Lease the file and start copying it into ``record_id``'s raw snapshot: its
        identity, or why not (the caller then copies it itself). On the event loop:
        an open and two fcntl calls, answered at once."""
        if not os.path.isabs(path):
            return "not an absolute path"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            return f"cannot open it: {exc.strerror}"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (dev, ino):
                raise Changed("not the file the caller has open")
            # EAGAIN: open for writing; EACCES: another user's; EINVAL: no leases here
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            st = os.fstat(fd)  # no one writes it now until the copy lets the lease go
        except (OSError, Changed) as exc:
            os.close(fd)
            return str(exc.strerror if isinstance(exc, OSError) else exc)
        ident = identity(path, st)
        if not _room(self.spool, st.st_size):  # the caller's copy raises SpoolFull instead
            os.close(fd)
            return "the spool's disk is nearly full"
        if self._pool is None:  # made by the loop's thread: its threads get the loop's nice
            self._pool = ThreadPoolExecutor(COPIERS, thread_name_prefix="artisync-lease")
        now = time.monotonic()
        copy = self._pool.submit(self._copy, record_id, fd, ident, now)
        with self._lock:
            self._copies[record_id] = (copy, now)
            if len(self._copies) > 1000:  # copies whose record never came (see settle)
                self._copies = {k: v for k, v in self._copies.items() if now - v[1] < FORGET_AFTER}
        self.taken += 1
        return ident

    def _copy(self, record_id: str, fd: int, ident: dict[str, Any], since: float) -> None:
        try:
            copy_into_raw(self.spool, record_id, fd, ident, lambda: _untouched(fd, since, ident))
        finally:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            os.close(fd)

    def settle(self, rec: dict[str, Any]) -> str | None:
        """Before a leased record is checked (on a thread): its raw snapshot is there
        once this returns None; else why it cannot be."""
        record_id, ident = rec["record_id"], rec["raw"]["leased"]
        with self._lock:
            copy, _ = self._copies.pop(record_id, (None, 0.0))
        if copy is not None:
            try:
                copy.result()
            except FileExistsError:
                pass  # the caller made its own copy (it gave up waiting for our answer)
            except (OSError, Changed) as exc:
                return _lost(ident, exc)
            return None
        if self.spool.raw_path(record_id).exists():
            return None  # copied before this daemon restarted
        return recover(self.spool, record_id, ident)


def copy_into_raw(
    spool: Spool, record_id: str, fd: int, ident: dict[str, Any], untouched: Callable[[], bool]
) -> None:
    """Copy the open file into the record's raw snapshot: whole, and ``untouched()``
    after the copy, or not at all.

    :raises Changed: it is not the file ``ident`` names any more.
    :raises FileExistsError: the raw snapshot exists already (the caller's own copy)."""
    tmp = spool.tmp / f"{os.getpid()}.{secrets.token_hex(8)}.part"
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, spool.file_mode)
        try:
            copied = copy_fd(fd, ident["size"], out)
        finally:
            os.close(out)
        if copied != ident["size"] or not untouched():
            raise Changed("it was written while the daemon copied it")
        os.link(tmp, spool.raw_path(record_id))
    finally:
        tmp.unlink(missing_ok=True)


_STOPPED = "the daemon stopped before it copied the file"


def recover(spool: Spool, record_id: str, ident: dict[str, Any]) -> str | None:
    """A daemon started after another took the lease and died before its copy: copy
    the file now if it is still the one leased; else why it is lost."""
    try:
        fd = os.open(ident["path"], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        return _lost(ident, Changed(f"{_STOPPED}, and it cannot be opened now ({exc.strerror})"))
    try:
        if not _same(os.fstat(fd), ident):
            raise Changed(f"{_STOPPED}, and it was written or replaced before it restarted")
        copy_into_raw(spool, record_id, fd, ident, lambda: _same(os.fstat(fd), ident))
    except FileExistsError:
        return None
    except (OSError, Changed) as exc:
        return _lost(ident, exc)
    finally:
        os.close(fd)
    log.info("leased file %s copied again after a restart", ident["path"])
    return None


def _lost(ident: dict[str, Any], exc: BaseException) -> str:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return (
        f"the file {ident['path']} was not copied into the spool under the daemon's "
        f"read lease: {why}. This version is lost; report the file again"
    )
