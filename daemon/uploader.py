"""Upload workers: move records from ``pending`` to ``committed``.

A feeder claims due records from the journal into a bounded queue; N
workers upload each record's objects (deduplicated against the journal, a
HEAD on the destination, and uploads already in flight), then publish the
record. Transient failures put the record back with a delay and take the
destination offline; permanent ones mark the record failed with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import time
from typing import Any

from artisync.protocol import REUSE_WINDOW, Spool, batch_prefix

from .delete_after import delete_original
from .destinations import Destination, Destinations
from .inline import committed_body, kept_payload
from .journal import Journal, Row, State
from .metrics import METRICS
from .objects import ObjectSender
from .publish import BatchingPublisher, inline_blob, publish_task, record_keys
from .puts import PutSender
from .storage.base import (
    IntegrityError,
    PermanentStorageError,
    TransientStorageError,
    parse_uri,
)
from .storage.retry import RetryPolicy

log = logging.getLogger("artisync.daemon")

_STOP = None  # queue sentinel (asyncio.Queue.shutdown is 3.13+)
ORPHAN_SWEEP = 10.0  # seconds between sweeps for records no worker holds any more
# a journal that cannot be written: the record goes again after 1 s, doubling up to 30 s
_JOURNAL_RETRY = RetryPolicy(initial=1.0, max_delay=30.0, jitter=0.0, max_elapsed=None)


class Uploader:
    def __init__(
        self,
        journal: Journal,
        spool: Spool,
        destinations: Destinations,
        concurrency: int,
        object_concurrency: int = 32,
        reuse_window: float = REUSE_WINDOW,
    ) -> None:
        self.journal = journal
        self.reuse_window = reuse_window
        self.spool = spool
        self.destinations = destinations
        self.concurrency = concurrency
        self.queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=concurrency)
        self.wakeup = asyncio.Event()
        self.progress = asyncio.Condition()  # notified whenever a record settles
        self.in_flight: dict[int, Row] = {}
        self.full = False  # the feeder waits for a worker to finish
        self._sent: set[int] = set()  # records whose objects are at their destination
        self._task_locks: dict[str, asyncio.Lock] = {}
        self.publisher = BatchingPublisher()
        self.accepting = True
        self.started = time.time()
        # a row the feeder queued behind the workers' stop sentinels is never processed:
        # draining waits for the workers, not for in_flight to empty
        self.live_workers = 0
        self.objects = ObjectSender(journal, spool, object_concurrency, reuse_window, self.started)
        self.puts = PutSender(journal, spool, self.started)

    def poke(self) -> None:
        self.wakeup.set()

    async def feeder(self) -> None:
        last_sweep = time.monotonic()
        while self.accepting:
            self.wakeup.clear()  # before the claim: a poke that comes during it counts
            free = self.concurrency - len(self.in_flight)
            rows: list[Row] = []
            try:
                if time.monotonic() - last_sweep > ORPHAN_SWEEP:
                    last_sweep = time.monotonic()
                    if n := await self.journal.release_orphans(list(self.in_flight)):
                        log.error("%d records were left half-processed: they go again", n)
                if free > 0:
                    claimed = await self.journal.claim(
                        free, self.destinations.offline(), list(self.in_flight)
                    )
                    rows = await self._gate_probes(claimed)
            except sqlite3.Error as exc:  # disk full: wait for room, do not stop the daemon
                log.error("journal not writable, uploads paused: %s", exc)
                await asyncio.sleep(5)
                continue
            for row in rows:
                self.in_flight[row.seq] = row
                await self.queue.put(row)
            # all that was due is claimed, or every slot is taken: until a poke says more
            # is due (a new record, a free slot when full) or a second passes (retries)
            self.full = len(self.in_flight) >= self.concurrency
            # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation
            # that races with the event, and the daemon then hangs instead of stopping
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.wakeup.wait()

    async def _gate_probes(self, rows: list[Row]) -> list[Row]:
        """Let a single record through to each offline destination whose probe is due."""
        out, now = [], time.time()
        for row in rows:
            try:
                destination = self.destinations.get(row.destination_uri)
            except PermanentStorageError:
                out.append(row)  # fails permanently in the worker, with the reason
                continue
            if destination.online:
                out.append(row)
            elif destination.ready(now):
                destination.probing, destination.probe_seq = True, row.seq
                out.append(row)
            else:
                await self._release(row)
        return out

    async def _release(self, row: Row) -> None:
        await self.journal.set_state(row.seq, self._waiting(row), row.reason, time.time() + 1)

    async def worker(self) -> None:
        self.live_workers += 1
        try:
            while (row := await self.queue.get()) is not _STOP:
                try:
                    await self._process_until_journaled(row)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # the worker is being stopped
                    # a cancelled future awaited deep inside: not this worker's end (the
                    # record is released by the feeder's next sweep)
                    log.exception("record %s: upload interrupted, it goes again", row.record_id)
                finally:
                    self.in_flight.pop(row.seq, None)
                    self._sent.discard(row.seq)
                    async with self.progress:
                        self.progress.notify_all()
                    # slots for the feeder (else it waits for new records): a quarter of
                    # them at a time, so that a backlog is claimed in batches, not by one
                    if self.full and len(self.in_flight) <= self.concurrency * 3 // 4:
                        self.poke()
        finally:
            self.live_workers -= 1
            async with self.progress:
                self.progress.notify_all()

    async def _process_until_journaled(self, row: Row) -> None:
        """A journal that cannot be written (its disk is full) pauses this record, it does
        not stop the daemon: processing is idempotent, so the record simply goes again."""
        failures = 0
        while True:
            try:
                await self._process(row)
                return
            except sqlite3.Error as exc:
                failures += 1
                delay = _JOURNAL_RETRY.delay(failures)
                log.error(
                    "journal write failed (%s): record %s goes again in %.0f s",
                    exc,
                    row.record_id,
                    delay,
                )
                await asyncio.sleep(delay)

    def send_early(self, uri: str, blobs: list[tuple[str, int]]) -> None:
        """Objects of a record still being encoded, to send now (see ObjectSender)."""
        if not self.accepting:
            return
        try:
            destination = self.destinations.get(uri)
        except PermanentStorageError:
            return  # the record fails with the reason once it is encoded
        self.objects.send_early(destination, blobs)

    async def stop_workers(self, n: int) -> None:
        self.accepting = False
        self.objects.stop_early()
        for _ in range(n):
            await self.queue.put(_STOP)

    async def _process(self, row: Row) -> None:
        if row.kind != "put":
            await self._process_one(row)
            return
        async with self.puts.one_at_a_time(row):  # the puts of one URL, in order
            await self._process_one(row)

    async def _process_one(self, row: Row) -> None:
        try:
            destination = self.destinations.get(row.destination_uri)
        except PermanentStorageError as exc:
            await self._fail(row, str(exc))
            return
        suspect = (row.destination_uri, row.seq) in self.journal.suspects
        try:
            if row.kind == "put":  # its own key, nothing to publish
                await self.puts.send(destination, row, suspect)
            else:
                await self._send_and_publish(destination, row, suspect)
        except TransientStorageError as exc:
            await self._retry_later(destination, row, exc)
            return
        except PermanentStorageError as exc:
            destination.probing = False
            await self._fail(row, str(exc))
            return
        except sqlite3.Error:
            raise  # the journal, not the record: retried by the worker
        except Exception as exc:  # a bug must cost one record (kept, with the reason), not
            # the daemon: raised out of a worker it would stop every upload, at every start
            log.exception("record %s: unexpected error", row.record_id)
            destination.probing = False
            await self._fail(row, f"internal error: {type(exc).__name__}: {exc}")
            return
        if not destination.online:
            await self.journal.make_due(destination.uri)  # the records that waited: now
            self.poke()
        destination.succeeded()
        await self.journal.set_state(row.seq, State.COMMITTED, body=committed_body(row.body))
        METRICS.record_committed(destination.storage.scheme, row.kind)
        self.journal.suspects.discard((row.destination_uri, row.seq))
        if row.body.get("delete_after"):  # (a thread only for what it asked)
            await asyncio.to_thread(delete_original, row)

    async def _send_and_publish(self, destination: Destination, row: Row, suspect: bool) -> None:
        inline = inline_blob(row.body)  # travels in the record: no object of its own
        # also when only publishing is left: an object confirmed longer ago than the
        # reuse window may have been pruned since (known fresh ones cost no request)
        refs = [(str(sha), int(size)) for sha, size in row.body.get("blobs") or []]  # = refs
        if inline is not None:
            refs = [ref for ref in refs if ref[0] != inline[0]]
        packed = None
        if refs and row.body.get("format") == "tree":  # its small files may be in its pack
            packed = await asyncio.to_thread(self.objects.packed, row.body)
        kept = kept_payload(row.body) if refs else None  # sent from the journal's copy
        while True:
            checked = time.monotonic()
            await self.objects.ensure(destination, refs, suspect, packed, kept)
            # the record is published within the reuse window of the look at its objects
            # (prune counts on it): after a long stall (a suspended machine, a queue
            # behind a prune sweep), they are looked at again
            if time.monotonic() - checked < self.objects.reuse_window / 2:
                break
        if refs:  # kept as the record's state only if publishing fails (see _waiting):
            self._sent.add(row.seq)  # a crash before that just looks at them again
        if suspect:  # its own keys, and the batches of its task (named at random)
            keys = record_keys(row.body)
            for key in [*keys, batch_prefix(row.task_id)] if row.kind == "artifact" else keys:
                await destination.abort_incomplete(key, self.started)
        await self._publish(destination, row, inline)

    async def _retry_later(
        self, destination: Destination, row: Row, exc: TransientStorageError
    ) -> None:
        probe = destination.probing and destination.probe_seq == row.seq
        retry_at = destination.failed(exc, exc.retry_after, escalate=destination.online or probe)
        await self.journal.set_state(
            row.seq, self._waiting(row), str(exc)[:500], retry_at, bump=True
        )
        # an S3 multipart upload whose abort failed too may be left over: the next
        # attempt cleans it up first
        self.journal.suspects.add((row.destination_uri, row.seq))

    async def _fail(self, row: Row, reason: str) -> None:
        log.error("record %s failed permanently: %s", row.record_id, reason)
        METRICS.failed.labels(parse_uri(row.destination_uri)[0], row.kind).inc()
        await self.journal.set_state(row.seq, State.FAILED, reason[:1000], bump=True)

    async def _publish(
        self, destination: Destination, row: Row, inline: tuple[str, int] | None
    ) -> None:
        if row.kind == "artifact":
            data = None if inline is None else await self._read_inline(row.body, *inline)
            await self.publisher.publish(destination.storage, row.body, data)
            return
        # one writer per task at a time, reading the newest event under the lock, so
        # an older state can never land after a newer one
        lock = self._task_locks.setdefault(row.task_id, asyncio.Lock())
        async with lock:
            latest = await self.journal.latest_task_event(row.task_id) or row.body
            if latest.get("dest") != row.destination_uri:
                latest = row.body
            await publish_task(destination.storage, latest)
        if not lock.locked():
            self._task_locks.pop(row.task_id, None)

    def _waiting(self, row: Row) -> State:
        """The state a record waits in: ``uploaded`` keeps its payloads' progress."""
        sent = row.state is State.UPLOADED or row.seq in self._sent
        return State.UPLOADED if sent else State.PENDING

    async def _read_inline(self, body: dict[str, Any], sha: str, size: int) -> bytes:
        """A small payload, from its record (the journal keeps it) or else the spool,
        checked against its name."""
        kept = (body.get("raw") or {}).get("data")
        if isinstance(kept, bytes) and len(kept) == size:
            if hashlib.sha256(kept).hexdigest() == sha:
                return kept

        def read() -> bytes:
            try:
                data = self.spool.blob_path(sha).read_bytes()
            except FileNotFoundError:
                raise PermanentStorageError("payload missing from the spool", key=sha) from None
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                raise IntegrityError("payload in the spool does not match its hash", key=sha)
            return data

        return await asyncio.to_thread(read)
