"""Message schemas between the SDK and the daemon, and their validation.

Every message is a msgpack map. Requests carry ``op`` and an integer ``id``;
replies echo the ``id`` with ``ok`` true or false. Records (the durable
events the daemon journals and publishes) are validated field by field, so a
hostile or buggy peer gets an :class:`InvalidMessage`, never a crash.
"""

from __future__ import annotations

from typing import Any

from ._errors import InvalidMessage
from ._records import Spec, check_fields, validate_record

PROTOCOL_VERSION = 1

_REQUESTS: dict[str, Spec] = {
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
        # instead of the newest version of each artifact: every version of this one
        "versions_of": ((str, type(None)), False),
    },
    "retry": {},
    # journal what the outbox holds now (flush: durable once this returns)
    "ingest": {},
    # a shared daemon: create the raw snapshot file of a new record in its own spool and
    # hand the caller a descriptor of it (SCM_RIGHTS); "known": journaled already
    "open_raw": {"record_id": (str, True)},
    # this user's own daemon: take a read lease on the file the caller has open as its
    # descriptor ``fd`` (``path``: its name there) and copy it into the record's raw
    # snapshot; ``leased``: the file's identity, or why not
    "lease": {"record_id": (str, True), "path": (str, True), "fd": (int, True)},
    # one record as the journal holds it; ``wait``: until it is encoded (or failed)
    "record": {
        "record_id": (str, True),
        "wait": ((float, int, type(None)), False),
    },
}


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
    check_fields(msg, _REQUESTS[op], op)
    if op == "submit":
        validate_record(msg["record"])
    return msg


def ok(rid: int, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "ok": True, **fields}


def error(rid: int | None, code: str, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": code, "message": message}
