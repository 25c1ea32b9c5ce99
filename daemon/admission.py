"""Admission: what a record must satisfy before the daemon journals it.

Its destination must parse (and, on a shared daemon, be one of the allowed
ones, or under one); its task must be the submitter's own; it must be
publishable; and every payload it names must be a regular file in the spool
(never a path elsewhere) or already at its destination. A put (StorageManager)
is held to the same destination rules; its key stays under its destination and
out of artisync's layout (checked with the record): within an allowed
destination, any member may write any other key, as with the storage itself.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

from artisync.protocol import InvalidMessage, Spool, fsync_file, is_raw, recycle

from .journal import Journal
from .leases import Leases
from .peers import destination_allowed
from .publish import check_publishable
from .storage.base import parse_uri


async def check_record(
    spool: Spool,
    journal: Journal,
    rec: dict[str, Any],
    uid: int | None = None,
    config: Any = None,
    *,
    granted: bool = False,
    leases: Leases | None = None,
) -> str | None:
    """Why a (validated) record must be refused, or None: it names a bad destination
    (or, ``config`` given, one it does not allow), belongs to another user's task,
    could never be published, or names payloads that are not in the spool (``granted``:
    its raw file is one this daemon made and handed to ``uid``)."""
    try:
        problem, missing = await asyncio.to_thread(
            check_static, spool, rec, uid, config, granted=granted, leases=leases
        )
    except InvalidMessage as exc:
        return str(exc)
    return problem or await check_journal(journal, rec, uid, missing)


def check_static(
    spool: Spool,
    rec: dict[str, Any],
    uid: int | None,
    config: Any,
    *,
    granted: bool = False,
    leases: Leases | None = None,
) -> tuple[str | None, list[str]]:
    """What can be checked without the journal (no awaiting: the outbox checks a
    whole batch in one thread hop): (why it is refused or None, the payloads it
    names that are not in the spool, which must be at the destination). A record
    whose file the daemon copies under a lease waits here for that copy (``leases``:
    this daemon's, if it takes any)."""
    try:
        parse_uri(rec["dest"])
    except ValueError as exc:
        return f"record: bad destination: {exc}", []
    if config is not None and (config.group is not None or config.allowed_destinations):
        allowed = config.allowed_destinations
        if not destination_allowed(rec["dest"], allowed):
            listed = ", ".join(allowed) if allowed else "none are configured"
            return (
                f"destination {rec['dest']} is not one this daemon may write to "
                f"(allowed_destinations: {listed}); use output_uri under one of them"
            ), []
    # a put publishes nothing: its key was checked with the record (validate_record)
    problem = None if rec["kind"] == "put" else check_publishable(rec)
    if problem or rec["kind"] == "task":
        return problem, []
    if is_raw(rec):
        if rec["raw"].get("leased") is not None:
            if leases is None or granted or uid != os.getuid():
                return "a leased file is copied only by its own user's daemon", []
            problem = leases.settle(rec)
            if problem:
                return problem, []
            blob = leases.vouched(rec["record_id"])
            return _check_raw_file(spool, rec, uid, spool.blob_path(blob) if blob else None), []
        return _check_raw_file(spool, rec, None if granted else uid), []
    return None, _local_blobs(spool, rec)


async def check_journal(
    journal: Journal, rec: dict[str, Any], uid: int | None, missing: list[str]
) -> str | None:
    """The checks that need the journal: the task is the submitter's own, and the
    payloads not in the spool are at the destination already."""
    if uid is not None and uid not in (0, os.getuid()):
        owner = await journal.task_owner(rec["task_id"])
        if owner is not None and owner != uid:
            return f"task {rec['task_id']} belongs to another user"
    for sha in missing:
        if sha not in await journal.known_objects(rec["dest"], [sha]):
            return f"payload {sha[:12]} is neither in the spool nor at the destination"
    return None


def _check_raw_file(
    spool: Spool, rec: dict[str, Any], uid: int | None, blob: Path | None = None
) -> str | None:
    """The raw snapshot is a regular file of the record's size, the submitter's, and
    no other file's name (a name of ``blob``: the daemon linked it, see .leases)."""
    if rec["raw"].get("data") is not None:
        return None  # inside the record (checked with it)
    path = spool.raw_path(rec["record_id"])
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"raw snapshot of record {rec['record_id'][:12]} is not in the spool"
    if not stat.S_ISREG(st.st_mode) or (st.st_nlink != 1 and not _same_file(st, blob)):
        return f"raw snapshot of record {rec['record_id'][:12]} is not a regular file"
    if st.st_size != rec["raw"]["size"]:
        return f"raw snapshot has {st.st_size} bytes, record says {rec['raw']['size']}"
    if uid is not None and uid != 0 and st.st_uid != uid:
        return "raw snapshot belongs to another user"
    reused = rec["raw"].get("reused")
    if reused is not None:  # written over a recycled file: see protocol._recycle
        if reused != recycle.boot_id():
            return (
                "raw snapshot was written over a reused spool file before the machine "
                "restarted: a power loss may have left older bytes in it; report it again"
            )
        fsync_file(path)  # journaled means durable: its old bytes must not come back
    return None


def _local_blobs(spool: Spool, rec: dict[str, Any]) -> list[str]:
    """Every payload a record names must be a regular file in the spool (never a
    path elsewhere: names are hashes, symlinks and hard links are refused), or
    already held by its destination: returns those not in the spool.

    :raises InvalidMessage: one is not a regular file, or not the size named."""
    missing = []
    for sha, size in rec["blobs"]:
        try:
            st = os.lstat(spool.blob_path(sha))
        except FileNotFoundError:
            missing.append(sha)
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise InvalidMessage(f"payload {sha[:12]} in the spool is not a regular file")
        if st.st_size != size:
            raise InvalidMessage(f"payload {sha[:12]} has {st.st_size} bytes, record says {size}")
    return missing


def _same_file(st: os.stat_result, other: Path | None) -> bool:
    try:
        return other is not None and os.path.samestat(st, os.stat(other))
    except OSError:
        return False
