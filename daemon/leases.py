"""Read leases: a big file reported to this user's own daemon is copied here.

Copying a 16 MiB file into the spool costs a trainer ~2.5 ms on ext4 (no reflinks),
4 % of a loop that reports one every 60 ms. So the SDK asks this daemon instead
(``lease``: the file's path, and the number of the descriptor it has open on it),
and the daemon:

1. opens the caller's descriptor (``/proc/<pid>/fd/<n>``, the pid from SO_PEERCRED:
   the kernel lets it only where it would let a debugger of the same user look; no
   path is looked up, so only a file the caller could open is read), notes the lease
   in its ledger, and takes a read lease on it (``F_SETLEASE F_RDLCK``). The kernel
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

A file leased again unchanged is not copied again: once the daemon has hashed a copy
made under a lease, it remembers the file's identity with the hash, and a later lease
on the same identity links that blob in as the record's raw snapshot (a 16 MiB file
reported every 40 ms: the daemon's CPU per report from ~18 ms to ~6 ms).
Only an identity whose ctime was old enough when it was leased (:func:`_settled_key`):
the kernel stamps ctime from a clock that ticks every 1-10 ms (and a filesystem may
keep whole seconds only), so a write within the same tick as the one before may
leave ctime as it was, but not a write a tick later (git trusts its index the same way).

The SIGIO the kernel sends the holder when a writer arrives is ignored: the copy is
under way already, and nothing else would change.

What this changes in the durability point: the snapshot is the file itself until the
copy is done (milliseconds). A trainer killed meanwhile loses nothing. If the daemon
dies before the copy, its next start copies the file from its path if its ledger
names that lease and the identity still matches, ctime included; if the file was
written, replaced or even renamed meanwhile, the record is refused, saying so, and
the caller's next call raises it. With ``MAX_PENDING`` copies waiting already, or a
spool disk short of room, the daemon declines and the caller copies. ``file_lease = false`` turns
leases off (the SDK copies every file itself).

Only a daemon of the caller's own user leases: a shared daemon would open files with
its own rights, and the path in a record is the caller's word.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from artisync.protocol import Spool
from artisync.protocol.formats import copy_fd, file_identity

log = logging.getLogger("artisync.daemon")

COPIERS = 2  # threads copying leased files
MAX_PENDING = 8  # copies waiting or under way beyond which the caller copies instead
FORGET_AFTER = 3600.0  # seconds a copy no record claimed is remembered
LEDGER, LEDGER_MAX = "leases.log", 1 << 20  # see Ledger
_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
Answer = dict[str, Any] | str
# seconds a file's ctime must be behind its lease for its hash to be reused: ten of the
# kernel's coarsest ticks (HZ=100); two whole seconds where ctime has no fraction (ext4
# with 128-byte inodes, FAT keep whole or even seconds)
SETTLED, SETTLED_WHOLE = 0.1, 2.0
KNOWN_MAX = 256  # identities remembered with the hash of their bytes
Key = tuple[int, int, int, int, int]


class Changed(Exception):
    """The leased file is not what the record names any more."""


def _same(st: os.stat_result, ident: dict[str, Any]) -> bool:
    """Is it the file ``ident`` names, unchanged? (see ``formats.file_identity``)"""
    return file_identity(ident["path"], st) == ident


ROOM = 256 * 1024 * 1024  # free bytes a leased file's copy must leave on the spool's disk


def _room(spool: Spool, size: int) -> bool:
    """Is there room for the copy? A copy that hit a full disk would lose a version
    the caller was told is stored."""
    try:
        st = os.statvfs(spool.tmp)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= size + ROOM


def _settled_key(ident: dict[str, Any]) -> Key | None:
    """The identity as a key, if it is old enough to vouch for the bytes (see the
    module's docstring); None if not."""
    ctime = ident["ctime_ns"]
    if time.time_ns() - ctime < (SETTLED_WHOLE if ctime % 10**9 == 0 else SETTLED) * 1e9:
        return None
    return (ident["dev"], ident["ino"], ident["size"], ident["mtime_ns"], ident["ctime_ns"])


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
    may have gone ahead, and only an unchanged identity, ctime included, says none did
    (a rename over the file then refuses it too: rare, and never silent)."""
    with contextlib.suppress(OSError):
        if fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK:
            return True
    if time.monotonic() - since < _break_time() - 1:
        return True
    return _same(os.fstat(fd), ident)


class Leases:
    """The leases this daemon holds, and the copies made under them (by record id)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._copies: dict[str, tuple[Future[None], float, int]] = {}  # (copy, since, size)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._ledger = Ledger(spool.root / LEDGER)
        self.taken = 0  # leases taken since the start (in status)
        self.linked = 0  # of which a blob stood for, unchanged since (in status)
        self._known: OrderedDict[Key, str] = OrderedDict()  # settled identity -> sha256
        # record id -> (the settled identity its copy was made of, to learn its hash;
        # or the blob linked in as its raw snapshot): until its record is encoded
        self._made: dict[str, tuple[Key | None, str | None]] = {}
        # a lease's holder is sent SIGIO when a writer arrives; its default action
        # would end the daemon (see the module's docstring)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGIO, signal.SIG_IGN)

    def take(self, record_id: str, path: str, peer_pid: int | None, fd_number: int) -> Answer:
        """Lease the file the peer has open as ``fd_number`` (named ``path`` there) and
        start copying it into ``record_id``'s raw snapshot: its identity, or why not
        (the caller then copies it itself). On the event loop: an open of the peer's
        descriptor (the kernel checks that this daemon may, as it checks a debugger's
        look at the process), an fstat and two fcntl calls; no path is looked up."""
        if signal.getsignal(signal.SIGIO) != signal.SIG_IGN:
            return "this daemon cannot take leases (SIGIO is not ignored)"
        if not os.path.isabs(path) or not peer_pid:
            return "no absolute path, or the caller's process is not known"
        busy = self._pending()
        if len(busy) >= MAX_PENDING:  # the lease's break time runs while a copy waits
            return "busy copying other files"
        try:
            fd = os.open(f"/proc/{peer_pid}/fd/{fd_number}", _OPEN)
        except OSError as exc:
            return f"cannot open the caller's descriptor: {exc.strerror}"
        try:
            # EAGAIN: open for writing; EACCES: another user's; EINVAL: no leases here
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            st = os.fstat(fd)  # no one writes it now until the copy lets the lease go
            if not stat.S_ISREG(st.st_mode):
                raise Changed("not a regular file")
            if not _room(self.spool, st.st_size + sum(busy)):
                raise Changed("the spool's disk is nearly full")  # the caller's copy says so
            ident = file_identity(path, st)
            self._ledger.add(record_id, ident)  # what a restarted daemon may copy again
            if self._pool is None:  # made on the loop's thread: its threads get its nice
                self._pool = ThreadPoolExecutor(COPIERS, thread_name_prefix="artisync-lease")
            now = time.monotonic()
            key = _settled_key(ident)
            if self._link_known(record_id, key):
                copy: Future[None] = Future()
                copy.set_result(None)
                self._let_go(fd)
            else:
                copy = self._pool.submit(self._copy, record_id, fd, ident, now, key)
        except (OSError, Changed, RuntimeError) as exc:
            os.close(fd)
            return str(exc.strerror if isinstance(exc, OSError) else exc)
        with self._lock:
            self._copies[record_id] = (copy, now, st.st_size)
            if len(self._copies) > 256:  # copies done whose record never came (see settle)
                self._copies = {
                    k: v
                    for k, v in self._copies.items()
                    if not v[0].done() or now - v[1] < FORGET_AFTER
                }
        self.taken += 1
        return ident

    def _pending(self) -> list[int]:
        """The sizes of the copies not done yet."""
        with self._lock:
            return [size for copy, _, size in self._copies.values() if not copy.done()]

    def _copy(
        self, record_id: str, fd: int, ident: dict[str, Any], since: float, key: Key | None
    ) -> None:
        try:
            if self.spool.raw_path(record_id).exists():
                raise FileExistsError(record_id)  # the caller copied it: it gave up on us
            copy_into_raw(self.spool, record_id, fd, ident, lambda: _untouched(fd, since, ident))
            if key is not None:
                self._note(record_id, (key, None))
        finally:
            self._let_go(fd)

    @staticmethod
    def _let_go(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        os.close(fd)

    def _link_known(self, record_id: str, key: Key | None) -> bool:
        """Link the blob of a file leased before, unchanged since, in as the record's
        raw snapshot; False if there is none (or it was collected meanwhile)."""
        if key is None:
            return False
        with self._lock:
            sha = self._known.get(key)
        if sha is None:
            return False
        blob = self.spool.blob_path(sha)
        try:
            os.utime(blob)  # just used: housekeeping keeps it (the raw name holds it too)
            os.link(blob, self.spool.raw_path(record_id))
        except OSError:
            with self._lock:
                self._known.pop(key, None)
            return False
        self._note(record_id, (None, sha))
        self.linked += 1
        return True

    def _note(self, record_id: str, made: tuple[Key | None, str | None]) -> None:
        with self._lock:
            self._made[record_id] = made
            while len(self._made) > 4 * KNOWN_MAX:  # records never encoded: forgotten
                del self._made[next(iter(self._made))]

    def vouched(self, record_id: str) -> str | None:
        """The blob linked in as this record's raw snapshot: its hash need not be taken
        again (``formats.linked_blob`` checks that the two are one file)."""
        with self._lock:
            return self._made.get(record_id, (None, None))[1]

    def learned(self, record_id: str, sha: str) -> None:
        """A leased record was encoded: its copy's bytes hash to ``sha``. If the file it
        was copied from was settled, a later lease on it unchanged links that blob."""
        with self._lock:
            key = self._made.pop(record_id, (None, None))[0]
            if key is None:
                return
            self._known[key] = sha
            self._known.move_to_end(key)
            if len(self._known) > KNOWN_MAX:
                self._known.popitem(last=False)

    def settle(self, rec: dict[str, Any]) -> str | None:
        """Before a leased record is checked (on a thread): its raw snapshot is there
        once this returns None; else why it cannot be."""
        record_id, ident = rec["record_id"], rec["raw"]["leased"]
        with self._lock:
            copy = self._copies.pop(record_id, (None, 0.0, 0))[0]
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
        if not self._ledger.granted(record_id, ident):  # a record's path is its writer's word
            return _lost(ident, Changed("this daemon never leased it"))
        return recover(self.spool, record_id, ident)


class Ledger:
    """The leases this daemon took (record id and identity, a line each, not fsynced:
    a daemon killed keeps them in the page cache): after a restart, only a file named
    here is copied again from its path. Two generations of at most ``LEDGER_MAX``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def add(self, record_id: str, ident: dict[str, Any]) -> None:
        if self._fd is not None and os.fstat(self._fd).st_size > LEDGER_MAX:
            os.close(self._fd)
            self._fd = None
            os.replace(self.path, self.path.with_suffix(".old"))
        if self._fd is None:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        os.write(self._fd, _line(record_id, ident))

    def granted(self, record_id: str, ident: dict[str, Any]) -> bool:
        line = _line(record_id, ident)
        for path in (self.path, self.path.with_suffix(".old")):
            with contextlib.suppress(FileNotFoundError):
                if line in path.read_bytes():
                    return True
        return False


def _line(record_id: str, ident: dict[str, Any]) -> bytes:
    fields = (ident[k] for k in ("dev", "ino", "size", "mtime_ns", "ctime_ns"))
    return f"{record_id} {' '.join(map(str, fields))}\n".encode()


def copy_into_raw(
    spool: Spool, record_id: str, fd: int, ident: dict[str, Any], untouched: Callable[[], bool]
) -> None:
    """Copy the open file into the record's raw snapshot: whole, and ``untouched()``
    after the copy, or not at all.

    :raises Changed: it is not the file ``ident`` names any more.
    :raises FileExistsError: the raw snapshot exists already (the caller's own copy)."""
    out, tmp = spool.open_temp()
    try:
        with out:
            copied = copy_fd(fd, ident["size"], out.fileno())
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
        fd = os.open(ident["path"], _OPEN)
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
