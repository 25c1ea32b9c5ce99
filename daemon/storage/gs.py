"""``gs`` backend: Google Cloud Storage via gcloud-aio-storage (one aiohttp session).

URI ``gs://bucket/prefix``. Credentials: ``GOOGLE_APPLICATION_CREDENTIALS`` (or the
``service_file`` option), else gcloud's defaults / the metadata server.
``STORAGE_EMULATOR_HOST`` (or the ``endpoint_url`` option) points it at an
emulator, without authentication.

Integrity: the source's SHA-256 and size are checked while it is read, before its
last byte is sent, so a mismatch never completes an upload. Small objects go up
in one multipart request carrying ``md5Hash``, which GCS verifies. Large objects
use a resumable session fed in chunks read from disk (bounded memory); a chunk
that fails is resumed from the offset the server reports. Either way the
``md5Hash`` GCS reports for the finished object is compared with the MD5 computed
locally, and a mismatching object is deleted before :class:`IntegrityError` is
raised.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import random
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
    PART_ATTEMPTS,
    AtomicDownload,
    MiB,
    Prefix,
    check_source,
    opt_int,
    opt_str,
    parse_retry_after,
    read_range,
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

log = logging.getLogger(__name__)

OCTET = "application/octet-stream"
GRANULE = 256 * 1024  # resumable chunks must be multiples of this (all but the last)
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)


class GSStorage:
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
    atomic_put = True

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 service_file: str | None = None, part_size: int = 8 * MiB,
                 multipart_threshold: int = 16 * MiB, max_concurrency: int = 16,
                 list_page_size: int = 1000) -> None:
        self.bucket = bucket
        self._prefix = Prefix(prefix)
        self.uri = f"gs://{bucket}/{self._prefix.prefix}".rstrip("/")
        self.part_size = max(GRANULE, part_size // GRANULE * GRANULE)
        self.multipart_threshold = max(multipart_threshold, 1)
        self.max_concurrency = max_concurrency
        self.list_page_size = list_page_size
        self._endpoint_url = endpoint_url
        self._service_file = service_file
        self._client: GCSClient | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- plumbing -------------------------------------------------------------------------

    def _gcs(self) -> GCSClient:
        if self._client is None:
            self._is_dev, self._root = init_api_root(self._endpoint_url)
            self._session = aiohttp.ClientSession(
                timeout=_TIMEOUT,
                connector=aiohttp.TCPConnector(limit=2 * self.max_concurrency))
            self._token = Token(service_file=self._service_file, session=self._session,
                                scopes=SCOPES)
            self._http = AioSession(self._session)
            self._client = GCSClient(session=self._session, token=self._token,
                                     api_root=self._root, api_is_dev=self._is_dev)
        return self._client

    async def aclose(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            await session.close()

    async def _auth(self) -> dict[str, str]:
        self._gcs()
        if self._is_dev:
            return {}
        return {"Authorization": f"Bearer {await self._token.get()}"}

    def _object_url(self, name: str) -> str:
        return f"{self._root}/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}"

    @property
    def _upload_url(self) -> str:
        return f"{self._root}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"

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
        if isinstance(exc, aiohttp.ClientResponseError):
            return self._translate_status(exc, ctx)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return TransientStorageError(f"cannot connect to endpoint {self._root}", **ctx)
        if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
            return TransientStorageError(f"{type(exc).__name__}: {exc}", **ctx)
        return TransientStorageError(f"unexpected {type(exc).__name__}: {exc}", **ctx)

    def _translate_status(self, exc: aiohttp.ClientResponseError,
                          ctx: dict[str, str]) -> StorageError:
        status, text = exc.status, f"HTTP {exc.status}: {_google_message(exc.message)}"
        if status == 404 and ctx["op"] in ("put", "list"):
            return AccessDenied(f"bucket {self.bucket!r} does not exist ({text})", **ctx,
                                hint="bucket missing: create it or fix the URI")
        if status == 404:
            return NotFound(f"no such object ({text})", **ctx)
        if status in (401, 403):
            return AccessDenied(f"access denied ({text})", **ctx,
                                hint="check credentials (GOOGLE_APPLICATION_CREDENTIALS or the "
                                     "service_file option) and the bucket's permissions")
        if status == 400 and "hash" in text.lower():
            return IntegrityError(f"checksum rejected by the server ({text})", **ctx)
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after((exc.headers or {}).get("Retry-After"))
            return TransientStorageError(text, retry_after=retry_after, **ctx)
        return PermanentStorageError(text, **ctx)

    # -- uploads --------------------------------------------------------------------------

    async def put(self, key: str, src: Path, *, size: int, sha256: str) -> ObjectInfo:
        name = self._prefix.key(key)
        sha256 = sha256.lower()
        actual = (await asyncio.to_thread(os.stat, src)).st_size
        if actual != size:
            raise IntegrityError(f"source has {actual} bytes, expected {size}",
                                 op="put", key=key, backend=self.uri)
        if size >= self.multipart_threshold and size > self.part_size:
            await self._put_resumable(key, name, src, size, sha256)
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
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        meta = {"name": name, "contentType": OCTET, "md5Hash": md5,
                "metadata": {"sha256": sha256}}
        body, content_type = encode_multipart_formdata(
            [({"Content-Type": "application/json; charset=UTF-8"}, json.dumps(meta).encode()),
             ({"Content-Type": OCTET}, data)], choose_boundary())
        with self._errors("put", key):
            headers = {**await self._auth(), "Content-Type": content_type}
            resp = await self._http.post(self._upload_url, headers=headers, data=body,
                                         params={"uploadType": "multipart"}, timeout=_TIMEOUT)
            resource = await resp.json(content_type=None)
        await self._verify_upload(resource, key, name, len(data), md5)

    async def _put_resumable(self, key: str, name: str, src: Path, size: int,
                             sha256: str) -> None:
        meta = {"name": name, "contentType": OCTET, "metadata": {"sha256": sha256}}
        with self._errors("put", key):
            headers = {**await self._auth(), "Content-Type": "application/json; charset=UTF-8",
                       "X-Upload-Content-Type": OCTET, "X-Upload-Content-Length": str(size)}
            resp = await self._http.post(self._upload_url, headers=headers,
                                         data=json.dumps(meta), timeout=_TIMEOUT,
                                         params={"uploadType": "resumable", "name": name})
            session_uri = resp.headers["Location"]
            resp.release()
        md5, whole = hashlib.md5(), hashlib.sha256()

        def read(offset: int, length: int) -> bytes:
            data = read_range(src, offset, length)
            md5.update(data)
            whole.update(data)
            return data

        try:
            resource: dict[str, Any] | None = None
            for offset in range(0, size, self.part_size):
                length = min(self.part_size, size - offset)
                data = await asyncio.to_thread(read, offset, length)
                last = offset + length == size
                if len(data) != length:
                    raise IntegrityError("source shrank while reading", op="put", key=key,
                                         backend=self.uri)
                if last and whole.hexdigest() != sha256:  # before the last byte goes out
                    raise IntegrityError(f"source sha256 is {whole.hexdigest()}, expected "
                                         f"{sha256}", op="put", key=key, backend=self.uri)
                resource = await self._send_chunk(session_uri, key, data, offset, size, last)
                if resource is not None and not last:
                    break  # the session ended early; _verify_upload catches the short object
            await self._verify_upload(resource, key, name, size,
                                      base64.b64encode(md5.digest()).decode())
        except BaseException:
            await asyncio.shield(self._cancel_session(session_uri))
            raise

    async def _send_chunk(self, uri: str, key: str, data: bytes, offset: int, size: int,
                          last: bool) -> dict[str, Any] | None:
        """PUT one chunk; after a transient failure ask the session how much it holds
        and send only the rest. Returns the object resource once the upload is done."""
        end = offset + len(data)
        for attempt in range(1, PART_ATTEMPTS + 1):
            try:
                pos = offset
                if attempt > 1:
                    done, pos, resource = await self._query_session(uri, key, size)
                    if done:
                        return resource
                    if not offset <= pos <= end:
                        raise TransientStorageError(f"resumable session holds {pos} bytes, "
                                                    f"expected {offset}..{end}", op="put",
                                                    key=key, backend=self.uri)
                    if pos == end and not last:
                        return None
                return await self._put_range(uri, key, data[pos - offset:], pos, size, last)
            except TransientStorageError as exc:
                if attempt == PART_ATTEMPTS:
                    raise
                delay = max(random.uniform(0, min(5.0, 0.2 * 2 ** attempt)),
                            min(exc.retry_after or 0.0, 30.0))
                log.warning("gcs chunk upload failed, resuming", extra={
                    "backend": self.uri, "key": key, "offset": offset, "attempt": attempt,
                    "delay": round(delay, 3), "error": str(exc)})
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _put_range(self, uri: str, key: str, chunk: bytes, pos: int, size: int,
                         last: bool) -> dict[str, Any] | None:
        span = f"bytes {pos}-{pos + len(chunk) - 1}" if chunk else "bytes *"
        headers = {**await self._auth(), "Content-Type": OCTET,
                   "Content-Range": f"{span}/{size if last else '*'}"}
        with self._errors("put", key):
            resp = await self._http.request("PUT", uri, headers=headers, data=chunk,
                                            timeout=_TIMEOUT, allow_redirects=False)
            if resp.status == 308:
                resp.release()
                return None
            resource: dict[str, Any] = await resp.json(content_type=None)
        return resource

    async def _query_session(self, uri: str, key: str,
                             size: int) -> tuple[bool, int, dict[str, Any] | None]:
        headers = {**await self._auth(), "Content-Range": f"bytes */{size}"}
        with self._errors("put", key):
            resp = await self._http.request("PUT", uri, headers=headers, data=b"",
                                            timeout=_TIMEOUT, allow_redirects=False)
            if resp.status != 308:
                return True, size, await resp.json(content_type=None)
            held = resp.headers.get("Range", "")  # "bytes=0-N", absent when nothing arrived
            resp.release()
        return False, int(held.rsplit("-", 1)[1]) + 1 if held else 0, None

    async def _cancel_session(self, uri: str) -> None:
        try:
            resp = await self._session.delete(uri, timeout=_TIMEOUT)  # type: ignore[union-attr]
            resp.release()
        except Exception as exc:  # an abandoned session expires after a week
            log.debug("gcs resumable session cancel failed: %s", type(exc).__name__)

    async def _verify_upload(self, resource: dict[str, Any] | None, key: str, name: str,
                             size: int, md5: str) -> None:
        if resource is not None and "md5Hash" not in resource:
            with self._errors("put", key):
                resource = await self._gcs().download_metadata(self.bucket, name,
                                                               timeout=_TIMEOUT)  # type: ignore[arg-type]
        got_size = int(resource.get("size", -1)) if resource else -1
        got_md5 = resource.get("md5Hash") if resource else None
        if got_size == size and got_md5 == md5:
            return
        await asyncio.shield(self._delete_name(name))
        if got_size != size:
            raise TransientStorageError(f"upload ended with {got_size} of {size} bytes",
                                        op="put", key=key, backend=self.uri)
        raise IntegrityError(f"stored md5 {got_md5} differs from the source's {md5}",
                             op="put", key=key, backend=self.uri)

    # -- reads, listing, deletion ---------------------------------------------------------

    async def _metadata(self, op: str, key: str, name: str) -> dict[str, Any] | None:
        with self._errors(op, key):
            try:
                meta: dict[str, Any] = await self._gcs().download_metadata(
                    self.bucket, name, timeout=_TIMEOUT)  # type: ignore[arg-type]
            except aiohttp.ClientResponseError as exc:
                if exc.status == 404:
                    return None
                raise
        return meta

    async def head(self, key: str) -> ObjectInfo | None:
        meta = await self._metadata("head", key, self._prefix.key(key))
        return None if meta is None else _info(key, meta)

    async def get(self, key: str, dest: Path) -> ObjectInfo:
        name = self._prefix.key(key)
        meta = await self._metadata("get", key, name)
        if meta is None:
            raise NotFound("no such object", op="get", key=key, backend=self.uri)
        info = _info(key, meta)
        params = {"alt": "media", "generation": str(meta.get("generation", ""))}
        with self._errors("get", key):
            resp = await self._http.get(self._object_url(name), headers=await self._auth(),
                                        params={k: v for k, v in params.items() if v},
                                        timeout=_TIMEOUT)
            async with resp, AtomicDownload(dest) as out:
                async for chunk in resp.content.iter_chunked(1024 * 1024):
                    await out.write(chunk)
                verify_download(out, expected_sha256=info.sha256, expected_size=info.size,
                                key=key, backend=self.uri)
        return ObjectInfo(key, out.size, out.sha256, info.modified)

    async def get_bytes(self, key: str) -> bytes:
        name = self._prefix.key(key)
        with self._errors("get", key):
            return await self._gcs().download(self.bucket, name,
                                              timeout=_TIMEOUT)  # type: ignore[arg-type]

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        params = {"prefix": self._prefix.list_prefix(prefix),
                  "maxResults": str(self.list_page_size)}
        while True:
            with self._errors("list", prefix):
                page = await self._gcs().list_objects(self.bucket, params=dict(params),
                                                      timeout=_TIMEOUT)  # type: ignore[arg-type]
            for item in page.get("items", []):
                rel = self._prefix.rel(item["name"])
                if rel:
                    yield _info(rel, item)
            token = page.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token

    async def delete(self, key: str) -> None:
        await self._delete_name(self._prefix.key(key), key)

    async def _delete_name(self, name: str, key: str = "") -> None:
        with self._errors("delete", key or name):
            try:
                await self._gcs().delete(self.bucket, name,
                                         timeout=_TIMEOUT)  # type: ignore[arg-type]
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
        bucket, prefix, endpoint_url=opt_str(options, "endpoint_url"),
        service_file=opt_str(options, "service_file"),
        part_size=opt_int(options, "part_size", 8 * MiB),
        multipart_threshold=opt_int(options, "multipart_threshold", 16 * MiB),
        max_concurrency=opt_int(options, "concurrency", 16),
        list_page_size=opt_int(options, "list_page_size", 1000))


register("gs", _factory)
