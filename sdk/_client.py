"""Blocking client of the daemon's socket; the SDK never starts an event loop.

Any failure to reach the daemon is reported as :class:`DaemonUnavailable`,
which the SDK answers by writing the record to the spool's outbox.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
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
    check_folder,
    encode,
    user_id,
    user_name,
)


class DaemonUnavailable(ArtisyncError):
    """No daemon answered, or it went away mid-conversation."""


class DaemonError(ArtisyncError):
    """The daemon answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class NotAllowed(ArtisyncError):
    """This user may not use the daemon behind this socket."""


class UntrustedDaemon(ArtisyncError):
    """The process behind the socket is not the daemon this user may hand data to."""


def socket_paths(settings: Settings) -> list[Path]:
    """This user's own daemon first; then, unless a socket was configured, the node's
    shared daemon (a system service), so a managed node needs no setup."""
    if settings.socket_chosen or settings.system_socket == settings.socket:
        return [settings.socket]
    return [settings.socket, settings.system_socket]


class DaemonClient:
    """One connection, used by one thread at a time (callers hold ``lock``).

    ``paths``: the sockets to try, in order (this user's own daemon, then a node's
    shared one); the first that answers is used until the connection breaks."""

    def __init__(self, settings: Settings, paths: list[Path] | None = None) -> None:
        self.settings = settings
        self.paths = paths or socket_paths(settings)
        self.lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder()
        self._next_id = 0
        self._fds: list[int] = []  # descriptors received, not yet claimed by a reply
        self.spool: Path | None = None  # told by the daemon's hello
        self.shared = False  # a shared daemon (system service): its spool is not ours
        self.output_uri: str | None = None  # the destination a shared daemon offers
        self.quiet_until = 0.0  # asks that may go unanswered wait until then (see _lease)
        self.path = self.paths[0]
        daemon = user_id(settings.daemon_user)
        # the uids whose daemon may get our data: ours, root, the configured daemon user
        self.trusted = {os.getuid(), 0} | ({daemon} if daemon is not None else set())

    def forget(self) -> None:
        """In a forked child: close this process's copy of the socket without taking
        the lock (the parent's thread may have held it at the fork)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def connect(self, timeout: float = 2.0, hello_timeout: float | None = None) -> None:
        """Connect to the first socket that answers (its hello within ``hello_timeout``:
        by default ``ack_timeout``, for a socket-activated daemon to start).

        :raises DaemonUnavailable: none does.
        :raises NotAllowed: a socket refused this user.
        :raises UntrustedDaemon: a socket is served by a process of another user.
        :raises UnsafeFolder: a socket's folder is someone else's, or writable by others."""
        if self._sock is not None:
            return
        failures = []
        for path in self.paths:
            try:
                self._connect(path, timeout, hello_timeout)
                self.path = path
                return
            except DaemonUnavailable as exc:
                failures.append(str(exc))
        raise DaemonUnavailable("; ".join(failures))

    def _connect(self, path: Path, timeout: float, hello_timeout: float | None) -> None:
        check_folder(path.parent, self.trusted, "socket folder")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as exc:
            s.close()
            if exc.errno == errno.EACCES:
                raise NotAllowed(_not_allowed(path, "the socket's permissions")) from None
            raise DaemonUnavailable(f"no daemon at {path}: {exc}") from exc
        # SO_PEERCRED of a listening socket is whoever called listen(): the daemon, or
        # root for systemd's socket activation
        uid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid not in self.trusted:
            s.close()
            raise UntrustedDaemon(
                f"the socket {path} is served by {user_name(uid)}, not by you, root or "
                f"daemon_user {self.settings.daemon_user!r}: not handing it any data "
                "(remove that socket, or set daemon_user to the daemon's user)"
            )
        self._sock = s
        self._decoder = FrameDecoder()
        try:  # a socket-activated daemon answers once started: it may take a few seconds
            reply = self._roundtrip(
                {
                    "op": "hello",
                    "version": PROTOCOL_VERSION,
                    "client": f"artisync-sdk pid {os.getpid()}",
                },
                hello_timeout or max(timeout, self.settings.ack_timeout),
            )
        except DaemonError as exc:
            self.close()
            if exc.code == "forbidden":
                raise NotAllowed(_not_allowed(path, str(exc))) from None
            raise DaemonUnavailable(f"daemon at {path} refused us: {exc}") from exc
        self.spool = Path(reply["spool"])
        self.shared = bool(reply.get("shared"))
        offered = reply.get("output_uri")
        self.output_uri = offered if isinstance(offered, str) and offered else None

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
                data, fds, _, _ = socket.recv_fds(sock, 65536, 4)
                self._fds.extend(fds)
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
                    if reply.get("fd"):  # the descriptor came with this reply's bytes
                        if not self._fds:
                            raise ProtocolError("reply announced a descriptor it did not carry")
                        reply["fd"] = self._fds.pop(0)
                    return reply
        except (OSError, ProtocolError) as exc:  # socket.timeout is an OSError
            self.close()
            raise DaemonUnavailable(f"daemon connection failed: {exc}") from exc


def _not_allowed(path: Path, why: str) -> str:
    return (
        f"you may not use the artisync daemon at {path} ({why}): ask the node's "
        "administrator to add you to its group (then log in again), or set "
        "ARTISYNC_SOCKET to a socket of your own to run your own daemon"
    )


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
