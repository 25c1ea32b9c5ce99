"""The spool: the on-disk contract between the SDK and the daemon.

```
<spool>/blobs/<sha256>         payloads, content-addressed, complete or absent
<spool>/tmp/<pid>.<rand>.part  payloads being written (never read by the daemon)
<spool>/outbox/<record_id>.rec records waiting for a daemon (msgpack)
<spool>/journal.db             the daemon's journal (SQLite, WAL)
<spool>/daemon.lock            held by the one daemon serving this spool
```

Every visible file is written atomically: temp file in the same directory,
write, fsync, rename, fsync of the directory. The SDK writes blobs and
outbox records; only the daemon deletes, and only after commit.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

CHUNK = 1024 * 1024
_TMP_NAME = re.compile(r"(\d+)\.[0-9a-f]+\.part\Z")
_OUTBOX_TMP = re.compile(r"\..+\.(\d+)\.[0-9a-f]+\.tmp\Z")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing.

    The temp file's name carries the writer's pid, so a temp file left by a
    killed writer can be recognised and removed at once."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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

    def __init__(self, root: Path | str, *, file_mode: int = 0o600) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.outbox = self.root / "outbox"
        self.journal_path = self.root / "journal.db"
        self.lock_path = self.root / "daemon.lock"
        self.file_mode = file_mode

    def ensure(self, dir_mode: int = 0o700) -> Spool:
        """Create the spool directories, private to their owner by default."""
        for d in (self.root, self.blobs, self.tmp, self.outbox):
            d.mkdir(mode=dir_mode, parents=True, exist_ok=True)
        return self

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256

    def open_temp(self) -> tuple[BinaryIO, Path]:
        """A new temp file named after this process, for a payload being written."""
        path = self.tmp / f"{os.getpid()}.{secrets.token_hex(8)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        return os.fdopen(fd, "wb"), path

    def commit_temp(self, tmp_path: Path, sha256: str | None = None) -> tuple[str, int]:
        """Hash (unless given), fsync and rename a finished temp file into ``blobs/``.

        A blob that already exists is a free dedup: the temp file is renamed over
        it (same bytes), which also refreshes it should the daemon be collecting it.
        """
        if sha256 is None:
            sha256, size = hash_file(tmp_path)
        else:
            size = tmp_path.stat().st_size
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_path, self.blob_path(sha256))
        fsync_dir(self.blobs)
        return sha256, size

    def write_blob_bytes(self, data: bytes) -> tuple[str, int]:
        sha = hashlib.sha256(data).hexdigest()
        f, tmp = self.open_temp()
        try:
            with f:
                f.write(data)
            return self.commit_temp(tmp, sha)
        finally:
            tmp.unlink(missing_ok=True)  # gone already once renamed

    def write_outbox(self, record: dict[str, Any]) -> Path:
        """Persist a record for the daemon to ingest later (offline first)."""
        path = self.outbox / f"{record['record_id']}.rec"
        atomic_write_bytes(path, msgpack.packb(record, use_bin_type=True), self.file_mode)
        return path

    def iter_outbox(self) -> Iterator[Path]:
        with os.scandir(self.outbox) as it:
            for entry in it:
                if entry.name.endswith(".rec") and not entry.name.startswith("."):
                    yield Path(entry.path)

    def iter_stale_temps(self, max_age: float, now: float) -> Iterator[Path]:
        """Temp files whose writer is gone (or that are older than ``max_age``)."""
        with os.scandir(self.tmp) as it:
            for entry in it:
                m = _TMP_NAME.match(entry.name)
                try:
                    age = now - entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if m is None or age > max_age or not _pid_alive(int(m.group(1))):
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
                    if age > 60 or (m is not None and not _pid_alive(int(m.group(1)))):
                        yield Path(entry.path)

    def usage(self) -> int:
        """Bytes held by payloads, temp files and outbox records (what ``spool_limit``
        bounds; the daemon's journal is not counted)."""
        total = 0
        for folder in (self.blobs, self.tmp, self.outbox):
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        try:
                            total += entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            continue
            except FileNotFoundError:
                continue
        return total


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
