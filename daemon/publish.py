"""What the daemon writes to a destination, in the remote layout of DESIGN.md.

An object is always written before any record that points to it; records
are immutable (artifact versions) or a task's latest state (task.json).
"""

from __future__ import annotations

import json
from typing import Any

from artisync.protocol import (
    artifact_version_key,
    index_key,
    is_raw,
    object_key,
    task_key,
)

from .storage.base import Storage

PRIVATE_FIELDS = ("delete_after", "dest", "raw")


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, default=repr, ensure_ascii=False).encode()


def public_record(rec: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if k not in PRIVATE_FIELDS}
    if rec["kind"] == "artifact":
        out["object"] = object_key(rec["sha256"])
        out["storage"] = rec["dest"]
    else:
        out["storage"] = rec["dest"]
    return out


def record_keys(rec: dict[str, Any]) -> list[str]:
    """Every key that publishing ``rec`` writes (its payload objects aside)."""
    if rec["kind"] == "artifact":
        return [artifact_version_key(rec["task_id"], rec["name"], rec["created"], rec["record_id"])]
    return [
        task_key(rec["task_id"]),
        index_key(rec["project"], rec["name"], rec["started"], rec["task_id"]),
    ]


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
        _json(public_record(rec))
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        return f"record cannot be published: {type(exc).__name__}: {exc}"[:500]
    return None


async def publish_artifact(storage: Storage, rec: dict[str, Any]) -> str:
    (key,) = record_keys(rec)
    await storage.put_bytes(key, _json(public_record(rec)))
    return key


async def publish_task(storage: Storage, latest: dict[str, Any]) -> str:
    """Write task.json from the task's latest known event, then its index entry."""
    task, index = record_keys(latest)
    await storage.put_bytes(task, _json(public_record(latest)))
    await storage.put_bytes(index, latest["task_id"].encode())
    return index
