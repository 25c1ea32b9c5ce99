"""Message schemas between the SDK and the daemon, and their validation.

Every message is a msgpack map. Requests carry ``op`` and an integer ``id``;
replies echo the ``id`` with ``ok`` true or false. Records (the durable
events the daemon journals and publishes) are validated field by field, so a
hostile or buggy peer gets an :class:`InvalidMessage`, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

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
        # the artifacts in pages, this one from index ``after`` on (see page_of)
        "after": ((int, type(None)), False),
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


PAGE_BYTES = 4 * 1024 * 1024  # a page of a query's records, packed, at most


def page_of(records: list[Any], after: int) -> tuple[list[Any], int | None]:
    """The records from index ``after`` on that fit in :data:`PAGE_BYTES` packed (one
    at least), and where the next page starts (None: none is left).

    A reply must fit in a frame (16 MiB) whatever a task holds. Until they are
    uploaded, records keep their payloads (a dict's JSON, up to 64 KiB each), and
    300 versions of a 62 kB dict waiting for storage made a 19 MB reply: the query
    failed, and a reader in another process fell back to storage, which did not have
    them yet."""
    out: list[Any] = []
    size = 0
    for rec in records[max(after, 0) :]:
        n = len(msgpack.packb(rec, use_bin_type=True))
        if out and size + n > PAGE_BYTES:
            return out, max(after, 0) + len(out)
        out.append(rec)
        size += n
    return out, None


def all_pages(
    request: Callable[[dict[str, Any]], dict[str, Any]], msg: dict[str, Any]
) -> dict[str, Any]:
    """The whole answer to a query that the daemon pages (see :func:`page_of`): its
    first reply, with the records of every page. (A daemon that does not page answers
    whole, without ``next``.)"""
    reply = request({**msg, "after": 0})
    records = list(reply.get("artifacts") or [])
    start, following = 0, reply.get("next")
    while isinstance(following, int) and following > start:
        start = following
        page = request({**msg, "after": start})
        records += page.get("artifacts") or []
        following = page.get("next")
    return {**reply, "artifacts": records, "next": None}


def ok(rid: int, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "ok": True, **fields}


def error(rid: int | None, code: str, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": code, "message": message}
