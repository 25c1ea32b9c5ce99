"""The spool: the on-disk contract between the SDK and the daemon.

```
<spool>/raw/<record_id>        raw snapshots the SDK wrote, waiting to be encoded
<spool>/free/<size>.<name>     encoded raw snapshots, kept to be written over (._recycle)
<spool>/outbox/<id>.<pid>.log a process's records, appended, for the daemon to journal
<spool>/outbox/<record_id>.rec a record waiting on its own (msgpack; a handover folder's)
<spool>/rejected/<record_id>.rec records the daemon refused, each with <record_id>.why
<spool>/blobs/<sha256>         stored payloads, content-addressed, complete or absent
<spool>/tmp/<pid>.<rand>.part  payloads being written (never read by the daemon)
<spool>/journal.db             the daemon's journal (SQLite, WAL)
<spool>/daemon.lock            held by the one daemon serving this spool
```

The SDK writes a raw snapshot, closes it, and only then appends its record to its
outbox log (see :mod:`._outbox_log`): a record never names a half-written snapshot. Neither is fsynced
by the SDK (a killed process loses nothing: the page cache is the kernel's);
the daemon fsyncs what it encodes, and its journal, before anything is deleted.
Every other visible file is written atomically (temp file, write, fsync,
rename, fsync of the directory). Only the daemon deletes, and only after commit.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from ._outbox_log import LogWriter, pid_alive

CHUNK = 1024 * 1024
_TMP_NAME = re.compile(r"(\d+)\.[0-9a-f]+\.part\Z")
_OUTBOX_TMP = re.compile(r"\..+\.(\d+)\.[0-9a-f]+\.tmp\Z")


def fsync_dir(path: Path) -> None:
    fsync_file(path, os.O_DIRECTORY)


def fsync_file(path: Path, flags: int = 0) -> None:
    """Flush a file (or, with ``os.O_DIRECTORY``, a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> bool:
    """Flush everything written to ``path``'s filesystem (Linux ``syncfs``): one call
    makes a burst of unsynced files durable, data and names, where an fsync each
    would cost a flush each. False where the system has no ``syncfs``."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", str(path))
    finally:
        os.close(fd)
    return True


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing.

    ``sync=False`` skips the fsyncs: the file survives its writer being killed
    (not a power loss) and costs the writer a few microseconds, not milliseconds.
    The temp file's name carries the writer's pid, so a temp file left by a
    killed writer can be recognised and removed at once."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read in chunks (bounded memory)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def copy_file_fast(src: Path, dst: BinaryIO) -> int:
    """Copy ``src`` into the open file ``dst`` kernel-side where possible.

    Uses ``copy_file_range`` (reflink on filesystems that support it) and
    falls back to ``sendfile``/read-write. Returns the number of bytes copied.
    """
    total = 0
    with open(src, "rb") as fin:
        size = os.fstat(fin.fileno()).st_size
        fin_fd, out_fd = fin.fileno(), dst.fileno()
        dst.flush()
        try:
            while True:
                n = os.copy_file_range(fin_fd, out_fd, max(size - total, CHUNK))
                if n == 0:
                    break
                total += n
            return total
        except OSError:
            pass  # cross-device on old kernels, or unsupported filesystem
        while True:
            chunk = fin.read(CHUNK)
            if not chunk:
                return total
            dst.write(chunk)
            total += len(chunk)


class Spool:
    """Paths and atomic operations of one spool directory."""

    def __init__(self, root: Path | str, *, file_mode: int = 0o600, link_raw: bool = True) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.outbox = self.root / "outbox"
        self.raw = self.root / "raw"
        self.free = self.root / "free"
        self.rejected = self.root / "rejected"
        self.journal_path = self.root / "journal.db"
        self.lock_path = self.root / "daemon.lock"
        self.file_mode = file_mode
        # False when clients hold descriptors of their raw files (a shared daemon): a raw
        # file then becomes a blob by a copy, hashed as it is made, never by a hard link
        self.link_raw = link_raw
        # told of each blob committed from a temp file (the daemon starts sending a
        # folder's members while the rest are still being unpacked)
        self.on_blob: Callable[[str, int], None] | None = None
        self._log: LogWriter | None = None  # this process's outbox log, once it wrote one
        # raw snapshots may be written over the files in free/: set by the SDK when a
        # private daemon serves this spool (it fsyncs such a snapshot before journaling it)
        self.recycle = False

    def ensure(self, dir_mode: int = 0o700) -> Spool:
        """Create the spool directories, private to their owner by default."""
        for d in self.folders():
            d.mkdir(mode=dir_mode, parents=True, exist_ok=True)
        return self

    def folders(self) -> tuple[Path, ...]:
        return (self.root, self.blobs, self.tmp, self.outbox, self.raw, self.free, self.rejected)

    def raw_path(self, record_id: str) -> Path:
        """Where the raw snapshot of record ``record_id`` (32 hex digits) lives."""
        return self.raw / record_id

    def sync_raw(self) -> None:
        """Every raw snapshot on disk (what a flush promises before they are encoded):
        an fsync each, or one ``syncfs`` for a backlog of them."""
        waiting = list(itertools.islice(self.iter_raw(), 33))
        if len(waiting) > 32:
            if sync_filesystem(self.raw):
                return
            waiting = list(self.iter_raw())
        for record_id, _ in waiting:
            try:
                fsync_file(self.raw_path(record_id))
            except FileNotFoundError:
                continue  # encoded meanwhile: its payload was fsynced
        fsync_dir(self.raw)

    def iter_raw(self) -> Iterator[tuple[str, float]]:
        """(record_id, mtime) of every raw snapshot."""
        with os.scandir(self.raw) as it:
            for entry in it:
                try:
                    yield entry.name, entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256

    def open_temp(self) -> tuple[BinaryIO, Path]:
        """A new temp file named after this process, for a payload being written."""
        path = self.tmp / f"{os.getpid()}.{secrets.token_hex(8)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        return os.fdopen(fd, "wb"), path

    def commit_temp(
        self, tmp_path: Path, sha256: str | None = None, *, sync: bool = True
    ) -> tuple[str, int]:
        """Hash (unless given), fsync and rename a finished temp file into ``blobs/``.

        A blob that already exists is a free dedup: the temp file is renamed over
        it (same bytes), which also refreshes it should the daemon be collecting it.
        """
        if sha256 is None:
            sha256, size = hash_file(tmp_path)
        else:
            size = tmp_path.stat().st_size
        if sync:
            fsync_file(tmp_path)
        os.replace(tmp_path, self.blob_path(sha256))
        if sync:
            fsync_dir(self.blobs)
        if self.on_blob is not None:
            self.on_blob(sha256, size)
        return sha256, size

    def sync_blobs(self, shas: Iterable[str]) -> None:
        """Make blobs committed with ``sync=False`` durable: one flush of the spool's
        filesystem, or (without ``syncfs``) an fsync of each and one of ``blobs/``."""
        if sync_filesystem(self.blobs):
            return
        for sha in dict.fromkeys(shas):
            fsync_file(self.blob_path(sha))
        fsync_dir(self.blobs)

    def write_blob_bytes(self, data: bytes, *, sync: bool = True) -> tuple[str, int]:
        sha = hashlib.sha256(data).hexdigest()
        f, tmp = self.open_temp()
        try:
            with f:
                f.write(data)
            return self.commit_temp(tmp, sha, sync=sync)
        finally:
            tmp.unlink(missing_ok=True)  # gone already once renamed

    def write_outbox(self, record: dict[str, Any], *, sync: bool = True) -> Path:
        """Persist a record for the daemon to journal (``sync``: against power loss too)."""
        path = self.outbox / f"{record['record_id']}.rec"
        data = msgpack.packb(record, use_bin_type=True)
        atomic_write_bytes(path, data, self.file_mode, sync=sync)
        return path

    def append_outbox(self, record: dict[str, Any]) -> None:
        """Append a record to this process's outbox log (see :mod:`._outbox_log`): one
        ``write``, no new file, no fsync.

        :raises OSError: it cannot be written (a full disk): nothing of it is kept."""
        if self._log is None:
            self._log = LogWriter(self.outbox, self.file_mode)
        self._log.append(record)

    def close_outbox_log(self) -> None:
        """End this process's outbox log (at exit): the daemon deletes it once read."""
        if self._log is not None:
            self._log.close()

    def reject_bytes(self, stem: str, data: bytes, reason: str) -> Path:
        """Keep a refused record read from an outbox log in ``rejected/``, with the
        reason beside it (as :meth:`reject` does for a record file)."""
        self.rejected.mkdir(mode=0o700, exist_ok=True)
        atomic_write_bytes(self.rejected / f"{stem}.why", reason.encode()[:4000], sync=False)
        target = self.rejected / f"{stem}.rec"
        atomic_write_bytes(target, data, self.file_mode, sync=False)
        return target

    def outbox_oldest_first(self) -> list[Path]:
        """The outbox's records, oldest first (one gone meanwhile sorts first)."""
        return self._oldest_first(self.iter_outbox())

    @staticmethod
    def _oldest_first(paths: Iterable[Path]) -> list[Path]:
        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except FileNotFoundError:
                return 0.0

        return sorted(paths, key=mtime)

    def outbox_chunks(self, size: int) -> Generator[list[Path], None, None]:
        """The outbox's records in lists of at most ``size``: all of them oldest first
        when they fit in one, else in directory order, all from one listing (a long
        backlog must not be listed again from the start for each chunk: the directory
        of a million records, most of them removed, is slow to walk)."""
        listing = self.iter_outbox()
        try:
            first = list(itertools.islice(listing, size))
            if len(first) < size:
                yield self._oldest_first(first)
                return
            yield first
            while chunk := list(itertools.islice(listing, size)):
                yield chunk
        finally:
            listing.close()

    def iter_outbox(self) -> Generator[Path, None, None]:
        with os.scandir(self.outbox) as it:
            for entry in it:
                if entry.name.endswith(".rec") and not entry.name.startswith("."):
                    yield Path(entry.path)

    def reject(self, path: Path, reason: str) -> Path:
        """Move a refused outbox record into ``rejected/``, with the reason beside it."""
        self.rejected.mkdir(mode=0o700, exist_ok=True)
        stem = path.name.removesuffix(".rec")
        atomic_write_bytes(self.rejected / f"{stem}.why", reason.encode()[:4000], sync=False)
        target = self.rejected / f"{stem}.rec"
        os.replace(path, target)
        return target

    def iter_rejected(self) -> Iterator[tuple[str, str]]:
        """(record_id, reason) of every refused record."""
        try:
            it = os.scandir(self.rejected)
        except FileNotFoundError:
            return
        with it:
            for entry in it:
                if entry.name.endswith(".why") and not entry.name.startswith("."):
                    try:
                        why = Path(entry.path).read_text(errors="replace")
                    except OSError:
                        continue
                    yield entry.name.removesuffix(".why"), why

    def iter_stale_temps(self, max_age: float, now: float) -> Iterator[Path]:
        """Temp files whose writer is gone (or that are older than ``max_age``)."""
        with os.scandir(self.tmp) as it:
            for entry in it:
                m = _TMP_NAME.match(entry.name)
                try:
                    age = now - entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if m is None or age > max_age or not pid_alive(int(m.group(1))):
                    yield Path(entry.path)
        # outbox temp files left by a killed writer
        with os.scandir(self.outbox) as it:
            for entry in it:
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    m = _OUTBOX_TMP.match(entry.name)
                    try:
                        age = now - entry.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if age > 60 or (m is not None and not pid_alive(int(m.group(1)))):
                        yield Path(entry.path)

    def usage(self) -> int:
        """Bytes held by raw snapshots, payloads, temp files and outbox records (what
        ``spool_limit`` bounds; the daemon's journal is not counted)."""
        total = 0
        # Files move tmp/ -> raw/ -> blobs/ (renamed or hard-linked) while this scans;
        # scanning in that order, remembering every inode seen, counts a file that moved
        # meanwhile once, and one hard-linked in both raw/ and blobs/ once.
        seen: set[int] = set()
        for folder in (self.tmp, self.raw, self.blobs, self.outbox):
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if folder is not self.outbox:
                            if st.st_ino in seen:
                                continue
                            seen.add(st.st_ino)
                        total += st.st_size
            except FileNotFoundError:
                continue
        return total
