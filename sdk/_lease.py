"""Asking this user's own daemon to copy a big reported file itself, under a read
lease it takes on the file (see ``artisync.daemon.leases``): one round trip here
instead of the copy. Whenever the daemon cannot, the file is copied here as before."""

from __future__ import annotations

import time
from typing import Any

from artisync.protocol import ArtisyncError
from artisync.protocol.formats import LEASE_UNKNOWN, NOT_LEASED, Leasing

from ._client import DaemonError, DaemonUnavailable
from ._session import Session

ANSWER_WAIT = 0.5  # seconds for the daemon's answer; then the file is copied here
QUIET = 10.0  # seconds without asking once the daemon did not answer


def leasing(session: Session, record_id: str) -> Leasing | None:
    """How a snapshot into ``record_id`` asks for a lease, or None: not with this
    daemon (a shared one, none, or ``file_lease = false``)."""
    spool = session.spool  # connects: whether a daemon of this user's own answers
    if session.shared or not spool.recycle or not session.settings.file_lease:
        return None
    client = session.client

    def lease(path: str, fd: int) -> dict[str, Any] | str:
        if time.monotonic() < client.quiet_until:
            return NOT_LEASED
        with client.lock:
            try:  # any failure to reach this user's daemon: the file is copied here
                client.connect(timeout=ANSWER_WAIT, hello_timeout=ANSWER_WAIT)
            except ArtisyncError:
                client.quiet_until = time.monotonic() + QUIET
                return NOT_LEASED
            msg = {"op": "lease", "record_id": record_id, "path": path, "fd": fd}
            try:
                reply = client.request(msg, ANSWER_WAIT)
            except DaemonUnavailable:  # asked, but no answer: it may copy it all the same
                client.quiet_until = time.monotonic() + QUIET
                return LEASE_UNKNOWN
            except DaemonError:
                return NOT_LEASED
        leased = reply.get("leased")
        return leased if isinstance(leased, dict) else NOT_LEASED

    return lease
