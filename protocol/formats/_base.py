"""What every format module shares: the capture, the stored payload, the errors,
the registry entries, and the helpers that write raw snapshots and stored blobs.

A format module's ``snapshot(obj, req)`` runs on the caller's thread: it writes
the cheapest raw snapshot it can into ``req.raw`` (Arrow IPC, an .npy, pixels,
the file itself, or the stored bytes when making them costs no more than a copy)
and returns a :class:`Captured` (or None: not an object of this format). Its
codec's ``encode`` runs later, in the daemon, and commits the stored form under
its content address; the codec's ``load`` reads the raw snapshot back meanwhile.
``load(type, format, path, allow_pickle)`` reads the stored form.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib
import io
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

from artisync.protocol import (
    ArtisyncError,
    SpanCrcs,
    Spool,
    fsync_dir,
    hash_file,
    hash_file_spans,
    recycle,
    remember_spans,
    run_piece,
)

PREVIEW_MAX = 2000
# A raw snapshot this small travels inside its record (one file for the caller to
# create, not two: creating a file costs more than writing 64 KiB into one).
INLINE_MAX = 64 * 1024
# a stored payload this small stays in its record after encoding (the journal keeps it
# durable, so its blob needs no fsync) and is published inside its version record
SMALL_PAYLOAD = 4096
_SYNC_ASIDE = 8 * 1024 * 1024  # a raw file this big is fsynced while it is hashed


class SerializationError(ArtisyncError, ValueError):
    """The object cannot be stored as asked; the message says why and what to do."""


class UnpicklingRefused(ArtisyncError, PermissionError):
    """The payload is a pickle and unpickling was not allowed."""


@dataclass
class StoredPayload:
    sha256: str  # the main blob (the payload, or the tree listing)
    size: int  # size of the main blob (for trees: total size of all files)
    blobs: list[tuple[str, int]]  # every blob the record needs uploaded, main included


@dataclass
class Captured:
    """What ``snapshot`` wrote into the raw file, and what its record says of it."""

    type: str
    format: str
    extension: str
    raw: dict[str, Any]  # the record's ``raw``: codec, size, and what the codec needs
    preview: str | None  # None: the daemon makes it from the raw snapshot
    filename: str | None = None  # original file or folder name, for path artifacts

    def __repr__(self) -> str:
        return f"<Captured {self.type} {self.format} {self.raw['codec']}>"


@dataclass(frozen=True)
class Codec:
    """How the daemon turns one kind of raw snapshot into the stored form."""

    name: str
    # (spool, record, raw path) -> the payload, committed in blobs/, and the preview
    # when the capture left it to the daemon
    encode: Callable[[Spool, dict[str, Any], Path], tuple[StoredPayload, str | None]]
    # (record, raw path, allow_pickle) -> the object, read from the raw snapshot
    load: Callable[[dict[str, Any], Path, bool], Any]


# ------------------------------------------------------------------------ the registry


# What ``Request.lease`` answers: the file's identity once the daemon holds its lease
# (the daemon copies it into the raw snapshot), NOT_LEASED (copy it here), or
# LEASE_UNKNOWN (no answer in time: the daemon may still copy it into the raw snapshot,
# so a copy made here must not take the place of one made meanwhile).
NOT_LEASED, LEASE_UNKNOWN = "no", "unknown"


class Leasing(Protocol):
    def __call__(self, path: str, fd: int, size: int) -> dict[str, Any] | str:
        """Ask for a lease of the file open as ``fd`` (``size`` bytes): an answer above."""

    def copied(self, size: int, seconds: float) -> None:
        """A big file was copied here instead: that long (to choose the cheaper next time)."""


class PathTarget(NamedTuple):
    """What a ``str`` or path-like object names, resolved once by the registry."""

    kind: str  # "file", "folder", "wildcard", or "special" (a socket, a FIFO...)
    text: str  # as the caller wrote it
    path: Path  # after ``~`` expansion


@dataclass(frozen=True)
class Request:
    """How the caller asked for an object to be stored, and where its raw snapshot goes."""

    raw: Path  # the raw snapshot file to create
    mode: int  # its permission bits
    ext: str | None  # extension_name, normalised (".csv.gz"), or None
    auto_pickle: bool
    preview: str | None  # the caller's own preview, cut to PREVIEW_MAX
    path: PathTarget | None = None  # for a str or path-like object that names a path
    # raises when ``n`` more bytes must not go into the spool (its disk's reserve)
    room: Callable[[int], None] | None = None
    # a shared daemon's spool: the raw file is created there and handed over as a
    # descriptor (``raw`` is then never created)
    opener: Callable[[], int] | None = None
    # the spool's pool of recycled raw files (see protocol._recycle), when it may be used
    pool: Path | None = None
    # asks this user's own daemon to copy a big file itself, under a read lease it takes
    # on it: ``lease(absolute path, the descriptor open on it, its size)`` (see Leasing)
    lease: Leasing | None = None

    def create(self) -> int:
        """A descriptor of the new raw snapshot file, open for writing."""
        return self.opener() if self.opener is not None else create_raw(self.raw, self.mode)

    def filled(self, codec: str, write: Callable[[BinaryIO], object], size: int) -> dict[str, Any]:
        """The record's ``raw`` for the raw file ``write`` fills (about ``size`` bytes):
        written over a recycled file where the pool has one, else a new file. Only for
        codecs whose raw file the daemon deletes once encoded (never hard-linked)."""
        fd = self.recycled(size)
        if fd is None:
            fd = self.create()
            cut = size <= recycle.MAX_SIZE and self.opener is None  # a size worth trusting
            cut = cut and recycle.preallocate(fd, self.raw.parent, size)
            return {"codec": codec, "size": write_raw(self.raw, write, fd=fd, reused=cut)}
        written = write_raw(self.raw, write, fd=fd, reused=True)
        return {"codec": codec, "size": written, "reused": recycle.boot_id()}

    def recycled(self, size: int) -> int | None:
        """A recycled raw file renamed to ``raw``, open to write about ``size`` bytes
        over (the writer cuts it to what it wrote), or None: no pool, or no file fits."""
        if self.pool is None or self.opener is not None:
            return None
        return recycle.take(self.pool, self.raw, size, self.mode)

    def stored(self, type_: str, format_: str, ext: str, data: bytes, preview: str) -> Captured:
        """The stored form itself as the raw snapshot (made as cheaply as a copy)."""
        return Captured(type_, format_, ext, self.raw_bytes("stored", data), preview)

    def raw_bytes(self, codec: str, data: bytes) -> dict[str, Any]:
        """The record's ``raw`` for these bytes: inside it when small, else in the file."""
        if len(data) <= INLINE_MAX:
            return {"codec": codec, "size": len(data), "data": data}
        if self.room is not None:  # known only now that it is serialized (a dict's JSON)
            self.room(len(data))
        if codec != "stored":  # a stored one becomes its blob by a hard link
            return self.filled(codec, lambda f: f.write(data), len(data))
        return {
            "codec": codec,
            "size": write_raw(self.raw, lambda f: f.write(data), fd=self.create()),
        }

    def raw_written(
        self, codec: str, write: Callable[[BinaryIO], object], hint: int
    ) -> dict[str, Any]:
        """The record's ``raw`` for what ``write`` writes (``hint``: about how much)."""
        if hint <= INLINE_MAX:
            buf = io.BytesIO()
            write(buf)
            return self.raw_bytes(codec, buf.getvalue())
        if codec != "stored":  # a stored one becomes its blob by a hard link
            return self.filled(codec, write, hint)
        return {"codec": codec, "size": write_raw(self.raw, write, fd=self.create())}


@dataclass(frozen=True)
class Format:
    """A format module's registry entry."""

    name: str
    # the object's capture (its raw snapshot written), or None when ``obj`` is not
    # this format's to store
    snapshot: Callable[[Any, Request], Captured | None]
    # does ``load`` read records of this (type, format)?
    loads: Callable[[str, str], bool]
    # (type, format, path of the main blob, allow_pickle) -> the object
    load: Callable[[str, str, Path, bool], Any]


class PickleInstead(Exception):  # a signal to the registry, not an error
    """Raised by a format's ``snapshot`` for an object it cannot hold: the registry
    pickles it instead when ``auto_pickle``, with extension ``ext``, or says ``why``."""

    def __init__(self, why: str, ext: str | None) -> None:
        super().__init__(why)
        self.why = why
        self.ext = ext


# ---------------------------------------------------------------------------- helpers


def cut_preview(preview: str | None) -> str | None:
    return None if preview is None else preview[:PREVIEW_MAX]


def create_raw(path: Path, mode: int) -> int:
    """Create a raw snapshot file (never one that exists already); its descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)


def write_raw(
    path: Path,
    write: Callable[[BinaryIO], object],
    mode: int = 0o600,
    fd: int | None = None,
    *,
    reused: bool = False,
) -> int:
    """Create ``path`` (never an existing file; ``fd``: this descriptor of it, made
    already, or ``reused``: a recycled or preallocated file to write over and cut
    where ``write`` stopped), fill it with ``write``, return its size.

    No fsync: the caller is the training loop, and the page cache survives its
    process being killed; the daemon syncs what it encodes before anything is deleted.
    """
    if fd is None:
        fd = create_raw(path, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if reused:
                os.ftruncate(f.fileno(), f.tell())
            return os.fstat(f.fileno()).st_size
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_raw_bytes(path: Path, data: bytes, mode: int = 0o600) -> int:
    return write_raw(path, lambda f: f.write(data), mode)


class HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through, so that encoding and hashing
    are one pass. A writer that seeks (zip, TIFF) makes the hash be taken afterwards."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__()
        self._f = f
        self.sha = hashlib.sha256()
        self.spans = SpanCrcs()  # for a large upload's parts (see protocol._spans)
        self.size = 0
        self.sought = False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = memoryview(b).cast("B")
        self._f.write(data)
        if not self.sought:
            self.sha.update(data)
            self.spans.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._f.seek(offset, whence)
        if pos != self.size:
            self.sought = True
        return pos

    def flush(self) -> None:
        self._f.flush()


def encode_to_blob(spool: Spool, write: Callable[[BinaryIO], None]) -> tuple[str, int]:
    """Write a stored form into a spool temp file through ``write`` (hashed on the way),
    then fsync it and commit it under its SHA-256. Returns (sha256, size)."""
    f, tmp = spool.open_temp()
    try:
        with f:
            hashing = HashingFile(f)
            write(hashing)  # type: ignore[arg-type]  # a RawIOBase is a binary file
            f.flush()
        if hashing.sought:
            sha, size = hash_file_spans(tmp)
        else:
            sha, size = hashing.sha.hexdigest(), hashing.size
            remember_spans(sha, hashing.spans.crcs())
        return spool.commit_temp(tmp, sha)[0], size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def commit_raw(spool: Spool, raw: Path) -> tuple[str, int]:
    """A raw snapshot that is already the stored form: hash it, fsync it, and link it
    into ``blobs/`` (a hard link, no copy; the raw name goes once the record is
    journaled). A blob with that hash already there is a free dedup.

    With ``spool.link_raw`` off, a copy instead: whoever wrote the raw file may still
    hold a descriptor of it, and a blob must not change after it was hashed."""
    if not spool.link_raw:

        def copy(out: BinaryIO) -> None:
            with open(raw, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    out.write(chunk)

        return encode_to_blob(spool, copy)
    fd = os.open(raw, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size < _SYNC_ASIDE:
            sha, size = hash_file(raw)
            os.fsync(fd)
        else:  # the disk writes a big file back while the CPU hashes it (1 GiB: ~0.5 s each)
            with ThreadPoolExecutor(1) as pool:  # its writeback a piece (protocol._pieces)
                synced = pool.submit(run_piece, functools.partial(os.fsync, fd))
                sha, size = hash_file_spans(raw)  # and its parts' CRC-32s, for S3
                synced.result()
    finally:
        os.close(fd)
    target = spool.blob_path(sha)
    try:
        os.link(raw, target)
    except FileExistsError:
        os.utime(target)  # refreshed, should housekeeping be about to collect it
    fsync_dir(spool.blobs)
    return sha, size


def linked_blob(spool: Spool, raw: Path, sha: str) -> tuple[str, int] | None:
    """A raw snapshot the daemon made a name of the blob ``sha`` (a file leased again
    unchanged, see ``daemon.leases``): that blob, not hashed again, if the two are one
    file still (a blob is hashed, fsynced and never written to again); else None."""
    try:
        st, blob = os.stat(raw), spool.blob_path(sha)
        if not os.path.samestat(st, os.stat(blob)):
            return None
        os.utime(blob)  # as commit_raw does for a blob found there
    except OSError:
        return None
    return sha, st.st_size


def single_blob(sha: str, size: int) -> StoredPayload:
    return StoredPayload(sha, size, [(sha, size)])


@contextlib.contextmanager
def gzip_text_writer(raw: BinaryIO) -> Iterator[io.TextIOWrapper]:
    # mtime=0 and no file name in the header: same content, same bytes, same sha256
    with (
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="") as text,
    ):
        yield text


def pick(ext: str | None, table: dict[str, str], what: str) -> str:
    """The format for ``ext`` (the table's first entry when None)."""
    if ext is None:
        return next(iter(table.values()))
    if ext not in table:
        raise SerializationError(
            f"{what} cannot be stored with extension_name={ext!r}; allowed: {', '.join(table)}"
        )
    return table[ext]


def is_instance_from(obj: Any, package: str, module: str, name: str) -> bool:
    """Is ``obj`` a ``module.name`` (e.g. ``pandas``, ``DataFrame``)? Imports nothing
    unless a class of ``obj``'s (or a base) is defined in ``package``, already imported."""
    if package not in sys.modules:
        return False
    if not any(c.__module__.split(".", 1)[0] == package for c in type(obj).__mro__):
        return False
    return isinstance(obj, getattr(importlib.import_module(module), name))


def check_pickle(allow_pickle: bool) -> None:
    if not allow_pickle:
        raise UnpicklingRefused(
            "this artifact is a pickle, and unpickling runs code chosen by whoever wrote it; "
            "if you trust its source, call get(allow_pickle=True) or set "
            "allow_pickle = true in the [artisync] table of the config file"
        )
