"""A folder's small files stay in its pack: one spool file, not one per member.

The SDK snapshots a folder into one raw *pack* (its files end to end, in the
order of their sorted paths). Splitting it into a blob file per member cost the
daemon a file created, written, renamed and later deleted per member: on ext4,
where creating files soon after others were deleted is slow, that was most of a
2,000-file folder's time, and it kept the uploads waiting. Now only members of
at least :data:`OWN_BLOB_FROM` get a blob file of their own (a big file is
streamed to storage, in parts); the pack itself is kept as
``blobs/<listing sha256>.pack``, and the others are read from it when they are
sent or read back on the node.

A member's place in the pack follows from the listing alone (sizes, in order),
so the stored listing keeps its format, and the pack needs no index of its own.
Every member read from the pack is checked against its SHA-256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from artisync.protocol import IntegrityError, Spool, copy_file_fast, fsync_dir, fsync_file

PACK_SUFFIX = ".pack"
OWN_BLOB_FROM = 1024 * 1024  # members this big get a blob file (streamed when sent)


def pack_name(listing_sha: str) -> str:
    """The spool name (in ``blobs/``) of the pack whose members a listing names."""
    return listing_sha + PACK_SUFFIX


def listing_of(name: str) -> str | None:
    """The listing's SHA-256 a pack's spool name is kept for (None: not a pack)."""
    return name[: -len(PACK_SUFFIX)] if name.endswith(PACK_SUFFIX) else None


def stage(spool: Spool, raw: Path) -> Path:
    """The raw pack under a temp name in the spool, to hash its members from: a hard
    link (no copy) or, where clients may still hold a descriptor of their raw file
    (``spool.link_raw`` off), a copy, so that what is hashed cannot change after."""
    f, tmp = spool.open_temp()
    with f:
        if not spool.link_raw:
            copy_file_fast(raw, f)
            return tmp
    os.unlink(tmp)
    os.link(raw, tmp)
    return tmp


def keep(spool: Spool, staged: Path, listing_sha: str, sync: bool) -> str:
    """Keep a staged pack as the pack of ``listing_sha`` (fsynced now when ``sync``,
    else with the record's other blobs); returns its name in ``blobs/``."""
    name = pack_name(listing_sha)
    os.replace(staged, spool.blob_path(name))
    if sync:
        fsync_file(spool.blob_path(name))
        fsync_dir(spool.blobs)
    return name


def hash_member(pack_fd: int, offset: int, size: int) -> str:
    data = os.pread(pack_fd, size, offset)
    if len(data) != size:
        raise IntegrityError("raw pack is shorter than its entries")
    return hashlib.sha256(data).hexdigest()


def in_pack(entries: list[tuple[str, str, int]]) -> dict[str, tuple[int, int]]:
    """sha256 -> (offset, size) of the members that stay in the pack, from a listing's
    (path, sha256, size) entries."""
    out: dict[str, tuple[int, int]] = {}
    offset = 0
    for _, sha, size in entries:
        if size < OWN_BLOB_FROM:
            out.setdefault(sha, (offset, size))
        offset += size
    return out


def read_member(pack: Path, offset: int, size: int, sha256: str, check: bool = True) -> bytes:
    """One member's bytes, checked against its name (``check`` off: by the caller).

    :raises FileNotFoundError: the pack was collected (its record is committed).
    :raises IntegrityError: the bytes there are not the member's."""
    fd = os.open(pack, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    if len(data) != size or (check and hashlib.sha256(data).hexdigest() != sha256):
        raise IntegrityError(f"member {sha256[:12]} of pack {pack.name[:12]} does not match")
    return data
