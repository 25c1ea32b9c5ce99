"""``delete_after_upload``: the submitter's original file goes once its record is
committed, and only if it is still the same file (owner, size, mtime) and a
regular one; anything else is kept, with a note in the log."""

from __future__ import annotations

import logging
import os
import stat

from .journal import Row

log = logging.getLogger("artisync.daemon")


def delete_original(row: Row) -> None:
    spec = row.body.get("delete_after")
    if row.kind != "artifact" or not isinstance(spec, dict) or row.peer_uid is None:
        return  # (a task record may carry anything in fields it does not define)
    path = spec.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        return
    try:
        st = os.lstat(path)
        if (
            stat.S_ISREG(st.st_mode)
            and st.st_uid == row.peer_uid
            and st.st_size == spec.get("size")
            and st.st_mtime_ns == spec.get("mtime_ns")
        ):
            os.unlink(path)
    except OSError as exc:
        log.info("not deleting %s after upload: %s", path, exc)
