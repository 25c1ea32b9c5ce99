"""The Unix-socket server: framing, validation, group-committed acknowledgements.

A peer is identified by the kernel (SO_PEERCRED), never by what it says. A
bad frame closes that connection; a bad message gets an error reply; neither
touches any other client. A record is acknowledged only once it is durable
in the journal, and many clients' records share one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from typing import Any

from artisync.protocol import (
    PROTOCOL_VERSION,
    FrameDecoder,
    InvalidMessage,
    ProtocolError,
    encode,
    error,
    is_raw,
    ok,
    page_of,
    validate_request,
)

from .admission import check_record
from .journal import Incoming, Journal, State
from .leases import Leases
from .metrics import METRICS
from .peers import Peer, peer_credentials, send_with_fds
from .priority import client_waits

log = logging.getLogger("artisync.daemon")
_ID = re.compile(r"[0-9a-f]{32}\Z")


class Committer:
    """Group commit: every record waiting when the journal is free goes in one transaction."""

    def __init__(self, journal: Journal, on_commit: Any, max_batch: int = 1000) -> None:
        self.journal = journal
        self.on_commit = on_commit
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[Incoming, asyncio.Future[bool]]] = asyncio.Queue(10_000)
        self.batches = 0

    async def submit(self, inc: Incoming) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self.queue.put((inc, fut))
        return await fut

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < self.max_batch:
                batch.append(self.queue.get_nowait())
            try:
                results = await self.journal.insert_many([inc for inc, _ in batch])
            except Exception as exc:  # e.g. disk full: refuse, the clients keep their records
                log.error("journal write failed: %s", exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                    self.queue.task_done()
                continue
            self.batches += 1
            for (_, fut), new in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(new)
            self.on_commit([inc.record for inc, _ in batch])
            for _ in batch:
                self.queue.task_done()


class Server:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.app.max_connections:
            writer.close()
            return
        self.connections += 1
        peer = peer_credentials(writer.get_extra_info("socket"))
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except ProtocolError as exc:
            await self._send(writer, error(None, "protocol", str(exc)))
        finally:
            self.connections -= 1
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _send(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        try:
            writer.write(encode(msg))
            await writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        decoder = FrameDecoder(self.app.config.max_frame)
        greeted = False
        while data := await reader.read(256 * 1024):
            for msg in decoder.feed(data):  # ProtocolError: close this connection
                try:
                    req = validate_request(msg)
                except InvalidMessage as exc:
                    rid = msg.get("id") if isinstance(msg, dict) else None
                    await self._send(
                        writer,
                        error(rid if isinstance(rid, int) else None, "invalid", str(exc)[:500]),
                    )
                    continue
                if not greeted:
                    if req["op"] != "hello":
                        await self._send(writer, error(req["id"], "hello", "say hello first"))
                        return
                    if req["version"] != PROTOCOL_VERSION:
                        await self._send(
                            writer,
                            error(
                                req["id"],
                                "version",
                                (
                                    f"protocol version {req['version']} not supported; "
                                    f"this daemon speaks {PROTOCOL_VERSION}"
                                ),
                            ),
                        )
                        return
                    members = self.app.members
                    if members is not None and not members.allows(peer.uid):
                        await self._send(
                            writer,
                            error(
                                req["id"],
                                "forbidden",
                                f"uid {peer.uid} is not a member of group {self.app.config.group!r}",
                            ),
                        )
                        return
                    greeted = True
                if req["op"] == "open_raw":
                    await self._open_raw(req, peer, writer)
                    continue
                try:
                    reply = await self._dispatch(req, peer, writer)
                except Exception as exc:  # e.g. the journal's disk is full: answer, stay up
                    log.error("request %s failed: %s", req["op"], exc)
                    reply = error(req["id"], "internal", f"{type(exc).__name__}: {exc}"[:500])
                await self._send(writer, reply)

    async def _dispatch(
        self, req: dict[str, Any], peer: Peer, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        op, rid = req["op"], req["id"]
        app = self.app
        if op == "hello":
            shared = app.group_mode
            allowed = app.config.allowed_destinations
            return ok(
                rid,
                version=PROTOCOL_VERSION,
                spool=str(app.spool.root),
                pid=os.getpid(),
                shared=shared,
                output_uri=allowed[0] if shared and allowed else None,
            )
        if op == "submit":
            return await self._submit(rid, req["record"], peer)
        if op == "status":
            return ok(rid, status=await app.status(peer.uid))
        if op == "retry":
            try:  # the fix may be in the configuration (credentials, endpoint)
                app.reload_storage_config()
            except ValueError as exc:
                return error(rid, "config", f"configuration not reloaded: {exc}")
            n = await app.journal.retry_failed()
            app.uploader.poke()
            return ok(rid, retried=n)
        if op == "ingest":  # flush(): journaled, and every raw snapshot on disk
            ingested = await app.ingest_now()
            await asyncio.to_thread(app.spool.sync_raw)
            return ok(rid, ingested=ingested)
        if op == "lease":  # a big file: copied here, under a read lease (see .leases)
            return ok(rid, leased=self._lease(req, peer))
        if op == "record":  # get() of an artifact being encoded waits: boosted meanwhile
            with client_waits() if req.get("wait") else contextlib.nullcontext():
                return await self._record(rid, req["record_id"], req.get("wait"), peer)
        if op == "query_task":
            await app.ingest_now()  # read-your-writes: what a client put in the outbox
            tasks = await app.journal.find_task(
                req.get("task_id"), req.get("project"), req.get("name"), req.get("statuses")
            )
            if app.group_mode:  # another user's tasks are theirs to see
                tasks = [t for t in tasks if await self._owns(peer, t["task_id"])]
            if tasks and req.get("versions_of"):
                arts = await app.journal.versions_of(tasks[0]["task_id"], req["versions_of"])
            else:
                arts = await app.journal.artifacts_of(tasks[0]["task_id"]) if tasks else []
            # its older versions compacted out of the journal: the client merges storage's
            compacted = bool(tasks) and await app.journal.is_compacted(tasks[0]["task_id"])
            page: dict[str, Any] = {}
            if req.get("after") is not None:  # a page of them: see protocol.page_of
                arts, page["next"] = page_of(arts, req["after"])
            return ok(rid, tasks=tasks[:20], artifacts=arts, compacted=compacted, **page)
        with client_waits():  # flush(wait_for_uploads=True), wait_on_upload
            return await self._wait(rid, req, writer)

    def _lease(self, req: dict[str, Any], peer: Peer) -> dict[str, Any] | str:
        """The file's identity once leased, or why this daemon does not lease it."""
        leases: Leases | None = self.app.leases
        if leases is None or not self.app.config.settings.file_lease or peer.uid != os.getuid():
            return "this daemon does not lease its clients' files"
        if not _ID.match(req["record_id"]) or not self.app.accepting:
            return "not now"
        return leases.take(req["record_id"], req["path"], peer.pid, req["fd"])

    async def _owns(self, peer: Peer, task_id: str) -> bool:
        owner = await self.app.journal.task_owner(task_id)
        return owner is None or owner == peer.uid or peer.uid in (0, os.getuid())

    async def _open_raw(
        self, req: dict[str, Any], peer: Peer, writer: asyncio.StreamWriter
    ) -> None:
        """Create a record's raw file in the spool and hand the client a descriptor."""
        app, rid, record_id = self.app, req["id"], req["record_id"]
        if not app.group_mode or peer.uid is None:
            reply = error(rid, "invalid", "open_raw: this daemon's clients write into its spool")
        elif not _ID.match(record_id):
            reply = error(rid, "invalid", "open_raw: record_id must be 32 hex digits")
        elif await app.journal.record(record_id) is not None:
            reply = ok(rid, known=True)
        elif not app.accepting:
            reply = error(rid, "draining", "daemon is shutting down")
        else:
            try:
                fd = await asyncio.to_thread(app.grants.open, record_id, peer.uid)
            except OSError as exc:
                reply = error(rid, "invalid", f"open_raw: cannot create it: {exc}")
            else:
                try:
                    await send_with_fds(writer, ok(rid, fd=True), [fd])
                finally:
                    os.close(fd)
                return
        await self._send(writer, reply)

    async def _submit(self, rid: int, rec: dict[str, Any], peer: Peer) -> dict[str, Any]:
        app = self.app
        if not app.accepting:
            return error(rid, "draining", "daemon is shutting down; keep the record")
        if await app.journal.record(rec["record_id"]) is not None:
            return ok(rid, duplicate=True)  # handed over again: it is journaled already
        granted = app.grants.holds(rec["record_id"], peer.uid)
        if app.group_mode and peer.uid not in (0, os.getuid()):
            if rec["kind"] == "artifact" and not is_raw(rec):
                return error(rid, "invalid", "this daemon takes payloads only as raw snapshots")
            if is_raw(rec) and rec["raw"].get("data") is None and not granted:
                return error(
                    rid,
                    "stale",
                    f"raw snapshot of record {rec['record_id'][:12]} was not handed to "
                    "you (or the daemon restarted since): hand it over again",
                )
        problem = await check_record(
            app.spool, app.journal, rec, peer.uid, app.config, granted=granted, leases=app.leases
        )
        if problem:
            METRICS.refused.inc()
            return error(rid, "invalid", problem)
        try:
            new = await app.committer.submit(Incoming(rec, peer.uid, peer.pid))
        except Exception as exc:
            return error(rid, "journal", f"could not persist the record: {exc}")
        app.grants.release(rec["record_id"])
        return ok(rid, duplicate=not new)

    async def _record(
        self, rid: int, record_id: str, wait: float | None, peer: Peer
    ) -> dict[str, Any]:
        app = self.app
        await app.ingest_now()
        deadline = time.monotonic() + float(wait or 0)
        while True:
            found = await app.journal.record(record_id)
            if found is not None and app.group_mode:
                if not await self._owns(peer, found[1]["task_id"]):
                    found = None
            if found is None:
                return error(rid, "unknown", f"no record {record_id[:12]} in the journal")
            state, body, reason = found
            if state is not State.ENCODING or time.monotonic() >= deadline:
                return ok(rid, state=str(state), record=body, reason=reason)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2), app.encoder.progress:
                    await app.encoder.progress.wait()

    async def _wait(
        self, rid: int, req: dict[str, Any], writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        app = self.app
        task_id, timeout = req.get("task_id"), req.get("timeout")
        await app.ingest_now()  # the task's records still in the outbox count too
        upto = await app.journal.max_seq()
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        while True:
            n, nbytes = await app.journal.outstanding(task_id, upto)
            if n == 0:
                failed = await app.journal.failed_count(task_id, upto)
                return ok(rid, remaining=0, failed=failed)
            if deadline is not None and time.monotonic() >= deadline:
                return error(rid, "timeout", f"{n} records ({nbytes} bytes) still outstanding")
            if req.get("progress"):
                await self._send(
                    writer,
                    {
                        "id": rid,
                        "progress": {
                            "remaining": n,
                            "bytes": nbytes,
                            "offline": app.destinations.offline(),
                        },
                    },
                )
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5), app.uploader.progress:
                    await app.uploader.progress.wait()
