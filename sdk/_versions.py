"""One artifact version: its raw snapshot and its record, written into the spool
on the caller's thread, and the :class:`Artifact` the caller sees meanwhile."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from artisync.protocol import ArtifactRecord, Spool, new_artifact_record, new_id

from ._artifact import Artifact
from ._handover import RawHolder
from ._lookup import artifact_from
from ._quota import SpoolFull
from ._session import Session
from ._session import origin as origin  # this process, as every record names it

if TYPE_CHECKING:
    from artisync.protocol.formats import Captured


def store_version(
    session: Session,
    task_id: str,
    destination_uri: str,
    name: str,
    capture: Callable[[Spool, str, Callable[[], int] | None], Captured],
    metadata: dict[str, Any] | None,
    delete_after: dict[str, Any] | None,
) -> Artifact:
    """Write the raw snapshot (``capture(spool, record_id, opener)``) and then its record
    into the spool, or hand both to a shared daemon; return once both are there.
    Nothing is left behind if either fails.

    :raises SerializationError: the object cannot be stored as asked.
    :raises SpoolFull: the spool's disk is full.
    """
    spool = session.spool
    record_id = new_id()
    holder = RawHolder(session, spool, record_id) if session.shared else None
    try:
        cap = capture(spool, record_id, None if holder is None else holder.open)
    except BaseException as exc:
        if holder is not None:
            holder.close()
        if isinstance(exc, OSError):
            raise _refused(exc) from exc
        raise
    record: ArtifactRecord = new_artifact_record(
        record_id=record_id,
        task_id=task_id,
        dest=destination_uri,
        name=name,
        type=cap.type,
        format=cap.format,
        extension=cap.extension,
        metadata=metadata,
        delete_after=delete_after,
        origin=origin(),
    )
    record["raw"] = cap.raw
    if cap.preview is not None:
        record["preview"] = cap.preview
    try:
        session.store(cast(dict[str, Any], record), holder)
    except BaseException as exc:
        spool.raw_path(record_id).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _refused(exc) from exc
        raise
    # a shared daemon's spool is its own: read back once uploaded
    wait = (lambda: session.wait_committed(task_id, None)) if session.shared else None
    return artifact_from(
        cast(dict[str, Any], record), session.settings, spool, wait, session.resolve
    )


def _refused(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFull(
            f"artifact NOT stored: the spool's disk is full ({exc}); free space "
            "(or set spool_limit) and report it again"
        )
    return exc
