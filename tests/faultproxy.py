"""A loopback TCP proxy that injects network faults in front of a real server.

    with FaultProxy(("127.0.0.1", server_port)) as proxy:
        client talks to proxy.endpoint
        proxy.set("503", count=2, retry_after=1)   # the next 2 connections get a 503
        proxy.set("cut", count=1, cut_after=7 * 2**20)  # drop one connection mid-body
        proxy.set("cut", count=3, cut_after=[7 * 2**20, 1024])  # per connection (last repeats)
        proxy.set("refuse")                          # nothing listens; proxy.set("pass")
        proxy.hold(b"?delete", 10)   # requests containing these bytes wait 10 s (any mode)
        proxy.lose_answer(b"?uploads")  # the next such request is served, its answer lost
        proxy.held.wait(30)          # ... and one has arrived

It runs its own asyncio loop in a thread, so it serves sync and async tests alike.
Faults apply per *connection*: a faulted connection is answered (or dropped) and
closed, so the client reconnects; a passed one is spliced through byte for byte.
``count`` limits a fault to the next N connections, then the proxy passes again.
After changing the mode, ``drop_connections()`` ends kept-alive connections so the
new mode applies to the client's next request.

Modes: ``pass``; ``refuse`` (stop listening: connection refused); ``close``
(accept, then close at once); ``503`` / ``500`` (read the request, answer with
that status, an S3/Azure-style XML error body and optional ``Retry-After``);
``delay`` (wait ``delay`` seconds, then pass); ``cut`` (pass, but close both
sides once ``cut_after`` bytes went upstream; a list gives one limit per faulted
connection, its last value repeating).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

MODES = ("pass", "refuse", "close", "503", "500", "delay", "cut")
_REASONS = {
    "503": ("Service Unavailable", "SlowDown"),
    "500": ("Internal Server Error", "InternalError"),
}


@dataclass
class _Fault:
    mode: str = "pass"
    count: int | None = None  # None: until changed
    retry_after: float | None = None
    delay: float = 0.0
    cuts: list[int] = field(default_factory=lambda: [0])


class FaultProxy:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.host, self.port = host, port
        self._fault = _Fault()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        # statistics, read from the test thread
        self.connections = 0
        self.faults = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._hold: tuple[bytes, float] | None = None
        self._lose: tuple[bytes, int] | None = None  # (pattern, answers left to lose)
        self.held = threading.Event()  # set when a request matching hold() arrived

    # -- control (test thread) ------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def set(
        self,
        mode: str,
        *,
        count: int | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        cut_after: int | Sequence[int] = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        cuts = [cut_after] if isinstance(cut_after, int) else list(cut_after)
        with self._lock:
            self._fault = _Fault(mode, count, retry_after, delay, cuts or [0])
        self._call(self._listen() if mode != "refuse" else self._unlisten())

    def hold(self, pattern: bytes | None, seconds: float = 0.0) -> None:
        """Hold every request whose bytes upstream contain ``pattern`` for ``seconds``
        before passing it on (None: stop holding). Spliced connections only."""
        with self._lock:
            self._hold = None if pattern is None else (pattern, seconds)
            self.held.clear()

    def lose_answer(self, pattern: bytes, count: int = 1) -> None:
        """Pass the next ``count`` requests whose bytes upstream contain ``pattern`` to
        the server, then close the connection instead of sending its answer: the server
        did the work, the client never hears of it. Spliced connections only."""
        with self._lock:
            self._lose = (pattern, count)

    def _losing(self, data: bytes) -> bool:
        with self._lock:
            if self._lose is None or self._lose[0] not in data:
                return False
            pattern, left = self._lose
            self._lose = (pattern, left - 1) if left > 1 else None
            self.faults += 1
            return True

    def drop_connections(self) -> None:
        self._call(self._close_all())

    def reset_stats(self) -> None:
        with self._lock:
            self.connections = self.faults = self.bytes_up = self.bytes_down = 0

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    # -- the loop thread ------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _shutdown(self) -> None:
        await self._unlisten()
        await self._close_all()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def _take(self) -> _Fault:
        with self._lock:
            self.connections += 1
            fault = self._fault
            if fault.mode == "pass":
                return fault
            self.faults += 1
            cut = fault.cuts.pop(0) if len(fault.cuts) > 1 else fault.cuts[0]
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._fault = _Fault()
            return _Fault(fault.mode, None, fault.retry_after, fault.delay, [cut])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        fault = self._take()
        try:
            if fault.mode in ("close", "refuse"):
                return
            if fault.mode in _REASONS:
                await self._answer(reader, writer, fault)
                return
            if fault.mode == "delay":
                await asyncio.sleep(fault.delay)
                if writer.is_closing():
                    # dropped while it waited: as on a real network, what the client
                    # sent on a connection that is gone never reaches the server (else
                    # a stale CreateMultipartUpload could start an upload after the
                    # client's retry had finished and cleaned up)
                    return
            await self._splice(reader, writer, fault.cuts[0] if fault.mode == "cut" else 0)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: _Fault
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() != "100-continue":
            await _drain_body(reader, headers)  # unread bytes would turn our close into a RST
        reason, code = _REASONS[fault.mode]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by faultproxy</Message></Error>"
        ).encode()
        extra = f"Retry-After: {fault.retry_after:g}\r\n" if fault.retry_after is not None else ""
        writer.write(
            f"HTTP/1.1 {fault.mode} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _splice(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut_after: int
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.add(up_writer)

        lose = asyncio.Event()  # a request went up whose answer must not come down

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            sent = 0
            while data := await src.read(65536):
                hold = self._hold
                if up and hold is not None and hold[0] in data:
                    self.held.set()
                    await asyncio.sleep(hold[1])
                if up and self._losing(data):
                    lose.set()
                if not up and lose.is_set():
                    return  # the answer is lost: both sides close below
                if up and cut_after and sent + len(data) >= cut_after:
                    dst.write(data[: cut_after - sent])
                    self.bytes_up += cut_after - sent
                    return  # cut: both sides close below
                dst.write(data)
                await dst.drain()
                sent += len(data)
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)

        tasks = [
            asyncio.create_task(pump(reader, up_writer, True)),
            asyncio.create_task(pump(up_reader, writer, False)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._writers.discard(up_writer)
            up_writer.close()


async def _drain_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return
    length = int(headers.get("content-length") or 0)
    while length > 0:
        chunk = await reader.read(min(length, 65536))
        if not chunk:
            return
        length -= len(chunk)
