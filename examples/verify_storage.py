"""Check that every artifact of the newest task PROJECT/NAME is in storage, intact.

Reads the storage itself, as another machine would: each artifact's object
(and, for folders and wildcards, every file its listing names) must exist
and hash to the recorded SHA-256. A small payload travels inside its record
(``inline``, base64) instead, and must hash to it just the same.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from artisync import Task
from artisync.daemon.storage import StorageOptions, open_storage
from artisync.protocol import load_settings, object_key


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def check(rec: dict[str, Any], options: StorageOptions, tmp: Path) -> int:
    """How many of the record's objects are missing or do not match their SHA-256."""
    storage = open_storage(rec["dest"], options.options_for(rec["dest"]))
    try:
        if "inline" in rec:
            return int(hashlib.sha256(base64.b64decode(rec["inline"])).hexdigest() != rec["sha256"])
        shas = [rec["sha256"]]
        if rec["format"] == "tree":
            listing = await storage.get_bytes(object_key(rec["sha256"]))
            shas += [f["sha256"] for f in json.loads(listing)["files"]]
        failed = 0
        for sha in shas:
            local = tmp / sha
            await storage.get(object_key(sha), local)
            failed += sha256(local) != sha
        return failed
    finally:
        await storage.aclose()


def verify(project: str, name: str) -> int:
    task = Task.get_task(project_name=project, task_name=name)
    options = StorageOptions.from_table(load_settings().raw.get("storage", {}))
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for art_name, art in sorted(task.artifacts.items()):
            rec = art.record
            failed = asyncio.run(check(rec, options, Path(tmp)))
            bad += failed
            status = "ok " if not failed else "BAD"
            print(f"{status} {art_name} at {rec['dest']}")
    verdict = "all verified" if not bad else f"{bad} objects BAD"
    print(f"task {task.id}: {len(task.artifacts)} artifacts, {verdict}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(verify(sys.argv[1], sys.argv[2]))
