"""Helpers shared by the cloud backends (s3, gs, azure): key joining under a
prefix, option parsing, checksum encodings, Retry-After, and atomic downloads."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import logging
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from .base import (
    IntegrityError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    check_key,
)

log = logging.getLogger("artisync.daemon.storage")
T = TypeVar("T")

CHUNK = 1024 * 1024
MiB = 1024 * 1024


class Prefix:
    """Joins relative keys under a backend's prefix and strips it back off."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self._head = f"{self.prefix}/" if self.prefix else ""

    def key(self, key: str) -> str:
        return self._head + check_key(key)

    def list_prefix(self, prefix: str) -> str:
        # "" lists everything; a prefix may end inside a name or with "/"
        if prefix:
            check_key(prefix)
        return self._head + prefix

    def rel(self, name: str) -> str | None:
        return name[len(self._head):] if name.startswith(self._head) else None


def opt_int(options: Mapping[str, Any], name: str, default: int, *, minimum: int = 1) -> int:
    value = options.get(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"storage option {name!r} must be an integer, not {value!r}") from None
    if number < minimum:
        raise ValueError(f"storage option {name!r} must be >= {minimum}, not {number}")
    return number


def opt_str(options: Mapping[str, Any], name: str, env: str | None = None) -> str | None:
    value = options.get(name)
    if value is None and env:
        value = os.environ.get(env)
    return str(value) if value not in (None, "") else None


def hex_to_b64(hexdigest: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(hexdigest)).decode("ascii")
    except ValueError:
        raise IntegrityError(f"not a hex digest: {hexdigest!r}") from None


def b64_to_hex(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).hex()
    except ValueError:
        return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def check_source(data: bytes, *, size: int, sha256: str, key: str, backend: str) -> None:
    """A small source read whole: its size and SHA-256 must match before it is sent."""
    if len(data) != size:
        raise IntegrityError(f"source has {len(data)} bytes, expected {size}",
                             op="put", key=key, backend=backend)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        raise IntegrityError(f"source sha256 is {digest}, expected {sha256}",
                             op="put", key=key, backend=backend)


class AtomicDownload:
    """Write a download to a temp file beside ``dest``, hashing it; rename on success.

        async with AtomicDownload(dest) as out:
            await out.write(chunk)
            ...
        # out.sha256, out.size
    """

    def __init__(self, dest: Path) -> None:
        self.dest = Path(dest)
        self.tmp = self.dest.with_name(f".{self.dest.name}.{secrets.token_hex(6)}.tmp")
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self.size = 0

    def _open(self) -> IO[bytes]:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        return open(self.tmp, "xb")

    async def __aenter__(self) -> AtomicDownload:
        self._file = await asyncio.to_thread(self._open)
        return self

    async def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._hash.update(chunk)
        self.size += len(chunk)
        await asyncio.to_thread(self._file.write, chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def _finish(self, ok: bool) -> None:
        assert self._file is not None
        self._file.close()
        if ok:
            os.replace(self.tmp, self.dest)
        else:
            self.tmp.unlink(missing_ok=True)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            await asyncio.to_thread(self._finish, True)
        else:  # cancellation included: leave no temp file behind
            self._finish(False)


def verify_download(out: AtomicDownload, *, expected_sha256: str | None,
                    expected_size: int | None, key: str, backend: str) -> None:
    """Raise before the rename if what arrived is not what the object claims to be."""
    if expected_size is not None and out.size != expected_size:
        raise IntegrityError(f"downloaded {out.size} bytes, object has {expected_size}",
                             op="get", key=key, backend=backend)
    if expected_sha256 and out.sha256 != expected_sha256.lower():
        raise IntegrityError(f"downloaded sha256 {out.sha256}, object records {expected_sha256}",
                             op="get", key=key, backend=backend)


PART_ATTEMPTS = 4


async def retry_part(send: Callable[[], Awaitable[T]], *, backend: str, key: str,
                     part: int, attempts: int = PART_ATTEMPTS) -> T:
    """Retry one part (or block, or chunk) of a large upload alone, a few times, so a
    flaky network never makes us re-send the parts that already arrived."""
    for attempt in range(1, attempts + 1):
        try:
            return await send()
        except TransientStorageError as exc:
            if attempt == attempts:
                raise
            delay = max(random.uniform(0, min(5.0, 0.2 * 2 ** attempt)),
                        min(exc.retry_after or 0.0, 30.0))
            log.warning("part upload failed, retrying the part", extra={
                "backend": backend, "key": key, "part": part, "attempt": attempt,
                "delay": round(delay, 3), "error": str(exc)})
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The most telling error out of a TaskGroup: a permanent StorageError, else any
    StorageError, else the first."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for exc in g.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(group)
    for wanted in (PermanentStorageError, StorageError):
        for exc in leaves:
            if isinstance(exc, wanted):
                return exc
    return leaves[0]
