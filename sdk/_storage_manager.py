"""ClearML's StorageManager: files and folders to and from any destination URL.

It uses the storage backends, ``[storage]`` options and credentials of the daemon
and the reader (a path, ``file://``, ``s3://``, ``gs://``, ``azure://``; ``http(s)://``
for downloads), each call retried through network failures as the daemon's are:
``upload_file(wait_for_upload=True)`` with the storage down returns once it is back
(up to ``wait_timeout``, then raises). Unlike artifacts, these go straight to the
URL named, not through the spool: StorageManager's keys are the caller's own, not
the task layout the daemon writes. Downloads land in the local cache, verified
against the size the storage reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from artisync.protocol import NotFound, Settings, TransientStorageError, hash_file, load_settings

from ._cache import cache_root
from ._reader import Reader, _run

CONCURRENCY = 16  # files of a folder in flight


class StorageManager:
    @classmethod
    def upload_file(
        cls,
        local_file: str,
        remote_url: str,
        wait_for_upload: bool = True,
        retries: int | None = None,
    ) -> str:
        """Upload ``local_file`` to ``remote_url`` (the object's own URL); returns it.
        ``wait_for_upload=False`` uploads in a background thread and returns at once."""
        src = Path(local_file)
        if not src.is_file():
            raise FileNotFoundError(f"no file {local_file}")
        base, key = _split(remote_url)

        def go() -> None:
            st = _storage(base)
            data_sha = _sha256(src)
            _run(st.put(key, src, size=src.stat().st_size, sha256=data_sha))

        if wait_for_upload:
            go()
        else:
            threading.Thread(target=go, name="artisync-upload", daemon=False).start()
        return remote_url

    @classmethod
    def upload_folder(
        cls, local_folder: str, remote_url: str, match_wildcard: str | None = None
    ) -> str:
        """Every file under ``local_folder`` to ``remote_url/<relative path>``."""
        root = Path(local_folder)
        if not root.is_dir():
            raise NotADirectoryError(f"no folder {local_folder}")
        files = [(p, p.stat().st_size) for p in root.rglob(match_wildcard or "*") if p.is_file()]
        st = _storage(remote_url.rstrip("/"))

        async def go() -> None:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(p: Path, size: int) -> None:
                async with gate:
                    sha = await asyncio.to_thread(_sha256, p)
                    await st.put(p.relative_to(root).as_posix(), p, size=size, sha256=sha)

            await asyncio.gather(*(one(p, size) for p, size in files))

        _run(go())
        return remote_url

    @classmethod
    def get_local_copy(
        cls,
        remote_url: str,
        cache_context: str | None = None,
        extract_archive: bool = True,
        name: str | None = None,
        force_download: bool = False,
    ) -> str:
        """A local copy of the object at ``remote_url`` in the cache (fetched once;
        again with ``force_download``); a zip or tar is extracted beside it unless
        ``extract_archive=False``."""
        digest = hashlib.sha256(remote_url.encode()).hexdigest()[:32]
        folder = cache_root().parent / "storage" / digest
        target = folder / (name or Path(remote_url.rstrip("/")).name or "object")
        if force_download or not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            _download(remote_url, target)
        if extract_archive and target.suffix in (".zip", ".tar", ".gz", ".tgz"):
            out = folder / (target.name + ".extracted")
            if force_download or not out.exists():
                shutil.rmtree(out, ignore_errors=True)
                shutil.unpack_archive(target, out)
            return str(out)
        return str(target)

    @classmethod
    def download_file(
        cls, remote_url: str, local_folder: str | None = None, overwrite: bool = False, **kw: Any
    ) -> str:
        folder = Path(local_folder or ".")
        target = folder / Path(remote_url.rstrip("/")).name
        if target.exists() and not overwrite:
            return str(target)
        folder.mkdir(parents=True, exist_ok=True)
        _download(remote_url, target)
        return str(target)

    @classmethod
    def download_folder(
        cls, remote_url: str, local_folder: str | None = None, overwrite: bool = False, **kw: Any
    ) -> str:
        """Every object under ``remote_url`` into ``local_folder``, by relative path."""
        st = _storage(remote_url.rstrip("/"))
        out = Path(local_folder or ".").resolve()
        top = str(out)

        async def go() -> None:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(key: str) -> None:
                target = _inside(top, key)
                if not overwrite and await asyncio.to_thread(os.path.exists, target):
                    return
                await asyncio.to_thread(os.makedirs, _parent(target), exist_ok=True)
                async with gate:
                    await st.get(key, Path(target))

            keys = [info.key async for info in st.list("")]
            await asyncio.gather(*(one(k) for k in keys))

        _run(go())
        return str(out)

    @classmethod
    def list(
        cls, remote_url: str, return_full_path: bool = False, with_metadata: bool = False
    ) -> list[Any]:
        base = remote_url.rstrip("/")
        st = _storage(base)

        async def go() -> list[Any]:
            return [info async for info in st.list("")]

        found = _run(go())
        if with_metadata:
            return [
                {"name": f"{base}/{i.key}" if return_full_path else i.key, "size": i.size}
                for i in found
            ]
        return [f"{base}/{i.key}" if return_full_path else i.key for i in found]

    @classmethod
    def exists_file(cls, remote_url: str) -> bool:
        base, key = _split(remote_url)
        return _run(_storage(base).head(key)) is not None

    @classmethod
    def get_file_size_bytes(cls, remote_url: str, silence_errors: bool = False) -> int | None:
        base, key = _split(remote_url)
        info = _run(_storage(base).head(key))
        if info is None:
            if silence_errors:
                return None
            raise NotFound(f"no object at {remote_url}")
        return int(info.size)


def _split(url: str) -> tuple[str, str]:
    base, _, key = url.rstrip("/").rpartition("/")
    if not base or not key or base.endswith(":/"):
        raise ValueError(f"not an object's URL: {url!r} (e.g. s3://bucket/path/file.bin)")
    return base, key


def _inside(top: str, key: str) -> str:
    """Where ``key`` lands under ``top``; a key with ".." or a leading "/" is refused."""
    target = os.path.normpath(os.path.join(top, *key.split("/")))
    if not target.startswith(top + os.sep):
        raise ValueError(f"{key!r} would leave {top}")
    return target


def _parent(path: str) -> str:
    return os.path.dirname(path)


_settings: Settings | None = None


def _storage(uri: str) -> Any:
    """The backend for ``uri``, retrying transient failures for up to ``wait_timeout``."""
    from artisync.daemon.storage.retry import STORAGE_RETRY, RetryingStorage

    global _settings
    if _settings is None:
        _settings = load_settings()
    inner = Reader(_settings).storage(_local(uri))
    return RetryingStorage(inner, replace(STORAGE_RETRY, max_elapsed=_settings.wait_timeout))


def _local(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _download(url: str, target: Path) -> None:
    if url.startswith(("http://", "https://")):
        _run(_http_get(url, target))
        return
    base, key = _split(url)
    st = _storage(base)
    _run(st.get(key, target))


async def _http_get(url: str, target: Path) -> None:
    import aiohttp

    from artisync.daemon.storage.retry import STORAGE_RETRY, Backoff

    backoff = Backoff(STORAGE_RETRY)
    while True:
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                if resp.status == 404:
                    raise NotFound(f"{url}: 404")
                resp.raise_for_status()
                tmp = target.with_name(f".{target.name}.part")
                f = await asyncio.to_thread(open, tmp, "wb")
                try:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        await asyncio.to_thread(f.write, chunk)
                finally:
                    f.close()
                await asyncio.to_thread(os.replace, tmp, target)
                return
        except (aiohttp.ClientError, TimeoutError) as exc:
            delay = backoff.next_delay(TransientStorageError(str(exc), op="get", key=url))
            if delay is None:
                raise ConnectionError(f"{url}: {exc}") from exc
            await asyncio.sleep(delay)


def _sha256(path: Path) -> str:
    return hash_file(path)[0]
