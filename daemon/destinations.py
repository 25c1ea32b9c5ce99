"""Destinations: one storage client per URI, and whether it is reachable.

After an operation has exhausted its retries, the destination goes offline:
its records wait, and one record is let through as a probe at exponentially
growing intervals (with jitter, capped) until a probe succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from .config import DaemonConfig
from .storage.base import PermanentStorageError, open_storage
from .storage.retry import RetryingStorage

log = logging.getLogger("artisync.daemon")


@dataclass
class Destination:
    uri: str
    storage: RetryingStorage
    online: bool = True
    failures: int = 0
    last_error: str | None = None
    retry_at: float = 0.0
    probing: bool = False
    probe_seq: int | None = None  # the record let through as the probe
    uploaded: int = 0
    sweep_warned: bool = False

    def ready(self, now: float) -> bool:
        return self.online or (not self.probing and now >= self.retry_at)

    def succeeded(self) -> None:
        if not self.online:
            log.info(
                "destination back online: %s (after %d failed probes)", self.uri, self.failures
            )
        self.online, self.failures, self.probing, self.last_error = True, 0, False, None

    def failed(
        self,
        err: Exception,
        max_backoff: float,
        retry_after: float | None,
        escalate: bool = True,
    ) -> float:
        """Take the destination offline; returns when to try again. Only the first
        failure and failed probes ``escalate`` the backoff: the other uploads that were
        in flight when the network went down fail too, and must not push the first
        probe out to the cap."""
        if not escalate and not self.online:
            self.last_error = str(err)[:500]
            return max(self.retry_at, time.time() + (retry_after or 0.0))
        self.failures += 1
        self.probing = False
        self.last_error = str(err)[:500]
        delay = min(max_backoff, 1.0 * 2 ** min(self.failures - 1, 20))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if retry_after:
            delay = max(delay, retry_after)
        if self.online:
            log.warning("destination offline: %s: %s", self.uri, self.last_error)
        self.online = False
        self.retry_at = time.time() + delay
        return self.retry_at

    def status(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "online": self.online,
            "failures": self.failures,
            "last_error": self.last_error,
            "next_probe_in": max(0.0, self.retry_at - time.time()) if not self.online else 0,
        }


class Destinations:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._by_uri: dict[str, Destination] = {}
        self._retired: list[Destination] = []
        self.broken: dict[str, str] = {}  # uri -> why it cannot even be opened

    def reconfigure(self, config: DaemonConfig) -> None:
        """New storage options (``artisync retry`` after a fix): clients are rebuilt on
        next use; the old ones, perhaps still in use by uploads in flight, are closed
        at shutdown."""
        self.config = config
        self._retired.extend(self._by_uri.values())
        self._by_uri = {}

    def get(self, uri: str) -> Destination:
        dest = self._by_uri.get(uri)
        if dest is None:
            try:
                inner = open_storage(uri, self.config.options_for(uri))
            except (ValueError, ImportError) as exc:
                raise PermanentStorageError(f"cannot open destination: {exc}", backend=uri) from exc
            storage = RetryingStorage(inner, max_elapsed=self.config.retry_max_elapsed)
            dest = self._by_uri[uri] = Destination(uri, storage)
        return dest

    def offline(self) -> list[str]:
        now = time.time()
        return [u for u, d in self._by_uri.items() if not d.ready(now)]

    def status(self) -> list[dict[str, Any]]:
        return [d.status() for d in self._by_uri.values()]

    async def aclose(self) -> None:
        for dest in [*self._retired, *self._by_uri.values()]:
            try:
                await dest.storage.aclose()
            except Exception as exc:  # closing must not hide the real shutdown cause
                log.warning("closing %s failed: %s", dest.uri, exc)


async def abort_incomplete(
    dest: Destination, key: str, started: float, size: int | None = None
) -> int:
    """Remove what an interrupted upload of ``key`` may have left at the destination:
    unfinished S3 multipart uploads (invisible, but billed and kept forever without a
    lifecycle rule) and the file backend's temp files (older than ``started``, this
    daemon's start: another writer's may still be growing). Google Cloud Storage and
    Azure expire theirs on their own. Call it only while this daemon has no upload
    of ``key`` to ``dest`` in flight.

    Returns how many were removed. A transient error propagates (the record is retried);
    lacking the permission to list uploads is logged once and otherwise ignored.
    """
    inner: Any = getattr(dest.storage, "inner", dest.storage)
    try:
        if inner.scheme == "s3":
            if size is None or size < getattr(inner, "multipart_threshold", 0):
                return 0  # sent in one PUT: nothing can be left over
            return await _abort_s3_uploads(inner, key, time.time())
        if inner.scheme == "file":
            return await asyncio.to_thread(_remove_file_temps, inner, key, started)
    except PermanentStorageError as exc:
        if not dest.sweep_warned:
            dest.sweep_warned = True
            log.warning("cannot clean up interrupted uploads at %s: %s", dest.uri, exc)
    return 0


async def _abort_s3_uploads(s3s: Any, key: str, before: float) -> int:
    # S3Storage has no such operation (yet): this uses its client and key prefix
    name = s3s._prefix.key(key)
    n = 0
    with s3s._errors("abort-incomplete", key):
        client = await s3s._s3()
        page = await client.list_multipart_uploads(Bucket=s3s.bucket, Prefix=name)
        for up in page.get("Uploads", []):
            if up.get("Key") != name or up["Initiated"].timestamp() >= before:
                continue
            await client.abort_multipart_upload(
                Bucket=s3s.bucket, Key=name, UploadId=up["UploadId"]
            )
            n += 1
    if n:
        log.info("aborted %d unfinished multipart uploads of %s at %s", n, key, s3s.uri)
    return n


def _remove_file_temps(fs: Any, key: str, before: float) -> int:
    path = fs._path(key)
    n = 0
    try:
        with os.scandir(path.parent) as it:
            for entry in it:
                if entry.name.startswith(f".{path.name}.") and entry.name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat(follow_symlinks=False).st_mtime < before:
                            os.unlink(entry.path)
                            n += 1
    except OSError:  # the folder is gone or unreachable: the upload itself will tell
        return n
    return n
