"""Blocking client of the daemon's socket; the SDK never starts an event loop.

Any failure to reach the daemon is reported as :class:`DaemonUnavailable`,
which the SDK answers by writing the record to the spool's outbox.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from artisync.protocol import (
    PROTOCOL_VERSION,
    ArtisyncError,
    FrameDecoder,
    ProtocolError,
    Settings,
    encode,
)


class DaemonUnavailable(ArtisyncError):
    """No daemon answered, or it went away mid-conversation."""


class DaemonError(ArtisyncError):
    """The daemon answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class DaemonClient:
    """One connection, used by one thread at a time (callers hold ``lock``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder()
        self._next_id = 0
        self.spool: Path | None = None  # told by the daemon's hello

    def forget(self) -> None:
        """In a forked child: close this process's copy of the socket without taking
        the lock (the parent's thread may have held it at the fork)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def connect(self, timeout: float = 2.0) -> None:
        if self._sock is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.settings.socket))
        except OSError as exc:
            s.close()
            raise DaemonUnavailable(f"no daemon at {self.settings.socket}: {exc}") from exc
        self._sock = s
        self._decoder = FrameDecoder()
        reply = self._roundtrip(
            {
                "op": "hello",
                "version": PROTOCOL_VERSION,
                "client": f"artisync-sdk pid {os.getpid()}",
            },
            timeout,
        )
        self.spool = Path(reply["spool"])

    def request(
        self, msg: dict[str, Any], timeout: float | None = None, on_progress: Any = None
    ) -> dict[str, Any]:
        """Send one request and return its final reply.

        :raises DaemonUnavailable: could not connect, or the connection broke.
        :raises DaemonError: the daemon refused the request.
        """
        with self.lock:
            self.connect()
            try:
                return self._roundtrip(msg, timeout, on_progress)
            except DaemonUnavailable:
                self.close()
                raise

    def _roundtrip(
        self, msg: dict[str, Any], timeout: float | None, on_progress: Any = None
    ) -> dict[str, Any]:
        assert self._sock is not None
        self._next_id += 1
        rid = self._next_id
        sock = self._sock
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            sock.sendall(encode({**msg, "id": rid}))
            while True:
                if deadline is not None:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    raise DaemonUnavailable("daemon closed the connection")
                for reply in self._decoder.feed(data):
                    if not isinstance(reply, dict) or reply.get("id") not in (rid, None):
                        continue
                    if "progress" in reply:
                        if on_progress is not None:
                            on_progress(reply["progress"])
                        continue
                    if not reply.get("ok"):
                        if reply.get("id") is None:
                            raise DaemonUnavailable(f"daemon dropped us: {reply.get('message')}")
                        raise DaemonError(str(reply.get("error")), str(reply.get("message")))
                    return reply
        except (OSError, ProtocolError) as exc:  # socket.timeout is an OSError
            self.close()
            raise DaemonUnavailable(f"daemon connection failed: {exc}") from exc


def autostart_daemon(settings: Settings, spool: Path) -> subprocess.Popen[bytes] | None:
    """Start a detached daemon for this user, which exits once idle.

    Called when no daemon answered. A racing second daemon exits at once on
    the spool lock, so this needs no coordination between processes.
    """
    log_dir = spool.parent
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {**os.environ, "ARTISYNC_SPOOL": str(spool), "ARTISYNC_SOCKET": str(settings.socket)}
    with open(log_dir / "artisyncd.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "artisync.daemon", "--idle-exit", str(settings.idle_exit)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
