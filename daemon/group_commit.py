"""Group commit: the one way the daemon turns many small writes into few.

Whoever arrives while no commit runs commits after one turn of the event loop,
with whatever the tasks woken with it submitted meanwhile; those that arrive
while one runs gather and go together in the next. A lone write waits for
nothing but that turn, a burst costs one commit per group: one journal transaction (one
fsync), one batch object. The journal's writes, the encoder's completions and
the publisher's artifact versions all go through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# commits a batch; returns one result per item, an exception for an item that failed
Commit = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]


class GroupCommit(Generic[T, R]):
    """:meth:`submit` an item, get its result once the batch it went in is committed.

    A commit that raises fails every item in its batch. A commit cancelled with the
    task that ran it does not cancel the items of other tasks: they are submitted
    again (commits must be idempotent: they may have taken effect)."""

    def __init__(self, commit: Commit[T, R]) -> None:
        self._commit = commit
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._lock = asyncio.Lock()

    @property
    def idle(self) -> bool:
        return not self._pending and not self._lock.locked()

    async def submit(self, item: T) -> R:
        while True:
            fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._pending.append((item, fut))
            try:
                async with self._lock:
                    if not fut.done():
                        await self._run(fut)
                return await fut
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if fut.cancelled() and not (task is not None and task.cancelling()):
                    continue  # the task that ran our batch was cancelled, not us
                raise

    async def _run(self, mine: asyncio.Future[R]) -> None:
        # one turn of the loop first: the tasks woken with this one (the records of one
        # claim, the versions of one published batch) submit theirs, and go with it
        await asyncio.sleep(0)
        batch, self._pending = self._pending, []
        try:
            results: Sequence[R | Exception] = await self._commit([item for item, _ in batch])
        except Exception as exc:
            results = [exc] * len(batch)
        except BaseException:
            for _, f in batch:
                if f is not mine and not f.done():
                    f.cancel()
            raise
        for (_, f), result in zip(batch, results, strict=True):
            if f.done():
                continue
            if isinstance(result, Exception):
                f.set_exception(result)
            else:
                f.set_result(result)
