"""Folder checks shared by the SDK and the daemon.

A socket folder or a spool that someone else owns, or that others may write
into, can hold a planted socket or planted files: both sides refuse to use it
and say what to fix, instead of talking to (or reading from) whoever put it there.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Collection
from pathlib import Path

from ._errors import ArtisyncError


class UnsafeFolder(ArtisyncError):
    """A socket folder or spool with the wrong owner, or writable by others."""


def user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def user_id(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def check_folder(path: Path, owners: Collection[int], what: str) -> None:
    """Refuse ``path`` unless it is a real folder owned by one of ``owners`` that
    nobody else may write into (group- or world-writable). Absent is fine: the caller
    creates it.

    :raises UnsafeFolder: with what to fix."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeFolder(f"{what} {path} is not a folder (a link or a file?); remove it")
    if st.st_uid not in owners:
        allowed = " or ".join(user_name(u) for u in sorted(set(owners)))
        raise UnsafeFolder(
            f"{what} {path} belongs to {user_name(st.st_uid)}, not {allowed}: someone else "
            f"created it; remove it (or point artisync elsewhere) before going on"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFolder(
            f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod go-w {path}` or remove it"
        )
