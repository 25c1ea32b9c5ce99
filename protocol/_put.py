"""Puts: StorageManager's files, each for one key of the caller's choosing.

A put record (``kind="put"``) names a destination (``dest``) and a key under it;
its raw snapshot is the file itself. The rules here keep every put under its
destination and out of artisync's own layout, whoever sends it.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal, NotRequired, Protocol, TypedDict, cast

from ._layout import parse_destination

MAX_KEY_BYTES = 1024  # a put's whole key (S3's and GCS's limit)


class PutRecord(TypedDict):
    kind: Literal["put"]
    record_id: str
    task_id: str  # the StorageManager call that made it (its files share it)
    created: float
    dest: str
    host: str
    user: str
    pid: int
    key: str  # where under ``dest`` the file goes
    raw: dict[str, Any]  # always "stored": the file itself
    sha256: NotRequired[str]  # set once hashed, in the spool
    size: NotRequired[int]
    blobs: NotRequired[list[list[Any]]]
    rank: NotRequired[int]
    local_rank: NotRequired[int]
    world_size: NotRequired[int]


class _Origin(Protocol):  # artisync.protocol.Origin (which imports this module)
    def fields(self) -> dict[str, Any]: ...


def new_put_record(
    *, record_id: str, task_id: str, dest: str, key: str, origin: _Origin
) -> PutRecord:
    rec: dict[str, Any] = {
        "kind": "put",
        "record_id": record_id,
        "task_id": task_id,
        "created": time.time(),
        "dest": dest,
        **origin.fields(),
        "key": key,
    }
    return cast(PutRecord, rec)


# artisync's own remote layout (objects, task records, index entries, prune's
# tombstones and sweep locks), at any depth: every path under a destination may be a task's
# destination, and a put must never overwrite what the daemon alone writes there
_LAYOUT = re.compile(
    r"(?:^|/)(?:objects/sha256|tasks/[0-9a-f]{32}|prune/(?:tasks|sweeping)"
    r"|index/(?:runs|folded|names|tasks|all|projects))(?:/|$)"
    r"|(?:^|/)projects/[^/]+/[^/]+/[0-9]+-[0-9a-f]{32}$"
)


def put_target(dest: str, key: str) -> str:
    """The URL a put writes (``dest``/``key``), once both are checked: ``dest`` a
    destination with no empty, ``.`` or ``..`` segment; ``key`` relative (no leading
    ``/``), with no such segment either, no backslash or control character, at most
    :data:`MAX_KEY_BYTES`; and the whole path outside artisync's own layout.

    :raises ValueError: saying which rule it breaks."""
    scheme, root, prefix = parse_destination(dest)
    path = root.strip("/") if scheme == "file" else prefix
    segments = path.split("/") if path else []
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"destination {dest!r} has an empty, '.' or '..' path segment")
    if not isinstance(key, str) or not key:
        raise ValueError("the key under the destination is empty")
    if key.startswith("/") or any(s in ("", ".", "..") for s in key.split("/")):
        raise ValueError(
            f"key {key!r} must be a relative path with no empty, '.' or '..' segment "
            "(it must stay under its destination)"
        )
    if "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError(f"key {key!r} has a backslash or a control character")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"key is longer than {MAX_KEY_BYTES} bytes")
    if _LAYOUT.search("/".join([*segments, key])):
        raise ValueError(
            f"{dest.rstrip('/')}/{key} is inside artisync's own layout (objects/, tasks/, "
            "index/, ...), which only the daemon writes: choose another path"
        )
    return f"{dest.rstrip('/')}/{key}"
