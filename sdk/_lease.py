"""Asking this user's own daemon to copy a big reported file itself, under a read
lease it takes on the file (see ``artisync.daemon.leases``): one round trip here
instead of the copy. Whenever the daemon cannot, the file is copied here as before.

Which is cheaper depends on the cores. With one to spare, a call that asks took
~1 ms against ~2.7 ms for one that copies 16 MiB (the daemon on its own core,
2026-12-04). With every core busy (a loop whose BLAS threads spin on both of 2
cores), the daemon's event loop, at a lower priority, takes 5-15 ms to answer, and
copying here is cheaper. So each process keeps the recent cost of both (the median
of the last ``SAMPLES`` round trips, and of copies per byte) and takes the cheaper
for each file. A median, not a mean: an answer now and then 100-150 ms late (seen
with the daemon idle) must not turn a process away from asking for a hundred
files. And an answer faster than a copy is asked again at once: a few slow answers
in a row (the daemon journaling a burst of records) turned a process to copying,
and with the median alone it came back only after three probes, 48 files later.

To notice a change, the other way is tried now and then: once the way taken has
cost the caller ``PROBE_SHARE`` times what one try of the other is expected to
cost. Trying costs at most a sixteenth of what reporting costs, whichever way is
taken and whatever the file's size. A try every 16th file, as before, made a
process that asks (~1 ms) copy a 16 MiB file every 16th one: 5 ms, and 44-111 ms
where the spool's pages were new to this virtual machine; a 1 GiB checkpoint
would block for a copy every 16th report. Copies cost per byte what they cost,
give or take the page cache; answers are what changes, and each ask measures one.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from typing import Any

from artisync.protocol import ArtisyncError
from artisync.protocol.formats import LEASE_UNKNOWN, NOT_LEASED

from ._client import DaemonClient, DaemonError, DaemonUnavailable
from ._session import Session

ANSWER_WAIT = 0.5  # seconds for the daemon's answer; then the file is copied here
QUIET = 10.0  # seconds without asking once the daemon did not answer
PROBE_SHARE = 16  # the way taken costs this many tries of the other between two tries
COPY_GUESS = 1 / 4e9  # seconds a byte costs to copy here, until measured
SAMPLES = 5  # recent costs whose median is taken


class Leaser:
    """One process's way of asking (per connection: a forked child starts afresh)."""

    def __init__(self, client: DaemonClient) -> None:
        self.client = client
        self.round_trips: deque[float] = deque(maxlen=SAMPLES)  # seconds
        self.per_byte: deque[float] = deque([COPY_GUESS], maxlen=SAMPLES)  # of copies
        self.spent = 0.0  # seconds the way taken has cost since the other was tried

    def cheaper_here(self, size: int) -> bool:
        """Copy this file here rather than ask? (Now and then, the other way.)"""
        if not self.round_trips:
            return False
        copy = _median(self.per_byte) * size
        ask = min(_median(self.round_trips), self.round_trips[-1])
        here = ask > copy
        if self.spent >= PROBE_SHARE * (ask if here else copy):
            self.spent = 0.0
            return not here
        return here

    def copied(self, size: int, seconds: float) -> None:
        self.per_byte.append(seconds / size)
        self.spent += seconds

    def answered(self, seconds: float) -> None:
        """The daemon answered a lease request in ``seconds``."""
        self.round_trips.append(seconds)
        self.spent += seconds

    def ask(self, record_id: str, path: str, fd: int) -> dict[str, Any] | str:
        client = self.client
        if time.monotonic() < client.quiet_until:
            return NOT_LEASED
        with client.lock:
            try:  # any failure to reach this user's daemon: the file is copied here
                client.connect(timeout=ANSWER_WAIT, hello_timeout=ANSWER_WAIT)
            except ArtisyncError:
                client.quiet_until = time.monotonic() + QUIET
                return NOT_LEASED
            msg = {"op": "lease", "record_id": record_id, "path": path, "fd": fd}
            began = time.perf_counter()
            try:
                reply = client.request(msg, ANSWER_WAIT)
            except DaemonUnavailable:  # asked, but no answer: it may copy it all the same
                client.quiet_until = time.monotonic() + QUIET
                return LEASE_UNKNOWN
            except DaemonError:
                return NOT_LEASED
            self.answered(time.perf_counter() - began)
        leased = reply.get("leased")
        return leased if isinstance(leased, dict) else NOT_LEASED


_leasers: weakref.WeakKeyDictionary[DaemonClient, Leaser] = weakref.WeakKeyDictionary()


class _Lease:
    """``Request.lease`` of one snapshot (see ``protocol.formats.Leasing``)."""

    def __init__(self, leaser: Leaser, record_id: str) -> None:
        self.leaser, self.record_id = leaser, record_id

    def __call__(self, path: str, fd: int, size: int) -> dict[str, Any] | str:
        if self.leaser.cheaper_here(size):
            return NOT_LEASED
        return self.leaser.ask(self.record_id, path, fd)

    def copied(self, size: int, seconds: float) -> None:
        self.leaser.copied(size, seconds)


def _median(values: deque[float]) -> float:
    """(Not ``statistics.median``: importing it, with ``fractions`` and ``decimal``, took
    1.8 ms of a process's first ``upload_artifact``.)"""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def leasing(session: Session, record_id: str) -> _Lease | None:
    """How a snapshot into ``record_id`` asks for a lease, or None: not with this
    daemon (a shared one, none, or ``file_lease = false``)."""
    spool = session.spool  # connects: whether a daemon of this user's own answers
    if session.shared or not spool.recycle or not session.settings.file_lease:
        return None
    leaser = _leasers.get(session.client)
    if leaser is None:
        leaser = _leasers[session.client] = Leaser(session.client)
    return _Lease(leaser, record_id)
