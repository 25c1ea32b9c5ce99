"""Sending a record's objects: deduplicated, shared between records, bounded.

Each object is content-addressed, so a record's objects that the journal knows to
be at the destination (within the reuse window) are skipped, two records needing
the same object send it once, and many small objects are in flight at once while
large ones (sent in parallel parts already) go a few at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from artisync.protocol import DROP_MIN, Spool, drop_cached_file, hash_file, object_key
from artisync.protocol.formats import in_pack, pack_name, read_listing, read_member

from .destinations import Destination
from .journal import Journal
from .metrics import METRICS
from .storage.base import IntegrityError, PermanentStorageError, first_error
from .storage.retry import RetryingStorage

log = logging.getLogger("artisync.daemon")

LARGE_OBJECT = 16 * 1024 * 1024  # sent in parts, each request a part of it
LARGE_IN_FLIGHT = 2  # large objects uploading at once (each with its own parts in flight)
# sha256 -> (pack, offset) of a folder's members kept in its pack (see protocol.formats)
Packed = Mapping[str, tuple[Path, int]]
Kept = Mapping[str, bytes]  # sha256 -> a payload its record holds (see .inline)
_READ_ON_LOOP = 256 * 1024  # pack members read without a thread hop, up to this size
_WRITTEN_KEPT = 65536  # recent uploads remembered, so that racing records send once


async def put_from_spool(
    storage: RetryingStorage, key: str, path: Path, *, size: int, sha256: str
) -> None:
    """Send the spool file at ``path`` as ``key``; sent, its pages leave the page cache
    (``protocol._page_cache``)."""
    await storage.put(key, path, size=size, sha256=sha256)
    if size >= DROP_MIN:  # a smaller one would be only looked at: no thread hop for it
        await asyncio.to_thread(drop_cached_file, path)


class ObjectSender:
    def __init__(
        self,
        journal: Journal,
        spool: Spool,
        concurrency: int,
        reuse_window: float,
        started: float,
    ) -> None:
        self.journal = journal
        self.spool = spool
        self.reuse_window = reuse_window
        self.started = started  # the daemon's start: older unfinished uploads are abandoned
        self.bytes_in_flight = 0
        self._objects: dict[tuple[str, str], asyncio.Future[None]] = {}
        # (destination, sha) -> when its copy there was written, of the latest uploads
        self._written: dict[tuple[str, str], float] = {}
        self._early: set[asyncio.Task[None]] = set()
        self._small = asyncio.Semaphore(concurrency)
        self._large = asyncio.Semaphore(LARGE_IN_FLIGHT)

    async def ensure(
        self,
        destination: Destination,
        refs: list[tuple[str, int]],
        suspect: bool,
        packed: Packed | None = None,
        kept: Kept | None = None,
    ) -> None:
        """Upload the objects of one record that the destination lacks, many at once (a
        folder is thousands): each takes a slot of the daemon's object limit; the first
        error cancels the rest and is raised. ``kept``: payloads the record itself holds
        (see :mod:`.inline`), sent from memory."""
        if not refs:
            return
        since = time.time() - self.reuse_window
        known: set[str] = set()
        if not suspect:  # sent lately by this daemon (a dict reported again, unchanged): no query
            known = {s for s, _ in refs if self._written.get((destination.uri, s), 0.0) >= since}
            unknown = [s for s, _ in refs if s not in known]
            if unknown:
                known |= await self.journal.known_objects(destination.uri, unknown, since)
        todo = [(sha, size) for sha, size in refs if sha not in known]
        there = [size for sha, size in refs if sha in known]
        METRICS.deduplicated(destination.storage.scheme, len(there), sum(there))
        if len(todo) == 1:
            await self._ensure_object(destination, *todo[0], suspect, packed, kept)
            return
        try:
            async with asyncio.TaskGroup() as tg:
                for sha, size in todo:
                    tg.create_task(
                        self._ensure_object(destination, sha, size, suspect, packed, kept)
                    )
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _ensure_object(
        self,
        destination: Destination,
        sha: str,
        size: int,
        suspect: bool,
        packed: Packed | None = None,
        kept: Kept | None = None,
    ) -> None:
        """Upload one object unless the destination has it; share concurrent uploads.

        An upload of the same object for another record may be cancelled (its record's
        other object failed first): that is not this record's answer, so this one then
        uploads the object itself."""
        key = (destination.uri, sha)
        while (fut := self._objects.get(key)) is not None:
            try:
                await asyncio.shield(fut)
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not fut.cancelled() or (task is not None and task.cancelling()):
                    raise  # this task itself is being cancelled
        fut = asyncio.get_running_loop().create_future()
        self._objects[key] = fut
        try:
            written = None
            async with self._slots(size):
                # while we hold the key no upload of ours for it is in flight: whatever
                # unfinished upload the destination lists for it was abandoned
                if suspect:  # by a killed daemon, or by a failed attempt whose abort failed
                    await destination.abort_incomplete(object_key(sha), self.started, size)
                # sent by another record since this one asked the journal: a dict
                # lookup, not a journal query per object (a folder is thousands)
                if self._written.get(key, 0.0) < time.time() - self.reuse_window:
                    written = await self._upload(destination, sha, size, packed, kept)
            if written is not None:  # journaled with the slot given back: a commit's
                # fsync must not hold a request slot (a folder is thousands of commits)
                await self.journal.add_object(destination.uri, sha, size, written)
                self._remember_written(key, written)
            fut.set_result(None)
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        except BaseException:
            fut.cancel()  # cancelled: the waiters upload it themselves
            raise
        finally:
            del self._objects[key]

    def send_early(self, destination: Destination, blobs: list[tuple[str, int]]) -> None:
        """Start sending objects not sent in parts whose record is not ready to upload yet
        (a folder's members of 1 MiB or more, as they are copied out of its pack, the
        smaller ones staying in it): the record's own send then finds
        them in flight or sent. Nothing here is a record's answer: a failure is left for
        that send to meet and report, and an offline destination is left to its probe."""
        blobs = [(sha, size) for sha, size in blobs if size < LARGE_OBJECT]
        if blobs and destination.online:
            task = asyncio.get_running_loop().create_task(self._send_early(destination, blobs))
            self._early.add(task)
            task.add_done_callback(self._early.discard)

    async def _send_early(self, destination: Destination, blobs: list[tuple[str, int]]) -> None:
        since = time.time() - self.reuse_window
        try:
            shas = [s for s, _ in blobs]
            known = await self.journal.known_objects(destination.uri, shas, since)
        except sqlite3.Error:
            return  # the record's own send meets it, and reports it
        sends = [
            self._ensure_object(destination, sha, size, False)
            for sha, size in blobs
            if sha not in known and (destination.uri, sha) not in self._objects
        ]
        failed = [r for r in await asyncio.gather(*sends, return_exceptions=True) if r]
        if failed:
            log.debug(
                "%d objects not sent early to %s: %s", len(failed), destination.uri, failed[0]
            )

    def stop_early(self) -> None:
        for task in self._early:
            task.cancel()

    def _remember_written(self, key: tuple[str, str], written: float) -> None:
        self._written.pop(key, None)
        self._written[key] = written
        if len(self._written) > _WRITTEN_KEPT:  # the oldest go: at worst sent twice
            del self._written[next(iter(self._written))]

    def _slots(self, size: int) -> asyncio.Semaphore:
        """Small objects: many requests in flight (latency-bound); large ones: a few,
        each already sending parts in parallel (bandwidth- and memory-bound)."""
        return self._large if size >= LARGE_OBJECT else self._small

    async def _upload(
        self,
        destination: Destination,
        sha: str,
        size: int,
        packed: Packed | None = None,
        kept: Kept | None = None,
    ) -> float:
        """Send the object unless storage has a fresh copy; returns when the copy there
        was written (now, or the one found, when fresh).

        An object written longer ago than the reuse window may be a candidate of
        ``artisync prune``: it is written again (the same bytes), which renews it, and
        each send keeps clear of prune's sweeps (:mod:`.sweeps`)."""
        okey = object_key(sha)
        storage = destination.storage
        # a small object costs about as much to send as to ask for: send it (keys are
        # content addresses, so a second copy is the same bytes)
        if size >= storage.head_before_put:
            info = await storage.head(okey)
            if info is not None and info.size == size:
                if (info.modified or 0) >= time.time() - self.reuse_window:
                    METRICS.deduplicated(storage.scheme, 1, size)
                    return info.modified or 0.0
                held = kept is not None and sha in kept
                if not held and not self._spooled(sha, packed):  # old, and no copy here:
                    await self._fetch_back(storage, sha, size)  # fetch it back
        if kept is not None and sha in kept:
            return await self._send_kept(destination, okey, kept[sha], sha)
        member = None if packed is None else packed.get(sha)
        path = self.spool.blob_path(sha) if member is None else member[0]
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise PermanentStorageError("payload missing from the spool", key=sha) from None
        if not stat.S_ISREG(st.st_mode):
            raise PermanentStorageError("payload in the spool is not a regular file", key=sha)
        while True:
            clear_at = await destination.sweeps.clear()
            written = await self._put(destination, okey, path, sha, size, member)
            if destination.sweeps.covered(clear_at):
                return written
            # a long send: a sweep may have looked at the old copy before this one
            # landed, and removed it after; once no sweep is live, what is there stays
            await destination.sweeps.clear()
            info = await storage.head(okey)
            if info is not None and info.size == size:
                return written
            log.info("object %s removed by a prune sweep while it was sent: again", sha[:12])

    async def _put(
        self,
        destination: Destination,
        okey: str,
        path: Path,
        sha: str,
        size: int,
        member: tuple[Path, int] | None = None,
    ) -> float:
        """Send the blob at ``path``, or the member of a pack at ``member``'s offset."""
        storage = destination.storage
        self.bytes_in_flight += size
        started = time.monotonic()
        written = time.time()  # before the put: S3 dates a multipart object by its start
        try:
            if member is None:
                await put_from_spool(storage, okey, path, size=size, sha256=sha)
            else:  # small: read whole, checked against its name where it lands (by the
                # server, or hashed); just hashed, it is in the page cache: up to 256 KiB,
                # reading it costs the loop less than handing the read to a thread and back
                read = (path, member[1], size, sha, False)
                small = size <= _READ_ON_LOOP
                data = read_member(*read) if small else await asyncio.to_thread(read_member, *read)
                await storage.put_bytes(okey, data, sha256=sha)
        finally:
            self.bytes_in_flight -= size
        METRICS.upload_seconds.labels(storage.scheme).observe(time.monotonic() - started)
        METRICS.uploaded.labels(storage.scheme).inc(size)
        if storage.take_retried(okey):
            # an attempt retried inside this put may have left parts its own clean-up
            # could not remove
            await destination.abort_incomplete(okey, self.started, size)
        return written

    async def _send_kept(self, destination: Destination, okey: str, data: bytes, sha: str) -> float:
        """Send a payload its record holds (small: no prune sweep outlasts it unseen)."""
        while True:
            clear_at = await destination.sweeps.clear()
            written, started = time.time(), time.monotonic()
            await destination.storage.put_bytes(okey, data, sha256=sha)
            scheme = destination.storage.scheme
            METRICS.upload_seconds.labels(scheme).observe(time.monotonic() - started)
            METRICS.uploaded.labels(scheme).inc(len(data))
            if destination.sweeps.covered(clear_at):
                return written

    async def _fetch_back(self, storage: RetryingStorage, sha: str, size: int) -> None:
        """Copy an object from storage back into the spool, checked against its name, so
        that it can be written again (renewed) rather than reused as it is."""
        f, tmp = self.spool.open_temp()
        f.close()
        try:
            await storage.get(object_key(sha), tmp)
            got, got_size = await asyncio.to_thread(hash_file, tmp)
            if got != sha or got_size != size:
                raise IntegrityError("stored object does not match its name", key=sha)
            await asyncio.to_thread(self.spool.commit_temp, tmp, sha, sync=False)
        finally:
            tmp.unlink(missing_ok=True)

    def packed(self, body: dict[str, Any]) -> Packed | None:
        """Where a folder's members that stay in its pack are (None: not a folder, or
        its pack is gone: its record is committed, the members are in storage)."""
        main = body.get("sha256")
        if body.get("format") != "tree" or not isinstance(main, str):
            return None
        pack = self.spool.blob_path(pack_name(main))
        try:
            entries = read_listing(self.spool.blob_path(main))
        except (FileNotFoundError, IntegrityError):
            return None
        if not pack.is_file():
            return None
        return {sha: (pack, offset) for sha, (offset, _) in in_pack(entries).items()}

    def _spooled(self, sha: str, packed: Packed | None = None) -> bool:
        return (packed is not None and sha in packed) or os.path.isfile(self.spool.blob_path(sha))
