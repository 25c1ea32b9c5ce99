"""Prometheus metrics and a health check, served from the daemon's own event loop.

Off by default; ``[daemon] metrics = "127.0.0.1:9464"`` (or ``ARTISYNC_METRICS``)
serves ``/metrics`` (Prometheus' text format, from ``prometheus_client``) and
``/healthz`` (200 while the daemon serves, its destinations online or offline and
probing; 503 once it drains; the JSON body says which destination is which).

Counters count from the daemon's start (Prometheus' ``rate`` and ``increase`` take
restarts in their stride); gauges are read from the journal and the spool at
each scrape. Labels are bounded: a destination's scheme, a record's kind, and for
the per-destination gauge the destination URIs in use (never task or artifact names).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from artisync.protocol import DESTINATION_SCHEMES

log = logging.getLogger("artisync.daemon")
KINDS = ("task", "artifact")
# a *_created gauge beside every counter tells an operator nothing
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The daemon's counters, each label value known in advance exported at 0."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.committed = Counter(
            "artisync_records_committed",
            "Records committed in storage",
            ["scheme", "kind"],
            registry=r,
        )
        self.failed = Counter(
            "artisync_records_failed", "Records failed permanently", ["scheme", "kind"], registry=r
        )
        self.refused = Counter("artisync_records_refused", "Records refused at intake", registry=r)
        self.uploaded = Counter(
            "artisync_uploaded_bytes", "Payload bytes uploaded", ["scheme"], registry=r
        )
        self.dedup_objects = Counter(
            "artisync_dedup_objects", "Objects not uploaded: already there", ["scheme"], registry=r
        )
        self.dedup_bytes = Counter(
            "artisync_dedup_saved_bytes",
            "Bytes not uploaded: already there",
            ["scheme"],
            registry=r,
        )
        self.retries = Counter(
            "artisync_storage_retries", "Storage operations retried", ["scheme"], registry=r
        )
        self.upload_seconds = Histogram(
            "artisync_object_upload_seconds",
            "Time to upload one object",
            ["scheme"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.last_commit = Gauge(
            "artisync_last_commit_timestamp_seconds",
            "When a record was last committed (Unix time; 0: none since start)",
            registry=r,
        )
        for scheme in DESTINATION_SCHEMES:
            for kind in KINDS:
                self.committed.labels(scheme, kind)
                self.failed.labels(scheme, kind)
            for c in (self.uploaded, self.dedup_objects, self.dedup_bytes, self.retries):
                c.labels(scheme)
            self.upload_seconds.labels(scheme)
        try:
            build = version("artisync")
        except PackageNotFoundError:
            build = "unknown"
        Info("artisync_build", "The daemon's version", registry=r).info({"version": build})
        self.state = _State()
        r.register(self.state)

    def record_committed(self, scheme: str, kind: str) -> None:
        self.committed.labels(scheme, kind).inc()
        self.last_commit.set(time.time())

    def deduplicated(self, scheme: str, objects: int, size: int) -> None:
        if objects:
            self.dedup_objects.labels(scheme).inc(objects)
            self.dedup_bytes.labels(scheme).inc(size)


class _State(Collector):
    """Gauges of the moment, filled in before each scrape (``collect`` must not wait)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        v = self.values
        if not v:
            return
        yield GaugeMetricFamily(
            "artisync_backlog_records", "Records acknowledged, not yet committed", v["records"]
        )
        yield GaugeMetricFamily(
            "artisync_backlog_bytes", "Bytes of records not yet committed", v["bytes"]
        )
        yield GaugeMetricFamily(
            "artisync_oldest_waiting_timestamp_seconds",
            "When the oldest record not yet committed was acknowledged (0: none waits)",
            v["oldest"],
        )
        yield GaugeMetricFamily(
            "artisync_failed_records",
            "Records failed permanently and kept, waiting for `artisync retry`",
            v["failed"],
        )
        yield GaugeMetricFamily("artisync_spool_bytes", "Bytes the spool holds", v["spool"])
        yield GaugeMetricFamily(
            "artisync_spool_limit_bytes", "The spool's quota (0: none)", v["limit"]
        )
        online = GaugeMetricFamily(
            "artisync_destination_online",
            "1 while a destination takes uploads, 0 while offline (probing)",
            labels=["destination"],
        )
        for uri, up in v["destinations"]:
            online.add_metric([uri], 1 if up else 0)
        yield online


METRICS = Metrics()


async def _refresh(app: Any) -> None:
    st = await app.status()
    METRICS.state.values = {
        "records": st["backlog"]["records"],
        "bytes": st["backlog"]["bytes"],
        "oldest": st.get("oldest_waiting") or 0,
        "failed": st["failed"]["records"],
        "spool": st["spool_bytes"],
        "limit": st["spool_limit"],
        "destinations": [(d["uri"], d["online"]) for d in st["destinations"]],
    }


def health(app: Any) -> tuple[int, dict[str, Any]]:
    """200 while serving (destinations online, or offline and probing); 503 draining."""
    destinations = app.destinations.status()
    serving = bool(app.accepting)
    body = {"serving": serving, "destinations": destinations}
    return (200 if serving else 503), body


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) -> (host, port).

    :raises ValueError: not an address."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"metrics must be host:port (e.g. 127.0.0.1:9464), not {value!r}")
    return host.strip("[]"), int(port)


async def serve(app: Any, address: str) -> Any:
    """Serve /metrics and /healthz; returns once listening, with the runner to
    ``cleanup()`` at the end."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics(_: web.Request) -> web.Response:
        await _refresh(app)
        data = await asyncio.to_thread(generate_latest, METRICS.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        code, body = health(app)
        return web.Response(
            status=code, text=json.dumps(body, default=str), content_type="application/json"
        )

    web_app = web.Application()
    web_app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz)])
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    host, port = parse_address(address)
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("metrics on http://%s:%d/metrics", host, port)
    return runner
