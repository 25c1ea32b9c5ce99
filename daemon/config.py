"""Daemon configuration: TOML plus ``ARTISYNC_*`` variables, parsed once, at the edge.

```toml
[artisync]                 # shared with the SDK (see artisync.protocol._settings)
spool = "/var/spool/artisync"
socket = "/run/artisync/artisyncd.sock"
output_uri = "s3://team-artifacts/runs"

[daemon]
concurrency = 64           # records uploading at once, all destinations together
object_concurrency = 32    # objects uploading at once (a folder's files go many at a time)
encode_workers = 1         # processes encoding raw snapshots (default: half the cores, max 4)
nice = 5                   # the daemon yields the CPU to trainers
work_nice = 19             # its encoding, hashing and copying: only CPU the trainers leave
drain_timeout = 20         # seconds SIGTERM waits for uploads in flight
retry_max_elapsed = 30     # seconds one operation retries before the destination goes offline
offline_max_backoff = 300  # cap of the probe interval while offline
gc_grace = 600             # seconds a committed blob stays in the spool
ingest_window = 0.5        # while records stream in, the outbox is read at most this often
journal_keep = 604800      # seconds committed history stays in the journal (0: forever)
group = "artisync"         # system mode: serve this group's members (socket 0660, spool private)
allowed_destinations = ["s3://team-artifacts/runs", "/mnt/nfs/artifacts"]  # system mode:
                           # the only destinations (and what is under them) clients may name
metrics = "127.0.0.1:9464" # Prometheus /metrics and /healthz (off by default)

[prune]                    # retention (artisync.daemon.prune); `every` runs it here
every = "24h"
older_than = "90d"
keep_versions = 10

[storage.s3]               # defaults for every s3:// destination
part_size = 8388608

[[storage.override]]       # applies to this bucket (or path) and below; longest match wins
match = "s3://minio-bucket"
endpoint_url = "http://minio.local:9000"
access_key_id = "..."      # secrets are never logged or shown in status
secret_access_key = "..."
```
"""

from __future__ import annotations

import grp
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from artisync.protocol import DEFAULT_MAX_FRAME, Settings, load_settings

from .storage import StorageOptions


@dataclass(frozen=True)
class DaemonConfig:
    settings: Settings
    concurrency: int = 64
    object_concurrency: int = 32
    encode_workers: int = 1
    nice: int = 5
    work_nice: int = 19  # encoding, hashing, copying: see daemon.priority
    max_frame: int = DEFAULT_MAX_FRAME
    max_connections: int = 4096
    drain_timeout: float = 20.0
    retry_max_elapsed: float = 30.0
    offline_max_backoff: float = 300.0
    gc_grace: float = 600.0
    gc_interval: float = 30.0
    ingest_window: float = 0.5  # see daemon.ingest.outbox_loop
    orphan_grace: float = 86400.0
    journal_keep: float = 7 * 86400.0  # committed history kept in the journal (0: forever)
    idle_exit: float = 0.0  # 0: serve forever
    exit_when_idle: bool = False  # exit as soon as the backlog is empty (tests, one-shot sync)
    group: str | None = None
    allowed_destinations: tuple[str, ...] = ()
    metrics: str | None = None  # host:port of /metrics and /healthz (off: None)
    storage: StorageOptions = field(default_factory=StorageOptions)

    @property
    def gid(self) -> int | None:
        return None if self.group is None else grp.getgrnam(self.group).gr_gid

    def options_for(self, uri: str) -> dict[str, Any]:
        return self.storage.options_for(uri)


def default_encode_workers() -> int:
    """Half the cores this process may use (the other half is the trainers'), 1 to 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 2) // 2))


def _num(table: Mapping[str, Any], key: str, default: float, env: str | None = None) -> float:
    raw = os.environ.get(env) if env else None
    value = raw if raw else table.get(key, default)
    try:
        num = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"[daemon] {key} must be a number, not {value!r}") from None
    if num < 0:
        raise ValueError(f"[daemon] {key} must not be negative")
    return num


def _metrics(daemon: Mapping[str, Any]) -> str | None:
    value = os.environ.get("ARTISYNC_METRICS") or daemon.get("metrics")
    if not value:
        return None
    from .metrics import parse_address

    parse_address(str(value))  # ValueError: a configuration error at start
    return str(value)


def _allowed(daemon: Mapping[str, Any]) -> tuple[str, ...]:
    from artisync.protocol import parse_destination

    raw = os.environ.get("ARTISYNC_ALLOWED_DESTINATIONS")
    value: Any = raw.split() if raw else daemon.get("allowed_destinations", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("[daemon] allowed_destinations must be a list of destination URIs")
    for uri in value:
        try:
            parse_destination(uri)
        except ValueError as exc:
            raise ValueError(f"[daemon] allowed_destinations: {exc}") from None
    return tuple(value)


def load_config(settings: Settings | None = None, **overrides: Any) -> DaemonConfig:
    """Build the daemon's configuration; raise ValueError with a clear message."""
    settings = settings or load_settings()
    raw = settings.raw
    daemon = raw.get("daemon", {})
    if not isinstance(daemon, dict):
        raise ValueError("[daemon] must be a table")
    storage = StorageOptions.from_table(raw.get("storage", {}))
    group = os.environ.get("ARTISYNC_GROUP") or daemon.get("group")
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise ValueError(f"group {group!r} does not exist") from None
    allowed = _allowed(daemon)
    values: dict[str, Any] = dict(
        settings=settings,
        concurrency=max(1, int(_num(daemon, "concurrency", 64, "ARTISYNC_CONCURRENCY"))),
        object_concurrency=max(
            1, int(_num(daemon, "object_concurrency", 32, "ARTISYNC_OBJECT_CONCURRENCY"))
        ),
        encode_workers=max(
            1,
            int(
                _num(daemon, "encode_workers", default_encode_workers(), "ARTISYNC_ENCODE_WORKERS")
            ),
        ),
        nice=int(_num(daemon, "nice", 5, "ARTISYNC_NICE")),
        work_nice=int(_num(daemon, "work_nice", 19, "ARTISYNC_WORK_NICE")),
        drain_timeout=_num(daemon, "drain_timeout", 20.0),
        retry_max_elapsed=_num(daemon, "retry_max_elapsed", 30.0, "ARTISYNC_RETRY_MAX_ELAPSED"),
        offline_max_backoff=_num(
            daemon, "offline_max_backoff", 300.0, "ARTISYNC_OFFLINE_MAX_BACKOFF"
        ),
        gc_grace=_num(daemon, "gc_grace", 600.0, "ARTISYNC_GC_GRACE"),
        gc_interval=_num(daemon, "gc_interval", 30.0, "ARTISYNC_GC_INTERVAL"),
        ingest_window=max(0.0, _num(daemon, "ingest_window", 0.5, "ARTISYNC_INGEST_WINDOW")),
        journal_keep=_num(daemon, "journal_keep", 7 * 86400.0, "ARTISYNC_JOURNAL_KEEP"),
        group=group,
        allowed_destinations=allowed,
        metrics=_metrics(daemon),
        storage=storage,
    )
    values.update(overrides)
    return DaemonConfig(**values)
