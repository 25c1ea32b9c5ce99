"""Destinations: one storage client per URI, and whether it is reachable.

After an operation has exhausted its retries, the destination goes offline:
its records wait, and one record is let through as a probe at exponentially
growing intervals (with jitter, capped) until a probe succeeds.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from .config import DaemonConfig
from .storage.base import PermanentStorageError, Storage, open_storage
from .storage.retry import RetryingStorage

log = logging.getLogger("artisync.daemon")


@dataclass
class Destination:
    uri: str
    storage: Storage
    online: bool = True
    failures: int = 0
    last_error: str | None = None
    retry_at: float = 0.0
    probing: bool = False
    uploaded: int = 0

    def ready(self, now: float) -> bool:
        return self.online or (not self.probing and now >= self.retry_at)

    def succeeded(self) -> None:
        if not self.online:
            log.info(
                "destination back online: %s (after %d failed probes)", self.uri, self.failures
            )
        self.online, self.failures, self.probing, self.last_error = True, 0, False, None

    def failed(self, err: Exception, max_backoff: float, retry_after: float | None) -> float:
        self.failures += 1
        self.probing = False
        self.last_error = str(err)[:500]
        delay = min(max_backoff, 1.0 * 2 ** min(self.failures - 1, 20))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if retry_after:
            delay = max(delay, retry_after)
        if self.online:
            log.warning("destination offline: %s: %s", self.uri, self.last_error)
        self.online = False
        self.retry_at = time.time() + delay
        return self.retry_at

    def status(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "online": self.online,
            "failures": self.failures,
            "last_error": self.last_error,
            "next_probe_in": max(0.0, self.retry_at - time.time()) if not self.online else 0,
        }


class Destinations:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._by_uri: dict[str, Destination] = {}
        self.broken: dict[str, str] = {}  # uri -> why it cannot even be opened

    def get(self, uri: str) -> Destination:
        dest = self._by_uri.get(uri)
        if dest is None:
            try:
                inner = open_storage(uri, self.config.options_for(uri))
            except (ValueError, ImportError) as exc:
                raise PermanentStorageError(f"cannot open destination: {exc}", backend=uri) from exc
            storage = RetryingStorage(inner, max_elapsed=self.config.retry_max_elapsed)
            dest = self._by_uri[uri] = Destination(uri, storage)
        return dest

    def offline(self) -> list[str]:
        now = time.time()
        return [u for u, d in self._by_uri.items() if not d.ready(now)]

    def status(self) -> list[dict[str, Any]]:
        return [d.status() for d in self._by_uri.values()]

    async def aclose(self) -> None:
        for dest in self._by_uri.values():
            try:
                await dest.storage.aclose()
            except Exception as exc:  # closing must not hide the real shutdown cause
                log.warning("closing %s failed: %s", dest.uri, exc)
