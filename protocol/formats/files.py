"""A path to a file: stored as it is, and read back as the local path of a copy.

The file is copied into the spool's raw snapshot at snapshot time
(``copy_file_range``: a reflink or in-kernel copy where the filesystem allows
it), so that rewriting the original afterwards cannot change what is stored.
Where the copy is not a reflink (ext4), it goes over a recycled raw file when
one fits (see ``protocol._recycle``): 16 MiB in ~2 ms instead of ~4.
The copy is the stored form: the daemon hashes it and links it into ``blobs/``.
Which ``str`` is a path is decided in ``_paths``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from artisync.protocol import format_size, recycle

from ._base import INLINE_MAX, Captured, Format, Request, SerializationError
from ._paths import FILE_SUFFIX, copy_fd, spool_full

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")


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
        size = os.fstat(fd).st_size
        if 0 < size <= INLINE_MAX:  # st_size 0 may be a pseudo-file: copied, not read
            data = _read_all(fd, src)
            if len(data) <= INLINE_MAX:
                return req.raw_bytes("stored", data)
            os.lseek(fd, 0, os.SEEK_SET)
        # where a copy is a reflink (XFS, btrfs), it shares extents: nothing to save
        copies = recycle.fs_type(req.raw.parent) in recycle.PREALLOCATED
        out = req.recycled(size) if copies else None
        reused = out is not None
        if out is None:
            out = req.create()
        try:
            sized = reused or (
                req.opener is None and recycle.preallocate(out, req.raw.parent, size)
            )
            copied = copy_fd(fd, size, out)
            if sized and os.fstat(out).st_size != copied:  # cut what was there before
                os.ftruncate(out, copied)
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
