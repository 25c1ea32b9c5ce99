"""StorageManager's downloads: copies in the local object cache, and plain HTTP(S).

A copy of a URL's object is a cache entry ``<digest of the URL>.<name>`` (an
extracted archive beside it: ``....extracted``), written whole before it appears,
and evicted with the artifacts' objects to keep the cache under ``cache_limit``
(least recently used first; ``force_download`` drops it and fetches again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from artisync.protocol import AccessDenied, NotFound, PermanentStorageError, TransientStorageError

from . import _cache

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")  # extracted
_TARS = ARCHIVES[1:]


def local_copy(
    url: str, name: str | None, fetch: Callable[[Path], object], extract: bool, force: bool
) -> Path:
    """The cache's copy of ``url``'s object, named ``name`` (default: the URL's last
    part); ``fetch(tmp)`` downloads it when missing. An archive is extracted beside
    it (once) when ``extract``, and the folder returned."""
    digest = hashlib.sha256(url.encode()).hexdigest()
    if force:
        _cache.forget([digest])
    base = (name or url.rstrip("/").rpartition("/")[2] or "object").replace(os.sep, "_")
    copy = _cache.cached(digest, fetch, name=f"{digest}.{base}")
    if not (extract and base.lower().endswith(ARCHIVES)):
        return copy
    out = copy.with_name(copy.name + ".extracted")
    if out.exists():
        return out
    tmp = _cache.temp_path(digest)
    try:
        if base.lower().endswith(_TARS):  # its members may not leave the folder
            shutil.unpack_archive(copy, tmp, filter="data")
        else:  # zip: members that would leave it are skipped
            shutil.unpack_archive(copy, tmp)
        size = _tree_size(tmp)
        with contextlib.suppress(OSError):  # another process finished first: theirs
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _cache.evict(keep=(copy.name, out.name), added=size)
    return out


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


async def http_get(url: str, target: Path, wait_timeout: float) -> None:
    """GET ``url`` into ``target`` (written whole, then renamed), retrying connection
    errors, timeouts, 5xx and 429 (after its Retry-After) for up to ``wait_timeout``.

    :raises NotFound: 404. :raises AccessDenied: 401, 403.
    :raises PermanentStorageError: any other 4xx.
    :raises TransientStorageError: still failing after ``wait_timeout``."""
    from artisync.daemon.storage.retry import STORAGE_RETRY, Backoff

    backoff = Backoff(replace(STORAGE_RETRY, max_elapsed=wait_timeout))
    while True:
        try:
            await _get_once(url, target)
            return
        except TransientStorageError as exc:
            delay = backoff.next_delay(exc)
            if delay is None:
                raise
            await asyncio.sleep(delay)


async def _get_once(url: str, target: Path) -> None:
    import aiohttp

    where: dict[str, Any] = {"op": "get", "key": url}
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            status = resp.status
            if status == 429 or status >= 500:
                after = _seconds(resp.headers.get("Retry-After"))
                raise TransientStorageError(f"HTTP {status}", retry_after=after, **where)
            if status == 404:
                raise NotFound("HTTP 404", **where)
            if status in (401, 403):
                raise AccessDenied(f"HTTP {status}", **where)
            if status >= 400:
                raise PermanentStorageError(f"HTTP {status}", **where)
            tmp = target.with_name(f".{target.name}.part")
            try:
                f = await asyncio.to_thread(open, tmp, "wb")
                try:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        await asyncio.to_thread(f.write, chunk)
                finally:
                    f.close()
                await asyncio.to_thread(os.replace, tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransientStorageError(f"{type(exc).__name__}: {exc}", **where) from exc


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the policy's own delay instead
