"""Journaling the outbox logs (see :mod:`artisync.protocol._outbox_log`).

Each log is read from the offset the journal keeps for it, a batch of frames at a
time: the batch's records and the new offset go into the journal in one
transaction, so a record is journaled exactly once whatever is killed when. A
refused record is kept in ``rejected/`` (its SDK raises it at its next call) before
the offset moves past it. A log read to its end is deleted once its writer is done
with it: it wrote its end frame, or its process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from artisync.protocol import (
    LogRead,
    ProtocolError,
    logs_among,
    new_id,
    pid_alive,
    read_log,
    unpack_body,
    validate_record,
    writer_pid,
)

from .admission import check_journal, check_static
from .journal import Incoming
from .metrics import METRICS

log = logging.getLogger("artisync.daemon")

BATCH = 2048  # frames read, checked and journaled together (one transaction)
LONG = 1 << 20  # bytes waiting in the logs beyond which encoding waits for the journal
_ID = re.compile(r"[0-9a-f]{32}")


_Checked = tuple[list[tuple[dict[str, Any], list[str], bytes]], list[tuple[str, bytes, str]]]


def list_outbox(folder: Path) -> tuple[bool, list[tuple[Path, int]]]:
    """(whether record files wait in the outbox, its logs oldest first with their sizes)."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it]  # once: a backlog's outbox may hold a million
    except FileNotFoundError:
        return False, []
    files = any(n.endswith(".rec") and not n.startswith(".") for n in names)
    return files, [(p, _size(p)) for p in logs_among(folder, names)]


async def ingest_logs(app: Any, logs: list[tuple[Path, int]]) -> int:
    """Journal what every outbox log (``logs``: as :func:`list_outbox` lists them)
    holds beyond its offset. Returns how many."""
    offsets = await app.journal.log_offsets()
    for name in set(offsets) - {p.name for p, _ in logs}:
        await app.journal.forget_log(name)  # removed after its offset was kept
    waiting = sum(size - offsets.get(p.name, 0) for p, size in logs)
    if waiting > LONG:  # a long backlog: journal it all first (power-loss safe), then encode
        app.encoder.unpaused.clear()
    done = 0
    try:
        for path, _ in logs:
            if not app.accepting:
                break
            done += await _ingest_log(app, path, offsets.get(path.name, 0))
    finally:
        app.encoder.unpaused.set()
    return done


async def _ingest_log(app: Any, path: Path, offset: int) -> int:
    """Journal one log from ``offset``: each batch is read and checked (a thread) while
    the one before it is journaled (the journal's thread), two cores for a backlog."""
    done = 0
    alive = pid_alive(writer_pid(path))
    ahead = asyncio.ensure_future(asyncio.to_thread(_prepare, app, path, offset, alive))
    try:
        while app.accepting:
            try:
                got, owner, checked = await ahead
            except FileNotFoundError:
                return done
            except NotAFile as exc:  # a symlink planted in the outbox, say: never followed
                kept = await asyncio.to_thread(app.spool.reject, path, str(exc))
                log.error("outbox entry %s refused (kept as %s): %s", path.name, kept, exc)
                METRICS.refused.inc()
                return done
            except OSError as exc:  # EMFILE, EIO...: may heal; read again later
                log.warning("outbox log %s not readable now: %s", path.name, exc)
                return done
            full = len(got.frames) == BATCH
            if full:
                ahead = asyncio.ensure_future(
                    asyncio.to_thread(_prepare, app, path, got.offset, alive)
                )
            if got.torn is not None:
                why = f"the end of outbox log {path.name} is torn (its writer died writing it)"
                stem = f"torn-{new_id()}"
                await asyncio.to_thread(app.spool.reject_bytes, stem, got.torn, why)
                log.error("%s: kept in rejected/", why)
                METRICS.refused.inc()
            if got.frames:
                n = await _journal(app, path.name, got, owner, checked)
                if n is None:
                    return done  # the journal cannot take them now: read again later
                done += n
            if not full:  # all there is, for now
                if got.ended or got.torn is not None or (not alive and got.offset >= _size(path)):
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                    await app.journal.forget_log(path.name)
                return done
        return done
    finally:
        if not ahead.done():
            ahead.cancel()


class NotAFile(OSError):
    pass


def _prepare(app: Any, path: Path, offset: int, alive: bool) -> tuple[LogRead, int, _Checked]:
    """Read a batch of frames from ``offset`` and check them (all but the journal)."""
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise NotAFile(f"{path.name} is not a regular file")
    got = read_log(path, offset, BATCH, alive)
    return got, st.st_uid, _check(app, got, st.st_uid)


async def _journal(app: Any, name: str, got: LogRead, owner: int, checked: _Checked) -> int | None:
    """Journal one checked batch of a log's frames, with the log's new offset."""
    admitted, refused = checked
    ready = []
    for rec, missing, body in admitted:
        problem = None
        if missing or owner not in (0, os.getuid()):
            problem = await check_journal(app.journal, rec, owner, missing)
        if problem:
            refused.append((rec["record_id"], body, problem))
        else:
            ready.append(Incoming(rec, owner, None, body))

    def keep_refused() -> None:  # before the offset passes them
        for stem, data, why in refused:
            app.spool.reject_bytes(stem, data, why)
            log.error("outbox record %s rejected (kept in rejected/): %s", stem, why)

    if refused:
        await asyncio.to_thread(keep_refused)
        METRICS.refused.inc(len(refused))
    try:  # duplicates (journaled before) are ignored
        await app.journal.ingest(ready, log=(name, got.offset))
    except Exception as exc:  # journal not writable (disk full): the log stays for later
        log.error("%d outbox records not ingested yet: %s", len(ready), exc)
        return None
    if ready:
        app.committer.on_commit([inc.record for inc in ready])  # the encoder, the uploader
    return len(ready)


def _check(app: Any, got: LogRead, owner: int) -> _Checked:
    """Parse and check (all but what needs the journal) a batch of frames."""
    admitted: list[tuple[dict[str, Any], list[str], bytes]] = []
    refused: list[tuple[str, bytes, str]] = []
    for _end, body in got.frames:
        try:
            rec = validate_record(unpack_body(body))
        except ProtocolError as exc:
            refused.append((_stem(body), body, str(exc)))
            continue
        problem, missing = check_static(app.spool, rec, owner, app.config, leases=app.leases)
        if problem:
            refused.append((rec["record_id"], body, problem))
        else:
            admitted.append((rec, missing, body))
    return admitted, refused


def _stem(body: bytes) -> str:
    """The name to keep a record that does not check under: its id if it has one."""
    with contextlib.suppress(ProtocolError):
        rec = unpack_body(body)
        rid = rec.get("record_id") if isinstance(rec, dict) else None
        if isinstance(rid, str) and _ID.fullmatch(rid):
            return rid
    return new_id()


def _size(path: Path) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0
