"""Retrying: the one backoff policy, the one retry loop, and ``RetryingStorage``.

:class:`RetryPolicy` says how long to wait before each new try (exponential
backoff with jitter, never sooner than the server's Retry-After) and when to give
up (after ``max_attempts`` tries, or once ``max_elapsed`` seconds would be
exceeded). :func:`retry_transient` is the loop that applies it to one operation;
it serves the :class:`RetryingStorage` wrapper (every storage operation) and the
parts, blocks and chunks of large uploads. The daemon's offline probing uses the
same policy type, without the loop: it spaces out whole records.

Permanent errors and cancellation pass straight through. Every operation is safe
to repeat: keys are content addresses or immutable records, and ``put`` re-reads
its source file.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .base import ObjectInfo, Storage, TransientStorageError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    The wait before retry ``n`` (from 1) is drawn below the ceiling
    ``min(max_delay, initial * multiplier ** (n - 1))``: ``jitter`` is the part of
    it that is random (1.0: anywhere from 0, "full jitter"; 0.5: the upper half;
    0: exactly the ceiling). A server's Retry-After, capped at ``max_retry_after``,
    is a floor (it may exceed ``max_delay``).

    :param max_elapsed: give up when the next wait would end more than this many
        seconds after the first try began (None: no time budget).
    :param max_attempts: give up after this many tries in all (None: no limit).
    """

    initial: float = 0.2
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 1.0
    max_elapsed: float | None = 60.0
    max_attempts: int | None = None
    max_retry_after: float = math.inf

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (from 1)."""
        try:
            ceiling = min(self.max_delay, self.initial * self.multiplier ** (attempt - 1))
        except OverflowError:
            ceiling = self.max_delay
        wait = ceiling * (1 - self.jitter) + random.uniform(0, ceiling * self.jitter)
        if retry_after:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait

    def start(self) -> Backoff:
        """The state of one operation's tries under this policy."""
        return Backoff(self)


class Backoff:
    """One operation's failures so far, and whether (and how long) to wait for the next try."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.started = time.monotonic()
        self.failures = 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def next_delay(self, exc: TransientStorageError) -> float | None:
        """Count a failure; the wait before the next try, or None to give up."""
        self.failures += 1
        policy = self.policy
        if policy.max_attempts is not None and self.failures >= policy.max_attempts:
            return None
        delay = policy.delay(self.failures, exc.retry_after)
        if policy.max_elapsed is not None and self.elapsed + delay > policy.max_elapsed:
            return None
        return delay


OnRetry = Callable[[Backoff, TransientStorageError, float], None]
OnGiveUp = Callable[[Backoff, TransientStorageError], None]


def raise_if_cancelling() -> None:
    """Do not start (or restart) an operation in a task that is being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def _dropped() -> TransientStorageError:
    """A CancelledError out of an attempt while nobody cancels this task: an HTTP client
    that gave up on a connection the peer dropped mid-request cancelled its own future.
    A network error, retried like one (a real cancellation is raised on)."""
    raise_if_cancelling()
    return TransientStorageError("connection dropped mid-request")


async def retry_transient(
    policy: RetryPolicy,
    attempt: Callable[[int], Awaitable[T]],
    *,
    on_retry: OnRetry,
    on_give_up: OnGiveUp | None = None,
    on_recovered: Callable[[Backoff], None] | None = None,
) -> T:
    """``await attempt(n)`` for n = 1, 2, ... until it does not raise a
    :class:`TransientStorageError` or ``policy`` gives up (the last error is then
    re-raised). ``on_retry`` reports each wait before it starts, ``on_give_up`` the
    end, ``on_recovered`` a success after failures."""
    backoff = policy.start()
    while True:
        raise_if_cancelling()
        try:
            result = await attempt(backoff.failures + 1)
        except (TransientStorageError, asyncio.CancelledError) as caught:
            exc = caught if isinstance(caught, TransientStorageError) else _dropped()
            delay = backoff.next_delay(exc)
            if delay is None:
                if on_give_up is not None:
                    on_give_up(backoff, exc)
                if exc is caught:
                    raise
                raise exc from None
            on_retry(backoff, exc, delay)
            await asyncio.sleep(delay)
            continue
        if backoff.failures and on_recovered is not None:
            on_recovered(backoff)
        return result


# RetryingStorage's default: 0.2 s doubling to 10 s, full jitter, a minute per operation
STORAGE_RETRY = RetryPolicy()


class _OperationLog:
    """What RetryingStorage logs about one operation: each retry, giving up, recovering."""

    def __init__(self, backend: str, op: str, key: str) -> None:
        self.backend, self.op, self.key = backend, op, key

    def _fields(self, backoff: Backoff, attempt: int) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "op": self.op,
            "key": self.key,
            "attempt": attempt,
            "elapsed": round(backoff.elapsed, 3),
        }

    def retry(self, backoff: Backoff, exc: TransientStorageError, delay: float) -> None:
        fields = {**self._fields(backoff, backoff.failures), "error": str(exc)}
        log.warning(
            "storage %s failed, retry %d in %.2fs: %s",
            self.op,
            backoff.failures,
            delay,
            exc,
            extra={**fields, "delay": round(delay, 3)},
        )

    def give_up(self, backoff: Backoff, exc: TransientStorageError) -> None:
        log.warning(
            "storage %s failed, giving up after %d attempts in %.1fs: %s",
            self.op,
            backoff.failures,
            backoff.elapsed,
            exc,
            extra={**self._fields(backoff, backoff.failures), "error": str(exc)},
        )

    def recovered(self, backoff: Backoff) -> None:
        log.info(
            "storage %s succeeded after %d failed attempts",
            self.op,
            backoff.failures,
            extra=self._fields(backoff, backoff.failures + 1),
        )


class RetryingStorage:
    """Retry transient failures of ``inner`` under ``policy`` (per call).

    :param inner: the backend to wrap.
    :param policy: backoff and time budget per operation.
    """

    def __init__(
        self,
        inner: Storage,
        policy: RetryPolicy = STORAGE_RETRY,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy
        self.on_retry = on_retry  # counts each retry (the daemon's metrics)
        self._retried: set[str] = set()  # keys whose put succeeded after failed attempts

    @property
    def head_before_put(self) -> int:
        return self.inner.head_before_put

    def take_retried(self, key: str) -> bool:
        """Whether the last put of ``key`` needed more than one attempt (once): a failed
        attempt may have left parts behind that its own clean-up could not remove."""
        if key in self._retried:
            self._retried.discard(key)
            return True
        return False

    @property
    def scheme(self) -> str:
        return self.inner.scheme

    @property
    def uri(self) -> str:
        return self.inner.uri

    async def _call(self, op: str, key: str, fn: Callable[[int], Awaitable[T]]) -> T:
        report = _OperationLog(self.uri, op, key)

        def on_retry(backoff: Backoff, exc: TransientStorageError, delay: float) -> None:
            report.retry(backoff, exc, delay)
            if self.on_retry is not None:
                self.on_retry()

        return await retry_transient(
            self.policy,
            fn,
            on_retry=on_retry,
            on_give_up=report.give_up,
            on_recovered=report.recovered,
        )

    async def put(self, key: str, src: Path, *, size: int, sha256: str) -> ObjectInfo:
        def attempt(n: int) -> Awaitable[ObjectInfo]:
            if n > 1:
                self._retried.add(key)
            return self.inner.put(key, src, size=size, sha256=sha256)

        return await self._call("put", key, attempt)

    async def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> ObjectInfo:
        return await self._call(
            "put", key, lambda _: self.inner.put_bytes(key, data, sha256=sha256)
        )

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._call("head", key, lambda _: self.inner.head(key))

    async def get(self, key: str, target: Path) -> ObjectInfo:
        return await self._call("get", key, lambda _: self.inner.get(key, target))

    async def get_bytes(self, key: str) -> bytes:
        return await self._call("get", key, lambda _: self.inner.get_bytes(key))

    async def list(self, prefix: str, *, page_size: int | None = None) -> AsyncIterator[ObjectInfo]:
        """Retried only until the first item arrives: after that a restart would
        repeat items the caller has already seen."""

        async def first() -> tuple[AsyncIterator[ObjectInfo], ObjectInfo] | None:
            items = self.inner.list(prefix, page_size=page_size)
            try:
                return items, await anext(items)
            except StopAsyncIteration:
                return None
            except BaseException:
                await _aclose(items)
                raise

        started = await self._call("list", prefix, lambda _: first())
        if started is None:
            return
        items, item = started
        try:
            yield item
            async for info in items:
                yield info
        finally:
            await _aclose(items)

    async def delete(self, key: str) -> None:
        await self._call("delete", key, lambda _: self.inner.delete(key))

    async def delete_many(self, keys: Sequence[str]) -> None:
        if keys:  # idempotent: a retry deletes again what is left
            await self._call("delete", keys[0], lambda _: self.inner.delete_many(keys))

    async def abort_incomplete(self, key: str, *, size: int | None, started: float) -> int:
        """Forwarded once, not retried: a transient failure sends the record back to
        the journal with its own backoff, and the sweep runs again before its next try."""
        return await self.inner.abort_incomplete(key, size=size, started=started)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _aclose(items: AsyncIterator[ObjectInfo]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()
