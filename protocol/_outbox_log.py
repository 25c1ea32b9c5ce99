"""The outbox log: a process's records appended to one file for the daemon to journal.

A record used to be a file of its own in ``outbox/`` (created, written, renamed).
That costs the training process three system calls and an inode per record, and the
daemon a read and an unlink per record: an offline rig's week of small artifacts
(a million records) took minutes to write and minutes to ingest. Now each process
appends its records to ``outbox/<log id>.<pid>.log``, a frame per record, with one
``write`` each; the daemon reads a log from where it stopped (its offset is kept in
the journal, in the same transaction as the records) and deletes it once it has
taken everything and the writer is done with it: the writer appended its end frame
(when the log reached :data:`LOG_MAX_BYTES`, or at exit), or the writer's process is
gone.

A frame is a header (:data:`MAGIC`, the body's length and CRC-32) and a msgpack
record. One ``write`` of a whole frame to a file opened with ``O_APPEND`` is never
interleaved with another process's and survives the writer being killed (the page
cache keeps it); a power loss can tear the last frame, which the CRC shows. A frame
of length 0 is the end of the log. A reader may see the last frame while it is still
being written: an incomplete or unchecked frame of a live writer is read again later.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from ._records import new_id

MAGIC = b"\xa7L"
HEADER = struct.Struct(">2sII")  # magic, body length, CRC-32 of the body
END = HEADER.pack(MAGIC, 0, 0)
LOG_MAX_BYTES = 16 * 1024 * 1024  # a log is closed (its end frame) and a new one begun
LOG_SUFFIX = ".log"
READ_CHUNK = 4 * 1024 * 1024


class LogWriter:
    """Appends records to this process's current log in ``folder`` (thread-safe; a
    forked child starts a log of its own)."""

    def __init__(self, folder: Path, file_mode: int = 0o600) -> None:
        self.folder = folder
        self.file_mode = file_mode
        self._fd: int | None = None
        self._pid = 0
        self._size = 0
        # reentrant: a signal handler on the main thread may store a record while the
        # interrupted code was storing one (each write is whole: they cannot interleave)
        self._lock = threading.RLock()

    def append(self, record: dict[str, Any]) -> None:
        """Append one record (no fsync: the page cache survives the process).

        :raises OSError: the log cannot be written (e.g. the disk is full); nothing
            of the record is left in it."""
        body = msgpack.packb(record, use_bin_type=True)
        frame = HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body
        with self._lock:
            fd = self._current()
            try:
                written = os.write(fd, frame)
            except OSError:
                self._cut(fd)
                raise
            if written != len(frame):  # a full disk writes what fits
                self._cut(fd)
                raise OSError(28, "No space left on device (short write to the outbox log)")
            self._size += written

    def close(self) -> None:
        """End this process's log (the daemon deletes it once it took everything)."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                try:
                    os.write(self._fd, END)
                except OSError:
                    pass  # the daemon ends it when this process is gone
                os.close(self._fd)
            self._fd = None

    def _current(self) -> int:
        if self._fd is not None and self._pid != os.getpid():
            self._fd = None  # the parent's log, inherited by a fork: the parent's alone
        if self._fd is not None and self._size >= LOG_MAX_BYTES:
            self.close()
        if self._fd is None:
            pid = os.getpid()
            path = self.folder / f"{new_id()}.{pid}{LOG_SUFFIX}"
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self._fd = os.open(path, flags, self.file_mode)
            self._pid, self._size = pid, 0
        return self._fd

    def _cut(self, fd: int) -> None:
        """Take back a frame that went in partly (or start a new log if even that fails)."""
        try:
            os.ftruncate(fd, self._size)
        except OSError:
            os.close(fd)
            self._fd = None


@dataclass
class LogRead:
    """What :func:`read_log` found from an offset on."""

    frames: list[tuple[int, bytes]]  # (offset just past the frame, body)
    offset: int  # where the next read starts
    ended: bool  # the end frame was read: nothing more will come
    torn: bytes | None = None  # a frame that will never be whole: the rest of the file


def read_log(path: Path, offset: int, limit: int, writer_alive: bool) -> LogRead:
    """Up to ``limit`` whole, checked frames of the log at ``path`` from ``offset``.

    A frame that is incomplete or fails its check ends the read: if the writer is
    alive it may still be writing it (read again later); if not, it never will be,
    and the rest of the file is returned as ``torn``."""
    frames: list[tuple[int, bytes]] = []
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as f:
        f.seek(offset)
        buf, base = b"", offset
        while len(frames) < limit:
            chunk = f.read(READ_CHUNK)
            buf += chunk
            pos = 0
            while len(frames) < limit and len(buf) - pos >= HEADER.size:
                magic, length, crc = HEADER.unpack_from(buf, pos)
                if magic != MAGIC:
                    return _stop(frames, base + pos, buf[pos:] + f.read(), writer_alive)
                if length == 0:  # the end; anything after it is no record of the writer's
                    rest = buf[pos + HEADER.size :] + f.read()
                    return LogRead(frames, base + pos + HEADER.size, True, rest or None)
                end = pos + HEADER.size + length
                if end > len(buf):
                    break  # more to read, or still being written
                body = buf[pos + HEADER.size : end]
                if zlib.crc32(body) != crc:
                    return _stop(frames, base + pos, buf[pos:] + f.read(), writer_alive)
                frames.append((base + end, body))
                pos = end
            buf, base = buf[pos:], base + pos
            if not chunk:
                break
        if buf and not writer_alive and len(frames) < limit:
            return LogRead(frames, base, False, buf + f.read())
        return LogRead(frames, base, False)


def _stop(frames: list[tuple[int, bytes]], at: int, rest: bytes, writer_alive: bool) -> LogRead:
    return LogRead(frames, at, False, None if writer_alive else rest)


def iter_logs(folder: Path) -> Iterator[Path]:
    """The logs in ``folder``, oldest first (their names begin with a time-ordered id)."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it]
    except FileNotFoundError:
        return
    yield from logs_among(folder, names)


def logs_among(folder: Path, names: Iterable[str]) -> list[Path]:
    """Of the entries ``names`` of ``folder`` (listed once by a caller that needs
    them for more than its logs), the logs, oldest first."""
    return [folder / name for name in sorted(n for n in names if n.endswith(LOG_SUFFIX))]


def writer_pid(path: Path) -> int | None:
    """The pid in a log's name (``<id>.<pid>.log``)."""
    try:
        return int(path.name.removesuffix(LOG_SUFFIX).rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    """Whether a process of that pid runs (one of another user's counts)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
