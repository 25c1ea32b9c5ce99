"""What the daemon writes to a destination, in the remote layout of DESIGN.md.

An object is always written before any record that points to it; records
are immutable (artifact versions) or a task's latest state (task.json).
"""

from __future__ import annotations

import json
from typing import Any

from artisync.protocol._layout import (
    artifact_version_key,
    index_key,
    object_key,
    task_key,
)

from .storage.base import Storage

PRIVATE_FIELDS = ("delete_after", "dest")


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


async def publish_artifact(storage: Storage, rec: dict[str, Any]) -> str:
    key = artifact_version_key(rec["task_id"], rec["name"], rec["created"], rec["record_id"])
    await storage.put_bytes(key, _json(public_record(rec)))
    return key


async def publish_task(storage: Storage, latest: dict[str, Any]) -> str:
    """Write task.json from the task's latest known event, then its index entry."""
    await storage.put_bytes(task_key(latest["task_id"]), _json(public_record(latest)))
    key = index_key(latest["project"], latest["name"], latest["started"], latest["task_id"])
    await storage.put_bytes(key, latest["task_id"].encode())
    return key
