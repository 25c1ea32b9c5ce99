"""The local cache of verified objects (``$XDG_CACHE_HOME/artisync/objects``).

An object is named by its SHA-256 and written whole before it appears (renamed
into place). A folder artifact's materialized tree sits beside its listing as
``<sha>.d`` (and ``<sha>.zip`` when asked for as an archive). The cache is kept
under ``cache_limit`` bytes (0: no limit): after a new object arrives, the least
recently used entries go first (a hit renews an entry's time). An entry is
removed by renaming it aside first, so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

limit = 10 * 1024**3  # bytes; set from the settings (cache_limit) by the reader
_estimate: int | None = None  # bytes in the cache: scanned once, then counted as it grows
_lock = threading.Lock()


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "artisync" / "objects"


def cached(sha256: str, fill: Callable[[Path], object], name: str | None = None) -> Path:
    """The cache's verified copy of ``sha256`` (under ``name``, default the hash: a
    URL's copy is named by its digest and file name); made by ``fill(tmp)`` (which
    writes and checks it) when missing, then renamed into place: never seen
    half-written. A hit renews its time of use."""
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    entry = name or sha256
    path = cache / entry
    if path.exists():
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used
        return path
    tmp = temp_path(sha256)
    try:
        fill(tmp)
        size = tmp.stat().st_size
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    evict(keep=(entry,), added=size)
    return path


def temp_path(key: str) -> Path:
    """A temporary name in the cache that eviction skips (it starts with a dot)."""
    return cache_root() / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"


def touch(path: Path) -> bool:
    """A hit on an entry made from an object (a named copy, a tree, a zip): renews its time
    of use, as :func:`cached` does an object's. False if it is not there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:
        pass  # not ours to touch: still a hit
    return True


def forget(shas: Iterable[str]) -> None:
    """Drop these objects (and trees made from them): the next read downloads again."""
    cache = cache_root()
    for sha in shas:
        for path in cache.glob(f"{sha}*"):  # the object, its named copy, its tree, its zip
            _remove(path)


def evict(keep: Iterable[str] = (), added: int = 0) -> int:
    """Remove least recently used entries until the cache is under ``limit``; returns
    how many went. The cache is scanned only when its counted size is over the limit
    (or not known yet): a hit costs nothing, a new object a comparison."""
    global _estimate
    if not limit:
        return 0
    with _lock:
        if _estimate is not None:
            _estimate += added
            if _estimate <= limit:
                return 0
        kept = set(keep)
        entries = []
        with contextlib.suppress(FileNotFoundError), os.scandir(cache_root()) as it:
            for e in it:
                if e.name.startswith("."):
                    continue  # being written, or being removed
                try:
                    entries.append((e.stat(follow_symlinks=False).st_mtime, _size(e), e.name))
                except OSError:
                    continue
        total = sum(size for _, size, _ in entries)
        gone = 0
        for _, size, name in sorted(entries):
            if total <= limit:
                break
            if name.partition(".")[0] in kept:
                continue
            _remove(cache_root() / name)
            total -= size
            gone += 1
        _estimate = total
        return gone


def _size(entry: os.DirEntry[str]) -> int:
    if not entry.is_dir(follow_symlinks=False):
        return entry.stat(follow_symlinks=False).st_size
    total = 0
    for dirpath, _, files in os.walk(entry.path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _remove(path: Path) -> None:
    aside = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.gone")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
