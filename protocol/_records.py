"""Records: the durable events a client hands the daemon, typed and validated here.

Three kinds. A *task event* (``kind="task"``) carries a task's whole state at one
moment: started, closed. An *artifact version* (``kind="artifact"``) describes
one stored version of one artifact: what it is, its payload's SHA-256 and size,
and every payload it needs (``blobs``; a folder has one per file plus its listing).
The SDK sends an artifact version *raw*: with ``raw`` (how the raw snapshot in
the spool is to be encoded) instead of ``sha256``, ``size`` and ``blobs``, which
the daemon fills in once it has encoded it; the ``raw`` field is then kept in
the journal but never published. A *put* (``kind="put"``, StorageManager's uploads)
is one file for one key of the caller's choosing: ``key`` under the destination
``dest``, always sent raw (a kernel copy of the file); the daemon hashes it and
writes it at that key, nowhere else, and publishes nothing about it.
The SDK builds records with :func:`new_task_record`, :func:`task_event` and
:func:`new_artifact_record`; the daemon checks every record with
:func:`validate_record` before it journals it. Keys are the wire format: they are
also the JSON the daemon publishes, so they never change meaning.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, cast

from ._errors import InvalidMessage
from ._layout import check_name
from ._put import PutRecord, put_target

TASK_STATUSES = ("in_progress", "completed", "failed", "aborted")  # aborted: by a signal
RECORD_KINDS = ("task", "artifact", "put")
# how a raw snapshot becomes the stored form (see artisync.protocol.formats)
RAW_CODECS = ("stored", "arrow", "npy", "pixels", "pack")
MAX_BLOBS = 200_000
MAX_METADATA_BYTES = 1_000_000  # a version's metadata, once serialised as JSON

Spec = dict[str, tuple[type | tuple[type, ...], bool]]

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_ID = re.compile(r"[0-9a-f]{32}\Z")


@dataclass(frozen=True)
class Origin:
    """Who produced a record: written into every record, shown with every version."""

    host: str
    user: str
    pid: int
    # where a launcher says them (torchrun, srun, mpirun): the process's place in its job
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None

    def fields(self) -> dict[str, Any]:
        """The record fields: host, user, pid, and the rank fields that are known."""
        out: dict[str, Any] = {"host": self.host, "user": self.user, "pid": self.pid}
        for name in ("rank", "local_rank", "world_size"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class TaskRecord(TypedDict):
    kind: Literal["task"]
    record_id: str
    task_id: str
    created: float
    dest: str  # the destination URI every artifact of the task goes to
    host: str
    user: str
    pid: int
    event: str  # "started", "closed"
    project: str
    name: str
    status: str  # one of TASK_STATUSES
    started: float
    ended: float | None
    tags: list[str]
    comment: NotRequired[str]
    rank: NotRequired[int]
    local_rank: NotRequired[int]
    world_size: NotRequired[int]


class ArtifactRecord(TypedDict):
    kind: Literal["artifact"]
    record_id: str
    task_id: str
    created: float
    dest: str
    host: str
    user: str
    pid: int
    name: str
    type: str  # what the object was: dataframe, ndarray, image, file, tree...
    format: str  # how it is stored: parquet, npz, png, json, tree...
    extension: str  # suffix a local copy gets ("" for none)
    metadata: dict[str, Any]
    delete_after: dict[str, Any] | None
    # how the raw snapshot is to be encoded (codec, size...): set by the SDK
    raw: NotRequired[dict[str, Any]]
    # set once the payload is encoded, in the spool:
    sha256: NotRequired[str]
    size: NotRequired[int]
    blobs: NotRequired[list[list[Any]]]  # [[sha256, size], ...]
    preview: NotRequired[str]
    rank: NotRequired[int]
    local_rank: NotRequired[int]
    world_size: NotRequired[int]


Record = TaskRecord | ArtifactRecord | PutRecord


def new_id() -> str:
    """32 hex digits: milliseconds since the epoch (12), then 80 random bits (as a
    UUIDv7 orders them), so ids made one after another sort together: the journal's
    index on them grows at its end instead of touching a random page per record."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def new_task_record(
    *,
    project: str,
    name: str,
    dest: str,
    tags: list[str],
    origin: Origin,
    task_id: str | None = None,
) -> TaskRecord:
    now = time.time()
    rec: dict[str, Any] = {
        "kind": "task",
        "record_id": new_id(),
        "task_id": task_id or new_id(),
        "created": now,
        "dest": dest,
        **origin.fields(),
        "event": "started",
        "project": project,
        "name": name,
        "status": "in_progress",
        "started": now,
        "ended": None,
        "tags": list(tags),
    }
    return cast(TaskRecord, rec)


def task_event(
    task: TaskRecord, *, status: str, event: str, origin: Origin | None = None
) -> TaskRecord:
    """The task's next state: a new record (new id, new time), never an edit
    (``origin``: made by another process than the one that started the task)."""
    now = time.time()
    base: dict[str, Any] = dict(task)
    if origin is not None:
        for field in ("rank", "local_rank", "world_size"):
            base.pop(field, None)
        base.update(origin.fields())
    ended = now if status != "in_progress" else base.get("ended")
    base.update(status=status, event=event, record_id=new_id(), created=now, ended=ended)
    return cast(TaskRecord, base)


def new_artifact_record(
    *,
    record_id: str | None = None,
    task_id: str,
    dest: str,
    name: str,
    type: str,
    format: str,
    extension: str,
    metadata: dict[str, Any] | None,
    delete_after: dict[str, Any] | None,
    origin: Origin,
) -> ArtifactRecord:
    rec: dict[str, Any] = {
        "kind": "artifact",
        "record_id": record_id or new_id(),
        "task_id": task_id,
        "created": time.time(),
        "dest": dest,
        **origin.fields(),
        "name": name,
        "type": type,
        "format": format,
        "extension": extension,
        "metadata": metadata or {},
        "delete_after": delete_after,
    }
    return cast(ArtifactRecord, rec)


_COMMON: Spec = {
    "kind": (str, True),
    "record_id": (str, True),
    "task_id": (str, True),
    "created": ((float, int), True),
    "dest": (str, True),
    "host": (str, True),
    "user": (str, True),
    "pid": (int, True),
    "rank": (int, False),
    "local_rank": (int, False),
    "world_size": (int, False),
}
_TASK: Spec = {
    "event": (str, True),
    "project": (str, True),
    "name": (str, True),
    "status": (str, True),
    "started": ((float, int), True),
    "ended": ((float, int, type(None)), False),
    "tags": (list, False),
    "comment": (str, False),
}
_ARTIFACT: Spec = {
    "name": (str, True),
    "type": (str, True),
    "format": (str, True),
    "sha256": (str, False),
    "size": (int, False),
    "blobs": (list, False),
    "raw": (dict, False),
    "metadata": (dict, False),
    "preview": (str, False),
    "extension": (str, False),
    "delete_after": ((dict, type(None)), False),
}
_PUT: Spec = {"key": (str, True), "raw": (dict, True)}


def check_fields(obj: dict[str, Any], spec: Spec, what: str) -> None:
    """Every required field present, every present field of its type (bool is not int)."""
    for field, (types, required) in spec.items():
        if field not in obj:
            if required:
                raise InvalidMessage(f"{what}: missing field {field!r}")
            continue
        value = obj[field]
        if isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)
        ):
            raise InvalidMessage(f"{what}: field {field!r} must not be a boolean")
        if not isinstance(value, types):
            raise InvalidMessage(f"{what}: field {field!r} has type {type(value).__name__}")


def validate_record(rec: Any) -> dict[str, Any]:
    """Check a record (task event, artifact version or put); return it unchanged."""
    if not isinstance(rec, dict):
        raise InvalidMessage("record must be a map")
    check_fields(rec, _COMMON, "record")
    kind = rec["kind"]
    if kind not in RECORD_KINDS:
        raise InvalidMessage(f"unknown record kind {kind!r}"[:200])
    for field in ("record_id", "task_id"):
        if not _ID.match(rec[field]):
            raise InvalidMessage(f"record: {field} must be 32 lowercase hex digits")
    if kind == "task":
        check_fields(rec, _TASK, "task record")
        if rec["status"] not in TASK_STATUSES:
            raise InvalidMessage(f"task record: unknown status {rec['status']!r}"[:200])
        _checked_name(rec["project"], "project")
        _checked_name(rec["name"], "task name")
    elif kind == "put":
        _check_put(rec)
    else:
        check_fields(rec, _ARTIFACT, "artifact record")
        _checked_name(rec["name"], "artifact name")
        if "sha256" in rec or "raw" not in rec:
            for field in ("sha256", "size", "blobs"):
                if field not in rec:
                    raise InvalidMessage(f"artifact record: missing field {field!r}")
            _check_blobs(rec)
        if "raw" in rec:
            _check_raw(rec["raw"])
    return rec


def is_raw(rec: dict[str, Any]) -> bool:
    """An artifact version (or a put) whose raw snapshot the daemon has yet to encode."""
    return rec.get("kind") in ("artifact", "put") and "raw" in rec and "sha256" not in rec


def _check_put(rec: dict[str, Any]) -> None:
    check_fields(rec, _PUT, "put record")
    if any(field in rec for field in ("sha256", "size", "blobs")):
        raise InvalidMessage("put record: a put is sent raw (the daemon hashes it)")
    if rec["raw"].get("codec") != "stored":
        raise InvalidMessage("put record: its raw snapshot is the file itself ('stored')")
    _check_raw(rec["raw"])
    try:
        put_target(rec["dest"], rec["key"])
    except ValueError as exc:
        raise InvalidMessage(f"put record: {exc}"[:500]) from exc


def _check_raw(raw: dict[str, Any]) -> None:
    codec, size = raw.get("codec"), raw.get("size")
    if codec not in RAW_CODECS:
        raise InvalidMessage(f"artifact record: unknown raw codec {codec!r}"[:200])
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidMessage("artifact record: raw size must be a non-negative integer")
    data = raw.get("data")
    if data is not None and (not isinstance(data, bytes) or len(data) != size):
        raise InvalidMessage("artifact record: inline raw data must be bytes of its size")
    if not isinstance(raw.get("reused", ""), str):
        raise InvalidMessage("artifact record: raw 'reused' must be a boot id")
    leased = raw.get("leased")
    if leased is not None:
        _check_leased(leased, codec, size)
    if codec == "pack":
        files = raw.get("files")
        if not isinstance(files, list) or len(files) > MAX_BLOBS:
            raise InvalidMessage("artifact record: a raw pack lists 0..200000 files")


_LEASED: Spec = {
    "path": (str, True),
    "dev": (int, True),
    "ino": (int, True),
    "size": (int, True),
    "mtime_ns": (int, True),
    "ctime_ns": (int, True),
}


def _check_leased(leased: Any, codec: Any, size: int) -> None:
    """A file the daemon copies under its read lease: what identifies it (see
    ``daemon.leases``)."""
    if not isinstance(leased, dict):
        raise InvalidMessage("artifact record: raw 'leased' must be a map")
    check_fields(leased, _LEASED, "raw 'leased'")
    if codec != "stored" or leased["size"] != size:
        raise InvalidMessage("artifact record: only a stored file of the raw size is leased")
    if not leased["path"].startswith("/") or "\0" in leased["path"]:
        raise InvalidMessage("artifact record: a leased file's path must be absolute")


def _checked_name(name: str, what: str) -> None:
    try:
        check_name(name, what)
    except ValueError as exc:
        raise InvalidMessage(str(exc)) from exc


def _check_blobs(rec: dict[str, Any]) -> None:
    if not _HEX64.match(rec["sha256"]):
        raise InvalidMessage("artifact record: sha256 must be 64 lowercase hex digits")
    if rec["size"] < 0:
        raise InvalidMessage("artifact record: negative size")
    blobs = rec["blobs"]
    if not blobs or len(blobs) > MAX_BLOBS:
        raise InvalidMessage("artifact record: blobs must list 1..200000 entries")
    for entry in blobs:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not _HEX64.match(entry[0])
            or not isinstance(entry[1], int)
            or isinstance(entry[1], bool)
            or entry[1] < 0
        ):
            raise InvalidMessage("artifact record: each blob must be [sha256, size]")
    if not any(b[0] == rec["sha256"] for b in blobs):
        raise InvalidMessage("artifact record: its sha256 is not among its blobs")
