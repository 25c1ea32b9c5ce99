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
the file's SHA-256 matches, so a reader never sees a partial or wrong blob
(uncommitted blocks are discarded by the service).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobServiceClient, ContainerClient, LinearRetry

from ._common import (
    AtomicDownload,
    CloudStorage,
    MiB,
    Prefix,
    opt_str,
    parse_retry_after,
    transfer_options,
    verify_download,
)
from ._http_errors import HttpErrors
from .base import (
    AccessDenied,
    ObjectInfo,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    parse_uri,
    register,
)

OCTET = "application/octet-stream"
_CONTAINER_MISSING = frozenset({"ContainerNotFound", "ContainerBeingDeleted"})
_ERRORS = HttpErrors(
    container_missing="container {name!r} does not exist",
    container_hint="create the container or fix the URI",
    denied_hint="check credentials (account key, SAS token or connection string)",
    thing="blob",
    service="service",
    missing_codes=_CONTAINER_MISSING,
    integrity_codes=frozenset({"Md5Mismatch", "Crc64Mismatch", "InvalidMd5"}),
    transient_codes=frozenset({"ServerBusy", "OperationTimedOut", "InternalError"}),
)
_NO_CREDENTIALS = (
    "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY "
    "or AZURE_STORAGE_SAS_TOKEN, or the equivalent options"
)


class AzureStorage(CloudStorage):
    """An Azure Blob container (and optional prefix).

    :param container: container name.
    :param prefix: keys are stored under ``prefix/``.
    :param client_args: how to build the ``BlobServiceClient`` (see :func:`_client_args`).
    :param part_size: block size for large uploads.
    :param multipart_threshold: files of at least this size are staged in blocks.
    :param max_concurrency: uploads worth running at once.
    :param part_concurrency: blocks in flight per upload.
    :param list_page_size: blobs per LIST request.
    """

    scheme: ClassVar[str] = "azure"
    max_parts = 50_000
    whole_md5: ClassVar[bool] = True  # the blob's Content-MD5, set at commit

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        client_args: Mapping[str, Any],
        part_size: int = 4 * MiB,
        multipart_threshold: int = 16 * MiB,
        max_concurrency: int = 32,
        part_concurrency: int = 4,
        list_page_size: int = 1000,
    ) -> None:
        self.container = container
        self._prefix = Prefix(prefix)
        self.uri = f"azure://{container}/{self._prefix.prefix}".rstrip("/")
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.max_concurrency = max_concurrency
        self.part_concurrency = part_concurrency
        self.list_page_size = list_page_size
        self._client_args = dict(client_args)
        self._container: ContainerClient | None = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

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
            raise AccessDenied("no Azure credentials found", backend=self.uri, hint=_NO_CREDENTIALS)
        args.update(
            # our RetryingStorage does the rest; layered retries multiply
            retry_policy=LinearRetry(backoff=0.5, random_jitter_range=0.25, retry_total=1),  # type: ignore[arg-type]
            connection_timeout=10,
            read_timeout=60,
            max_single_put_size=max(self.multipart_threshold, 64 * MiB),
        )
        conn = args.pop("connection_string", None)
        service = (
            BlobServiceClient.from_connection_string(conn, **args)
            if conn
            else BlobServiceClient(**args)
        )
        stack = AsyncExitStack()
        await stack.enter_async_context(service)
        self._stack = stack
        self._container = service.get_container_client(self.container)

    async def aclose(self) -> None:
        stack, self._stack, self._container = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _translate(self, exc: Exception, op: str, key: str) -> StorageError:
        ctx: dict[str, Any] = {"op": op, "key": key, "backend": self.uri}
        if isinstance(exc, HttpResponseError):
            return self._translate_status(exc, ctx)
        if isinstance(exc, ServiceRequestError):  # the request did not get out
            message = f"cannot connect to the endpoint ({_short(exc)})"
            return TransientStorageError(
                message, **ctx, hint="check the account URL and the network"
            )
        if isinstance(exc, AzureError | aiohttp.ClientError | TimeoutError | OSError):
            return TransientStorageError(f"{type(exc).__name__}: {_short(exc)}", **ctx)
        if isinstance(exc, ValueError):  # a malformed connection string or account URL
            return PermanentStorageError(f"invalid Azure configuration: {_short(exc)}", **ctx)
        return TransientStorageError(f"unexpected {type(exc).__name__}: {_short(exc)}", **ctx)

    def _translate_status(self, exc: HttpResponseError, ctx: dict[str, Any]) -> StorageError:
        code, status = _code(exc), int(exc.status_code or 0)
        text = code or str(status)
        # the SDK's own classes say what its status may not (a mapped error code)
        if isinstance(exc, ResourceNotFoundError):
            status = 404
        elif isinstance(exc, ClientAuthenticationError) and status != 404:
            status = 401
        headers = getattr(exc.response, "headers", None) or {}
        return _ERRORS.error(
            status,
            code,
            text,
            ctx,
            container=self.container,
            retry_after=parse_retry_after(headers.get("Retry-After")),
            detail=_short(exc),
        )

    # -- uploads --------------------------------------------------------------------------

    async def _put_small(self, key: str, name: str, data: bytes, sha256: str) -> None:
        md5 = bytearray(await asyncio.to_thread(lambda: hashlib.md5(data).digest()))
        with self._errors("put", key):
            blob = (await self._cc()).get_blob_client(name)
            await blob.upload_blob(
                data,
                overwrite=True,
                validate_content="md5",  # transactional MD5, checked by the service
                metadata={"sha256": sha256},
                content_settings=ContentSettings(content_type=OCTET, content_md5=md5),
            )

    async def _put_large(self, key: str, name: str, src: Path, size: int, sha256: str) -> None:
        with self._errors("put", key):
            blob = (await self._cc()).get_blob_client(name)

        async def stage(number: int, data: memoryview) -> None:
            block = bytes(data)  # the client reads its body more than once (MD5, retries)
            with self._errors("put", key):
                await blob.stage_block(
                    _block_id(number), block, length=len(block), validate_content="md5"
                )

        digest, md5 = await self._upload_parts(key, src, size, self.part_concurrency, stage)
        if digest != sha256:  # the staged blocks are never committed; the service drops them
            raise self._integrity(f"source sha256 is {digest}, expected {sha256}", key)
        count = -(-size // self.part_size_for(size))
        blocks = [BlobBlock(_block_id(n)) for n in range(1, count + 1)]
        settings = ContentSettings(content_type=OCTET, content_md5=bytearray(md5))
        with self._errors("put", key):
            await blob.commit_block_list(
                blocks, metadata={"sha256": sha256}, content_settings=settings
            )

    # -- reads, listing, deletion ---------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo | None:
        name = self._prefix.key(key)
        with self._errors("head", key):
            blob = (await self._cc()).get_blob_client(name)
            try:
                props = await blob.get_blob_properties()
            except ResourceNotFoundError as exc:
                if _code(exc) in _CONTAINER_MISSING:
                    raise
                return None
        return _info(key, props)

    async def get(self, key: str, target: Path) -> ObjectInfo:
        name = self._prefix.key(key)
        with self._errors("get", key):
            blob = (await self._cc()).get_blob_client(name)
            stream = await blob.download_blob(max_concurrency=1)
            info = _info(key, stream.properties)
            async with AtomicDownload(target) as out:
                async for chunk in stream.chunks():
                    await out.write(chunk)
                verify_download(out, info.sha256, info.size, key, self.uri)
        return ObjectInfo(key, out.size, out.sha256, info.modified)

    async def get_bytes(self, key: str) -> bytes:
        name = self._prefix.key(key)
        with self._errors("get", key):
            blob = (await self._cc()).get_blob_client(name)
            stream = await blob.download_blob(max_concurrency=1)
            data: bytes = await stream.readall()
        return data

    async def list(self, prefix: str, *, page_size: int | None = None) -> AsyncIterator[ObjectInfo]:
        full = self._prefix.list_prefix(prefix)
        with self._errors("list", prefix):
            container = await self._cc()
        pages = container.list_blobs(
            name_starts_with=full,
            include=["metadata"],
            results_per_page=page_size or self.list_page_size,
        ).by_page()
        while True:
            with self._errors("list", prefix):
                try:
                    page = await anext(pages)
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
                if _code(exc) in _CONTAINER_MISSING:
                    raise

    async def delete_many(self, keys: Sequence[str]) -> None:
        """The blob batch API: 256 deletes a request; a missing blob is success."""
        names = [self._prefix.key(k) for k in keys]
        for i in range(0, len(names), 256):
            with self._errors("delete", keys[i]):
                cc = await self._cc()
                replies = await cc.delete_blobs(*names[i : i + 256], raise_on_any_failure=False)
                for n, reply in enumerate([r async for r in replies]):
                    if reply.status_code not in (200, 202, 404):
                        await self.delete(keys[i + n])  # says why, in our words (or works)

    async def abort_incomplete(self, key: str, *, size: int | None, started: float) -> int:
        """Nothing to do: the service discards uncommitted blocks by itself (after a
        week), and they are never visible under the key."""
        return 0


def _block_id(number: int) -> str:
    # every id of a blob must have the same length: fixed width, content-free
    return base64.b64encode(f"{number:08d}".encode()).decode()


def _code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None)  # a StorageErrorCode (a str enum) or a str
    return str(getattr(code, "value", code) or "")


def _info(key: str, props: Any) -> ObjectInfo:
    sha256 = (props.metadata or {}).get("sha256")
    modified = props.last_modified.timestamp() if props.last_modified else None
    return ObjectInfo(key, int(props.size), sha256, modified)


def _short(exc: BaseException) -> str:
    # azure messages repeat the whole XML body; keep the first line
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _client_args(options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the service client, from the options, else the environment."""
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
        return {"connection_string": conn, **extra}
    if account and not url:
        url = f"https://{account}.blob.core.windows.net"
    if not url:
        return {}
    credential: Any = sas
    if key:  # a shared key signs with the account name: take it from the URL if not given
        account = account or _account_in(url)
        if not account:
            raise ValueError("account_key needs account_name (not found in account_url)")
        credential = {"account_name": account, "account_key": key}
    return {"account_url": url, "credential": credential, **extra}


def _account_in(url: str) -> str | None:
    """``https://NAME.blob.core.windows.net`` or an emulator's ``http://host:port/NAME``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0]
    return parts.path.strip("/").split("/", 1)[0] or None


def _factory(uri: str, options: Mapping[str, Any]) -> AzureStorage:
    _, container, prefix = parse_uri(uri)
    return AzureStorage(
        container,
        prefix,
        client_args=_client_args(options),
        # 4 MiB blocks: the client needs each block in flight as bytes of its own (a
        # copy), so 8 MiB ones took the daemon to 159 MiB on a 1 GiB file (111-119 now)
        **transfer_options({"part_size": 4 * MiB, **options}),
    )


OPTIONS = (
    "account_key",
    "account_name",
    "account_url",
    "api_version",
    "concurrency",
    "connection_string",
    "list_page_size",
    "multipart_threshold",
    "part_concurrency",
    "part_size",
    "sas_token",
)
register("azure", _factory, OPTIONS)
