"""Encoding: raw snapshots the SDK wrote become stored payloads, off the event loop.

A raw record is journaled in ``encoding``. The encoder claims such records
oldest first (in memory only: a crash loses no claim), encodes each with its
codec (:func:`artisync.protocol.formats.encode`), journals the completed
records in groups (one transaction for all that finished meanwhile), and only
then removes their raw snapshots (a private daemon keeps a few to be written
over, see :mod:`artisync.protocol._recycle`). Killed at any point, it leaves the raw
snapshot in place and the record in ``encoding``, to be encoded again.

CPU-heavy codecs (parquet, PNG's zlib, npz's deflate) run in a pool of worker
processes at a lower priority: in a thread they would hold the GIL and delay
the daemon's acknowledgements, and they must yield to the trainers on the same
cores. ``stored`` snapshots (files, and every put) and ``pack`` ones (folders:
each member hashed, the big ones copied into a blob of their own) only need
hashing and copying, which release the GIL: a thread, but for a big file (see
``CPU_BOUND``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import signal
import sqlite3
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from artisync.protocol import Spool, recycle, remember_spans, spans_of
from artisync.protocol.formats import SMALL_PAYLOAD

from .group_commit import GroupCommit
from .inline import completed
from .journal import Journal, Row, State
from .leases import Leases
from .priority import client_waiting, lower_this_thread, until_client_waits

log = logging.getLogger("artisync.daemon")

ENCODING_IN_FLIGHT = 64  # records claimed for encoding at once


_IN_THREAD = ("stored", "pack")  # codecs that only hash and copy
# A stored snapshot this big is hashed in a worker process, unless a client waits on
# the work (then on a boost thread, see .priority). In a thread at ``work_nice`` it held
# the GIL between its reads and hand-offs, and while the threads copying leased files
# at the daemon's own priority kept the core, the kernel let it run so rarely that the
# event loop waited for the GIL: a client's lease waited 100-650 ms for its answer.
CPU_BOUND = 1024 * 1024


class Encoder:
    def __init__(
        self,
        journal: Journal,
        spool: Spool,
        workers: tuple[int, int],  # encode worker processes, and their niceness
        on_encoded: Callable[[], None],
        early: EarlySend | None = None,
        recycle: int | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.journal = journal
        self.leases = leases  # told of a leased file's hash; vouch for files unchanged
        # encoded raw files go to the spool's pool to be written over (None: deleted;
        # an int: the spool_limit that bounds the pool), see protocol._recycle
        self.recycle = recycle
        self.spool = spool
        self.workers, self.work_nice = workers
        self.on_encoded = on_encoded
        self.early = early
        self.in_flight: set[int] = set()
        self.full = False  # claims wait for an encoding to finish
        self.wakeup = asyncio.Event()
        self.unpaused = asyncio.Event()  # cleared while a long outbox backlog is journaled
        self.unpaused.set()
        self.progress = asyncio.Condition()  # notified whenever a record is encoded or fails
        self.accepting = True
        self.encoded = 0
        self._pool: ProcessPoolExecutor | None = None
        self._completions: GroupCommit[tuple[int, dict[str, Any]], None] = GroupCommit(
            self._complete
        )
        self._tasks: set[asyncio.Task[None]] = set()

    def poke(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        """Claim and encode until stopped. Many records at a time: a burst of small
        ones (hashing in threads) must reach the uploader together, to be published
        together; heavy codecs queue for the worker processes."""
        limit = max(ENCODING_IN_FLIGHT, 2 * self.workers + 2)
        try:
            while self.accepting:
                await self.unpaused.wait()
                self.wakeup.clear()  # before the claim: a poke that comes during it counts
                free = limit - len(self.in_flight)
                rows: list[Row] = []
                if free > 0:
                    try:
                        rows = await self.journal.claim_encoding(free, list(self.in_flight))
                    except sqlite3.Error as exc:
                        log.error("journal not readable, encoding paused: %s", exc)
                        await asyncio.sleep(5)
                        continue
                for row in rows:
                    self.in_flight.add(row.seq)
                    task = asyncio.create_task(self._encode(row))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                self.full = len(self.in_flight) >= limit
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.wakeup.wait()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop at once: what is being encoded stays ``encoding``, raw snapshot kept."""
        self.accepting = False
        for task in list(self._tasks):
            task.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            processes = list(getattr(pool, "_processes", {}).values())  # no public handle
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in processes:
                with contextlib.suppress(OSError, AttributeError):
                    proc.kill()

    def _pool_for(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),  # never fork a threaded daemon
                initializer=_init_worker,
                initargs=(self.work_nice,),
            )
        return self._pool

    async def _encode(self, row: Row) -> None:
        try:
            result = await self._run_codec(row)
            if result["ok"]:
                for sha, crcs in result.get("spans", {}).items():  # from a worker process
                    remember_spans(sha, tuple(crcs))
                body = completed(row.body, result)
                if self.leases is not None and row.body["raw"].get("leased") is not None:
                    self.leases.learned(row.record_id, result["sha256"])
                await self._commit(row.seq, body)
                await asyncio.to_thread(self._retire, row.record_id)
                self.encoded += 1
                self.on_encoded()
            elif result["transient"]:  # e.g. the spool's disk is full: again, later
                log.error("record %s not encoded yet: %s", row.record_id, result["reason"])
                await asyncio.sleep(5)
            else:
                log.error("record %s cannot be encoded: %s", row.record_id, result["reason"])
                await self.journal.set_state(
                    row.seq, State.FAILED, f"encoding: {result['reason']}"[:1000], bump=True
                )
        except BrokenProcessPool:  # a worker died (OOM-killed?): a new pool, and again
            log.error("an encode worker died; record %s goes again", row.record_id)
            self._pool = None
            await asyncio.sleep(1)
        except sqlite3.Error as exc:
            log.error("journal write failed (%s): record %s goes again", exc, row.record_id)
            await asyncio.sleep(1)
        finally:
            self.in_flight.discard(row.seq)
            async with self.progress:
                self.progress.notify_all()
            if self.full:  # a slot for the next claim (else it waits for new records)
                self.poke()

    def _retire(self, record_id: str) -> None:
        """An encoded record's raw file: into the pool to be written over, or deleted."""
        raw = self.spool.raw_path(record_id)
        if self.recycle is None or not recycle.give(self.spool.free, raw, self.recycle):
            raw.unlink(missing_ok=True)

    async def _run_codec(self, row: Row) -> dict[str, Any]:
        args = (str(self.spool.root), self.spool.file_mode, row.body, self.spool.link_raw)
        # no worker process to spawn on first use, nor a folder's thousand-member
        # record pickled both ways
        loop = asyncio.get_running_loop()
        codec = row.body["raw"]["codec"]
        if codec == "pack" and self.early is not None and row.kind == "artifact":
            # a folder's big members go out as they are copied out, not once all are
            sink = _EarlyBlobs(loop, self.early, row.destination_uri)
            try:
                return await asyncio.to_thread(encode_record, *args, on_blob=sink)
            finally:
                sink.flush()
        if codec in _IN_THREAD:
            linked = None
            if self.leases is not None and row.body["raw"].get("leased") is not None:
                linked = self.leases.vouched(row.record_id)
            big = codec == "stored" and row.body["raw"].get("size", 0) >= CPU_BOUND
            if big and linked is None and not client_waiting():  # see CPU_BOUND
                return await self._hash_aside(args)
            return await asyncio.to_thread(encode_record, *args, linked=linked)
        return await loop.run_in_executor(self._pool_for(), encode_record, *args)

    async def _hash_aside(self, args: tuple[Any, ...]) -> dict[str, Any]:
        """A big file hashed in a worker process (see ``CPU_BOUND``). Should a client
        start waiting on the work meanwhile, it is hashed on a boost thread as well, at
        a trainer's priority, and the first to finish stands (both commit the same
        blob, whose name is its hash; the other's result is dropped)."""
        loop = asyncio.get_running_loop()
        aside = loop.run_in_executor(self._pool_for(), encode_record, *args)
        waited = asyncio.ensure_future(until_client_waits())
        try:
            await asyncio.wait((aside, waited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waited.cancel()
        if aside.done():
            return aside.result()
        here = asyncio.ensure_future(asyncio.to_thread(encode_record, *args))
        done, left = await asyncio.wait((aside, here), return_when=asyncio.FIRST_COMPLETED)
        for other in left:  # its outcome, even an error, is not wanted
            other.add_done_callback(lambda f: f.cancelled() or f.exception())
        return done.pop().result()

    async def _commit(self, seq: int, body: dict[str, Any]) -> None:
        """Journal one encoded record, group-committed with those finished meanwhile."""
        await self._completions.submit((seq, body))

    async def _complete(self, batch: list[tuple[int, dict[str, Any]]]) -> list[None]:
        await self.journal.complete_encoding(batch)
        return [None] * len(batch)


def encode_record(
    root: str,
    mode: int,
    body: dict[str, Any],
    link_raw: bool = True,
    on_blob: Callable[[str, int], None] | None = None,
    linked: str | None = None,
) -> dict[str, Any]:
    """Encode one record's raw snapshot (in a worker process or a thread).

    Returns a plain dict, never raises: a codec's exception may not survive
    pickling back to the daemon, and the daemon must tell a bad snapshot
    (the record fails, with the reason) from a full disk (it goes again)."""
    from artisync.protocol.formats import encode

    spool = Spool(root, file_mode=mode, link_raw=link_raw)
    spool.on_blob = on_blob
    try:
        payload, preview = encode(spool, body, linked)
    except FileNotFoundError as exc:  # the raw snapshot is gone: encoding again cannot help
        return {"ok": False, "transient": False, "reason": f"raw snapshot missing: {exc}"}
    except OSError as exc:
        return {"ok": False, "transient": True, "reason": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:
        return {"ok": False, "transient": False, "reason": f"{type(exc).__name__}: {exc}"}
    out = {
        "ok": True,
        "sha256": payload.sha256,
        "size": payload.size,
        "blobs": [[sha, size] for sha, size in payload.blobs],
        "preview": preview,
    }
    # the CRC-32s of a large blob's parts, taken as it was hashed: for the daemon's own
    # process to upload it without hashing it again (see protocol._spans)
    spans = {sha: crcs for sha, size in payload.blobs if (crcs := spans_of(sha, size))}
    if spans:
        out["spans"] = spans
    if len(payload.blobs) == 1 and payload.size <= SMALL_PAYLOAD:
        # the journal keeps a small payload in its record, as storage does (``inline``):
        # read back from either, it needs no blob and no object
        data = body["raw"].get("data") if body["raw"]["codec"] == "stored" else None
        if isinstance(data, bytes) and len(data) == payload.size:
            out["inline"] = data  # what the blob was written from: no need to read it
        else:
            with contextlib.suppress(OSError):
                out["inline"] = (Path(root) / "blobs" / payload.sha256).read_bytes()
    return out


# told, on the event loop, of a batch of blobs that record's destination will need
EarlySend = Callable[[str, list[tuple[str, int]]], None]


class _EarlyBlobs:
    """Collects the blobs an encoding thread commits and hands them to the event loop
    in batches (a wakeup of the loop per member would cost more than it saves)."""

    BATCH = 32

    def __init__(self, loop: asyncio.AbstractEventLoop, send: EarlySend, uri: str) -> None:
        self.loop, self.send, self.uri = loop, send, uri
        self.batch: list[tuple[str, int]] = []

    def __call__(self, sha: str, size: int) -> None:
        self.batch.append((sha, size))
        if len(self.batch) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if batch and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.send, self.uri, batch)


def _init_worker(nice: int) -> None:
    """An encode worker: lowest priority (see daemon.priority), and gone with the
    daemon (even on SIGKILL)."""
    lower_this_thread(nice)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when to stop
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
