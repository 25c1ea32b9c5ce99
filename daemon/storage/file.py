"""``file`` backend: a local or shared folder (NFS, SMB, a mounted bucket).

Every object is written to a temp file beside its final name, hashed while it
is copied, fsynced, then renamed: a reader (another node on NFS included) sees
the whole object or nothing. Blocking file I/O runs in worker threads.

A file the daemon hashed in spans lately (``protocol.hash_file_spans``: more
than 8 MiB) is copied by the kernel instead (``copy_file_range``: a reflink on
XFS or btrfs, a server-side copy on NFS 4.2, an in-kernel copy on ext4), and the
copy is read back and checked against the CRC-32 of each span taken when it was
hashed: no second SHA-256, no copy through this process (256 MiB on ext4: 154
ms of CPU instead of 223). Where the kernel cannot copy between the two
(another filesystem), it is read, hashed and written here, as any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import itertools
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from artisync.protocol import SpanCrcs, drop_cached, run_piece, run_steps, spans_of

from .base import (
    AccessDenied,
    IntegrityError,
    NotFound,
    ObjectInfo,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    check_key,
    parse_uri,
    register,
)

CHUNK = 1024 * 1024
PIECE = 8 * CHUNK  # copied or read per piece of work (see protocol._pieces)
# copy_file_range between these two cannot be done by the kernel: copied here instead
_NO_KERNEL_COPY = (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
T = TypeVar("T")


class FileStorage:
    scheme: ClassVar[str] = "file"
    head_before_put: ClassVar[int] = 0  # a stat: always cheaper than writing the object

    def __init__(self, root: Path | str, *, max_concurrency: int = 8, fsync: bool = True) -> None:
        self.root = Path(root)
        self.uri = str(self.root)
        self.max_concurrency = max_concurrency
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        check_key(key)
        path = self.root / key
        # belt and braces: a key can never resolve outside the root
        if os.path.commonpath(
            [os.path.normpath(path), os.path.normpath(self.root)]
        ) != os.path.normpath(self.root):
            raise PermanentStorageError(f"key {key!r} escapes the storage root", key=key)
        return path

    async def _run(self, op: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except StorageError:
            raise
        except FileNotFoundError as exc:
            if op == "put":  # the folder itself vanished (an unmounted share): it may return
                raise TransientStorageError(
                    f"storage folder unreachable: {exc.strerror}", op=op, key=key, backend=self.uri
                ) from exc
            raise NotFound(
                f"no such object: {exc.strerror}", op=op, key=key, backend=self.uri
            ) from exc
        except PermissionError as exc:
            raise AccessDenied(
                f"permission denied: {exc.strerror}",
                op=op,
                key=key,
                backend=self.uri,
                hint="check the folder's owner and mode",
            ) from exc
        except OSError as exc:
            if exc.errno in (
                errno.ENOSPC,
                errno.EDQUOT,
                errno.EROFS,
                errno.ENOTDIR,
                errno.EISDIR,
                errno.ENAMETOOLONG,
                errno.ELOOP,
            ):
                raise PermanentStorageError(
                    f"{exc.strerror}",
                    op=op,
                    key=key,
                    backend=self.uri,
                    hint="check the destination folder: free space, mount, path",
                ) from exc
            # ESTALE, EIO, ETIMEDOUT on network filesystems: may heal
            raise TransientStorageError(
                f"{exc.strerror or exc}", op=op, key=key, backend=self.uri
            ) from exc

    def _write_atomic(self, path: Path, fill: Callable[[Any], str]) -> str:
        # Every step goes through one descriptor of the target folder: if the path to
        # it changes meanwhile (an unmounted share, a replaced symlink), the temp file
        # is still renamed or removed where it was created, never left behind.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = f".{path.name}.{secrets.token_hex(6)}.tmp"
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # read-write: a copy made by the kernel is read back to be checked
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as out:
                    digest = fill(out)
                    out.flush()
                    if self.fsync:  # its writeback: a piece of work (protocol._pieces)
                        run_piece(functools.partial(os.fsync, out.fileno()))
                        drop_cached(out.fileno())  # see protocol._page_cache
                os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
            if self.fsync:
                os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return digest

    async def put(self, key: str, src: Path, *, size: int, sha256: str) -> ObjectInfo:
        path = self._path(key)
        spans = spans_of(sha256, size)  # see the module's docstring

        def copy(out: Any) -> str:
            if spans is not None and self._kernel_copy(key, src, out.fileno(), size, spans):
                return sha256
            h = hashlib.sha256()
            n = 0
            with open(src, "rb") as f:

                def step() -> bool:  # see protocol._pieces
                    nonlocal n
                    chunk = f.read(CHUNK)
                    h.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
                    return bool(chunk)

                run_steps(step)
            digest = h.hexdigest()
            if digest != sha256 or n != size:
                raise self._mismatch(key, f"source does not match: sha256 {digest}, size {n}")
            return digest

        await self._run("put", key, lambda: self._write_atomic(path, copy))
        return ObjectInfo(key, size, sha256)

    def _mismatch(self, key: str, message: str) -> IntegrityError:
        """What a put raises when the bytes are not those it was asked to store."""
        return IntegrityError(message, op="put", key=key, backend=self.uri)

    def _kernel_copy(
        self, key: str, src: Path, out: int, size: int, spans: tuple[int, ...]
    ) -> bool:
        """Copy ``src`` into ``out`` in the kernel, then check the copy's spans against
        ``spans``; False, nothing written, where the kernel cannot copy between them."""
        copied = 0
        with open(src, "rb") as f:

            def copy() -> bool:  # a step of PIECE bytes: see protocol._pieces
                nonlocal copied
                n = os.copy_file_range(f.fileno(), out, min(PIECE, size - copied))
                copied += n
                return n > 0 and copied < size  # n == 0: shorter than hashed (see below)

            try:
                run_steps(copy)
            except OSError as exc:
                if copied or exc.errno not in _NO_KERNEL_COPY:
                    raise
                return False
        crcs, buf, got = SpanCrcs(), bytearray(CHUNK * 4), 0

        def check() -> bool:  # read back, a step at a time
            nonlocal got
            n = os.preadv(out, [buf], got)
            crcs.update(memoryview(buf)[:n])
            got += n
            return n > 0

        run_steps(check)
        if got != size:
            raise self._mismatch(key, f"source does not match: {got} bytes, expected {size}")
        for i, (crc, want) in enumerate(zip(crcs.crcs(), spans, strict=True)):
            if crc != want:
                raise self._mismatch(key, f"span {i + 1} changed since the file was hashed")
        return True

    async def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> ObjectInfo:
        path = self._path(key)
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256.lower():
            raise self._mismatch(key, f"data sha256 is {digest}, expected {sha256}")

        def write(out: Any) -> str:
            out.write(data)
            return digest

        await self._run("put", key, lambda: self._write_atomic(path, write))
        return ObjectInfo(key, len(data), digest)

    async def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)

        def stat() -> ObjectInfo | None:
            try:
                st = path.stat()
            except FileNotFoundError:
                return None
            return ObjectInfo(key, st.st_size, None, st.st_mtime)

        return await self._run("head", key, stat)

    async def get(self, key: str, target: Path) -> ObjectInfo:
        path = self._path(key)

        def copy() -> ObjectInfo:
            h = hashlib.sha256()
            n = 0
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
            try:
                with open(path, "rb") as f, open(tmp, "xb") as out:
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        n += len(chunk)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return ObjectInfo(key, n, h.hexdigest())

        return await self._run("get", key, copy)

    async def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        return await self._run("get", key, path.read_bytes)

    async def list(self, prefix: str, *, page_size: int | None = None) -> AsyncIterator[ObjectInfo]:
        # The prefix may end inside a name ("projects/a" matches "projects/ab/..."):
        # walk from its directory part and filter. The walk is lazy and in key order
        # (a folder sorts as its name plus "/"), read a page at a time: a folder of a
        # million objects costs a page of memory, not a million keys.
        base_dir, _, _ = prefix.rpartition("/")
        keys = _walk(self.root, base_dir, prefix)
        step = page_size or 1000

        def page() -> tuple[list[ObjectInfo], bool]:
            taken = list(itertools.islice(keys, step))
            out = []
            for key in taken:
                try:
                    st = os.stat(os.path.join(self.root, key))
                except FileNotFoundError:
                    continue  # deleted since the walk saw it
                out.append(ObjectInfo(key, st.st_size, None, st.st_mtime))
            return out, len(taken) < step

        while True:
            found, last = await self._run("list", prefix, page)
            for info in found:
                yield info
            if last:
                return

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await self._run("delete", key, lambda: path.unlink(missing_ok=True))

    async def delete_many(self, keys: Sequence[str]) -> None:
        paths = [self._path(k) for k in keys]  # every key checked before any goes

        def remove() -> None:
            for path in paths:
                path.unlink(missing_ok=True)

        if paths:
            await self._run("delete", keys[0], remove)

    async def abort_incomplete(self, key: str, *, size: int | None, started: float) -> int:
        """Remove the temp files of ``key`` older than ``started`` (those of a writer
        killed before its rename); a younger one may be another node's, still growing
        on a shared folder. An unreachable folder removes nothing: the upload says why."""
        folder = key.endswith("/")
        path = self._path(key.rstrip("/"))
        stem = "." if folder else f".{path.name}."  # a folder: every temp file in it

        def remove() -> int:
            removed = 0
            try:
                with os.scandir(path if folder else path.parent) as entries:
                    for entry in entries:
                        if entry.name.startswith(stem) and entry.name.endswith(".tmp"):
                            with contextlib.suppress(FileNotFoundError):
                                if entry.stat(follow_symlinks=False).st_mtime < started:
                                    os.unlink(entry.path)
                                    removed += 1
            except OSError:
                pass
            return removed

        return await asyncio.to_thread(remove)

    async def aclose(self) -> None:
        return None


def _factory(uri: str, options: Mapping[str, Any]) -> FileStorage:
    _, root, _ = parse_uri(uri)
    return FileStorage(
        root,
        max_concurrency=int(options.get("concurrency", 8)),
        fsync=bool(options.get("fsync", True)),
    )


def _walk(root: Path, rel_dir: str, prefix: str) -> Iterator[str]:
    """The keys under ``root/rel_dir`` starting with ``prefix``, in key order."""
    try:
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return
    for sort_name, entry in sorted(entries, key=lambda pair: pair[0]):
        key = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        if sort_name.endswith("/"):
            if prefix.startswith(key + "/") or (key + "/").startswith(prefix):
                yield from _walk(root, key, prefix)
        elif not (entry.name.startswith(".") and entry.name.endswith(".tmp")):  # a write
            if key.startswith(prefix):
                yield key


OPTIONS = ("concurrency", "fsync")
register("file", _factory, OPTIONS)
