"""The daemon: one asyncio TaskGroup owning every long-lived task.

Start: lock the spool (one daemon per spool), open the journal, clean up,
listen, ingest the outbox, then serve. SIGTERM/SIGINT drain: stop taking
records, let uploads in flight finish within ``drain_timeout``, then stop;
whatever is left stays in the spool and resumes at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from artisync.protocol import Spool, check_folder, load_settings

from . import priority, prune
from .config import DaemonConfig, load_config
from .destinations import Destinations
from .encoder import Encoder
from .ingest import (
    OutboxWatcher,
    clean_temps,
    housekeeping_loop,
    ingest_outbox,
    outbox_loop,
)
from .inline import needs_encoding
from .journal import OUTSTANDING, Journal, State
from .leases import Leases
from .peers import Grants, Membership
from .server import Committer, Server
from .service import raise_fd_limit, sd_notify
from .storage import load_backend
from .uploader import Uploader

log = logging.getLogger("artisync.daemon")


class SpoolLocked(RuntimeError):
    """Another daemon already serves this spool."""


class _ShutdownRequested(Exception):
    pass


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        settings = config.settings
        # shared (system mode): many users; the spool stays private all the same, and
        # a raw file handed to a client is copied into blobs/, never linked
        self.group_mode = config.group is not None
        self.spool = Spool(settings.spool, link_raw=not self.group_mode)
        self.journal = Journal(self.spool.journal_path, 0o600)
        self.grants = Grants(self.spool.raw)
        self.leases = None if self.group_mode else Leases(self.spool)  # see .leases
        self.members = Membership(config.gid) if config.gid is not None else None
        self.destinations = Destinations(config)
        self.warm = False  # the default destination's backend loaded, client opened
        self.uploader = Uploader(
            self.journal,
            self.spool,
            self.destinations,
            config.concurrency,
            config.object_concurrency,
            config.settings.reuse_window,
        )
        recycle = None if self.group_mode else settings.spool_limit  # see protocol._recycle
        poke, early = self.uploader.poke, self.uploader.send_early
        workers = (config.encode_workers, config.work_nice)
        self.encoder = Encoder(self.journal, self.spool, workers, poke, early, recycle, self.leases)
        self.committer = Committer(self.journal, self._on_commit)
        self._ingest_lock = asyncio.Lock()
        self.server = Server(self)
        self.accepting = True
        self.started = time.time()
        self.stop_event = asyncio.Event()
        self.max_connections = config.max_connections
        self._lock_fd: int | None = None
        self._signals = 0

    def _on_commit(self, records: Sequence[dict[str, Any]] = ()) -> None:
        """Wake whom the records just journaled concern (not told: both)."""
        raw = [needs_encoding(r) for r in records] or [True, False]
        if any(raw):
            self.encoder.poke()
        if not all(raw):
            self.uploader.poke()

    async def ingest_now(self) -> int:
        """Journal what the outbox holds now (one pass at a time; a caller that waited
        for another's pass runs its own: files may have arrived meanwhile)."""
        async with self._ingest_lock:
            return await ingest_outbox(self)

    # -- lifecycle -------------------------------------------------------------------
    def _lock_spool(self) -> None:
        for d in self.spool.folders():  # a planted folder could hold planted records
            check_folder(d, (os.getuid(),), "spool folder")
        self.spool.ensure(0o700)
        fd = os.open(self.spool.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SpoolLocked(
                f"another artisync daemon (pid {other}) already serves "
                f"spool {self.spool.root}; leaving it running"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _listen_socket(self) -> socket.socket:
        if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
            return socket.socket(fileno=3)  # systemd socket activation
        path = self.config.settings.socket
        check_folder(path.parent, (os.getuid(), 0), "socket folder")
        path.parent.mkdir(mode=0o750 if self.group_mode else 0o700, parents=True, exist_ok=True)
        if self.group_mode:  # members must reach the socket: the folder is theirs to enter
            os.chown(path.parent, -1, self.config.gid or -1)
            os.chmod(path.parent, 0o750)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                path.unlink()  # stale: the spool lock proves nobody else serves it
            else:
                raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177 if not self.group_mode else 0o117)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        if self.group_mode:
            os.chown(path, -1, self.config.gid or -1)
            os.chmod(path, 0o660)
        else:
            os.chmod(path, 0o600)
        sock.listen(512)
        return sock

    async def run(self) -> int:
        """Serve until signalled (or idle, when configured). Returns an exit code."""
        self._lock_spool()
        try:
            return await self._run_locked()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    async def _run_locked(self) -> int:
        self.max_connections = raise_fd_limit(self.config.max_connections)
        reset = await self.journal.open()
        if reset:
            log.info("resuming %d uploads interrupted by the last stop", reset)
        await clean_temps(self)
        sock = self._listen_socket()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        outbox_event = asyncio.Event()
        watcher = OutboxWatcher(self.spool.outbox, loop, outbox_event)
        # metrics listen before the socket does: "ready" means both are
        metrics = await self._serve_metrics(self.config.metrics) if self.config.metrics else None
        server = await asyncio.start_unix_server(self.server.handle, sock=sock)
        try:
            watcher.start()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.committer.run())
                tg.create_task(self.encoder.run())
                tg.create_task(self.uploader.feeder())
                for _ in range(self.config.concurrency):
                    tg.create_task(self.uploader.worker())
                tg.create_task(outbox_loop(self, outbox_event))
                tg.create_task(housekeeping_loop(self))
                tg.create_task(self._idle_watch())
                tg.create_task(self._shutdown(server))
                tg.create_task(self._warm_up())
                tg.create_task(prune.scheduled(self))
                log.info(
                    "artisyncd %d serving spool %s on %s",
                    os.getpid(),
                    self.spool.root,
                    self.config.settings.socket,
                )
                sd_notify("READY=1\nSTATUS=serving")
        except* _ShutdownRequested:
            pass
        finally:
            self.encoder.stop()
            watcher.stop()
            server.close()
            if metrics is not None:
                await metrics.cleanup()
            await self.destinations.aclose()
            await self.journal.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 0

    async def _serve_metrics(self, address: str) -> Any:
        from .metrics import serve  # aiohttp: loaded only when metrics are on

        try:
            return await serve(self, address)
        except OSError as exc:  # the port is taken, say: uploads go on without metrics
            log.error("metrics not served on %s: %s", address, exc)
            return None

    async def _warm_up(self) -> None:
        """Load the default destination's backend (a cloud client's import takes half a
        second) and open its client with a first look for sweeps, in the background
        now, not when the first record is waiting for them (``status``: ``warm``)."""
        uri = self.config.settings.output_uri
        try:
            await asyncio.to_thread(load_backend, uri)
            # listed from the start (status, /healthz, the online gauge), not from first use
            for known in dict.fromkeys((uri, *self.config.allowed_destinations)):
                with contextlib.suppress(Exception):
                    self.destinations.get(known)
            with contextlib.suppress(Exception):  # unreachable now: its first upload says so
                await asyncio.wait_for(self.destinations.get(uri).sweeps.clear(), 10)
        except Exception as exc:  # a bad default shows when a record uses it, with the reason
            log.debug("not preloading the backend of %s: %s", uri, exc)
        finally:
            self.warm = True

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: stopping now; unfinished uploads resume at next start")
            raise SystemExit(1)  # propagates out of the loop
        self.stop_event.set()

    async def sleep_unless_stopping(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop_event.wait()

    def reload_storage_config(self) -> None:
        """Re-read the storage tables of the configuration file (``artisync retry``):
        fixed credentials or endpoints apply without a restart.

        :raises ValueError: the configuration is invalid; nothing changes."""
        fresh = load_config(load_settings())
        self.config = replace(self.config, storage=fresh.storage)
        self.destinations.reconfigure(self.config)

    async def _shutdown(self, server: asyncio.Server) -> None:
        await self.stop_event.wait()
        sd_notify("STOPPING=1")
        log.info("draining (up to %.0f s)", self.config.drain_timeout)
        self.accepting = False
        server.close()
        await self.committer.queue.join()  # acknowledge what was received
        self.encoder.stop()  # what is being encoded is encoded again at the next start
        await self.uploader.stop_workers(self.config.concurrency)
        try:
            async with asyncio.timeout(self.config.drain_timeout), self.uploader.progress:
                await self.uploader.progress.wait_for(lambda: not self.uploader.live_workers)
        except TimeoutError:
            log.warning(
                "%d uploads still in flight at the drain deadline; they resume at next start",
                len(self.uploader.in_flight),
            )
        raise _ShutdownRequested

    async def _idle_watch(self) -> None:
        idle_since: float | None = None
        while not self.stop_event.is_set():
            await self.sleep_unless_stopping(0.2 if self.config.exit_when_idle else 1.0)
            busy = (
                self.server.connections > 0
                or bool(self.uploader.in_flight)
                or bool(self.encoder.in_flight)
                or not self.committer.queue.empty()
            )
            if not busy:
                n, _ = await self.journal.outstanding()
                outbox = await asyncio.to_thread(
                    lambda: any(True for _ in self.spool.iter_outbox())
                )
                busy = n > 0 or outbox
            if busy:
                idle_since = None
                continue
            if self.config.exit_when_idle:
                log.info("backlog empty: exiting")
                self.stop_event.set()
            elif self.config.idle_exit > 0:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= self.config.idle_exit:
                    log.info(
                        "idle for %.0f s with nothing to upload: exiting", self.config.idle_exit
                    )
                    self.stop_event.set()

    async def status(self, viewer: int | None = None) -> dict[str, Any]:
        """``viewer``: on a shared daemon, the records listed are this uid's own."""
        stats = await self.journal.stats()
        everyone = not self.group_mode or viewer in (0, os.getuid())
        for key in ("failed", "retrying"):
            stats[key] = [
                {k: v for k, v in item.items() if k != "peer_uid"}
                for item in stats[key]
                if everyone or item["peer_uid"] == viewer
            ]
        counts = stats["records"]
        backlog = [sum(counts[s][0] for s in OUTSTANDING), sum(counts[s][1] for s in OUTSTANDING)]
        destinations = self.destinations.status()
        return {
            "pid": os.getpid(),
            "spool": str(self.spool.root),
            "socket": str(self.config.settings.socket),
            "uptime": time.time() - self.started,
            "online": all(d["online"] for d in destinations),
            "warm": self.warm,
            "backlog": {"records": backlog[0], "bytes": backlog[1]},
            "in_flight": len(self.uploader.in_flight),
            "boosted": priority.BOOST.handed if priority.BOOST else 0,  # see .priority
            "leases": self.leases.taken if self.leases else 0,  # files copied for clients
            # of which unchanged since a lease before: its blob linked, no copy, no hash
            "leases_unchanged": self.leases.linked if self.leases else 0,
            "encoding": {
                "records": counts[State.ENCODING][0],
                "bytes": counts[State.ENCODING][1],
                "in_flight": len(self.encoder.in_flight),
                "workers": self.encoder.workers,
            },
            "bytes_in_flight": self.uploader.objects.bytes_in_flight,
            "committed": dict(zip(("records", "bytes"), counts[State.COMMITTED], strict=True)),
            "oldest_waiting": stats["oldest_waiting"],
            "uploaded_objects": stats["objects_uploaded"],
            "uploaded_bytes": stats["bytes_uploaded"],
            "failed": {"records": counts[State.FAILED][0], "items": stats["failed"]},
            "rejected": await asyncio.to_thread(_rejected, self.spool),
            "retrying": stats["retrying"],
            "destinations": destinations,
            "spool_bytes": await asyncio.to_thread(self.spool.usage),
            "spool_limit": self.config.settings.spool_limit,
            "connections": self.server.connections,
            "group_commits": self.committer.batches,
        }


def _rejected(spool: Spool) -> dict[str, Any]:
    """Outbox records refused (kept in ``rejected/``): how many, and the first few."""
    items = [{"record_id": rid, "reason": why} for rid, why in spool.iter_rejected()]
    return {"records": len(items), "items": items[:20]}


def spool_is_served(spool: Path) -> bool:
    """True when a daemon holds the spool's lock (used by tests and the CLI)."""
    lock = Spool(spool).lock_path
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
