"""Which objects are paths, what they name, and copying a file into the spool.

How a ``str`` is read (``pathlib.Path`` and other ``os.PathLike`` objects are
always paths):

1. An existing file or folder (after ``~`` expansion) is that file or folder,
   even when the string was meant as text: the file wins, as in ClearML.
2. Otherwise a string that *looks like a path* is one: if it holds a glob
   wildcard (``*``, ``?``, ``[``) it is a wildcard, which must match at least
   one file; if not, ``SerializationError("... does not exist")``.
3. Anything else is text.

A string looks like a path when it is one line of under 4096 characters, is
not a URL (``scheme://``), and either starts with ``/``, ``./``, ``../`` or
``~``; or contains a ``/`` and has no whitespace, or a ``/`` and an existing
parent folder; or has no whitespace and ends with a file-like suffix (a dot,
a letter, then up to nine letters/digits: ``results.csv``, ``*.jpg``). So
``"runs/a.csv"`` and ``"a.csv"`` must exist, while ``"train/val loss: 0.3"``,
``"why?"`` and ``"s3://bucket/key"`` are stored as text.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

from ._base import PathTarget, SerializationError

CHUNK = 1024 * 1024  # bytes per read where the kernel cannot copy
_MAX_PATH_STR = 4096
WILDCARD = re.compile(r"[*?[]")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
FILE_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,9}\Z")
_HOME = re.compile(r"~[\w.-]*(/|\Z)")


def is_pathlike(obj: Any) -> bool:
    return hasattr(type(obj), "__fspath__")


def looks_like_path(text: str) -> bool:
    """The rule in the module docstring (after the single-line/URL checks)."""
    if text.startswith(("/", "./", "../")) or _HOME.match(text):
        return True
    spaced = any(c.isspace() for c in text)
    if "/" in text:
        return not spaced or Path(text).expanduser().parent.is_dir()
    return not spaced and FILE_SUFFIX.search(text) is not None


def _may_be_path(text: str) -> bool:
    return (
        0 < len(text) < _MAX_PATH_STR
        and not any(c in text for c in "\n\r\0")
        and _URL.match(text) is None
    )


def resolve_path(obj: Any) -> PathTarget | None:
    """What a ``str`` or path-like object names, or None for a str to store as text.

    :raises SerializationError: a path that does not exist or cannot be read.
    """
    is_str = isinstance(obj, str)
    text = obj if isinstance(obj, str) else os.fsdecode(os.fspath(obj))
    if is_str and not _may_be_path(text):
        return None
    path = Path(text).expanduser()
    try:
        st: os.stat_result | None = os.stat(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            raise SerializationError(f"cannot access artifact path {text!r}: {exc}") from exc
        st = None
    pathish = not is_str or looks_like_path(text)
    if st is None and WILDCARD.search(text) and pathish:
        return PathTarget("wildcard", text, path)
    if st is None and pathish:
        raise SerializationError(
            f"artifact path {text!r} does not exist (resolved to {path.absolute()}); to "
            "store the string itself, pass serialization_function=str.encode"
        )
    if st is None:
        return None
    if stat.S_ISREG(st.st_mode):
        return PathTarget("file", text, path)
    return PathTarget("folder" if stat.S_ISDIR(st.st_mode) else "special", text, path)


def spool_full(exc: OSError) -> bool:
    """Did a copy into the spool fail because the spool's disk (or quota) is full?"""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def copy_fd(fd: int, size: int, out_fd: int) -> int:
    """Copy an open file (``size`` bytes when opened) to the end of ``out_fd``, kernel-side
    where possible; returns the bytes copied. Raw descriptors: for a 64 KiB file,
    Python file objects would cost as much as the copy itself."""
    total = 0
    if size:  # st_size 0: empty, or a pseudo-file (/proc) whose bytes only read() gives
        try:
            while total < size:
                n = os.copy_file_range(fd, out_fd, size - total)
                if n == 0:
                    break
                total += n
            return total
        except OSError:
            pass  # cross-device on old kernels, or a filesystem that cannot: read and write
    while total < size or not size:
        chunk = os.read(fd, min(CHUNK, size - total) if size else CHUNK)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(out_fd, view) :]
        total += len(chunk)
    return total
