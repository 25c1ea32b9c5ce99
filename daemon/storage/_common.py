"""What the cloud backends (s3, gs, azure) share: the ``put`` template and error
mapping hook (:class:`CloudStorage`), keys under a prefix, parallel part uploads
from disk, option parsing, checksum encodings, Retry-After, atomic downloads."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar

from .base import (
    IntegrityError,
    ObjectInfo,
    StorageError,
    TransientStorageError,
    check_key,
    first_error,
)
from .retry import Backoff, RetryPolicy, retry_transient

log = logging.getLogger("artisync.daemon.storage")

MiB = 1024 * 1024
DELETES_IN_FLIGHT = 32  # single deletes at once, where the service has no batch
# one part (block, chunk) of a large upload, retried alone inside one put, so that a
# flaky network never re-sends finished parts: 4 tries, 0.4 s doubling to 5 s
PART_RETRY = RetryPolicy(
    initial=0.4, max_delay=5.0, max_elapsed=None, max_attempts=4, max_retry_after=30.0
)


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
        return name[len(self._head) :] if name.startswith(self._head) else None


class CloudStorage:
    """Base of the cloud backends: ``put``/``put_bytes`` pick the small or the large
    path, and ``_errors`` turns a client library's exceptions into ours, once."""

    uri: str
    part_size: int
    multipart_threshold: int
    _prefix: Prefix
    # False where the server itself verifies the SHA-256 of a small body (S3)
    hash_small_locally: ClassVar[bool] = True
    # the service's limit on parts per object (S3 10,000 parts; Azure 50,000 blocks)
    max_parts: int | None = None
    head_before_put: ClassVar[int] = MiB  # smaller objects are sent without a HEAD first
    # whether _upload_parts also computes the whole file's MD5 (Azure's Content-MD5)
    whole_md5: ClassVar[bool] = False

    def part_size_for(self, size: int) -> int:
        """``part_size``, grown (in whole MiB) when ``size`` would need more parts than
        the service allows: the default 8 MiB parts would cap S3 objects at ~78 GiB."""
        if self.max_parts is None or -(-size // self.part_size) <= self.max_parts:
            return self.part_size
        return -(-size // (self.max_parts * MiB)) * MiB

    def _translate(self, exc: Exception, op: str, key: str) -> StorageError:
        raise NotImplementedError

    @contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc, op, key) from exc

    async def _put_small(self, key: str, name: str, data: bytes, sha256: str) -> None:
        raise NotImplementedError

    async def _put_large(self, key: str, name: str, src: Path, size: int, sha256: str) -> None:
        raise NotImplementedError

    async def put(self, key: str, src: Path, *, size: int, sha256: str) -> ObjectInfo:
        name = self._prefix.key(key)
        sha256 = sha256.lower()
        if size >= self.multipart_threshold and size > self.part_size:
            actual = (await asyncio.to_thread(os.stat, src)).st_size
            if actual != size:
                raise self._integrity(f"source has {actual} bytes, expected {size}", key)
            await self._put_large(key, name, src, size, sha256)
        else:

            def read() -> tuple[bytes, str | None]:  # hashing stays off the event loop
                data = src.read_bytes()
                return data, hashlib.sha256(data).hexdigest() if self.hash_small_locally else None

            data, digest = await asyncio.to_thread(read)  # one hop: a folder is many of these
            if len(data) != size:
                raise self._integrity(f"source has {len(data)} bytes, expected {size}", key)
            if digest is not None and digest != sha256:
                raise self._integrity(f"source sha256 is {digest}, expected {sha256}", key)
            await self._put_small(key, name, data, sha256)
        return ObjectInfo(key, size, sha256)

    async def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> ObjectInfo:
        name = self._prefix.key(key)
        if sha256 is None or self.hash_small_locally:
            digest = hashlib.sha256(data).hexdigest()
            if sha256 is not None and digest != sha256.lower():
                raise self._integrity(f"data sha256 is {digest}, expected {sha256}", key)
        else:  # the server checks the body against it
            digest = sha256.lower()
        await self._put_small(key, name, data, digest)
        return ObjectInfo(key, len(data), digest)

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def delete_many(self, keys: Sequence[str]) -> None:
        """One request per key, :data:`DELETES_IN_FLIGHT` at a time (backends with a
        batch request override this)."""
        gate = asyncio.Semaphore(DELETES_IN_FLIGHT)

        async def one(key: str) -> None:
            async with gate:
                await self.delete(key)

        await asyncio.gather(*(one(k) for k in keys))

    def _integrity(self, message: str, key: str, op: str = "put") -> IntegrityError:
        return IntegrityError(message, op=op, key=key, backend=self.uri)

    async def _upload_parts(
        self,
        key: str,
        src: Path,
        size: int,
        concurrency: int,
        send: Callable[[int, memoryview], Awaitable[None]],
        *,
        whole_sha256: bool = True,
    ) -> tuple[str, bytes]:
        """Read ``src`` in parts (of :meth:`part_size_for`), in order, hashing the whole
        file on the way, and ``send(number, data)`` them (numbered from 1),
        ``concurrency`` at a time, each retried alone. Returns the file's SHA-256 (hex;
        empty without ``whole_sha256``, where the caller checks each part against the
        hashing pass's CRC-32s instead) and, where :attr:`whole_md5`, its MD5 (raw; else
        empty): MD5 is the slowest hash here, computed only if needed.

        Memory: ``concurrency`` buffers of one part each, reused from part to part
        (``data`` is a view of one, valid until ``send`` returns). Allocating a fresh
        part each time let the allocator keep every freed one, in every thread's arena:
        the daemon grew by a part per thread over a long upload."""
        sha = hashlib.sha256() if whole_sha256 else None
        md5 = hashlib.md5() if self.whole_md5 else None
        slots = asyncio.Semaphore(concurrency)
        part_size = self.part_size_for(size)
        free: list[bytearray] = []

        def read(offset: int, length: int, buf: bytearray) -> memoryview:
            view = memoryview(buf)[:length]
            got = 0
            with open(src, "rb") as f:
                f.seek(offset)
                while got < length and (n := f.readinto(view[got:])):
                    got += n
            data = view[:got]
            if sha is not None:
                sha.update(data)
            if md5 is not None:
                md5.update(data)
            return data

        async def one(number: int, data: memoryview, buf: bytearray) -> None:
            def report(backoff: Backoff, exc: TransientStorageError, delay: float) -> None:
                fields = {"backend": self.uri, "key": key, "part": number}
                log.warning(
                    "part upload failed, retrying the part in %.2fs: %s",
                    delay,
                    exc,
                    extra={**fields, "attempt": backoff.failures},
                )

            try:
                await retry_transient(PART_RETRY, lambda _: send(number, data), on_retry=report)
            finally:
                free.append(buf)
                slots.release()

        try:
            async with asyncio.TaskGroup() as tg:
                for number, offset in enumerate(range(0, size, part_size), start=1):
                    await slots.acquire()
                    length = min(part_size, size - offset)
                    buf = free.pop() if free else bytearray(part_size)
                    data = await asyncio.to_thread(read, offset, length, buf)
                    if len(data) != length:
                        raise self._integrity("source shrank while reading", key)
                    tg.create_task(one(number, data, buf))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        digest = sha.hexdigest() if sha is not None else ""
        return digest, md5.digest() if md5 is not None else b""


def opt_int(options: Mapping[str, Any], name: str, default: int, *, minimum: int = 1) -> int:
    value = options.get(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"storage option {name!r} must be an integer, not {value!r}") from None
    if number < minimum:
        raise ValueError(f"storage option {name!r} must be >= {minimum}, not {number}")
    return number


def transfer_options(options: Mapping[str, Any], *, parts: bool = True) -> dict[str, int]:
    """The tuning every cloud backend reads, with its defaults, as constructor keywords
    (``parts=False``: without ``part_concurrency``, for a backend that has none)."""
    tuning = {
        "part_size": opt_int(options, "part_size", 8 * MiB),
        "multipart_threshold": opt_int(options, "multipart_threshold", 16 * MiB),
        "max_concurrency": opt_int(options, "concurrency", 32),
        "list_page_size": opt_int(options, "list_page_size", 1000),
    }
    if parts:
        tuning["part_concurrency"] = opt_int(options, "part_concurrency", 4)
    return tuning


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


class AtomicDownload:
    """Write a download to a temp file beside ``target``, hashing it; rename on success.

    ``async with AtomicDownload(target) as out: await out.write(chunk)``, then
    ``out.sha256`` and ``out.size``; call :func:`verify_download` inside the block.
    """

    def __init__(self, target: Path) -> None:
        self.target = Path(target)
        self.tmp = self.target.with_name(f".{self.target.name}.{secrets.token_hex(6)}.tmp")
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self.size = 0

    def _open(self) -> IO[bytes]:
        self.target.parent.mkdir(parents=True, exist_ok=True)
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
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            await asyncio.to_thread(self._finish, True)
        else:  # cancellation included: leave no temp file behind
            self._finish(False)


def verify_download(
    out: AtomicDownload, expected_sha256: str | None, expected_size: int | None, key: str, uri: str
) -> None:
    """Raise before the rename if what arrived is not what the object claims to be."""
    if expected_size is not None and out.size != expected_size:
        message = f"downloaded {out.size} bytes, object has {expected_size}"
    elif expected_sha256 and out.sha256 != expected_sha256.lower():
        message = f"downloaded sha256 {out.sha256}, object records {expected_sha256}"
    else:
        return
    raise IntegrityError(message, op="get", key=key, backend=uri)
