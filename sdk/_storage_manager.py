"""ClearML's StorageManager: files and folders to and from any destination URL.

Uploads go through the spool and the daemon, as artifacts do (see
:mod:`._storage_put`): each file is copied into the spool before the call returns,
so it survives the network being down and this process exiting.
``upload_file(wait_for_upload=True)`` and ``upload_folder`` return once the daemon
has committed every object at its URL (up to ``wait_timeout``, then
``UploadTimeout``; the files stay in the spool and go later);
``wait_for_upload=False`` returns once the file is in the spool. With no daemon
answering and autostart off, a call that waits uploads from this process instead
(retried through transient failures for up to ``wait_timeout``), and one that does
not wait leaves the file in the outbox for the next daemon. ``retries`` is accepted
and ignored: the daemon retries until the object is there.

Everything else runs in this process, with the daemon's backends and ``[storage]``
options (a path, ``file://``, ``s3://``, ``gs://``, ``azure://``; ``http(s)://`` for
downloads), retried through transient failures for up to ``wait_timeout``.
``get_local_copy`` keeps its copies in the local object cache, under
``cache_limit`` together with the artifacts'.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from artisync.protocol import NotFound, Settings, hash_file, load_settings

from . import _cache, _storage_put
from ._reader import Reader, _run
from ._session import Session
from ._storage_fetch import http_get, local_copy

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

        Returns once the file is in the spool (``wait_for_upload=False``) or committed
        at ``remote_url`` by the daemon (``True``).

        :raises ValueError: ``remote_url`` is not an object's URL, or its key has an
            empty, ``.`` or ``..`` segment or enters artisync's own layout.
        :raises UploadFailed: (waiting) the upload failed, or the daemon refused it.
        :raises UploadTimeout: (waiting) not committed within ``wait_timeout``."""
        src = Path(local_file)
        if not src.is_file():
            raise FileNotFoundError(f"no file {local_file}")
        url = _local(remote_url)
        session = Session.get()
        if _storage_put.through_daemon(session, wait_for_upload):
            ((dest, key),) = _storage_put.targets(session, [url])
            _storage_put.put(session, [(src, dest, key)], wait_for_upload, f"upload to {url}")
        else:
            base, key = _split(url)
            _storage_put.checked(base, key, url)
            sha, size = hash_file(src)
            _run(_storage(base).put(key, src, size=size, sha256=sha))
        return remote_url

    @classmethod
    def upload_folder(
        cls,
        local_folder: str,
        remote_url: str,
        match_wildcard: str | None = None,
        retries: int | None = None,
    ) -> str:
        """Every file under ``local_folder`` (matching ``match_wildcard``) to
        ``remote_url/<relative path>``; returns once all are committed there (see
        ``upload_file(wait_for_upload=True)``)."""
        root = Path(local_folder)
        if not root.is_dir():
            raise NotADirectoryError(f"no folder {local_folder}")
        files = sorted(p for p in root.rglob(match_wildcard or "*") if p.is_file())
        base = _local(remote_url).rstrip("/")
        session = Session.get()
        rels = [p.relative_to(root).as_posix() for p in files]
        if _storage_put.through_daemon(session, True):
            found = _storage_put.targets(session, [f"{base}/{rel}" for rel in rels], base)
            puts = [(p, dest, key) for p, (dest, key) in zip(files, found, strict=True)]
            if puts:
                _storage_put.put(session, puts, True, f"upload of {local_folder} to {base}")
            return remote_url
        keys = [_storage_put.checked(base, rel, f"{base}/{rel}") for rel in rels]
        st = _storage(base)

        async def go() -> None:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(p: Path, key: str) -> None:
                async with gate:
                    sha, size = await asyncio.to_thread(hash_file, p)
                    await st.put(key, p, size=size, sha256=sha)

            await asyncio.gather(*(one(p, key) for p, key in zip(files, keys, strict=True)))

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
        """A local copy of the object at ``remote_url`` in the local object cache
        (fetched once; again with ``force_download``). A .zip, .tar, .tar.gz, .tgz,
        .tar.bz2 or .tar.xz is extracted beside it unless ``extract_archive=False``
        (anything else, ``data.csv.gz`` say, is returned as it is)."""
        settings = _settings_once()
        fetch = lambda tmp: _download(remote_url, tmp, settings)  # noqa: E731
        return str(local_copy(remote_url, name, fetch, extract_archive, force_download))

    @classmethod
    def download_file(
        cls,
        remote_url: str,
        local_folder: str | None = None,
        overwrite: bool = False,
        skip_zero_size_check: bool = False,
        silence_errors: bool = False,
    ) -> str | None:
        """The object into ``local_folder`` (default: here) under its own name; an
        existing file is kept unless ``overwrite``. ``silence_errors``: None on failure."""
        folder = Path(local_folder or ".")
        target = folder / Path(remote_url.rstrip("/")).name
        if target.exists() and not overwrite:
            return str(target)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _download(remote_url, target, _settings_once())
        except Exception:
            if silence_errors:
                return None
            raise
        return str(target)

    @classmethod
    def download_folder(
        cls,
        remote_url: str,
        local_folder: str | None = None,
        match_wildcard: str | None = None,
        overwrite: bool = False,
        skip_zero_size_check: bool = False,
        silence_errors: bool = False,
        max_workers: int | None = None,
    ) -> str:
        """Every object under ``remote_url`` whose path below it matches ``match_wildcard``
        (all when None) into ``local_folder``, by that path; files there are kept
        unless ``overwrite``."""
        st = _storage(_local(remote_url).rstrip("/"))
        out = Path(local_folder or ".").resolve()
        top = str(out)

        async def go() -> None:
            gate = asyncio.Semaphore(max_workers or CONCURRENCY)

            async def one(key: str) -> None:
                target = _inside(top, key)
                if not overwrite and await asyncio.to_thread(os.path.exists, target):
                    return
                await asyncio.to_thread(os.makedirs, os.path.dirname(target), exist_ok=True)
                async with gate:
                    try:
                        await st.get(key, Path(target))
                    except Exception:
                        if not silence_errors:
                            raise

            keys = [
                info.key
                async for info in st.list("")
                if match_wildcard is None or fnmatch.fnmatchcase(info.key, match_wildcard)
            ]
            await asyncio.gather(*(one(k) for k in keys))

        _run(go())
        return str(out)

    @classmethod
    def list(
        cls, remote_url: str, return_full_path: bool = False, with_metadata: bool = False
    ) -> list[Any]:
        base = _local(remote_url).rstrip("/")
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
        base, key = _split(_local(remote_url))
        return _run(_storage(base).head(key)) is not None

    @classmethod
    def get_file_size_bytes(cls, remote_url: str, silence_errors: bool = False) -> int | None:
        base, key = _split(_local(remote_url))
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


_settings: Settings | None = None


def _settings_once() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
        _cache.limit = _settings.cache_limit
    return _settings


def _storage(uri: str) -> Any:
    """The backend for ``uri``, retrying transient failures for up to ``wait_timeout``."""
    from artisync.daemon.storage.retry import STORAGE_RETRY, RetryingStorage

    settings = _settings_once()
    inner = Reader(settings).storage(uri)
    return RetryingStorage(inner, replace(STORAGE_RETRY, max_elapsed=settings.wait_timeout))


def _local(uri: str) -> str:
    """A URL as it is; a path made absolute, with its "." and empty segments dropped
    but never its "..": an upload refuses those (a path must not climb out)."""
    if "://" in uri:
        return uri
    path = os.path.join(os.getcwd(), os.path.expanduser(uri))
    return "/" + "/".join(s for s in path.split("/") if s not in ("", "."))


def _download(url: str, target: Path, settings: Settings) -> None:
    if url.startswith(("http://", "https://")):
        _run(http_get(url, target, settings.wait_timeout))
        return
    base, key = _split(_local(url))
    _run(_storage(base).get(key, target))
