"""The spool quota: room is checked when an artifact is snapshotted, before anything
is written, so an artifact is either stored whole or refused with :class:`SpoolFull`.

Two limits: ``spool_limit`` (bytes of payloads, temp files and outbox records; 0 for
none) and the free space of the spool's disk (a small reserve is kept for records
and the daemon's journal). When either would be exceeded, ``spool_full = "wait"``
waits for the daemon to upload and free room, up to ``spool_wait_timeout`` seconds,
then raises; ``"error"`` raises at once. The size of an object that is serialized
later (a DataFrame, an array) is estimated from its in-memory size.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

from artisync.protocol import ArtisyncError, Settings, Spool, format_size

log = logging.getLogger("artisync")

RESERVE = 64 * 1024 * 1024  # free disk kept for records and the journal (at most 5 %)
RESCAN = 1.0  # seconds a measured spool size is trusted (own additions are counted)


class SpoolFull(ArtisyncError):
    """The spool has no room for this artifact: its ``spool_limit`` or its disk is full.
    Nothing of the artifact was written or recorded."""


def estimate_size(obj: Any) -> int:
    """Bytes ``obj`` will likely take in the spool (0 when unknown); cheap, imports nothing."""
    if isinstance(obj, bytes | bytearray):
        return len(obj)
    if isinstance(obj, memoryview):
        return obj.nbytes
    if isinstance(obj, str | os.PathLike):
        return _path_size(obj)
    package = type(obj).__module__.partition(".")[0]
    try:
        if package == "pandas" and hasattr(obj, "shape"):
            # 8 bytes a cell and an index entry: memory_usage() costs ~0.3-0.6 ms a call
            rows, *cols = obj.shape
            return int(rows) * (int(cols[0]) if cols else 1) * 8 + int(rows) * 8
        if package == "numpy" and hasattr(obj, "nbytes"):
            return int(obj.nbytes)
        if package == "PIL" and hasattr(obj, "getbands"):
            width, height = obj.size
            return int(width * height * len(obj.getbands()))
    except Exception:  # an estimate must never break an upload
        return 0
    return 0


def _path_size(obj: str | os.PathLike[str]) -> int:
    try:
        path = os.path.expanduser(os.fspath(obj))
        st = os.stat(path)
    except (OSError, ValueError, TypeError):  # text, a wildcard, or nothing there
        return len(obj.encode(errors="replace")) if isinstance(obj, str) else 0
    if not os.path.isdir(path):
        return st.st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


class Quota:
    """Admission control for one process's snapshots into one spool."""

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.spool_limit
        self.mode = settings.spool_full
        self.timeout = settings.spool_wait_timeout
        self._lock = threading.Lock()
        self._measured = 0
        self._measured_at = -math.inf
        # reserved since the last measurement: counted on top of it (snapshots are
        # written before the call returns, so a new measurement includes them)
        self._pending = 0

    def reserve(self, spool: Spool, need: int, what: str) -> None:
        """Return once ``need`` more bytes fit, counting them as used.

        :raises SpoolFull: no room (at once with ``spool_full = "error"``, after
            ``spool_wait_timeout`` with ``"wait"``), or ``need`` exceeds the limit itself.
        """
        if self.limit and need > self.limit:
            raise SpoolFull(
                f"{what} needs about {format_size(need)}, more than the whole spool_limit "
                f"({format_size(self.limit)}) of {spool.root}; raise spool_limit"
            )
        deadline: float | None = None
        while True:
            with self._lock:
                problem = self._problem(spool, need)
                if problem is None:
                    self._pending += need
                    return
                self._measured_at = -math.inf  # measure again next time
            if self.mode == "error":
                raise SpoolFull(f"{what} not stored: {problem} (spool_full = 'error')")
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.timeout
                log.warning("artisync: %s; waiting up to %.0f s for room", problem, self.timeout)
            if now >= deadline:
                raise SpoolFull(
                    f"{what} not stored: {problem}, still after waiting {self.timeout:.0f} s "
                    "(spool_wait_timeout); is the daemon running and online? "
                    "see `artisync status`"
                )
            time.sleep(min(0.5, deadline - now))

    def check_disk(self, spool: Spool, need: int, what: str) -> None:
        """Once the size is known (after serializing): the disk's reserve is the daemon's,
        for its journal; a snapshot that would eat into it is refused.

        :raises SpoolFull: not enough room."""
        free, reserve = _disk_free(spool)
        if free is not None and free - need < reserve:
            raise SpoolFull(
                f"{what} NOT stored: the spool's disk is full ({spool.root} has "
                f"{format_size(free)} free, {format_size(need)} needed plus "
                f"{format_size(reserve)} kept for the daemon); free space and report it again"
            )

    def _problem(self, spool: Spool, need: int) -> str | None:
        free, reserve = _disk_free(spool)
        if free is not None and free - need < reserve:
            return (
                f"the spool's disk ({spool.root}) has {format_size(free)} free, "
                f"{format_size(need)} needed plus {format_size(reserve)} kept free"
            )
        if not self.limit:
            return None
        now = time.monotonic()
        if now - self._measured_at > RESCAN:
            self._measured, self._measured_at, self._pending = spool.usage(), now, 0
        used = self._measured + self._pending
        if used + need > self.limit:
            return (
                f"the spool {spool.root} holds {format_size(used)} of its spool_limit "
                f"{format_size(self.limit)}, {format_size(need)} more needed"
            )
        return None


def _disk_free(spool: Spool) -> tuple[int | None, int]:
    try:
        st = os.statvfs(spool.root)
    except OSError:
        return None, 0
    reserve = min(RESERVE, st.f_blocks * st.f_frsize // 20)
    return st.f_bavail * st.f_frsize, reserve
