"""The storage interface every backend implements, its errors, and the registry.

A backend is selected by URI scheme: ``/path`` or ``file:///path`` (a local or
shared folder), ``s3://bucket/prefix``, ``gs://bucket/prefix``,
``azure://container/prefix``. Keys are relative, ``/``-separated, and already
safe (see :mod:`artisync.protocol._layout`); a backend joins them under its
prefix and must refuse a key that would escape it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from artisync.protocol import (
    DESTINATION_SCHEMES,
    AccessDenied,
    IntegrityError,
    NotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    parse_destination,
)

__all__ = [
    "AccessDenied",
    "IntegrityError",
    "NotFound",
    "ObjectInfo",
    "PermanentStorageError",
    "Storage",
    "StorageError",
    "TransientStorageError",
    "check_key",
    "first_error",
    "load_backend",
    "open_storage",
    "parse_uri",
    "register",
    "unknown_options",
]


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None  # when the backend stored or can report it
    modified: float | None = None  # seconds since the epoch


@runtime_checkable
class Storage(Protocol):
    """Five data-path operations, small-object helpers and one clean-up; all idempotent.

    Errors: every method raises only :class:`StorageError` subclasses —
    :class:`TransientStorageError` for what a retry may fix (connection,
    timeout, 5xx, throttling), :class:`PermanentStorageError` otherwise
    (:class:`NotFound`, :class:`AccessDenied`, :class:`IntegrityError`).
    Cancellation propagates untouched.
    """

    @property
    def scheme(self) -> str:
        """The URI scheme this backend serves (a class attribute in implementations)."""
        ...

    @property
    def uri(self) -> str:
        """The destination, without credentials."""
        ...

    @property
    def head_before_put(self) -> int:
        """Objects of at least this size are looked for (:meth:`head`) before they are
        sent; smaller ones cost about as much to send as to look for, and are just sent
        (a class attribute in implementations)."""
        ...

    async def put(self, key: str, src: Path, *, size: int, sha256: str) -> ObjectInfo:
        """Upload the file ``src`` to ``key``; the backend verifies ``sha256``
        (natively, or by hashing while it streams) and raises
        :class:`IntegrityError` on a mismatch. Safe to retry: ``src`` is re-read."""
        ...

    async def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> ObjectInfo:
        """Upload a small object (records, listings, a folder's members) held in memory.
        With ``sha256``, the object must have that hash: the backend verifies it
        (natively, or by hashing) and raises :class:`IntegrityError` on a mismatch."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Size (and hash where known) of ``key``, or None if it does not exist."""
        ...

    async def get(self, key: str, target: Path) -> ObjectInfo:
        """Stream ``key`` into the file ``target`` (written atomically).

        :raises NotFound: the key does not exist."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """Read a small object whole. :raises NotFound:"""
        ...

    def list(self, prefix: str, *, page_size: int | None = None) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, paging as needed:
        a request per page of ``page_size`` keys (default: the backend's
        ``list_page_size``), each sent only when the caller reads past the last. A
        caller that wants the first few keys of a long listing asks for a small page."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is success."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every key of ``keys`` (missing ones are success) in as few requests as
        the service allows: S3's DeleteObjects (1,000 keys a request), Azure's blob
        batch (256); one request each elsewhere, many in flight."""
        ...

    async def abort_incomplete(self, key: str, *, size: int | None, started: float) -> int:
        """Remove what interrupted uploads of ``key`` left at the destination: parts
        invisible under the key but kept (and billed), such as unfinished S3 multipart
        uploads or a folder's temp files. Returns how many were removed; a backend
        whose service discards them by itself does nothing.

        Call it only while this process has no upload of ``key`` in flight.
        ``started`` is when this process started: a leftover that may belong to
        another, live writer (a temp file on a shared folder) is kept unless older.
        ``size`` is the object's size, None for a small object written whole
        (:meth:`put_bytes`): what goes up in one request leaves nothing behind
        where the service makes a whole object visible or nothing. A ``key`` ending
        in ``/`` is a folder: what interrupted small uploads left anywhere in it
        (a batch of versions is named at random: its temp file can only be found so).

        :raises PermanentStorageError: e.g. no permission to list unfinished uploads.
        :raises TransientStorageError: not retried here; the caller tries again later."""
        ...

    async def aclose(self) -> None:
        """Release clients and connection pools."""
        ...


Factory = Callable[[str, Mapping[str, Any]], Storage]
_REGISTRY: dict[str, Factory] = {}
_OPTIONS: dict[str, frozenset[str]] = {}
_MODULES = {scheme: scheme for scheme in DESTINATION_SCHEMES}  # module named after it
log = logging.getLogger("artisync.daemon.storage")


def register(scheme: str, factory: Factory, options: Iterable[str] | None = None) -> None:
    """Register ``factory`` for ``scheme``; ``options`` names every option it reads."""
    if scheme in _REGISTRY:
        raise RuntimeError(f"storage scheme {scheme!r} registered twice")
    _REGISTRY[scheme] = factory
    if options is not None:
        _OPTIONS[scheme] = frozenset(options)


def parse_uri(uri: str) -> tuple[str, str, str]:
    """``uri`` -> (scheme, bucket-or-root, prefix); see ``artisync.protocol.parse_destination``."""
    return parse_destination(uri)


def check_key(key: str) -> str:
    """Refuse keys that could escape a prefix on any backend."""
    if (
        not key
        or key.startswith("/")
        or "\x00" in key
        or "\\" in key
        or any(p in ("", ".", "..") for p in key.split("/")[:-1])
        or key.split("/")[-1] in (".", "..")
    ):
        raise PermanentStorageError(f"unsafe storage key {key!r}", key=key)
    return key


def _load(scheme: str) -> None:
    if scheme not in _REGISTRY:
        importlib.import_module(f"artisync.daemon.storage.{_MODULES[scheme]}")


def load_backend(uri: str) -> None:
    """Import the backend module (and its cloud client) for ``uri`` ahead of use.

    :raises ValueError: not a destination URI."""
    _load(parse_uri(uri)[0])


def unknown_options(uri: str, options: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(names in ``options`` that the backend for ``uri`` does not read, the names it does):
    a typo such as ``endpoint`` for ``endpoint_url`` would otherwise go unnoticed."""
    scheme, _, _ = parse_uri(uri)
    _load(scheme)
    known = _OPTIONS.get(scheme)
    if known is None:
        return [], []
    return sorted(set(options) - known), sorted(known)


def open_storage(uri: str, options: Mapping[str, Any] | None = None) -> Storage:
    """Build the backend for ``uri``; imports its module (and cloud client) lazily.
    Options the backend does not know are logged (names only, never values)."""
    scheme, _, _ = parse_uri(uri)
    _load(scheme)
    unknown, known = unknown_options(uri, options or {})
    if unknown:
        log.warning(
            "ignoring unknown %s storage option(s) %s for %s (known: %s)",
            scheme,
            ", ".join(unknown),
            uri,
            ", ".join(known),
        )
    return _REGISTRY[scheme](uri, options or {})


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The most telling error out of a TaskGroup: a permanent StorageError, else any
    StorageError, else the first."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for exc in g.exceptions:
            walk(exc) if isinstance(exc, BaseExceptionGroup) else leaves.append(exc)

    walk(group)
    ours = [exc for exc in leaves if isinstance(exc, StorageError)]
    permanent = [exc for exc in ours if isinstance(exc, PermanentStorageError)]
    return (permanent or ours or leaves)[0]
