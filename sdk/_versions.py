"""One artifact version: its record, its payload written into the spool on the
writer thread, and the :class:`Artifact` the caller sees meanwhile."""

from __future__ import annotations

import functools
import getpass
import os
import socket
from typing import Any, cast

from artisync.protocol import ArtifactRecord, Origin, new_artifact_record

from ._artifact import Artifact
from ._lookup import locator
from ._session import Session

_HOST = socket.gethostname()


@functools.cache  # getpass.getuser() reads the password database when $USER is unset
def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def origin() -> Origin:
    """This process, as every record names it."""
    return Origin(host=_HOST, user=_user(), pid=os.getpid())


def store_version(
    session: Session,
    task_id: str,
    destination_uri: str,
    name: str,
    snap: Any,
    metadata: dict[str, Any] | None,
    delete_after: dict[str, Any] | None,
) -> Artifact:
    """Queue ``snap`` for the spool and its record for the daemon; return at once."""
    record: ArtifactRecord = new_artifact_record(
        task_id=task_id,
        dest=destination_uri,
        name=name,
        type=snap.type,
        format=snap.format,
        extension=snap.extension,
        metadata=metadata,
        delete_after=delete_after,
        origin=origin(),
    )
    spool = session.spool

    def store() -> ArtifactRecord:
        record["preview"] = snap.preview  # may format a copy's head: not on the caller
        payload = snap.write(spool)
        record["sha256"], record["size"] = payload.sha256, payload.size
        record["blobs"] = [[s, n] for s, n in payload.blobs]
        session.submit(dict(record))
        return record

    job = session.run(store)
    return Artifact(
        cast(dict[str, Any], record),  # the same dict: store() completes it
        locator(session.settings, destination_uri, spool),
        pending=job,
        allow_pickle=session.settings.allow_pickle,
    )
