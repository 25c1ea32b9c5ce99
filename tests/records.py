"""Build valid records by hand, for tests that talk to the daemon directly."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from artisync.protocol import Spool


def task_record(
    dest: str,
    project: str = "p",
    name: str = "t",
    task_id: str | None = None,
    status: str = "in_progress",
) -> dict[str, Any]:
    now = time.time()
    return {
        "kind": "task",
        "event": "started",
        "record_id": uuid.uuid4().hex,
        "task_id": task_id or uuid.uuid4().hex,
        "created": now,
        "dest": dest,
        "host": "h",
        "user": "u",
        "pid": os.getpid(),
        "project": project,
        "name": name,
        "status": status,
        "started": now,
        "ended": None,
    }


def artifact_record(
    spool: Spool, dest: str, data: bytes, name: str = "a", task_id: str | None = None
) -> dict[str, Any]:
    sha, size = spool.write_blob_bytes(data)
    return record_for_blob(sha, size, dest, name, task_id or uuid.uuid4().hex)


def record_for_blob(
    sha: str, size: int, dest: str, name: str, task_id: str, extension: str = ""
) -> dict[str, Any]:
    """An artifact record for a payload already in the spool."""
    return {
        "kind": "artifact",
        "record_id": uuid.uuid4().hex,
        "task_id": task_id,
        "created": time.time(),
        "dest": dest,
        "host": "h",
        "user": "u",
        "pid": os.getpid(),
        "name": name,
        "type": "bytes",
        "format": "bytes",
        "extension": extension,
        "sha256": sha,
        "size": size,
        "blobs": [[sha, size]],
        "metadata": {},
        "preview": "",
    }
