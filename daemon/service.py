"""The daemon as an operating system's service: systemd's readiness protocol, and
the descriptors its clients hold."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket

log = logging.getLogger("artisync.daemon")


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness and state; a no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        with contextlib.suppress(OSError):
            s.sendto(message.encode(), addr)


def raise_fd_limit(max_connections: int) -> int:
    """Every client connection holds a descriptor: raise the soft limit to the hard
    one, and keep connections well below it so that uploads and the journal still
    get descriptors when thousands of clients are connected. Returns how many
    connections to serve at most."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    spare = max(64, min(1024, soft // 4))
    if soft - spare < max_connections:
        log.info("serving at most %d connections (descriptor limit %d)", soft - spare, soft)
        return max(1, soft - spare)
    return max_connections
