"""Raw snapshot files recycled (the spool's ``free/`` pool), or preallocated.

Writing 8 MB into a new file costs the training process ~2 ms on ext4 (page
cache pages and blocks are allocated as it goes); writing them over a file of
that size whose pages are still cached costs ~0.4 ms, and a 16 MiB
``copy_file_range`` 3 ms instead of 7. So once the daemon has encoded a raw
snapshot (its stored form committed and journaled), it renames the file into
``free/`` instead of deleting it, and the SDK renames one from there into
``raw/<record_id>`` and writes over it. A rename moves a file to one place only,
so two writers never share one. A file's snapshot is copied over one too where the
copy is not a reflink (ext4): its raw file becomes its blob, so the pool gets only
the raw files of files stored already (the same bytes reported again).

Bounds: files of :data:`MIN_SIZE`..:data:`MAX_SIZE`, at most :data:`MAX_FILES` of
them and :data:`MAX_BYTES` in all (not counted in ``spool_limit``, of which they
take at most an eighth); dropped after :data:`IDLE` seconds unused, and at once
when the spool is short of room. A private daemon only: a shared one's clients
hold descriptors of their raw files, and one user's old bytes must never reach
another.

Written over in place, a file's old bytes may survive a power loss where the new
ones did not, and read as a snapshot they never were (a new file comes back
short instead, which its encode refuses). So a reused snapshot says so in its
record (``raw["reused"]``: the kernel's boot id); the daemon fsyncs it before it
journals the record, and refuses the record if the machine restarted between the
write and the journal.

Where no recycled file fits, a new one on ext4 is given its size first
(``posix_fallocate``): one extent reserved at once instead of a delayed
allocation per page, 16 MiB copied in 3.9 ms instead of 5.3, 8 MB written in 1.4
instead of 2.0. Only on ext4, where it was measured: on XFS it slows a reflink
copy down (0.13 -> 0.22 ms), and where a filesystem cannot preallocate, glibc
would write zeros instead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MIN_SIZE = 64 * 1024  # smaller raw snapshots travel inside their record
MAX_SIZE = 64 * 1024 * 1024
MAX_FILES = 32
MAX_BYTES = 256 * 1024 * 1024
IDLE = 600.0
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_boot_id: str | None = None
PREALLOCATED = ("ext4",)  # filesystems a new raw file is given its size first on
_fs_types: dict[str, str] = {}


def boot_id() -> str:
    """This boot of the kernel (changes at every restart); "" where unknown."""
    global _boot_id
    if _boot_id is None:
        try:
            with open(_BOOT_ID) as f:
                _boot_id = f.read().strip()
        except OSError:
            _boot_id = ""
    return _boot_id


def _sizes(pool: Path) -> list[tuple[int, str]]:
    """(size, name) of the files in the pool (their size leads their name)."""
    try:
        names = os.listdir(pool)
    except OSError:
        return []
    out = []
    for name in names:
        size, dot, _ = name.partition(".")
        if dot and size.isdigit():
            out.append((int(size), name))
    return out


def _fits(pool: Path, size: int) -> list[str]:
    """The pool's files worth writing ``size`` bytes over, best first: the smallest
    at least that big (not four times bigger: cutting the rest costs), then the
    biggest of those at least half as big (the rest is appended)."""
    entries = _sizes(pool)
    over = sorted(e for e in entries if size <= e[0] <= 4 * size)
    under = sorted((e for e in entries if size // 2 <= e[0] < size), reverse=True)
    return [name for _, name in over + under]


def take(pool: Path, dst: Path, size: int, mode: int) -> int | None:
    """A file of the pool renamed to ``dst`` and opened for writing over (at offset
    0; the caller truncates it to what it wrote), or None: none fits, or the pool
    holds none of this user's private regular files (a planted one is removed)."""
    if size < MIN_SIZE or not boot_id():
        return None
    for name in _fits(pool, size):
        try:
            os.rename(pool / name, dst)
        except FileNotFoundError:
            continue  # another writer took it first
        except OSError:
            return None
        try:  # O_NONBLOCK: a FIFO planted in the pool fails here rather than block
            fd = os.open(dst, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            dst.unlink(missing_ok=True)
            continue
        st = os.fstat(fd)
        ours = st.st_uid == os.geteuid() and st.st_nlink == 1
        if stat.S_ISREG(st.st_mode) and ours and stat.S_IMODE(st.st_mode) == mode:
            os.set_blocking(fd, True)
            return fd
        os.close(fd)
        dst.unlink(missing_ok=True)
    return None


def give(pool: Path, raw: Path, limit: int = 0) -> bool:
    """Move an encoded raw snapshot into the pool if it is worth keeping and there is
    room (``limit``: the spool's ``spool_limit``, 0 for none); False: delete it."""
    try:
        st = os.stat(raw)
    except FileNotFoundError:
        return True  # gone already
    if st.st_nlink != 1 or not MIN_SIZE <= st.st_size <= MAX_SIZE:
        return False  # hard-linked: it is a stored payload now
    entries = _sizes(pool)
    room = min(MAX_BYTES, limit // 8) if limit else MAX_BYTES
    if len(entries) >= MAX_FILES or sum(s for s, _ in entries) + st.st_size > room:
        return False
    try:
        os.rename(raw, pool / f"{st.st_size:013d}.{raw.name}")
    except OSError:
        return False
    return True


def drop(pool: Path, now: float, idle: float = IDLE) -> int:
    """Delete the pool's files unused for ``idle`` seconds (0: all); how many."""
    n = 0
    for _, name in _sizes(pool):
        path = pool / name
        try:
            if idle and now - os.stat(path).st_ctime < idle:  # ctime: when it came here
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        n += 1
    return n


def fs_type(folder: Path) -> str:
    """The type of the filesystem ``folder`` is on ("ext4", "xfs"...; "" if unknown),
    from /proc/self/mountinfo, remembered per folder."""
    key = str(folder)
    if key not in _fs_types:
        best, kind = "", ""
        try:
            where = os.path.realpath(folder)
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    fields, _, rest = line.partition(" - ")
                    mount = fields.split(" ")[4].replace("\\040", " ")
                    inside = where == mount or where.startswith(mount.rstrip("/") + "/")
                    if inside and len(mount) >= len(best):
                        best, kind = mount, rest.split(" ", 1)[0]
        except (OSError, IndexError):
            kind = ""
        _fs_types[key] = kind
    return _fs_types[key]


def preallocate(fd: int, folder: Path, size: int) -> bool:
    """Give a new raw file in ``folder`` its ``size`` at once where that is cheaper
    (see above); True if it did (the writer then cuts it to what it wrote)."""
    if size <= 0 or fs_type(folder) not in PREALLOCATED:
        return False
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:  # no room for it all at once: written as it comes (or refused then)
        os.ftruncate(fd, 0)  # whatever it reserved before failing
        return False
    return True
