"""The outbox (the records SDKs write) and spool housekeeping.

The outbox is drained at start, whenever inotify reports a new file (a slow
periodic scan backs it up: inotify can overflow), and when a client asks
(flush, wait). Its records are journaled in groups: many files, one fsync.
Housekeeping removes temp files whose writer is gone, raw snapshots already
encoded (or whose writer died before writing the record), and blobs that
every record has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from artisync.protocol import ProtocolError, iter_logs, recycle, unpack_body, validate_record
from artisync.protocol.formats import listing_of

from .admission import check_journal, check_static
from .ingest_logs import ingest_logs, list_outbox
from .journal import Incoming, State
from .metrics import METRICS

log = logging.getLogger("artisync.daemon")


class OutboxWatcher:
    """Sets ``event`` when a record file is renamed into the outbox or a log there is
    appended to: inotify, read on the event loop (asyncinotify). A watcher with
    threads (watchdog: a reader, a dispatcher, an emitter and an observer thread, an
    event handed from one to the next) spent more of the daemon's CPU on each record
    appended than journaling it did."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self.path, self.loop, self.event = path, loop, event
        self._inotify: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        from asyncinotify import Inotify, Mask

        self._inotify = Inotify()
        # records arrive by rename or by appends to a log: only those events (and an
        # overflow of the kernel's queue, which comes unasked) reach us, not the
        # removals of ingested files
        self._inotify.add_watch(self.path, Mask.CREATE | Mask.MOVED_TO | Mask.MODIFY)
        self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for _ in self._inotify:  # whichever it was: look
                self.event.set()
        finally:  # its descriptor no longer watched by the loop
            self._inotify.close()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


INGEST_BATCH = 1024  # outbox files read and journaled together (one transaction)
INGEST_CHUNK = 8192  # outbox entries listed at a time: a million waiting are never all in memory


async def ingest_outbox(app: Any) -> int:
    """Journal every record in the outbox: its record files, then its logs (see
    :mod:`.ingest_logs`). Returns how many."""
    files, logs = await asyncio.to_thread(list_outbox, app.spool.outbox)  # one listing
    return (await _ingest_files(app) if files else 0) + await ingest_logs(app, logs)


async def _ingest_files(app: Any) -> int:
    """Journal every record file in the outbox, then remove it. Returns how many.

    The outbox is listed a chunk at a time, oldest first within each chunk (all of
    it when it holds no more than a chunk); each batch of a chunk is read, checked
    and journaled with one thread hop, one journal transaction and one removal pass,
    so a week's backlog goes in at disk speed while new clients are served between
    batches. While more than a chunk waits, encoding waits: journaling comes first."""
    done = 0
    try:
        while app.accepting:
            listed, handled = 0, 0
            chunks = app.spool.outbox_chunks(INGEST_CHUNK)
            try:
                while app.accepting:
                    paths = await asyncio.to_thread(next, chunks, None)
                    if paths is None:
                        break
                    if len(paths) == INGEST_CHUNK:  # a long backlog: journal it all first
                        app.encoder.unpaused.clear()  # (power-loss safe), then encode
                    listed += len(paths)
                    for i in range(0, len(paths), INGEST_BATCH):
                        ingested, settled = await _ingest_batch(app, paths[i : i + INGEST_BATCH])
                        done += ingested
                        handled += settled
            finally:
                with contextlib.suppress(ValueError):  # cancelled while a thread lists it
                    chunks.close()
            if listed < INGEST_CHUNK or handled == 0:
                return done  # all there was, or only records that must wait (unreadable now)
            # a long pass: look again for what arrived meanwhile
        return done
    finally:
        app.encoder.unpaused.set()


_Admitted = tuple[Path, dict[str, Any], int, list[str]]  # path, record, owner, payloads missing


async def _ingest_batch(app: Any, paths: list[Path]) -> tuple[int, int]:
    """(records journaled, records settled: journaled, or refused and moved away)."""
    admitted, refused = await asyncio.to_thread(_read_and_check, app, paths)
    ready = []
    for path, rec, owner, missing in admitted:
        problem = None
        if missing or owner not in (0, os.getuid()):
            problem = await check_journal(app.journal, rec, owner, missing)
        if problem:
            refused.append((path, problem))
        else:
            ready.append((path, rec, owner))
    journaled: list[Path] = []
    try:  # the batch in one transaction (duplicates, already journaled, are ignored)
        if ready:
            await app.journal.ingest([Incoming(r, owner, None) for _, r, owner in ready])
            journaled = [path for path, _, _ in ready]
            app.committer.on_commit([r for _, r, _ in ready])  # wake the encoder, the uploader
    except Exception as exc:  # journal not writable (disk full): the files stay for later
        log.error("%d outbox records not ingested yet: %s", len(ready), exc)

    def settle() -> None:
        for path in journaled:
            path.unlink(missing_ok=True)
        for path, why in refused:  # kept in rejected/ with why: its SDK raises it next call
            kept = app.spool.reject(path, why)
            log.error("outbox record %s rejected (kept as %s): %s", path.name, kept, why)

    await asyncio.to_thread(settle)
    METRICS.refused.inc(len(refused))
    return len(journaled), len(journaled) + len(refused)


def _read_and_check(app: Any, paths: list[Path]) -> tuple[list[_Admitted], list[tuple[Path, str]]]:
    """Read, parse and check (all but what needs the journal) a batch of outbox files."""
    admitted: list[_Admitted] = []
    refused: list[tuple[Path, str]] = []
    for path in paths:
        try:
            data, owner = _read(path)
            rec = validate_record(unpack_body(data))
            problem, missing = check_static(app.spool, rec, owner, app.config, leases=app.leases)
        except FileNotFoundError:
            continue  # another pass took it
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink planted in the outbox
                refused.append((path, str(exc)))
            else:  # EMFILE, EIO...: may heal; the file stays for later
                log.warning("outbox record %s not readable yet: %s", path.name, exc)
            continue
        except ProtocolError as exc:
            refused.append((path, str(exc)))
            continue
        if problem:
            refused.append((path, problem))
        else:
            admitted.append((path, rec, owner, missing))
    return admitted, refused


def _read(path: Path) -> tuple[bytes, int]:
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as f:
        return f.read(64 * 1024 * 1024), os.fstat(f.fileno()).st_uid


async def outbox_loop(app: Any, event: asyncio.Event, scan_interval: float = 10.0) -> None:
    """Journal what the outbox holds whenever it changes. While records stream in, it is
    read at most every ``ingest_window`` seconds (0.5): a trainer reporting every 60 ms
    then costs a pass (its thread hops, a transaction, a claim, a publish) for 8
    records, not one each. A lone record, and anything a client waits for (flush,
    wait_on_upload, a read), is read at once."""
    await app.ingest_now()  # what arrived while no daemon ran
    last = time.monotonic()
    while app.accepting:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(scan_interval):
                await event.wait()
        if (wait := last + app.config.ingest_window - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        event.clear()
        last = time.monotonic()
        await app.ingest_now()


async def collect_raw(app: Any) -> int:
    """Remove raw snapshots that are encoded already (the daemon was killed between
    journaling and removing them), and those no record names past the grace period
    (their writer was killed before it wrote the record)."""
    raws = await asyncio.to_thread(lambda: list(app.spool.iter_raw()))
    if not raws:
        return 0
    states = await app.journal.states_of([rid for rid, _ in raws])
    # a record waiting in a log may name any of them: none is an orphan while one waits
    logs = await asyncio.to_thread(lambda: next(iter_logs(app.spool.outbox), None))
    now = time.time()

    def doomed() -> list[str]:
        out = []
        for rid, mtime in raws:
            state = states.get(rid)
            if state is None and rid in app.grants:
                continue  # handed to a client that is still writing it
            if state is None:
                recent = now - mtime <= app.config.gc_grace
                if not recent and not (app.spool.outbox / f"{rid}.rec").exists() and not logs:
                    out.append(rid)
            elif state not in (State.ENCODING, State.FAILED):
                out.append(rid)
        for rid in out:
            app.spool.raw_path(rid).unlink(missing_ok=True)
        return out

    gone = await asyncio.to_thread(doomed)
    return len(gone)


POOL_DROP_FREE = 1024 * 1024 * 1024  # free disk below which recycled raw files go


async def clean_temps(app: Any, max_age: float = 86400.0) -> int:
    def clean() -> int:
        n = 0
        for path in app.spool.iter_stale_temps(max_age, time.time()):
            path.unlink(missing_ok=True)
            n += 1
        # recycled raw files unused for a while, or all of them when room is short
        short = shutil.disk_usage(app.spool.root).free < POOL_DROP_FREE
        recycle.drop(app.spool.free, time.time(), 0 if short else recycle.IDLE)
        return n

    n = await asyncio.to_thread(clean)
    if n:
        log.info("removed %d stale temp files from the spool", n)
    return n


async def collect_blobs(app: Any) -> int:
    """Remove blobs no outstanding or failed record needs, once past the grace period.

    The grace period covers a producer that renamed a blob moments ago and has
    not yet sent the record that names it (its rename refreshed the mtime).
    """
    cfg = app.config
    now = time.time()

    def scan() -> list[tuple[str, float, int]]:
        out = []
        with os.scandir(app.spool.blobs) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out.append((entry.name, st.st_mtime, st.st_size))
        return out

    blobs = await asyncio.to_thread(scan)
    grace = cfg.gc_grace
    if under_pressure(app, sum(size for _, _, size in blobs)):
        grace = min(grace, PRESSURE_GRACE)  # producers are waiting for room
        await asyncio.to_thread(recycle.drop, app.spool.free, now, 0)
    # a folder's pack goes with its listing (the records name the listing, not the pack)
    cands = [(listing_of(name) or name, name, mt) for name, mt, _ in blobs if now - mt > grace]
    if not cands:
        return 0
    named = await asyncio.to_thread(_named_in_outbox, app.spool)
    if named is None:
        return 0  # too many records waiting to read them all: they are ingested first
    cands = [c for c in cands if c[0] not in named]
    orphans = [sha for sha, _, mtime in cands if now - mtime > cfg.orphan_grace]
    doomed = set(await app.journal.collectable(list({sha for sha, _, _ in cands}), orphans))
    names = [name for sha, name, _ in cands if sha in doomed]

    def remove() -> None:
        for name in names:
            app.spool.blob_path(name).unlink(missing_ok=True)

    await asyncio.to_thread(remove)
    return len(names)


OUTBOX_SCAN_MAX = 2000  # outbox records read per collection, at most


def _named_in_outbox(spool: Any) -> set[str] | None:
    """The blobs that records waiting in the outbox name (records written by an older
    SDK, which named payloads it had written itself; raw records name none), or None
    when the outbox holds too many records to read now."""
    named: set[str] = set()
    for i, path in enumerate(spool.iter_outbox()):
        if i >= OUTBOX_SCAN_MAX:
            return None
        try:
            data, _ = _read(path)
            rec = unpack_body(data)
        except (OSError, ProtocolError):
            continue  # gone (ingested), or not a record: it names nothing
        if isinstance(rec, dict) and isinstance(rec.get("blobs"), list):
            named.update(b[0] for b in rec["blobs"] if isinstance(b, list) and b)
    return named


PRESSURE_GRACE = 3.0  # seconds: still covers a producer between its rename and its record


def under_pressure(app: Any, blob_bytes: int) -> bool:
    """The spool is near its ``spool_limit``: SDKs may be waiting for room."""
    limit = app.config.settings.spool_limit
    return bool(limit) and blob_bytes >= 0.8 * limit


COMPACT_EVERY = 3600.0  # seconds between passes over the journal's committed history


async def compact_journal(app: Any) -> int:
    """Drop committed history older than ``journal_keep`` from the journal."""
    keep = app.config.journal_keep
    if keep <= 0:
        return 0
    t0 = time.monotonic()
    gone: int = await app.journal.compact(time.time() - keep)
    if gone:
        log.info("journal: compacted %d committed records in %.1f s", gone, time.monotonic() - t0)
    return gone


async def housekeeping_loop(app: Any) -> None:
    compacted = -COMPACT_EVERY
    while app.accepting:
        await clean_temps(app)
        await collect_raw(app)
        await collect_blobs(app)
        if time.monotonic() - compacted >= COMPACT_EVERY:
            compacted = time.monotonic()
            await compact_journal(app)
        interval = app.config.gc_interval
        if app.config.settings.spool_limit:
            interval = min(interval, 2.0)  # room is freed promptly when a quota is set
        await app.sleep_unless_stopping(interval)
