"""The storage interface every backend implements, its errors, and the registry.

A backend is selected by URI scheme: ``/path`` or ``file:///path`` (a local or
shared folder), ``s3://bucket/prefix``, ``gs://bucket/prefix``,
``azure://container/prefix``. Keys are relative, ``/``-separated, and already
safe (see :mod:`artisync.protocol._layout`); a backend joins them under its
prefix and must refuse a key that would escape it.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import urlsplit

from artisync.protocol import (
    AccessDenied,
    IntegrityError,
    NotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
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
    "open_storage",
    "parse_uri",
    "register",
]


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None  # when the backend stored or can report it
    modified: float | None = None  # seconds since the epoch


@runtime_checkable
class Storage(Protocol):
    """Five data-path operations plus small-object helpers; all idempotent.

    Errors: every method raises only :class:`StorageError` subclasses —
    :class:`TransientStorageError` for what a retry may fix (connection,
    timeout, 5xx, throttling), :class:`PermanentStorageError` otherwise
    (:class:`NotFound`, :class:`AccessDenied`, :class:`IntegrityError`).
    Cancellation propagates untouched.
    """

    scheme: ClassVar[str]
    uri: str  # the destination, without credentials
    max_concurrency: int  # uploads worth running at once against this backend
    atomic_put: bool  # a reader never sees a partial object under its final key

    async def put(self, key: str, src: Path, *, size: int, sha256: str) -> ObjectInfo:
        """Upload the file ``src`` to ``key``; the backend verifies ``sha256``
        (natively, or by hashing while it streams) and raises
        :class:`IntegrityError` on a mismatch. Safe to retry: ``src`` is re-read."""
        ...

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Upload a small object (records, listings) held in memory."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Size (and hash where known) of ``key``, or None if it does not exist."""
        ...

    async def get(self, key: str, dest: Path) -> ObjectInfo:
        """Stream ``key`` into the file ``dest`` (written atomically).

        :raises NotFound: the key does not exist."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """Read a small object whole. :raises NotFound:"""
        ...

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, paging as needed."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is success."""
        ...

    async def aclose(self) -> None:
        """Release clients and connection pools."""
        ...


Factory = Callable[[str, Mapping[str, Any]], Storage]
_REGISTRY: dict[str, Factory] = {}
_MODULES = {"file": "file", "s3": "s3", "gs": "gs", "azure": "azure"}


def register(scheme: str, factory: Factory) -> None:
    if scheme in _REGISTRY:
        raise RuntimeError(f"storage scheme {scheme!r} registered twice")
    _REGISTRY[scheme] = factory


def parse_uri(uri: str) -> tuple[str, str, str]:
    """``uri`` -> (scheme, bucket-or-root, prefix). A bare path is ``file``."""
    if not uri or not isinstance(uri, str):
        raise ValueError("storage URI must be a non-empty string")
    if "://" not in uri:
        if not uri.startswith("/"):
            raise ValueError(f"storage path {uri!r} must be absolute (or a URI)")
        return "file", uri, ""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in _MODULES:
        raise ValueError(
            f"unknown storage scheme {scheme!r} in {uri!r}; "
            f"use one of: {', '.join(sorted(_MODULES))}"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} must be file:///absolute/path")
        return "file", parts.path, ""
    if not parts.netloc:
        raise ValueError(f"storage URI {uri!r} has no bucket or container")
    return scheme, parts.netloc, parts.path.strip("/")


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


def open_storage(uri: str, options: Mapping[str, Any] | None = None) -> Storage:
    """Build the backend for ``uri``; imports its module (and cloud client) lazily."""
    scheme, _, _ = parse_uri(uri)
    if scheme not in _REGISTRY:
        importlib.import_module(f"artisync.daemon.storage.{_MODULES[scheme]}")
    return _REGISTRY[scheme](uri, options or {})
