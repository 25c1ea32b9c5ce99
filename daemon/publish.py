"""What the daemon writes to a destination, in the remote layout of DESIGN.md.

An object is always written before any record that points to it; records
are immutable (artifact versions) or a task's latest state (task.json).

Two things keep a burst of small artifacts (a thousand dicts) from costing two
requests each: a payload of at most :data:`~artisync.protocol.formats.SMALL_PAYLOAD` bytes travels inside its
version record (``inline``: base64; readers check it against ``sha256``), not
as an object of its own; and versions of one task ready at the same moment are
published together, as one batch object under ``tasks/<id>/batches/``, while a
version published alone keeps its own key under ``tasks/<id>/artifacts/``.
Readers merge both.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Sequence
from typing import Any

from artisync.protocol import (
    artifact_version_key,
    batch_key,
    index_keys,
    is_raw,
    object_key,
    task_key,
)
from artisync.protocol.formats import SMALL_PAYLOAD

from .group_commit import GroupCommit
from .storage.base import Storage, first_error

PRIVATE_FIELDS = ("delete_after", "dest", "raw")
BATCH_VERSION = 1


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, default=repr, ensure_ascii=False).encode()


def public_record(rec: dict[str, Any], inline: bytes | None = None) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if k not in PRIVATE_FIELDS}
    if rec["kind"] == "artifact":
        out["object"] = object_key(rec["sha256"])
        out["storage"] = rec["dest"]
        if inline is not None:
            out["inline"] = base64.b64encode(inline).decode("ascii")
    else:
        out["storage"] = rec["dest"]
    return out


def inline_blob(rec: dict[str, Any]) -> tuple[str, int] | None:
    """The one small payload blob of an artifact version that travels inline, or None."""
    blobs = rec.get("blobs") or []
    if rec.get("kind") != "artifact" or len(blobs) != 1:
        return None
    sha, size = blobs[0][0], int(blobs[0][1])
    return (sha, size) if size <= SMALL_PAYLOAD and sha == rec.get("sha256") else None


def record_keys(rec: dict[str, Any]) -> list[str]:
    """Every key that publishing ``rec`` writes (its payload objects aside)."""
    if rec["kind"] == "artifact":
        return [artifact_version_key(rec["task_id"], rec["name"], rec["created"], rec["record_id"])]
    return [
        task_key(rec["task_id"]),
        *index_keys(rec["project"], rec["name"], rec["started"], rec["task_id"]),
    ]


_SCALARS = (str, int, float, type(None))


def check_publishable(rec: dict[str, Any]) -> str | None:
    """Why ``rec`` could never be published, or None. Checked before a record is
    acknowledged: an acknowledged record must be deliverable, and a record that
    cannot be must not crash (or stall) the uploader later."""
    for field in ("created", "started", "ended"):
        value = rec.get(field)
        if value is not None and not (isinstance(value, int | float) and 0 <= value < 1e11):
            return f"record: {field} must be a time in seconds since the epoch"
    if is_raw(rec):  # as it will be once encoded
        rec = {**rec, "sha256": "0" * 64, "size": 0, "blobs": [], "preview": ""}
    try:
        record_keys(rec)
        public = public_record(rec)
        if not all(isinstance(k, str) for k in public):
            return "record cannot be published: a field name is not a string"
        # a string, a number, None or an empty list or map always encodes (msgpack's
        # str is valid UTF-8, its ints fit in 64 bits): only the rest is tried
        rest = {k: v for k, v in public.items() if v and not isinstance(v, _SCALARS)}
        if rest:
            _json(rest)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        return f"record cannot be published: {type(exc).__name__}: {exc}"[:500]
    return None


async def publish_artifacts(
    storage: Storage, versions: Sequence[tuple[dict[str, Any], bytes | None]]
) -> str:
    """Publish artifact versions of one task, each with its inline payload (or None):
    one alone under its own key, several as one batch. Returns the key written."""
    if len(versions) == 1:
        rec, inline = versions[0]
        (key,) = record_keys(rec)
        await storage.put_bytes(key, _json(public_record(rec, inline)))
        return key
    first = min(versions, key=lambda v: v[0]["created"])[0]
    key = batch_key(first["task_id"], first["created"], secrets.token_hex(8))
    body = {"version": BATCH_VERSION, "records": [public_record(r, i) for r, i in versions]}
    await storage.put_bytes(key, _json(body))
    return key


async def publish_task(storage: Storage, latest: dict[str, Any]) -> str:
    """Write task.json from the task's latest known event, then its index entries
    (all at once: each is an empty object; see :mod:`artisync.protocol._index`).
    Returns the task's key."""
    task, *index = record_keys(latest)
    await storage.put_bytes(task, _json(public_record(latest)))
    try:
        async with asyncio.TaskGroup() as tg:
            for key in index:
                tg.create_task(storage.put_bytes(key, b""))
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return task


class BatchingPublisher:
    """Publishes artifact versions, those of one task that are ready together in one
    object (a :class:`~artisync.daemon.group_commit.GroupCommit` per task and
    destination): a version alone waits for nothing, a burst costs a request per
    batch, not per version. A failed request fails every version in it (each goes
    back to the journal with the error, as it would have alone)."""

    def __init__(self) -> None:
        self._groups: dict[tuple[Storage, str], GroupCommit[_Version, None]] = {}

    async def publish(self, storage: Storage, rec: dict[str, Any], inline: bytes | None) -> None:
        key = (storage, rec["task_id"])
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = GroupCommit(lambda batch: _publish(storage, batch))
        try:
            await group.submit((rec, inline))
        finally:
            if group.idle and self._groups.get(key) is group:
                del self._groups[key]


_Version = tuple[dict[str, Any], bytes | None]


async def _publish(storage: Storage, batch: list[_Version]) -> list[None]:
    await publish_artifacts(storage, batch)
    return [None] * len(batch)
