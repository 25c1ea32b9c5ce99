"""A path to a file: stored as it is, and read back as the local path of a copy.

The file is copied into the spool's raw snapshot at snapshot time
(``copy_file_range``: a reflink or in-kernel copy where the filesystem allows
it), so that rewriting the original afterwards cannot change what is stored.
Where the copy is not a reflink (ext4), it goes over a recycled raw file when
one fits (see ``protocol._recycle``): 16 MiB in ~2 ms instead of ~4.
The copy is the stored form: the daemon hashes it and links it into ``blobs/``.
Which ``str`` is a path is decided in ``_paths``.

A file of ``LEASE_MIN`` or more reported to this user's own daemon may not be
copied here: the daemon takes a read lease on it and copies it itself
(``daemon.leases``), so the caller pays one round trip instead of the copy
(with a core to spare, a call that asks took ~1 ms, one that copies 16 MiB ~2.7). The SDK asks only while that is the
cheaper of the two for its process (``Request.lease``; see ``artisync._lease``).
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from artisync.protocol import format_size, recycle

from ._base import (
    INLINE_MAX,
    LEASE_UNKNOWN,
    NOT_LEASED,
    Captured,
    Format,
    Request,
    SerializationError,
)
from ._paths import FILE_SUFFIX, copy_fd, spool_full

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")
# below this, copying here costs less than asking the daemon (1 MiB: ~0.15 ms)
LEASE_MIN = 4 * 1024 * 1024
# where copy_file_range within one filesystem shares extents instead of copying
_REFLINKS = ("xfs", "btrfs", "bcachefs", "ocfs2", "zfs")
# network and user-space filesystems: no leases there (the kernel refuses them)
_NO_LEASES = ("nfs", "cifs", "smb", "fuse", "9p", "ceph", "glusterfs", "lustre", "afs")


def snapshot(obj: Any, req: Request) -> Captured | None:
    if req.path is None or req.path.kind != "file":
        return None
    path, ext = req.path.path, req.ext
    suffix = file_suffix(path.name)
    if ext is not None and ext != suffix.lower():
        raise SerializationError(
            f"a file is stored as it is: extension_name={ext!r} does not match {path.name!r}; "
            f"allowed: None or {suffix.lower() or '(no extension)'}"
        )
    raw = _copy_to_raw(str(path), req)
    preview = req.preview or f"{path.name} - {format_size(raw['size'])}"
    return Captured("file", "file", suffix, raw, preview, filename=path.name)


def file_suffix(name: str) -> str:
    """``a.csv`` -> ``.csv``; ``a.tar.gz`` -> ``.tar.gz``; ``README`` -> ``""``."""
    stem, ext = os.path.splitext(name)
    if ext.lower() in _COMPRESSED:
        inner = os.path.splitext(stem)[1]
        if FILE_SUFFIX.search(inner):
            return inner + ext
    return ext


def _copy_to_raw(src: str, req: Request) -> dict[str, Any]:
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SerializationError(f"cannot copy {src}: {exc}") from exc
    try:
        st = os.fstat(fd)
        size = st.st_size
        # where a copy is a reflink (XFS, btrfs), it shares extents: nothing to save
        copies = recycle.fs_type(req.raw.parent) in recycle.PREALLOCATED
        answer = _ask_lease(src, fd, st, req)
        if isinstance(answer, dict):  # the daemon copies it, under its lease
            return {"codec": "stored", "size": answer["size"], "leased": answer}
        if 0 < size <= INLINE_MAX:  # st_size 0 may be a pseudo-file: copied, not read
            data = _read_all(fd, src)
            if len(data) <= INLINE_MAX:
                return req.raw_bytes("stored", data)
            os.lseek(fd, 0, os.SEEK_SET)
        # a recycled file is renamed over the raw snapshot: not over the daemon's copy
        out = req.recycled(size) if copies and answer != LEASE_UNKNOWN else None
        reused = out is not None
        if out is None:
            try:
                out = req.create()
            except FileExistsError:
                if answer != LEASE_UNKNOWN:
                    raise
                # the daemon answered too late, but made the copy: that is the snapshot
                return {"codec": "stored", "size": os.stat(req.raw).st_size}
        try:
            began = time.perf_counter()
            sized = reused or (
                req.opener is None and recycle.preallocate(out, req.raw.parent, size)
            )
            copied = copy_fd(fd, size, out)
            if sized and os.fstat(out).st_size != copied:  # cut what was there before
                os.ftruncate(out, copied)
            if answer == NOT_LEASED and req.lease is not None:  # asked, or chose to copy
                req.lease.copied(size, time.perf_counter() - began)
            if reused:
                return {"codec": "stored", "size": copied, "reused": recycle.boot_id()}
            return {"codec": "stored", "size": copied}
        except BaseException as exc:
            req.raw.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not spool_full(exc):
                raise SerializationError(f"cannot copy {src}: {exc}") from exc
            raise
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _ask_lease(src: str, fd: int, st: os.stat_result, req: Request) -> dict[str, Any] | str | None:
    """The answer to a lease of a big file (see ``Request.lease``), or None: not one to
    ask about (small, not a regular file, no daemon to ask, a network filesystem's, or
    one a reflink copies for nothing: on the spool's filesystem, which makes them)."""
    if st.st_size < LEASE_MIN or req.lease is None or not stat.S_ISREG(st.st_mode):
        return None
    reflinks = recycle.fs_type(req.raw.parent) in _REFLINKS
    if reflinks and st.st_dev == os.stat(req.raw.parent).st_dev:
        return None
    if recycle.fs_type(Path(src).parent).startswith(_NO_LEASES):
        return None  # no leases there, and opening it could stall the daemon's loop
    answer = req.lease(os.path.abspath(src), fd, st.st_size)
    if isinstance(answer, dict) and (answer["dev"], answer["ino"]) != (st.st_dev, st.st_ino):
        raise SerializationError(f"cannot copy {src}: the daemon leased another file")
    return answer


def file_identity(path: str, st: os.stat_result) -> dict[str, Any]:
    """What a record says of a file the daemon copies under a lease: enough to know it
    unchanged. Strict: ctime moves with any write, truncation, chmod, rename or unlink,
    and no caller can set it back."""
    return {
        "path": path,
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def copy_leased(ident: dict[str, Any], out: Path) -> bool:
    """Copy the file a leased record names into ``out``, if it is still the one leased
    before and after the copy (``get()`` before any daemon copied it); False if not."""
    try:
        fd = os.open(ident["path"], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if file_identity(ident["path"], os.fstat(fd)) != ident:
            return False
        with open(out, "wb") as f:
            copy_fd(fd, ident["size"], f.fileno())
        return file_identity(ident["path"], os.fstat(fd)) == ident
    finally:
        os.close(fd)


def _read_all(fd: int, src: str) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, INLINE_MAX + 1):
            chunks.append(chunk)
            if sum(map(len, chunks)) > INLINE_MAX:
                break  # it grew: copied instead
    except OSError as exc:
        raise SerializationError(f"cannot copy {src}: {exc}") from exc
    return b"".join(chunks)


def load(type_: str, format_: str, path: Path, allow_pickle: bool) -> Any:
    return str(path)


FORMAT = Format("file", snapshot, lambda type_, format_: type_ == "file", load)
