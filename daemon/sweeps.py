"""The sweep lock: prune's deletes and writers' renewals of an object never cross.

Objects are content-addressed and shared. ``prune`` deletes an object that no record
references and that was written longer ago than twice the reuse window; a writer
that needs such an old object writes it again (the same bytes), which renews its
time, and then publishes a record pointing to it. Looking at an object and deleting
it are two requests: a renewal that lands between prune's last look and its delete
would be deleted with it, and the writer's record would point to nothing. No
backend offers a delete conditional on the time (S3 has none at all), so the two
sides agree through the bucket itself:

- **Prune** writes ``prune/sweeping/<id>.json`` before it looks at any object it
  means to delete, waits :data:`COVER` + :data:`MARGIN`, and only then looks and
  deletes. It rewrites the file every :data:`REFRESH` and removes it when done; a
  file not rewritten for :data:`TTL` (a pruner that died) is ignored.
- **A writer** sends an object only after a look at ``prune/sweeping/`` that found
  no live sweep, made at most :data:`CHECK_EVERY` earlier (one LIST a few seconds
  per destination while uploading, shared by all uploads); while a sweep is live it
  waits. A send that finished within :data:`COVER` of that look is safe; a longer
  one (a large object, retries) is checked once no sweep is live: the object is
  looked at again and sent again if a sweep removed it.

Why that holds: a sweep can remove a renewal only if its look at the object came
after the lock file was written plus COVER + MARGIN and before the renewal
finished. The writer's look that preceded the send found no lock, so it came
before the lock was written, and the send therefore finished more than COVER after
that look: the writer checks again. Its second look finds no live sweep only once
that sweep has finished deleting (or, if made earlier, finds the lock): the object
it then sees is what stays. Every interval is measured on one machine's monotonic
clock, from the moment a request was sent (writer) or acknowledged (prune), so the
clocks of different machines only matter for :data:`TTL`, minutes apart at worst.

Listing is strongly consistent on every supported backend (S3 since 2020, GCS,
Azure, a folder), which the lock needs.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import time
from types import TracebackType
from typing import Self

from artisync.protocol import new_id

from .storage.base import Storage

SWEEPING = "prune/sweeping/"
CHECK_EVERY = 5.0  # seconds a writer's look at the lock holds (must be below COVER + MARGIN)
COVER = 15.0  # a send finished within this of the look needs no second look
MARGIN = 5.0  # prune waits COVER + MARGIN after its lock is written
REFRESH = 60.0  # prune rewrites its lock this often
TTL = 600.0  # a lock not rewritten for this long belongs to a pruner that died
DEADLINE = TTL / 2  # prune stops deleting this long after its last rewrite


class SweepGate:
    """A writer's side, one per destination: when it may send an object."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._clear_at = -math.inf  # monotonic time of the last look that found none
        self._looking = asyncio.Lock()

    async def clear(self) -> float:
        """The monotonic time of a look that found no live sweep, at most
        :data:`CHECK_EVERY` old; waits while a sweep is live."""
        async with self._looking:
            while time.monotonic() - self._clear_at > CHECK_EVERY:
                sent = time.monotonic()
                if await live(self.storage):
                    await asyncio.sleep(CHECK_EVERY)
                    continue
                self._clear_at = sent
            return self._clear_at

    @staticmethod
    def covered(clear_at: float) -> bool:
        """A send that finished now, after the look at ``clear_at``, cannot have been
        looked at by a sweep before it landed."""
        return time.monotonic() - clear_at < COVER


async def live(storage: Storage) -> bool:
    """Whether a sweep holds a lock now (one with no time is taken as live)."""
    now = time.time()
    async for info in storage.list(SWEEPING, page_size=10):
        if info.modified is None or now - info.modified < TTL:
            return True
    return False


class Sweep:
    """Prune's side: held while it looks at and deletes objects.

    ``async with Sweep(st) as sweep:`` writes the lock and waits until writers have
    seen it; call :meth:`keep` before each round of looks and deletes."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.key = f"{SWEEPING}{new_id()}.json"
        self._written = -math.inf

    async def __aenter__(self) -> Self:
        await self._write()
        await asyncio.sleep(COVER + MARGIN)
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.storage.delete(self.key)

    async def keep(self) -> None:
        """Rewrite the lock when due. Call before each round: a round must end well
        within :data:`DEADLINE`, or writers may take the lock for a dead pruner's."""
        if time.monotonic() - self._written > REFRESH:
            await self._write()

    def check(self) -> None:
        """Raise rather than delete once the lock may look dead to writers."""
        if time.monotonic() - self._written > DEADLINE:
            raise TimeoutError(f"prune: sweep lock {self.key} not renewed in time")

    async def _write(self) -> None:
        body = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        await self.storage.put_bytes(self.key, json.dumps(body).encode())
        self._written = time.monotonic()  # acknowledged: the lock is in place
