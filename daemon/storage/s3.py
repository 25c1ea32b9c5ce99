"""``s3`` backend: AWS S3 and S3-compatible stores (MinIO, SeaweedFS, ...), via aiobotocore.

URI ``s3://bucket/prefix``. Credentials, region and endpoint come from botocore's
standard chain (``AWS_*`` variables including ``AWS_ENDPOINT_URL_S3``, profiles,
instance roles) unless the options override them.

Integrity: a small object is sent with ``x-amz-checksum-sha256`` set to the
caller's SHA-256, so the server rejects a body that does not match
(``BadDigest`` -> :class:`IntegrityError`). A large object goes up as a multipart
upload; each part carries its CRC-32 (``x-amz-checksum-crc32``, cheap: the payload
is not signed) that the server verifies. Each part's CRC-32 must also match the
one taken when the file was hashed (:mod:`artisync.protocol._spans`), so the file
is read once; without those, the whole-file SHA-256 is computed while the parts
are read, in order, and must match before the upload is completed.
On any failure the multipart upload is aborted, so nothing is ever visible under
the key but the whole, verified object; one started by a create whose answer was
lost is aborted after the object is complete.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from artisync.protocol import CRC_SPAN, crc32, spans_of

from ._common import (
    AtomicDownload,
    CloudStorage,
    MiB,
    Prefix,
    hex_to_b64,
    opt_str,
    parse_retry_after,
    transfer_options,
    verify_download,
)
from ._http_errors import HttpErrors
from ._s3_put import LeanPut, crc32_b64, credentials_for, load_models
from ._s3_replies import abort_unfinished, delete_objects, sha256_of
from .base import (
    AccessDenied,
    ObjectInfo,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    parse_uri,
    register,
)

log = logging.getLogger(__name__)

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_ERRORS = HttpErrors(
    container_missing="bucket {name!r} does not exist",
    container_hint="create the bucket or fix the URI",
    denied_hint="check credentials and that the bucket exists and allows this operation",
    missing_codes=frozenset({"NoSuchBucket"}),
    not_found_codes=_NOT_FOUND,
    denied_codes=frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
        "AllAccessDisabled", "InvalidToken", "ExpiredToken", "AccountProblem",
        "InvalidSecurity", "UnauthorizedAccess", "AuthorizationHeaderMalformed"}),
    integrity_codes=frozenset({"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"}),
    transient_codes=frozenset({"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
        "RequestLimitExceeded", "ServiceUnavailable", "InternalError", "500", "502",
        "503", "504", "RequestThrottled", "TooManyRequests", "NoSuchUpload"}),
    not_found_status=frozenset(),  # a 404 may be NoSuchUpload (transient): codes decide
    denied_status=frozenset({403}),
)  # fmt: skip


class S3Storage(CloudStorage):
    """An S3 bucket (and optional prefix). One aiobotocore client per object,
    created on first use and closed by :meth:`aclose`.

    :param bucket: bucket name.
    :param prefix: keys are stored under ``prefix/``.
    :param client_kwargs: passed to ``create_client`` (endpoint, region, keys).
    :param profile: AWS profile name (else the standard chain).
    :param addressing_style: ``"path"``, ``"virtual"`` or None for botocore's choice.
    :param part_size: multipart part size (S3 minimum 5 MiB).
    :param multipart_threshold: files of at least this size use multipart.
    :param max_concurrency: uploads worth running at once.
    :param part_concurrency: parts in flight per multipart upload.
    :param list_page_size: keys per LIST request (at most 1000).
    """

    scheme: ClassVar[str] = "s3"
    max_parts = 10_000
    hash_small_locally = False  # x-amz-checksum-sha256: the server checks it

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client_kwargs: Mapping[str, Any] | None = None,
        profile: str | None = None,
        addressing_style: str | None = None,
        part_size: int = CRC_SPAN,  # 8 MiB: a part is a span of the hashing pass
        multipart_threshold: int = 16 * MiB,
        max_concurrency: int = 32,
        part_concurrency: int = 4,
        list_page_size: int = 1000,
    ) -> None:
        self.bucket = bucket
        self._prefix = Prefix(prefix)
        self.uri = f"s3://{bucket}/{self._prefix.prefix}".rstrip("/")
        self.max_concurrency = max_concurrency
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.part_concurrency = part_concurrency
        self.list_page_size = min(list_page_size, 1000)
        self._client_kwargs = dict(client_kwargs or {})
        self._profile = profile
        self._addressing_style = addressing_style
        self._client: Any = None
        self._lean: LeanPut | None = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                s3 = {"addressing_style": self._addressing_style} if self._addressing_style else {}
                config = AioConfig(
                    max_pool_connections=self.max_concurrency + self.part_concurrency,
                    # two attempts in all (botocore's "max_attempts" here would mean
                    # retries); our RetryingStorage does the rest, layered retries multiply
                    retries={"mode": "standard", "total_max_attempts": 2},
                    connect_timeout=10,
                    read_timeout=60,
                    s3=s3,
                )
                stack = AsyncExitStack()
                session = AioSession(profile=self._profile)
                await asyncio.to_thread(load_models, session)
                client = session.create_client("s3", config=config, **self._client_kwargs)
                self._client = await stack.enter_async_context(client)
                self._stack = stack
                self._lean = LeanPut(
                    self._client,
                    await credentials_for(session, self._client_kwargs),
                    self.bucket,
                    self._addressing_style,
                    self.max_concurrency,
                )
                stack.push_async_callback(self._lean.aclose)
        return self._client

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _translate(self, exc: Exception, op: str, key: str) -> StorageError:
        ctx: dict[str, Any] = {"op": op, "key": key, "backend": self.uri}
        if isinstance(exc, ClientError):
            return self._translate_client_error(exc, ctx)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            hint = "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or the options"
            return AccessDenied("no usable S3 credentials found", **ctx, hint=hint)
        if isinstance(exc, ParamValidationError):
            return PermanentStorageError(f"invalid S3 request: {exc}", **ctx)
        if isinstance(exc, EndpointConnectionError | aiohttp.ClientConnectorError):
            # the same words for the client's requests and the lean path's (aiohttp's)
            endpoint = (
                exc.kwargs.get("endpoint_url", "")
                if isinstance(exc, EndpointConnectionError)
                else getattr(getattr(self._client, "meta", None), "endpoint_url", "")
            )
            url = urlsplit(str(endpoint))
            message = f"cannot connect to endpoint {url.scheme}://{url.netloc}"
            return TransientStorageError(message, **ctx, hint="check the endpoint URL and network")
        if isinstance(exc, BotoCoreError | aiohttp.ClientError | TimeoutError | OSError):
            return TransientStorageError(f"{type(exc).__name__}: {exc}", **ctx)
        # unknown: transient, bounded by the retry wrapper's time budget
        return TransientStorageError(f"unexpected {type(exc).__name__}: {exc}", **ctx)

    def _translate_client_error(self, exc: ClientError, ctx: dict[str, Any]) -> StorageError:
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(err.get("Code", ""))
        status = int(meta.get("HTTPStatusCode") or 0)
        text = f"{code or status}: {err.get('Message') or 'no message'}"
        retry_after = parse_retry_after((meta.get("HTTPHeaders") or {}).get("retry-after"))
        return _ERRORS.error(
            status, code, text, ctx, container=self.bucket, retry_after=retry_after
        )

    # -- uploads --------------------------------------------------------------------------

    async def _put_small(self, key: str, name: str, data: bytes, sha256: str) -> None:
        with self._errors("put", key):
            await self._s3()
            assert self._lean is not None
            # signed with the payload's SHA-256 and x-amz-checksum-sha256: the server
            # refuses a body that does not match
            await self._lean.put(name, data, sha256, hex_to_b64(sha256), {"sha256": sha256})

    async def _put_large(self, key: str, name: str, src: Path, size: int, sha256: str) -> None:
        with self._errors("put", key):
            s3 = await self._s3()
            created = await s3.create_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                ChecksumAlgorithm="CRC32",
                Metadata={"sha256": sha256},
            )
        upload = {"Bucket": self.bucket, "Key": name, "UploadId": created["UploadId"]}
        parts: dict[int, dict[str, Any]] = {}
        # the CRC-32 of each part from the pass that hashed the file, if this process did
        spans = spans_of(sha256, size) if self.part_size_for(size) == CRC_SPAN else None

        async def send(number: int, data: memoryview) -> None:
            crc = crc32(data)  # ~0.1 ms a part (ISA-L's; zlib's ~1): on the loop
            if spans is not None and crc != spans[number - 1]:
                raise self._integrity(f"part {number} changed since the file was hashed", key)
            checksum = crc32_b64(crc)
            with self._errors("put", key):
                assert self._lean is not None
                etag = await self._lean.upload_part(
                    name, upload["UploadId"], number, data, checksum
                )
            parts[number] = {"PartNumber": number, "ETag": etag, "ChecksumCRC32": checksum}

        try:
            digest, _ = await self._upload_parts(
                key, src, size, self.part_concurrency, send, whole_sha256=spans is None
            )
            if spans is None and digest != sha256:
                raise self._integrity(f"source sha256 is {digest}, expected {sha256}", key)
            with self._errors("put", key):
                await s3.complete_multipart_upload(
                    **upload, MultipartUpload={"Parts": [parts[n] for n in sorted(parts)]}
                )
                if created["ResponseMetadata"].get("RetryAttempts"):
                    # botocore sent the create again: the first may have started an
                    # upload whose answer was lost, an id nobody will ever abort
                    await abort_unfinished(s3, self.bucket, name, time.time())
        except BaseException:
            await asyncio.shield(self._abort(s3, upload))
            raise

    async def _abort(self, s3: Any, upload: dict[str, str]) -> None:
        try:
            await s3.abort_multipart_upload(**upload)
        except Exception as exc:  # the bucket's lifecycle rule is the backstop
            error = f"{type(exc).__name__}: {exc}"
            log.warning("s3 abort_multipart_upload failed: %s", error, extra={"backend": self.uri})

    # -- reads, listing, deletion ---------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo | None:
        name = self._prefix.key(key)
        with self._errors("head", key):
            s3 = await self._s3()
            try:
                resp = await s3.head_object(Bucket=self.bucket, Key=name, ChecksumMode="ENABLED")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                    return None
                raise
        modified = resp["LastModified"].timestamp()
        return ObjectInfo(key, int(resp["ContentLength"]), sha256_of(resp), modified)

    async def get(self, key: str, target: Path) -> ObjectInfo:
        name = self._prefix.key(key)
        with self._errors("get", key):
            s3 = await self._s3()
            resp = await s3.get_object(Bucket=self.bucket, Key=name)
            async with resp["Body"] as body, AtomicDownload(target) as out:
                while chunk := await body.read(MiB):
                    await out.write(chunk)
                size = int(resp["ContentLength"])
                verify_download(out, sha256_of(resp), size, key, self.uri)
        return ObjectInfo(key, out.size, out.sha256, resp["LastModified"].timestamp())

    async def get_bytes(self, key: str) -> bytes:
        name = self._prefix.key(key)
        with self._errors("get", key):
            s3 = await self._s3()
            resp = await s3.get_object(Bucket=self.bucket, Key=name)
            async with resp["Body"] as body:
                data: bytes = await body.read()
        return data

    async def list(self, prefix: str, *, page_size: int | None = None) -> AsyncIterator[ObjectInfo]:
        full = self._prefix.list_prefix(prefix)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        while True:
            with self._errors("list", prefix):
                s3 = await self._s3()
                page = await s3.list_objects_v2(**kwargs, MaxKeys=page_size or self.list_page_size)
            for obj in page.get("Contents", []):
                rel = self._prefix.rel(obj["Key"])
                if rel:
                    yield ObjectInfo(rel, int(obj["Size"]), None, obj["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def delete(self, key: str) -> None:
        name = self._prefix.key(key)
        with self._errors("delete", key):
            s3 = await self._s3()
            try:
                await s3.delete_object(Bucket=self.bucket, Key=name)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _NOT_FOUND:
                    raise

    async def delete_many(self, keys: Sequence[str]) -> None:
        names = [self._prefix.key(k) for k in keys]
        with self._errors("delete", keys[0] if keys else ""):
            failed = await delete_objects(await self._s3(), self.bucket, names)
            if failed:  # the first says why (AccessDenied, SlowDown...), as for one key
                raise ClientError({"Error": failed[0]}, "DeleteObjects")

    async def abort_incomplete(self, key: str, *, size: int | None, started: float) -> int:
        """Abort every unfinished multipart upload of ``key``, whatever its age
        (``started`` does not matter: by the contract none is this process's, and
        another node's upload of the same content-addressed key that loses its upload
        id gets ``NoSuchUpload``, which is transient, and goes again). Invisible, they
        are billed and kept forever without a lifecycle rule."""
        if size is None or size < self.multipart_threshold:
            return 0  # sent in one PUT: nothing can be left over
        name = self._prefix.key(key)
        with self._errors("abort-incomplete", key):
            aborted = await abort_unfinished(await self._s3(), self.bucket, name, time.time())
        if aborted:
            log.info("aborted %d unfinished multipart uploads of %s at %s", aborted, key, self.uri)
        return aborted


def _factory(uri: str, options: Mapping[str, Any]) -> S3Storage:
    _, bucket, prefix = parse_uri(uri)
    endpoint = opt_str(options, "endpoint_url")
    client_kwargs = {
        "endpoint_url": endpoint,
        "region_name": opt_str(options, "region"),
        "aws_access_key_id": opt_str(options, "access_key_id"),
        "aws_secret_access_key": opt_str(options, "secret_access_key"),
        "aws_session_token": opt_str(options, "session_token"),
    }
    style = opt_str(options, "addressing_style")
    if style not in (None, "path", "virtual", "auto"):
        raise ValueError(f"addressing_style must be 'path' or 'virtual', not {style!r}")
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if style is None and (endpoint or env_endpoint):
        style = "path"  # MinIO, SeaweedFS and most self-hosted stores want path style
    return S3Storage(
        bucket,
        prefix,
        client_kwargs={k: v for k, v in client_kwargs.items() if v},
        profile=opt_str(options, "profile"),
        addressing_style=style,
        **transfer_options(options),
    )


OPTIONS = (
    "access_key_id",
    "addressing_style",
    "concurrency",
    "endpoint_url",
    "list_page_size",
    "multipart_threshold",
    "part_concurrency",
    "part_size",
    "profile",
    "region",
    "secret_access_key",
    "session_token",
)
register("s3", _factory, OPTIONS)
