"""Message schemas between the SDK and the daemon, and their validation.

Every message is a msgpack map. Requests carry ``op`` and an integer ``id``;
replies echo the ``id`` with ``ok`` true or false. Records (the durable
events the daemon journals and publishes) are validated field by field, so a
hostile or buggy peer gets an :class:`InvalidMessage`, never a crash.
"""

from __future__ import annotations

import re
from typing import Any

from ._errors import InvalidMessage
from ._layout import check_name

PROTOCOL_VERSION = 1

REQUEST_OPS = ("hello", "submit", "wait", "status", "query_task", "retry")
TASK_STATUSES = ("in_progress", "completed", "failed")
RECORD_KINDS = ("task", "artifact")
MAX_BLOBS = 200_000
MAX_METADATA_BYTES = 1_000_000

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_ID = re.compile(r"[0-9a-f]{32}\Z")

_Spec = dict[str, tuple[type | tuple[type, ...], bool]]

_COMMON: _Spec = {
    "kind": (str, True),
    "record_id": (str, True),
    "task_id": (str, True),
    "created": ((float, int), True),
    "dest": (str, True),
    "host": (str, True),
    "user": (str, True),
    "pid": (int, True),
}
_TASK: _Spec = {
    "event": (str, True),
    "project": (str, True),
    "name": (str, True),
    "status": (str, True),
    "started": ((float, int), True),
    "ended": ((float, int, type(None)), False),
    "tags": (list, False),
    "comment": (str, False),
}
_ARTIFACT: _Spec = {
    "name": (str, True),
    "type": (str, True),
    "format": (str, True),
    "sha256": (str, True),
    "size": (int, True),
    "blobs": (list, True),
    "metadata": (dict, False),
    "preview": (str, False),
    "extension": (str, False),
    "delete_after": ((dict, type(None)), False),
}
_REQUESTS: dict[str, _Spec] = {
    "hello": {"version": (int, True), "client": (str, False)},
    "submit": {"record": (dict, True)},
    "wait": {
        "task_id": ((str, type(None)), False),
        "timeout": ((float, int, type(None)), False),
        "progress": (bool, False),
    },
    "status": {},
    "query_task": {
        "task_id": ((str, type(None)), False),
        "project": ((str, type(None)), False),
        "name": ((str, type(None)), False),
        "statuses": ((list, type(None)), False),
    },
    "retry": {},
}


def _check_fields(obj: dict[str, Any], spec: _Spec, what: str) -> None:
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


def validate_request(msg: Any) -> dict[str, Any]:
    """Check a decoded request; return it unchanged.

    :raises InvalidMessage: unknown op, missing or mistyped field.
    """
    if not isinstance(msg, dict):
        raise InvalidMessage(f"request must be a map, not {type(msg).__name__}")
    op = msg.get("op")
    if not isinstance(op, str) or op not in _REQUESTS:
        raise InvalidMessage(f"unknown op {op!r}"[:200])
    rid = msg.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise InvalidMessage("request id must be an integer")
    _check_fields(msg, _REQUESTS[op], op)
    if op == "submit":
        validate_record(msg["record"])
    return msg


def validate_record(rec: Any) -> dict[str, Any]:
    """Check a record (task event or artifact version); return it unchanged."""
    if not isinstance(rec, dict):
        raise InvalidMessage("record must be a map")
    _check_fields(rec, _COMMON, "record")
    kind = rec["kind"]
    if kind not in RECORD_KINDS:
        raise InvalidMessage(f"unknown record kind {kind!r}"[:200])
    for field in ("record_id", "task_id"):
        if not _ID.match(rec[field]):
            raise InvalidMessage(f"record: {field} must be 32 lowercase hex digits")
    if kind == "task":
        _check_fields(rec, _TASK, "task record")
        if rec["status"] not in TASK_STATUSES:
            raise InvalidMessage(f"task record: unknown status {rec['status']!r}"[:200])
        _checked_name(rec["project"], "project")
        _checked_name(rec["name"], "task name")
    else:
        _check_fields(rec, _ARTIFACT, "artifact record")
        _checked_name(rec["name"], "artifact name")
        _check_blobs(rec)
    return rec


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


def ok(rid: int, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "ok": True, **fields}


def error(rid: int | None, code: str, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": code, "message": message}
