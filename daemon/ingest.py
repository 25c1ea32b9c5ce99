"""The outbox (records written while no daemon answered) and spool housekeeping.

The outbox is drained at start and whenever watchdog reports a new file (a
slow periodic scan backs it up: inotify can overflow). Housekeeping removes
temp files whose writer is gone and blobs that every record has committed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from artisync.protocol import InvalidMessage, ProtocolError, unpack_body, validate_record

from .journal import Incoming

log = logging.getLogger("artisync.daemon")


class OutboxWatcher:
    """Bridges watchdog's thread to an asyncio.Event."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self.path, self.loop, self.event = path, loop, event
        self._observer: Any = None

    def start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        loop, event = self.loop, self.event

        class Handler(FileSystemEventHandler):
            def on_any_event(self, ev: FileSystemEvent) -> None:
                if ev.event_type in ("created", "moved", "closed"):
                    loop.call_soon_threadsafe(event.set)

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.path), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)


async def ingest_outbox(app: Any) -> int:
    """Journal every record in the outbox, then remove its file. Returns how many."""
    paths = await asyncio.to_thread(_oldest_first, app.spool)
    done = 0
    for path in paths:
        if not app.accepting:
            break
        done += await _ingest_one(app, path)
    if done:
        app.uploader.poke()
    return done


async def _ingest_one(app: Any, path: Path) -> int:
    from .server import check_blobs

    try:
        data, owner = await asyncio.to_thread(_read, path)
        rec = validate_record(unpack_body(data))
        problem = await check_blobs(app.spool, app.journal, rec)
        if problem:
            raise InvalidMessage(problem)
    except FileNotFoundError:
        return 0  # another pass took it
    except (ProtocolError, OSError) as exc:
        bad = path.with_name(path.name + ".rejected")
        log.error("outbox record %s rejected (kept as %s): %s", path.name, bad.name, exc)
        await asyncio.to_thread(os.replace, path, bad)
        return 0
    await app.committer.submit(Incoming(rec, owner, None))
    await asyncio.to_thread(path.unlink, True)
    return 1


def _oldest_first(spool: Any) -> list[Path]:
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    return sorted(spool.iter_outbox(), key=mtime)


def _read(path: Path) -> tuple[bytes, int]:
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as f:
        return f.read(64 * 1024 * 1024), os.fstat(f.fileno()).st_uid


async def outbox_loop(app: Any, event: asyncio.Event, scan_interval: float = 10.0) -> None:
    await ingest_outbox(app)  # what arrived while no daemon ran
    while app.accepting:
        try:
            await asyncio.wait_for(event.wait(), timeout=scan_interval)
        except TimeoutError:
            pass
        event.clear()
        await ingest_outbox(app)


async def clean_temps(app: Any, max_age: float = 86400.0) -> int:
    def clean() -> int:
        n = 0
        for path in app.spool.iter_stale_temps(max_age, time.time()):
            path.unlink(missing_ok=True)
            n += 1
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

    def candidates() -> list[tuple[str, float]]:
        out = []
        with os.scandir(app.spool.blobs) as it:
            for entry in it:
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if now - mtime > cfg.gc_grace:
                    out.append((entry.name, mtime))
        return out

    cands = await asyncio.to_thread(candidates)
    if not cands:
        return 0
    if await asyncio.to_thread(lambda: any(True for _ in app.spool.iter_outbox())):
        return 0  # records waiting in the outbox may name these blobs
    orphans = [s for s, mtime in cands if now - mtime > cfg.orphan_grace]
    doomed = await app.journal.collectable([s for s, _ in cands], orphans)

    def remove() -> None:
        for sha in doomed:
            app.spool.blob_path(sha).unlink(missing_ok=True)

    await asyncio.to_thread(remove)
    return len(doomed)


async def housekeeping_loop(app: Any) -> None:
    while app.accepting:
        await clean_temps(app)
        await collect_blobs(app)
        await app.sleep_unless_stopping(app.config.gc_interval)
