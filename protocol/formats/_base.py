"""What every format module shares: the snapshot, the stored payload, the errors,
the registry entry, and the helpers that write a payload into the spool.

A format module's ``snapshot(obj, req)`` runs on the caller's thread and returns
a :class:`Snapshot` (or None: not an object of this format); the snapshot's
``write(spool)`` runs later, in a background thread, and commits the payload
under its content address. ``load(type, format, path, allow_pickle)`` is the
inverse, from the local path of the main blob.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from artisync.protocol import ArtisyncError, Spool

PREVIEW_MAX = 2000


class SerializationError(ArtisyncError, ValueError):
    """The object cannot be stored as asked; the message says why and what to do."""


class UnpicklingRefused(ArtisyncError, PermissionError):
    """The payload is a pickle and unpickling was not allowed."""


@dataclass
class StoredPayload:
    sha256: str  # the main blob (the payload, or the tree listing)
    size: int  # size of the main blob (for trees: total size of all files)
    blobs: list[tuple[str, int]]  # every blob the record needs uploaded, main included


Preview = str | Callable[[], str]  # the text, or how to make it from the captured copy


class Snapshot:
    """A captured artifact; call exactly one of ``write(spool)`` or ``discard()``.

    ``preview`` is made on first access when it needs formatting (a DataFrame's
    head, an array's corners), from the captured copy: read first on the writer
    thread, it costs the caller nothing.
    """

    def __init__(
        self,
        type: str,
        format: str,
        extension: str,
        preview: Preview,
        write: Callable[[Spool], StoredPayload],
        discard: Callable[[], None],
        filename: str | None = None,
    ) -> None:
        self.type = type
        self.format = format
        self.extension = extension
        self._preview = preview
        self._preview_lock = threading.Lock()
        self.write = write
        self.discard = discard
        self.filename = filename  # original file or folder name, for path artifacts

    @property
    def preview(self) -> str:
        with self._preview_lock:
            if not isinstance(self._preview, str):
                try:
                    self._preview = self._preview()[:PREVIEW_MAX]
                except Exception:  # a preview must never fail the upload
                    self._preview = f"{self.type} ({self.format})"
            return self._preview

    def __repr__(self) -> str:
        return f"<Snapshot {self.type} {self.format} {self.extension!r}>"


class _Once:
    """Runs the writer at most once; temp files never outlive write() or discard()."""

    def __init__(self, fn: Callable[[Spool], StoredPayload], temps: list[Path]) -> None:
        self._fn: Callable[[Spool], StoredPayload] | None = fn
        self._temps = temps
        self._state = "ready"
        self._lock = threading.Lock()

    def write(self, spool: Spool) -> StoredPayload:
        with self._lock:
            if self._state != "ready" or self._fn is None:
                raise RuntimeError(f"snapshot already {self._state}")
            fn, self._fn, self._state = self._fn, None, "written"
        try:
            return fn(spool)
        finally:
            self._cleanup()  # committed temps were renamed away; the rest go

    def discard(self) -> None:
        with self._lock:
            if self._state != "ready":
                return
            self._fn, self._state = None, "discarded"
        self._cleanup()

    def _cleanup(self) -> None:
        for tmp in self._temps:
            tmp.unlink(missing_ok=True)
        self._temps = []


def make_snapshot(
    type_: str,
    format_: str,
    extension: str,
    preview: Preview,
    fn: Callable[[Spool], StoredPayload],
    temps: list[Path] | None = None,
    filename: str | None = None,
) -> Snapshot:
    once = _Once(fn, temps or [])
    if isinstance(preview, str):
        preview = preview[:PREVIEW_MAX]
    return Snapshot(type_, format_, extension, preview, once.write, once.discard, filename)


# ------------------------------------------------------------------------ the registry


class PathTarget(NamedTuple):
    """What a ``str`` or path-like object names, resolved once by the registry."""

    kind: str  # "file", "folder", "wildcard", or "special" (a socket, a FIFO...)
    text: str  # as the caller wrote it
    path: Path  # after ``~`` expansion


@dataclass(frozen=True)
class Request:
    """How the caller asked for an object to be stored."""

    spool: Spool
    ext: str | None  # extension_name, normalised (".csv.gz"), or None
    auto_pickle: bool
    preview: str | None  # the caller's own preview, cut to PREVIEW_MAX
    path: PathTarget | None = None  # for a str or path-like object that names a path


@dataclass(frozen=True)
class Format:
    """A format module's registry entry."""

    name: str
    # the object's Snapshot, or None when ``obj`` is not this format's to store
    snapshot: Callable[[Any, Request], Snapshot | None]
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


def single_blob(sha: str, size: int) -> StoredPayload:
    return StoredPayload(sha, size, [(sha, size)])


def bytes_writer(data: bytes) -> Callable[[Spool], StoredPayload]:
    return lambda spool: single_blob(*spool.write_blob_bytes(data))


def file_writer(
    obj: Any, serialize: Callable[[Any, Path], None]
) -> Callable[[Spool], StoredPayload]:
    """Serialize ``obj`` into a spool temp path, then commit it (hash, fsync, rename)."""
    holder = [obj]

    def write(spool: Spool) -> StoredPayload:
        f, tmp = spool.open_temp()
        f.close()
        try:
            serialize(holder.pop(), tmp)
            return single_blob(*spool.commit_temp(tmp))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    return write


@contextlib.contextmanager
def gzip_text_writer(path: Path) -> Iterator[io.TextIOWrapper]:
    # mtime=0 and no file name in the header: same content, same bytes, same sha256
    with (
        open(path, "wb") as raw,
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
