"""Who is on the other end of the socket, and what a shared daemon lets them do.

A peer is identified by the kernel (SO_PEERCRED), never by what it says. A
shared daemon (system mode: ``group`` set) serves the members of one group,
keeps its spool private, and takes payloads only through files it creates
itself and hands out as descriptors (SCM_RIGHTS): a user never gets a path
into the spool, so no user can read, replace or delete another's payloads.
"""

from __future__ import annotations

import array
import asyncio
import os
import pwd
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artisync.protocol import encode, parse_destination

_CRED = struct.Struct("3i")
GRANT_TTL = 3600.0  # seconds a handed-out raw file may wait for its record
MEMBERSHIP_TTL = 60.0  # seconds a group membership lookup is trusted


@dataclass(frozen=True)
class Peer:
    pid: int | None
    uid: int | None
    gid: int | None


def peer_credentials(sock: Any) -> Peer:
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return Peer(None, None, None)
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return Peer(pid, uid, gid)


class Membership:
    """Is a uid in the daemon's group (primary or supplementary)? Cached briefly."""

    def __init__(self, gid: int) -> None:
        self.gid = gid
        self._seen: dict[int, tuple[bool, float]] = {}

    def allows(self, uid: int | None) -> bool:
        if uid is None:
            return False
        if uid in (0, os.getuid()):
            return True
        hit = self._seen.get(uid)
        now = time.monotonic()
        if hit is not None and now - hit[1] < MEMBERSHIP_TTL:
            return hit[0]
        try:
            pw = pwd.getpwuid(uid)
            member = self.gid in os.getgrouplist(pw.pw_name, pw.pw_gid)
        except (KeyError, OSError):
            member = False
        self._seen[uid] = (member, now)
        return member


class Grants:
    """Raw snapshot files handed to clients, by record id: only the uid that got one
    may submit the record that names it. Kept in memory: after a restart a client
    hands its payload over again (it keeps its descriptor until acknowledged)."""

    def __init__(self, raw_dir: Path) -> None:
        self.raw_dir = raw_dir
        self._owner: dict[str, tuple[int, float]] = {}

    def open(self, record_id: str, uid: int) -> int:
        """Create the record's raw file (never an existing one) and grant it to ``uid``.

        :raises FileExistsError: the name is taken (by another client's grant)."""
        self._expire()
        path = self.raw_dir / record_id
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            held = self._owner.get(record_id)
            if held is None or held[0] != uid:
                raise
            fd = os.open(path, os.O_RDWR | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
        self._owner[record_id] = (uid, time.monotonic())
        return fd

    def holds(self, record_id: str, uid: int | None) -> bool:
        held = self._owner.get(record_id)
        return held is not None and held[0] == uid

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._owner

    def release(self, record_id: str) -> None:
        self._owner.pop(record_id, None)

    def _expire(self) -> None:
        if len(self._owner) < 1024:
            return
        cutoff = time.monotonic() - GRANT_TTL
        for rid in [r for r, (_, t) in self._owner.items() if t < cutoff]:
            del self._owner[rid]


async def send_with_fds(writer: asyncio.StreamWriter, msg: dict[str, Any], fds: list[int]) -> None:
    """Write one frame with descriptors attached (asyncio's transports cannot): once
    the transport's buffer is empty, sendmsg on a duplicate of its socket, so the frame
    keeps its place in the stream."""
    data = encode(msg)
    await writer.drain()
    transport_sock = writer.get_extra_info("socket")
    with socket.socket(fileno=os.dup(transport_sock.fileno())) as sock:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        for _ in range(200):
            try:
                sent = sock.sendmsg([data], anc)
                break
            except BlockingIOError:
                await asyncio.sleep(0.005)
        else:
            raise ConnectionError("client does not read its replies")
    if sent < len(data):
        writer.write(data[sent:])
        await writer.drain()


def _parts(uri: str) -> tuple[str, str, list[str]]:
    scheme, root, prefix = parse_destination(uri)
    if scheme == "file":
        segs = [p for p in root.split("/") if p]
        return scheme, "", segs
    return scheme, root, [p for p in prefix.split("/") if p]


def destination_allowed(dest: str, allowed: tuple[str, ...]) -> bool:
    """Is ``dest`` one of ``allowed`` or under one of them (whole path segments, no
    ``.`` or ``..`` anywhere)? ``allowed`` empty: nothing is."""
    try:
        scheme, root, segs = _parts(dest)
    except ValueError:
        return False
    if any(s in (".", "..") for s in segs):
        return False
    for a in allowed:
        try:
            a_scheme, a_root, a_segs = _parts(a)
        except ValueError:
            continue
        if (a_scheme, a_root) == (scheme, root) and segs[: len(a_segs)] == a_segs:
            return True
    return False
