"""A path to a file: stored as it is, and read back as the local path of a copy.

The file is copied into the spool at snapshot time (``copy_file_range``: a
reflink or in-kernel copy where the filesystem allows it), so that rewriting
the original afterwards cannot change what is stored; hashing waits for
``write()``. Which ``str`` is a path is decided in ``_paths``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artisync.protocol import Spool, format_size

from ._base import (
    Format,
    Request,
    SerializationError,
    Snapshot,
    StoredPayload,
    make_snapshot,
    single_blob,
)
from ._paths import FILE_SUFFIX, copy_fd

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def snapshot(obj: Any, req: Request) -> Snapshot | None:
    if req.path is None or req.path.kind != "file":
        return None
    path, ext = req.path.path, req.ext
    suffix = file_suffix(path.name)
    if ext is not None and ext != suffix.lower():
        raise SerializationError(
            f"a file is stored as it is: extension_name={ext!r} does not match {path.name!r}; "
            f"allowed: None or {suffix.lower() or '(no extension)'}"
        )
    tmp, size = _copy_to_temp(str(path), req.spool)
    return make_snapshot(
        "file",
        "file",
        suffix,
        req.preview or f"{path.name} - {format_size(size)}",
        _commit(tmp),
        [tmp],
        filename=path.name,
    )


def file_suffix(name: str) -> str:
    """``a.csv`` -> ``.csv``; ``a.tar.gz`` -> ``.tar.gz``; ``README`` -> ``""``."""
    stem, ext = os.path.splitext(name)
    if ext.lower() in _COMPRESSED:
        inner = os.path.splitext(stem)[1]
        if FILE_SUFFIX.search(inner):
            return inner + ext
    return ext


def _copy_to_temp(src: str, spool: Spool) -> tuple[Path, int]:
    f, tmp = spool.open_temp()
    try:
        with f:
            fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return tmp, copy_fd(fd, os.fstat(fd).st_size, f.fileno())
            finally:
                os.close(fd)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise SerializationError(f"cannot copy {src}: {exc}") from exc
        raise


def _commit(tmp: Path) -> Callable[[Spool], StoredPayload]:
    return lambda spool: single_blob(*spool.commit_temp(tmp))


def load(type_: str, format_: str, path: Path, allow_pickle: bool) -> Any:
    return str(path)


FORMAT = Format("file", snapshot, lambda type_, format_: type_ == "file", load)
