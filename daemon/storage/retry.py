"""``RetryingStorage``: the one place where storage operations are retried.

It wraps any :class:`~artisync.daemon.storage.base.Storage`. A
:class:`TransientStorageError` is retried with exponential backoff and full
jitter, never sooner than the server's Retry-After, until ``max_elapsed``
seconds have passed; then the last error is re-raised. Permanent errors and
cancellation pass straight through. Every operation is safe to repeat: keys are
content addresses or immutable records, and ``put`` re-reads its source file.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from .base import ObjectInfo, Storage, TransientStorageError

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Backoff:
    """Decides, for one operation, whether and how long to wait before the next try."""

    def __init__(self, owner: RetryingStorage, op: str, key: str) -> None:
        self.owner, self.op, self.key = owner, op, key
        self.started = time.monotonic()
        self.failures = 0

    async def wait_or_raise(self, exc: TransientStorageError) -> None:
        self.failures += 1
        owner = self.owner
        delay = random.uniform(0, min(owner.cap, owner.base * 2 ** (self.failures - 1)))
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        elapsed = time.monotonic() - self.started
        fields = {
            "backend": owner.uri,
            "op": self.op,
            "key": self.key,
            "attempt": self.failures,
            "elapsed": round(elapsed, 3),
            "error": str(exc),
        }
        if elapsed + delay > owner.max_elapsed:
            log.warning(
                "storage %s failed, giving up after %d attempts in %.1fs: %s",
                self.op,
                self.failures,
                elapsed,
                exc,
                extra=fields,
            )
            raise exc
        log.warning(
            "storage %s failed, retry %d in %.2fs: %s",
            self.op,
            self.failures,
            delay,
            exc,
            extra={**fields, "delay": round(delay, 3)},
        )
        await asyncio.sleep(delay)

    def succeeded(self) -> None:
        if self.failures:
            log.info(
                "storage %s succeeded after %d failed attempts",
                self.op,
                self.failures,
                extra={
                    "backend": self.owner.uri,
                    "op": self.op,
                    "key": self.key,
                    "attempt": self.failures + 1,
                    "elapsed": round(time.monotonic() - self.started, 3),
                },
            )


def _raise_if_cancelling() -> None:
    """Do not start (or restart) an operation in a task that is being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


class RetryingStorage:
    """Retry transient failures of ``inner`` for up to ``max_elapsed`` seconds per call.

    :param inner: the backend to wrap.
    :param max_elapsed: time budget per operation, in seconds.
    :param base: first backoff ceiling, doubled per failure (full jitter below it).
    :param cap: largest backoff ceiling (a server's Retry-After may exceed it).
    """

    def __init__(
        self, inner: Storage, *, max_elapsed: float = 60.0, base: float = 0.2, cap: float = 10.0
    ) -> None:
        self.inner = inner
        self.max_elapsed = max_elapsed
        self.base = base
        self.cap = cap

    @property
    def scheme(self) -> str:
        return self.inner.scheme

    @property
    def uri(self) -> str:
        return self.inner.uri

    @property
    def max_concurrency(self) -> int:
        return self.inner.max_concurrency

    @property
    def atomic_put(self) -> bool:
        return self.inner.atomic_put

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        backoff = _Backoff(self, op, key)
        while True:
            _raise_if_cancelling()
            try:
                result = await fn()
            except TransientStorageError as exc:
                await backoff.wait_or_raise(exc)
                continue
            backoff.succeeded()
            return result

    async def put(self, key: str, src: Path, *, size: int, sha256: str) -> ObjectInfo:
        return await self._call(
            "put", key, lambda: self.inner.put(key, src, size=size, sha256=sha256)
        )

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return await self._call("put", key, lambda: self.inner.put_bytes(key, data))

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._call("head", key, lambda: self.inner.head(key))

    async def get(self, key: str, dest: Path) -> ObjectInfo:
        return await self._call("get", key, lambda: self.inner.get(key, dest))

    async def get_bytes(self, key: str) -> bytes:
        return await self._call("get", key, lambda: self.inner.get_bytes(key))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Retried only until the first item arrives: after that a restart would
        repeat items the caller has already seen."""
        backoff = _Backoff(self, "list", prefix)
        while True:
            _raise_if_cancelling()
            items = self.inner.list(prefix)
            try:
                first = await anext(items)
            except StopAsyncIteration:
                backoff.succeeded()
                return
            except TransientStorageError as exc:
                await _aclose(items)
                await backoff.wait_or_raise(exc)
                continue
            except BaseException:
                await _aclose(items)
                raise
            break
        backoff.succeeded()
        try:
            yield first
            async for info in items:
                yield info
        finally:
            await _aclose(items)

    async def delete(self, key: str) -> None:
        await self._call("delete", key, lambda: self.inner.delete(key))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _aclose(items: AsyncIterator[ObjectInfo]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()
