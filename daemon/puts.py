"""Puts: StorageManager's files, each written at the key its caller named.

A put's file is hashed in the spool like an artifact's payload, then written at
``dest``/``key`` (verified against its SHA-256, as any object is) instead of
under ``objects/``; nothing is published about it. The same URL may be put again
and again (a checkpoint each epoch), and puts that waited through an outage go
at once, on several workers: so the puts of one URL are written one at a time,
and a put older than one of that URL committed already is not written at all
(it would put older bytes over newer ones; it counts as committed, superseded).
The journal keeps committed puts for ``journal_keep``: a put that waits longer
than that behind a newer one of its URL is written when its turn comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

from artisync.protocol import Spool, put_target

from .destinations import Destination
from .journal import Journal, Row
from .metrics import METRICS
from .objects import put_from_spool
from .storage.base import IntegrityError, PermanentStorageError

log = logging.getLogger("artisync.daemon")


class PutSender:
    def __init__(self, journal: Journal, spool: Spool, started: float) -> None:
        self.journal = journal
        self.spool = spool
        self.started = started  # the daemon's start: older unfinished uploads are abandoned
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, row: Row) -> AsyncIterator[None]:
        """Hold the put's URL while it is processed (written and committed)."""
        target = put_target(row.destination_uri, row.body["key"])
        lock = self._locks.setdefault(target, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(target) is lock:
                del self._locks[target]

    async def send(self, destination: Destination, row: Row, suspect: bool) -> None:
        """Write the put's file at its key, unless a newer put of its URL is committed.
        Call it holding :meth:`one_at_a_time`.

        :raises TransientStorageError: retried later.
        :raises PermanentStorageError: the record fails, with the reason."""
        body = row.body
        key, sha, size = body["key"], body["sha256"], int(body["size"])
        target = put_target(row.destination_uri, key)
        if await self.journal.newer_put_committed(target, row.seq, float(body["created"])):
            log.info("put %s: a newer put of %s is committed: not written", row.record_id, target)
            return
        path = await asyncio.to_thread(self._payload, body, sha, size)
        storage = destination.storage
        if suspect:  # a killed daemon's (or a failed attempt's) unfinished upload
            await destination.abort_incomplete(key, self.started, size)
        started = time.monotonic()
        await put_from_spool(storage, key, path, size=size, sha256=sha)
        METRICS.upload_seconds.labels(storage.scheme).observe(time.monotonic() - started)
        METRICS.uploaded.labels(storage.scheme).inc(size)
        if storage.take_retried(key):
            await destination.abort_incomplete(key, self.started, size)

    def _payload(self, body: dict[str, object], sha: str, size: int) -> Path:
        """The put's file in the spool. A small one is kept in its record only (no
        blob is written when it is encoded): written from there, unsynced, to be sent."""
        path = self.spool.blob_path(sha)
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise PermanentStorageError("payload in the spool is not a regular file", key=sha)
            return path
        raw = body.get("raw")
        data = raw.get("data") if isinstance(raw, dict) else None
        if not isinstance(data, bytes) or len(data) != size:
            raise PermanentStorageError("payload missing from the spool", key=sha)
        if hashlib.sha256(data).hexdigest() != sha:
            raise IntegrityError("payload in the record does not match its hash", key=sha)
        self.spool.write_blob_bytes(data, sync=False)
        return path
