"""Destinations: one storage client per URI, and whether it is reachable.

After an operation has exhausted its retries, the destination goes offline:
its records wait, and one record is let through as a probe at exponentially
growing intervals (with jitter, capped) until a probe succeeds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from .config import DaemonConfig
from .metrics import METRICS
from .storage.base import PermanentStorageError, open_storage
from .storage.retry import STORAGE_RETRY, RetryingStorage, RetryPolicy
from .sweeps import SweepGate

log = logging.getLogger("artisync.daemon")


def probe_policy(max_backoff: float) -> RetryPolicy:
    """Probes of an offline destination: 1 s doubling up to ``max_backoff``, in the upper
    half of each step (jitter 0.5), never sooner than the server's Retry-After."""
    return RetryPolicy(initial=1.0, max_delay=max_backoff, jitter=0.5, max_elapsed=None)


@dataclass
class Destination:
    uri: str
    storage: RetryingStorage
    probes: RetryPolicy
    online: bool = True
    failures: int = 0
    last_error: str | None = None
    retry_at: float = 0.0
    probing: bool = False
    probe_seq: int | None = None  # the record let through as the probe
    sweep_warned: bool = False
    sweeps: SweepGate = field(init=False)  # when an object may be sent (prune's sweeps)

    def __post_init__(self) -> None:
        # its look is not retried: storage that cannot be listed now cannot be written
        # either, and the record goes the way of any failed send (retried, or offline)
        self.sweeps = SweepGate(self.storage.inner)

    def ready(self, now: float) -> bool:
        return self.online or (not self.probing and now >= self.retry_at)

    def succeeded(self) -> None:
        if not self.online:
            log.info(
                "destination back online: %s (after %d failed probes)", self.uri, self.failures
            )
        self.online, self.failures, self.probing, self.last_error = True, 0, False, None

    def failed(self, err: Exception, retry_after: float | None, escalate: bool = True) -> float:
        """Take the destination offline; returns when to try again. Only the first
        failure and failed probes ``escalate`` the backoff: the other uploads that were
        in flight when the network went down fail too, and must not push the first
        probe out to the cap."""
        if not escalate and not self.online:
            self.last_error = str(err)[:500]
            return max(self.retry_at, time.time() + (retry_after or 0.0))
        self.failures += 1
        self.probing = False
        self.last_error = str(err)[:500]
        delay = self.probes.delay(self.failures, retry_after)
        if self.online:
            log.warning("destination offline: %s: %s", self.uri, self.last_error)
        self.online = False
        self.retry_at = time.time() + delay
        return self.retry_at

    async def abort_incomplete(self, key: str, started: float, size: int | None = None) -> int:
        """Remove what an interrupted upload of ``key`` may have left here (see
        :meth:`Storage.abort_incomplete`; ``started``: this daemon's start). Call it only
        while this daemon has no upload of ``key`` here in flight.

        Returns how many were removed. A transient error propagates (the record is
        retried); lacking the permission to list uploads is logged once and otherwise
        ignored."""
        try:
            return await self.storage.abort_incomplete(key, size=size, started=started)
        except PermanentStorageError as exc:
            if not self.sweep_warned:
                self.sweep_warned = True
                log.warning("cannot clean up interrupted uploads at %s: %s", self.uri, exc)
        return 0

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
        self._retired: list[Destination] = []

    def reconfigure(self, config: DaemonConfig) -> None:
        """New storage options (``artisync retry`` after a fix): clients are rebuilt, and
        the destinations start online again; the old clients, perhaps still in use by
        uploads in flight, are closed at shutdown."""
        self.config = config
        self._retired.extend(self._by_uri.values())
        uris, self._by_uri = list(self._by_uri), {}
        for uri in uris:  # still listed (status, metrics), with their new clients
            with contextlib.suppress(PermanentStorageError):
                self.get(uri)

    def get(self, uri: str) -> Destination:
        destination = self._by_uri.get(uri)
        if destination is None:
            try:
                inner = open_storage(uri, self.config.options_for(uri))
            except (ValueError, ImportError) as exc:
                raise PermanentStorageError(f"cannot open destination: {exc}", backend=uri) from exc
            policy = replace(STORAGE_RETRY, max_elapsed=self.config.retry_max_elapsed)
            probes = probe_policy(self.config.offline_max_backoff)
            retried = METRICS.retries.labels(inner.scheme).inc
            destination = Destination(uri, RetryingStorage(inner, policy, retried), probes)
            self._by_uri[uri] = destination
        return destination

    def offline(self) -> list[str]:
        now = time.time()
        return [u for u, d in self._by_uri.items() if not d.ready(now)]

    def status(self) -> list[dict[str, Any]]:
        return [d.status() for d in self._by_uri.values()]

    async def aclose(self) -> None:
        for destination in [*self._retired, *self._by_uri.values()]:
            try:
                await destination.storage.aclose()
            except Exception as exc:  # closing must not hide the real shutdown cause
                log.warning("closing %s failed: %s", destination.uri, exc)
