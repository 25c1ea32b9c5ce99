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
import socket
import stat
import struct
import time
from dataclasses import dataclass
from typing import Any

from artisync.protocol import (
    PROTOCOL_VERSION,
    FrameDecoder,
    InvalidMessage,
    ProtocolError,
    Spool,
    encode,
    error,
    is_raw,
    ok,
    validate_request,
)

from .journal import Incoming, Journal, State
from .publish import check_publishable
from .storage.base import parse_uri

log = logging.getLogger("artisync.daemon")
_CRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    pid: int | None
    uid: int | None
    gid: int | None


def peer_credentials(sock: socket.socket | None) -> Peer:
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return Peer(None, None, None)
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return Peer(pid, uid, gid)


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
            self.on_commit()
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
                    greeted = True
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
            return ok(rid, version=PROTOCOL_VERSION, spool=str(app.spool.root), pid=os.getpid())
        if op == "submit":
            return await self._submit(rid, req["record"], peer)
        if op == "status":
            return ok(rid, status=await app.status())
        if op == "retry":
            try:  # the fix may be in the configuration (credentials, endpoint)
                app.reload_storage_config()
            except ValueError as exc:
                return error(rid, "config", f"configuration not reloaded: {exc}")
            n = await app.journal.retry_failed()
            app.uploader.poke()
            return ok(rid, retried=n)
        if op == "ingest":
            return ok(rid, ingested=await app.ingest_now())
        if op == "record":
            return await self._record(rid, req["record_id"], req.get("wait"))
        if op == "query_task":
            await app.ingest_now()  # read-your-writes: what a client put in the outbox
            tasks = await app.journal.find_task(
                req.get("task_id"), req.get("project"), req.get("name"), req.get("statuses")
            )
            arts = await app.journal.artifacts_of(tasks[0]["task_id"]) if tasks else []
            return ok(rid, tasks=tasks[:20], artifacts=arts)
        return await self._wait(rid, req, writer)

    async def _submit(self, rid: int, rec: dict[str, Any], peer: Peer) -> dict[str, Any]:
        app = self.app
        if not app.accepting:
            return error(rid, "draining", "daemon is shutting down; keep the record")
        problem = await check_record(app.spool, app.journal, rec, peer.uid)
        if problem:
            return error(rid, "invalid", problem)
        try:
            new = await app.committer.submit(Incoming(rec, peer.uid, peer.pid))
        except Exception as exc:
            return error(rid, "journal", f"could not persist the record: {exc}")
        return ok(rid, duplicate=not new)

    async def _record(self, rid: int, record_id: str, wait: float | None) -> dict[str, Any]:
        app = self.app
        await app.ingest_now()
        deadline = time.monotonic() + float(wait or 0)
        while True:
            found = await app.journal.record(record_id)
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


async def check_record(
    spool: Spool, journal: Journal, rec: dict[str, Any], uid: int | None = None
) -> str | None:
    """Why a (validated) record must be refused, or None: it names a bad destination,
    could never be published, or names payloads that are not in the spool."""
    try:
        parse_uri(rec["dest"])
    except ValueError as exc:
        return f"record: bad destination: {exc}"
    problem = await asyncio.to_thread(check_publishable, rec)
    return problem or await check_blobs(spool, journal, rec, uid)


def _check_raw_file(spool: Spool, rec: dict[str, Any], uid: int | None) -> str | None:
    if rec["raw"].get("data") is not None:
        return None  # inside the record (checked with it)
    path = spool.raw_path(rec["record_id"])
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"raw snapshot of record {rec['record_id'][:12]} is not in the spool"
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return f"raw snapshot of record {rec['record_id'][:12]} is not a regular file"
    if st.st_size != rec["raw"]["size"]:
        return f"raw snapshot has {st.st_size} bytes, record says {rec['raw']['size']}"
    if uid is not None and uid != 0 and st.st_uid != uid:
        return "raw snapshot belongs to another user"
    return None


async def check_blobs(
    spool: Spool, journal: Journal, rec: dict[str, Any], uid: int | None = None
) -> str | None:
    """Every payload a record names must be a regular file in the spool (never a
    path elsewhere: names are hashes, symlinks and hard links are refused), or
    already held by its destination; a raw snapshot must be there, as large as
    the record says, and (``uid`` known) the submitter's own."""
    if rec["kind"] != "artifact":
        return None
    if is_raw(rec):
        return await asyncio.to_thread(_check_raw_file, spool, rec, uid)

    def local() -> list[tuple[str, int]]:
        missing = []
        for sha, size in rec["blobs"]:
            try:
                st = os.lstat(spool.blob_path(sha))
            except FileNotFoundError:
                missing.append((sha, size))
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise InvalidMessage(f"payload {sha[:12]} in the spool is not a regular file")
            if st.st_size != size:
                raise InvalidMessage(
                    f"payload {sha[:12]} has {st.st_size} bytes, record says {size}"
                )
        return missing

    try:
        missing = await asyncio.to_thread(local)
    except InvalidMessage as exc:
        return str(exc)
    for sha, _ in missing:
        if not await journal.has_object(rec["dest"], sha):
            return f"payload {sha[:12]} is neither in the spool nor at the destination"
    return None
