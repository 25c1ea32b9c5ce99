"""``azure`` backend: Azure Blob Storage via ``azure.storage.blob.aio``.

URI ``azure://container/prefix``. Credentials, first match wins: the options
``connection_string``; ``account_url`` (with ``account_key``/``sas_token`` if
given); ``account_name`` with ``account_key`` or ``sas_token``; then the
variables ``AZURE_STORAGE_CONNECTION_STRING``, else ``AZURE_STORAGE_ACCOUNT`` with
``AZURE_STORAGE_KEY`` or ``AZURE_STORAGE_SAS_TOKEN``. ``api_version`` (or
``AZURE_STORAGE_API_VERSION``) pins the service version (Azurite needs it).

Integrity: every request body carries a transactional Content-MD5 the service
verifies (``Md5Mismatch`` -> :class:`IntegrityError`): the whole blob for small
objects, each staged block for large ones. Blocks are read from disk in order,
hashing the whole file as they go, and the block list is committed only when
the file's SHA-256 and size match, so a reader never sees a partial or wrong
blob (uncommitted blocks are discarded by the service).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobServiceClient, ContainerClient, LinearRetry

from ._common import (
    AtomicDownload,
    MiB,
    Prefix,
    check_source,
    first_error,
    opt_int,
    opt_str,
    parse_retry_after,
    read_range,
    retry_part,
    verify_download,
)
from .base import (
    AccessDenied,
    IntegrityError,
    NotFound,
    ObjectInfo,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    parse_uri,
    register,
)

OCTET = "application/octet-stream"
_INTEGRITY = {"Md5Mismatch", "Crc64Mismatch", "InvalidMd5"}
_TRANSIENT = {"ServerBusy", "OperationTimedOut", "InternalError"}
_CONTAINER_MISSING = {"ContainerNotFound", "ContainerBeingDeleted"}


class AzureStorage:
    """An Azure Blob container (and optional prefix).

    :param container: container name.
    :param prefix: keys are stored under ``prefix/``.
    :param client_args: how to build the ``BlobServiceClient`` (see :func:`_client_args`).
    :param account: account name, for messages only.
    :param part_size: block size for large uploads.
    :param multipart_threshold: files of at least this size are staged in blocks.
    :param max_concurrency: uploads worth running at once.
    :param part_concurrency: blocks in flight per upload.
    :param list_page_size: blobs per LIST request.
    """

    scheme: ClassVar[str] = "azure"
    atomic_put = True

    def __init__(self, container: str, prefix: str = "", *, client_args: Mapping[str, Any],
                 account: str = "", part_size: int = 8 * MiB,
                 multipart_threshold: int = 16 * MiB, max_concurrency: int = 16,
                 part_concurrency: int = 4, list_page_size: int = 1000) -> None:
        self.container = container
        self._prefix = Prefix(prefix)
        self.uri = f"azure://{container}/{self._prefix.prefix}".rstrip("/")
        self.account = account
        self.part_size = part_size
        self.multipart_threshold = max(multipart_threshold, 1)
        self.max_concurrency = max_concurrency
        self.part_concurrency = part_concurrency
        self.list_page_size = list_page_size
        self._client_args = dict(client_args)
        self._container: ContainerClient | None = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    # -- plumbing -------------------------------------------------------------------------

    async def _cc(self) -> ContainerClient:
        if self._container is None:
            async with self._lock:
                if self._container is None:
                    await self._open()
        assert self._container is not None
        return self._container

    async def _open(self) -> None:
        args = dict(self._client_args)
        if not args:
            raise AccessDenied("no Azure credentials found", backend=self.uri,
                               hint="set AZURE_STORAGE_CONNECTION_STRING, or "
                                    "AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or "
                                    "AZURE_STORAGE_SAS_TOKEN, or the equivalent options")
        common = {
            # our RetryingStorage does the rest; layered retries multiply
            "retry_policy": LinearRetry(backoff=0.5, random_jitter_range=0.25, retry_total=1),
            "connection_timeout": 10, "read_timeout": 60,
            "max_single_put_size": max(self.multipart_threshold, 64 * MiB),
        }
        conn = args.pop("connection_string", None)
        if conn:
            service = BlobServiceClient.from_connection_string(conn, **common, **args)
        else:
            service = BlobServiceClient(**common, **args)
        stack = AsyncExitStack()
        await stack.enter_async_context(service)
        self._stack = stack
        self._container = service.get_container_client(self.container)

    async def aclose(self) -> None:
        stack, self._stack, self._container = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc, op, key) from exc

    def _translate(self, exc: Exception, op: str, key: str) -> StorageError:
        ctx = {"op": op, "key": key, "backend": self.uri}
        if isinstance(exc, HttpResponseError):
            return self._translate_status(exc, ctx)
        if isinstance(exc, ServiceRequestError):  # the request did not get out
            return TransientStorageError(f"cannot connect to the endpoint ({_short(exc)})",
                                         **ctx)
        if isinstance(exc, ServiceResponseError | AzureError | aiohttp.ClientError
                      | TimeoutError | OSError):
            return TransientStorageError(f"{type(exc).__name__}: {_short(exc)}", **ctx)
        if isinstance(exc, ValueError):  # bad connection string, bad account URL
            return PermanentStorageError(f"invalid Azure configuration: {_short(exc)}", **ctx)
        return TransientStorageError(f"unexpected {type(exc).__name__}: {_short(exc)}", **ctx)

    def _translate_status(self, exc: HttpResponseError, ctx: dict[str, str]) -> StorageError:
        code = str(getattr(exc.error_code, "value", exc.error_code) or "")
        status = int(exc.status_code or 0)
        text = f"{code or status}"
        if code in _CONTAINER_MISSING:
            return AccessDenied(f"container {self.container!r} does not exist", **ctx,
                                hint="create the container or fix the URI")
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            return NotFound(f"no such blob ({text})", **ctx)
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            return AccessDenied(f"access denied ({text})", **ctx,
                                hint="check credentials (account key, SAS token or connection "
                                     "string) and the container's permissions")
        if code in _INTEGRITY:
            return IntegrityError(f"checksum rejected by the service ({text})", **ctx)
        if code in _TRANSIENT or status in (408, 429) or status >= 500:
            headers = exc.response.headers if exc.response is not None else {}
            return TransientStorageError(text, retry_after=parse_retry_after(
                headers.get("Retry-After")), **ctx)
        if 400 <= status < 500:
            return PermanentStorageError(f"{text}: {_short(exc)}", **ctx)
        return TransientStorageError(text, **ctx)

    # -- data path ------------------------------------------------------------------------

    async def put(self, key: str, src: Path, *, size: int, sha256: str) -> ObjectInfo:
        name = self._prefix.key(key)
        sha256 = sha256.lower()
        actual = (await asyncio.to_thread(os.stat, src)).st_size
        if actual != size:
            raise IntegrityError(f"source has {actual} bytes, expected {size}",
                                 op="put", key=key, backend=self.uri)
        if size >= self.multipart_threshold and size > self.part_size:
            await self._put_blocks(key, name, src, size, sha256)
        else:
            data = await asyncio.to_thread(src.read_bytes)
            check_source(data, size=size, sha256=sha256, key=key, backend=self.uri)
            await self._put_small(key, name, data, sha256)
        return ObjectInfo(key, size, sha256)

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        name = self._prefix.key(key)
        digest = hashlib.sha256(data).hexdigest()
        await self._put_small(key, name, data, digest)
        return ObjectInfo(key, len(data), digest)

    async def _put_small(self, key: str, name: str, data: bytes, sha256: str) -> None:
        settings = ContentSettings(content_type=OCTET,
                                   content_md5=bytearray(hashlib.md5(data).digest()))
        with self._errors("put", key):
            blob = (await self._cc()).get_blob_client(name)
            await blob.upload_blob(data, overwrite=True, validate_content="md5",
                                   metadata={"sha256": sha256}, content_settings=settings)

    async def _put_blocks(self, key: str, name: str, src: Path, size: int,
                          sha256: str) -> None:
        with self._errors("put", key):
            blob = (await self._cc()).get_blob_client(name)
        whole, md5 = hashlib.sha256(), hashlib.md5()
        slots = asyncio.Semaphore(self.part_concurrency)
        blocks: list[BlobBlock] = []

        def read(offset: int, length: int) -> bytes:
            data = read_range(src, offset, length)
            whole.update(data)
            md5.update(data)
            return data

        async def stage(number: int, block_id: str, data: bytes) -> None:
            async def once() -> None:
                with self._errors("put", key):
                    await blob.stage_block(block_id, data, length=len(data),
                                           validate_content="md5")
            try:
                await retry_part(once, backend=self.uri, key=key, part=number)
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as tg:
                for number, offset in enumerate(range(0, size, self.part_size)):
                    await slots.acquire()
                    length = min(self.part_size, size - offset)
                    data = await asyncio.to_thread(read, offset, length)
                    if len(data) != length:
                        raise IntegrityError("source shrank while reading", op="put",
                                             key=key, backend=self.uri)
                    # ids must all have the same length; fixed width, content-free
                    block_id = base64.b64encode(f"{number:08d}".encode()).decode()
                    blocks.append(BlobBlock(block_id))
                    tg.create_task(stage(number, block_id, data))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        if whole.hexdigest() != sha256:
            raise IntegrityError(f"source sha256 is {whole.hexdigest()}, expected {sha256}",
                                 op="put", key=key, backend=self.uri)
        settings = ContentSettings(content_type=OCTET, content_md5=bytearray(md5.digest()))
        with self._errors("put", key):
            await blob.commit_block_list(blocks, metadata={"sha256": sha256},
                                         content_settings=settings)

    async def head(self, key: str) -> ObjectInfo | None:
        name = self._prefix.key(key)
        with self._errors("head", key):
            blob = (await self._cc()).get_blob_client(name)
            try:
                props = await blob.get_blob_properties()
            except ResourceNotFoundError as exc:
                if str(getattr(exc.error_code, "value", exc.error_code)) in _CONTAINER_MISSING:
                    raise
                return None
        return _info(key, props)

    async def get(self, key: str, dest: Path) -> ObjectInfo:
        name = self._prefix.key(key)
        with self._errors("get", key):
            blob = (await self._cc()).get_blob_client(name)
            stream = await blob.download_blob(max_concurrency=1)
            info = _info(key, stream.properties)
            async with AtomicDownload(dest) as out:
                async for chunk in stream.chunks():
                    await out.write(chunk)
                verify_download(out, expected_sha256=info.sha256, expected_size=info.size,
                                key=key, backend=self.uri)
        return ObjectInfo(key, out.size, out.sha256, info.modified)

    async def get_bytes(self, key: str) -> bytes:
        name = self._prefix.key(key)
        with self._errors("get", key):
            blob = (await self._cc()).get_blob_client(name)
            stream = await blob.download_blob(max_concurrency=1)
            data: bytes = await stream.readall()
        return data

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        full = self._prefix.list_prefix(prefix)
        with self._errors("list", prefix):
            pages = (await self._cc()).list_blobs(
                name_starts_with=full, include=["metadata"],
                results_per_page=self.list_page_size).by_page()
        while True:
            with self._errors("list", prefix):
                try:
                    page = await pages.__anext__()
                except StopAsyncIteration:
                    return
                items = [item async for item in page]
            for item in items:
                rel = self._prefix.rel(item.name)
                if rel:
                    yield _info(rel, item)

    async def delete(self, key: str) -> None:
        name = self._prefix.key(key)
        with self._errors("delete", key):
            blob = (await self._cc()).get_blob_client(name)
            try:
                await blob.delete_blob()
            except ResourceNotFoundError as exc:
                if str(getattr(exc.error_code, "value", exc.error_code)) in _CONTAINER_MISSING:
                    raise


def _info(key: str, props: Any) -> ObjectInfo:
    sha256 = (props.metadata or {}).get("sha256")
    modified = props.last_modified.timestamp() if props.last_modified else None
    return ObjectInfo(key, int(props.size), sha256, modified)


def _short(exc: BaseException) -> str:
    # azure messages repeat the whole XML body; keep the first line
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _client_args(options: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Keyword arguments for the service client, and the account name for messages."""
    api = opt_str(options, "api_version", "AZURE_STORAGE_API_VERSION")
    extra: dict[str, Any] = {"api_version": api} if api else {}
    conn = opt_str(options, "connection_string")
    url, account = opt_str(options, "account_url"), opt_str(options, "account_name")
    key, sas = opt_str(options, "account_key"), opt_str(options, "sas_token")
    if not (conn or url or account):  # nothing in the options: the environment
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or None
        account = os.environ.get("AZURE_STORAGE_ACCOUNT") or None
        key = os.environ.get("AZURE_STORAGE_KEY") or None
        sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN") or None
    if conn:
        name = next((p.split("=", 1)[1] for p in conn.split(";")
                     if p.lower().startswith("accountname=")), "")
        return {"connection_string": conn, **extra}, name
    if account and not url:
        url = f"https://{account}.blob.core.windows.net"
    if not url:
        return {}, ""
    credential: Any = None
    if key and account:
        credential = {"account_name": account, "account_key": key}
    elif sas:
        credential = sas
    return {"account_url": url, "credential": credential, **extra}, account or ""


def _factory(uri: str, options: Mapping[str, Any]) -> AzureStorage:
    _, container, prefix = parse_uri(uri)
    client_args, account = _client_args(options)
    return AzureStorage(
        container, prefix, client_args=client_args, account=account,
        part_size=opt_int(options, "part_size", 8 * MiB),
        multipart_threshold=opt_int(options, "multipart_threshold", 16 * MiB),
        max_concurrency=opt_int(options, "concurrency", 16),
        part_concurrency=opt_int(options, "part_concurrency", 4),
        list_page_size=opt_int(options, "list_page_size", 1000))


register("azure", _factory)
