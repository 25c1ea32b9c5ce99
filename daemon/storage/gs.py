"""``gs`` backend: Google Cloud Storage via gcloud-aio-storage (one aiohttp session).

URI ``gs://bucket/prefix``. Credentials: ``GOOGLE_APPLICATION_CREDENTIALS`` (or the
``service_file`` option), else gcloud's defaults / the metadata server.
``STORAGE_EMULATOR_HOST`` (or the ``endpoint_url`` option) points it at an
emulator, without authentication.

Integrity: the source's SHA-256 and size are checked while it is read, before its
last byte is sent, so a mismatch never completes an upload. Small objects go up
in one multipart request carrying ``md5Hash``, which GCS verifies. Large objects
use a resumable session fed in chunks read from disk (bounded memory); a chunk
that fails is resumed from the offset the session reports (see
:mod:`._gs_resumable`). Either way the
``md5Hash`` GCS reports for the finished object is compared with the MD5 computed
locally; a mismatching object is deleted before :class:`IntegrityError` is raised.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp
from gcloud.aio.auth import AioSession, Token
from gcloud.aio.storage import Storage as GCSClient
from gcloud.aio.storage.storage import (
    SCOPES,
    choose_boundary,
    encode_multipart_formdata,
    init_api_root,
)

from ._common import (
    AtomicDownload,
    CloudStorage,
    MiB,
    Prefix,
    opt_str,
    parse_retry_after,
    read_range,
    transfer_options,
    verify_download,
)
from ._gs_resumable import JSON, OCTET, TIMEOUT, Resource, ResumableUpload
from ._http_errors import HttpErrors
from .base import (
    NotFound,
    ObjectInfo,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    parse_uri,
    register,
)

GRANULE = 256 * 1024  # resumable chunks must be multiples of this (all but the last)
_LIB_TIMEOUT: Any = TIMEOUT  # gcloud-aio annotates an int, passes it on to aiohttp
_NO_BUCKET, _HASH_MISMATCH = "no bucket", "hash mismatch"  # our names (see _translate_status)
_ERRORS = HttpErrors(
    container_missing="bucket {name!r} does not exist ({text})",
    container_hint="create the bucket or fix the URI",
    denied_hint="check credentials (GOOGLE_APPLICATION_CREDENTIALS or service_file)",
    missing_codes=frozenset({_NO_BUCKET}),
    integrity_codes=frozenset({_HASH_MISMATCH}),
    unclassified=PermanentStorageError,
)


class GSStorage(CloudStorage):
    """A GCS bucket (and optional prefix).

    :param bucket: bucket name.
    :param prefix: keys are stored under ``prefix/``.
    :param endpoint_url: an emulator or private endpoint (requests are not authenticated);
        default: ``STORAGE_EMULATOR_HOST``, else Google's API.
    :param service_file: service-account JSON file (default: the standard chain).
    :param part_size: resumable chunk size, rounded down to a multiple of 256 KiB.
    :param multipart_threshold: files of at least this size use a resumable upload.
    :param max_concurrency: uploads worth running at once.
    :param list_page_size: objects per LIST request.
    """

    scheme: ClassVar[str] = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        service_file: str | None = None,
        part_size: int = 8 * MiB,
        multipart_threshold: int = 16 * MiB,
        max_concurrency: int = 32,
        list_page_size: int = 1000,
    ) -> None:
        self.bucket = bucket
        self._prefix = Prefix(prefix)
        self.uri = f"gs://{bucket}/{self._prefix.prefix}".rstrip("/")
        self.part_size = max(GRANULE, part_size // GRANULE * GRANULE)
        self.multipart_threshold = multipart_threshold
        self.max_concurrency = max_concurrency
        self.list_page_size = list_page_size
        self._is_dev, self._root = init_api_root(endpoint_url)
        self._service_file = service_file
        self._client: GCSClient | None = None
        self._session: aiohttp.ClientSession | None = None

    def _gcs(self) -> GCSClient:
        if self._client is None:
            connector = aiohttp.TCPConnector(limit=2 * self.max_concurrency)
            # typed Any: gcloud-aio annotates its sessions as the requests flavour's
            session: Any = aiohttp.ClientSession(timeout=TIMEOUT, connector=connector)
            self._session = session
            self._token = Token(service_file=self._service_file, session=session, scopes=SCOPES)
            self._http = AioSession(session)
            self._client = GCSClient(
                session=session,
                token=self._token,
                api_root=self._root,
                api_is_dev=self._is_dev,
            )
        return self._client

    async def aclose(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            await session.close()

    async def _auth(self) -> dict[str, str]:
        self._gcs()
        return {} if self._is_dev else {"Authorization": f"Bearer {await self._token.get()}"}

    def _object_url(self, name: str) -> str:
        return f"{self._root}/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}"

    @property
    def _upload_url(self) -> str:
        return f"{self._root}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"

    def _translate(self, exc: Exception, op: str, key: str) -> StorageError:
        ctx: dict[str, Any] = {"op": op, "key": key, "backend": self.uri}
        if isinstance(exc, aiohttp.ClientResponseError):
            return self._translate_status(exc, ctx)
        if isinstance(exc, aiohttp.ClientConnectorError):
            hint = "check the endpoint URL and the network"
            return TransientStorageError(
                f"cannot connect to endpoint {self._root}", **ctx, hint=hint
            )
        if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
            return TransientStorageError(f"{type(exc).__name__}: {exc}", **ctx)
        return TransientStorageError(f"unexpected {type(exc).__name__}: {exc}", **ctx)

    def _translate_status(
        self, exc: aiohttp.ClientResponseError, ctx: dict[str, Any]
    ) -> StorageError:
        status, text = exc.status, f"HTTP {exc.status}: {_google_message(exc.message)}"
        # GCS answers with a status and words, no code of its own: name the two cases
        code = ""
        if status == 404 and ctx["op"] in ("put", "list"):
            code = _NO_BUCKET
        elif status == 400 and "hash" in text.lower():
            code = _HASH_MISMATCH
        headers = exc.headers if isinstance(exc.headers, Mapping) else {}
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return _ERRORS.error(
            status, code, text, ctx, container=self.bucket, retry_after=retry_after
        )

    # -- uploads --------------------------------------------------------------------------

    async def _put_small(self, key: str, name: str, data: bytes, sha256: str) -> None:
        md5 = base64.b64encode(await asyncio.to_thread(lambda: hashlib.md5(data).digest())).decode()
        meta = {"name": name, "contentType": OCTET, "md5Hash": md5, "metadata": {"sha256": sha256}}
        parts = [
            ({"Content-Type": JSON}, json.dumps(meta).encode()),
            ({"Content-Type": OCTET}, data),
        ]
        body, content_type = encode_multipart_formdata(parts, choose_boundary())
        with self._errors("put", key):
            headers = {**await self._auth(), "Content-Type": content_type}
            params = {"uploadType": "multipart"}
            resp = await self._http.post(
                self._upload_url, headers=headers, data=body, params=params, timeout=TIMEOUT
            )
            resource = await resp.json(content_type=None)
        await self._verify_upload(resource, key, name, len(data), md5)

    async def _put_large(self, key: str, name: str, src: Path, size: int, sha256: str) -> None:
        with self._errors("put", key):
            self._gcs()  # the session the upload uses
        assert self._session is not None
        upload = ResumableUpload(
            http=self._http,
            session=self._session,
            auth=self._auth,
            errors=self._errors,
            backend=self.uri,
            key=key,
            size=size,
        )
        await upload.start(self._upload_url, name, sha256)
        md5, whole = hashlib.md5(), hashlib.sha256()

        def read(offset: int, length: int) -> bytes:
            data = read_range(src, offset, length)
            md5.update(data)
            whole.update(data)
            return data

        try:
            resource: Resource | None = None
            for offset in range(0, size, self.part_size):
                length = min(self.part_size, size - offset)
                data = await asyncio.to_thread(read, offset, length)
                last = offset + length == size
                if len(data) != length:
                    raise self._integrity("source shrank while reading", key)
                if last and whole.hexdigest() != sha256:  # before the last byte goes out
                    raise self._integrity(
                        f"source sha256 is {whole.hexdigest()}, not {sha256}", key
                    )
                resource = await upload.send(data, offset, last)
                if resource is not None and not last:
                    break  # the session ended early; _verify_upload finds the short object
            await self._verify_upload(
                resource, key, name, size, base64.b64encode(md5.digest()).decode()
            )
        except BaseException:
            await asyncio.shield(upload.cancel())
            raise

    async def _verify_upload(
        self, resource: Resource | None, key: str, name: str, size: int, md5: str
    ) -> None:
        if resource is not None and "md5Hash" not in resource:
            resource = await self._metadata("put", key, name)
        got_size = int(resource.get("size", -1)) if resource else -1
        got_md5 = resource.get("md5Hash") if resource else None
        if got_size == size and got_md5 == md5:
            return
        with contextlib.suppress(StorageError):  # report the mismatch, not a failed cleanup
            await asyncio.shield(self._delete_name(name, key))
        if got_size != size:  # e.g. a session that ended early: send it all again
            message = f"upload ended with {got_size} of {size} bytes"
            raise TransientStorageError(message, op="put", key=key, backend=self.uri)
        raise self._integrity(f"stored md5 {got_md5} differs from the source's {md5}", key)

    # -- reads, listing, deletion ---------------------------------------------------------

    async def _metadata(self, op: str, key: str, name: str) -> Resource | None:
        meta: Resource | None = None
        with self._errors(op, key), _unless_404():
            meta = await self._gcs().download_metadata(self.bucket, name, timeout=_LIB_TIMEOUT)
        return meta

    async def head(self, key: str) -> ObjectInfo | None:
        meta = await self._metadata("head", key, self._prefix.key(key))
        return None if meta is None else _info(key, meta)

    async def get(self, key: str, target: Path) -> ObjectInfo:
        name = self._prefix.key(key)
        meta = await self._metadata("get", key, name)
        if meta is None:
            raise NotFound("no such object", op="get", key=key, backend=self.uri)
        info = _info(key, meta)
        # pin the generation we just described, so size and hash match what we read
        params = {
            "alt": "media",
            **({"generation": meta["generation"]} if "generation" in meta else {}),
        }
        with self._errors("get", key):
            resp = await self._http.get(
                self._object_url(name), headers=await self._auth(), params=params, timeout=TIMEOUT
            )
            async with resp, AtomicDownload(target) as out:
                async for chunk in resp.content.iter_chunked(MiB):
                    await out.write(chunk)
                verify_download(out, info.sha256, info.size, key, self.uri)
        return ObjectInfo(key, out.size, out.sha256, info.modified)

    async def get_bytes(self, key: str) -> bytes:
        name = self._prefix.key(key)
        with self._errors("get", key):
            return await self._gcs().download(self.bucket, name, timeout=_LIB_TIMEOUT)

    async def list(self, prefix: str, *, page_size: int | None = None) -> AsyncIterator[ObjectInfo]:
        params = {
            "prefix": self._prefix.list_prefix(prefix),
            "maxResults": str(page_size or self.list_page_size),
        }
        while True:
            with self._errors("list", prefix):
                page = await self._gcs().list_objects(
                    self.bucket, params=dict(params), timeout=_LIB_TIMEOUT
                )
            for item in page.get("items", []):
                rel = self._prefix.rel(item["name"])
                if rel:
                    yield _info(rel, item)
            if not page.get("nextPageToken"):
                return
            params["pageToken"] = page["nextPageToken"]

    async def delete(self, key: str) -> None:
        await self._delete_name(self._prefix.key(key), key)

    async def abort_incomplete(self, key: str, *, size: int | None, started: float) -> int:
        """Nothing to do: a failed upload cancels its resumable session, and GCS expires
        an abandoned one (a week); neither is ever visible under the key."""
        return 0

    async def _delete_name(self, name: str, key: str) -> None:
        with self._errors("delete", key), _unless_404():
            await self._gcs().delete(self.bucket, name, timeout=_LIB_TIMEOUT)


@contextmanager
def _unless_404() -> Iterator[None]:
    """Absorb the library's 404 (head: no object; delete: already gone)."""
    try:
        yield
    except aiohttp.ClientResponseError as exc:
        if exc.status != 404:
            raise


def _info(key: str, meta: Mapping[str, Any]) -> ObjectInfo:
    updated = meta.get("updated")
    modified = datetime.fromisoformat(updated).timestamp() if updated else None
    sha256 = (meta.get("metadata") or {}).get("sha256")
    return ObjectInfo(key, int(meta.get("size", 0)), sha256, modified)


def _google_message(message: str) -> str:
    """'Not Found: {"error": {"message": ...}}' -> the human part, kept short."""
    reason, _, body = message.partition(": ")
    try:
        detail = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = body.strip()
    return f"{reason}: {detail}"[:300] if detail and detail != reason else reason[:300]


def _factory(uri: str, options: Mapping[str, Any]) -> GSStorage:
    _, bucket, prefix = parse_uri(uri)
    return GSStorage(
        bucket,
        prefix,
        endpoint_url=opt_str(options, "endpoint_url"),
        service_file=opt_str(options, "service_file"),
        **transfer_options(options, parts=False),
    )


OPTIONS = (
    "concurrency",
    "endpoint_url",
    "list_page_size",
    "multipart_threshold",
    "part_size",
    "service_file",
)
register("gs", _factory, OPTIONS)
