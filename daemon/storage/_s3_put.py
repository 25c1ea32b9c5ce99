"""S3 PUTs (small objects, parts of large ones) on a lean path: botocore signs,
aiohttp sends.

A folder of thousands of small files is thousands of PUTs, and through the
full botocore pipeline (parameter validation, event hooks, endpoint rules,
response parsing) each costs about 3 ms of the daemon's CPU, more than the
server spends storing it. This path builds the one request a small PUT needs,
signs it with botocore's own ``S3SigV4Auth`` (with the payload's SHA-256 the
caller already has: no second hashing pass, and a signed payload the server
checks), and sends it on a pooled aiohttp session.

It covers the plain case only. Anything else the service answers (a redirect
to another region, a malformed authorization) is not guessed at: the request
goes again through the client's ``put_object``, and so does every later one.
Errors are raised as botocore's ``ClientError`` so that the backend maps them
exactly as it maps the client's.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiobotocore.credentials import AioCredentials
from aiohttp.payload import BytesPayload, Payload
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError, NoCredentialsError

log = logging.getLogger(__name__)

# answers that mean "this request needs what only botocore does" (region redirects,
# a signature botocore would build differently): the full client takes over
_HAND_OVER = frozenset(
    {"PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed", "301", "307"}
)
_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]\Z")


_UNSIGNED = "UNSIGNED-PAYLOAD"  # SigV4's payload hash for a body that is not signed
_SLICE = 256 * 1024  # a large body goes to the socket this much at a time
_STALL = 30.0  # seconds a slice may wait for the socket before the link counts as dead


class _Sliced(BytesPayload):
    """A large body written a slice at a time, each once the socket has taken the last:
    otherwise the event loop copies what the socket cannot take at once into its own
    buffer, a whole part per part in flight."""

    def __init__(self, value: bytes | memoryview) -> None:
        Payload.__init__(self, value, content_type="application/octet-stream")
        self._size = memoryview(value).nbytes

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        for start in range(0, len(view), _SLICE):
            # a peer that stops reading would otherwise hold the upload forever: the
            # read timeout only starts once the body is sent
            async with asyncio.timeout(_STALL):
                await writer.write(view[start : start + _SLICE])


class _KnownPayload(S3SigV4Auth):  # type: ignore[misc]  # botocore has no type hints
    """SigV4 with the payload hash taken from the request's context (computed once,
    upstream), instead of hashing the body again."""

    def payload(self, request: AWSRequest) -> str:
        known = request.context.get("payload_sha256")
        return str(known) if known else str(super().payload(request))


class LeanPut:
    """PUT small objects into one bucket.

    :param client: the backend's aiobotocore client (its endpoint and region, and
        the fallback).
    :param credentials: the client's credentials (botocore's chain, as the client
        resolved them), or None for unsigned requests.
    :param bucket: the bucket.
    :param addressing_style: ``"path"``, ``"virtual"`` or None (botocore's rule: virtual
        for a DNS-compatible bucket on https, else path).
    :param connections: connections kept open to the endpoint.
    """

    def __init__(
        self,
        client: Any,
        credentials: Any,
        bucket: str,
        addressing_style: str | None,
        connections: int,
    ) -> None:
        self.client = client
        self.credentials = credentials
        self.bucket = bucket
        self.enabled = True
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        endpoint = urlsplit(client.meta.endpoint_url)
        self.region = client.meta.region_name or "us-east-1"
        virtual = addressing_style == "virtual" or (
            addressing_style in (None, "auto")
            and endpoint.scheme == "https"
            and _DNS_BUCKET.match(bucket) is not None
        )
        path = endpoint.path.rstrip("/")
        if virtual:
            self._base = f"{endpoint.scheme}://{bucket}.{endpoint.netloc}{path}/"
        else:
            self._base = f"{endpoint.scheme}://{endpoint.netloc}{path}/{quote(bucket)}/"

    async def put(
        self, name: str, data: bytes, sha256: str, checksum_b64: str, metadata: Mapping[str, str]
    ) -> None:
        """PUT ``data`` at ``name``; raises ``ClientError`` for an error answer and
        aiohttp's errors for the connection's."""
        if self.enabled:
            meta = {f"x-amz-meta-{k}": v for k, v in metadata.items()}
            checksum = ("SHA256", checksum_b64)
            if await self._send(name, "", data, sha256, checksum, meta) is not None:
                return
        await self._fallback(name, data, checksum_b64, metadata)

    async def upload_part(
        self,
        name: str,
        upload_id: str,
        number: int,
        data: bytes | memoryview,
        crc32: str,
    ) -> str:
        """One part of a multipart upload; returns its ETag. The part's CRC-32 is its
        checksum, which the server verifies; the payload is not signed (SigV4's
        ``UNSIGNED-PAYLOAD``): a SHA-256 of every part would be a second full hashing
        pass over the file, and the whole file's SHA-256 is checked as it is read."""
        if self.enabled:
            query = f"partNumber={number}&uploadId={quote(upload_id, safe='~')}"
            checksum = ("CRC32", crc32)
            answer = await self._send(name, query, data, _UNSIGNED, checksum, {})
            if answer is not None:
                return answer["etag"]
        resp = await self.client.upload_part(
            Bucket=self.bucket,
            Key=name,
            UploadId=upload_id,
            PartNumber=number,
            Body=bytes(data),
            ChecksumAlgorithm="CRC32",
            ChecksumCRC32=crc32,
        )
        return str(resp["ETag"])

    async def _send(
        self,
        name: str,
        query: str,
        data: bytes | memoryview,
        payload_sha256: str,
        checksum: tuple[str, str],
        extra: Mapping[str, str],
    ) -> dict[str, str] | None:
        """Sign and send one PUT; its answer's headers (lower-cased), or None when the
        answer means the full client must take over (it then does, from now on)."""
        credentials = await self._credentials()
        headers = {
            "Content-Length": str(len(data)),
            "Content-Type": "application/octet-stream",
            f"x-amz-checksum-{checksum[0].lower()}": checksum[1],
            "x-amz-sdk-checksum-algorithm": checksum[0],
            **extra,
        }
        url = self._base + quote(name, safe="/~") + (f"?{query}" if query else "")
        request = AWSRequest("PUT", url, headers=headers, data=b"")  # signed: payload_sha256
        request.context["payload_sha256"] = payload_sha256
        _KnownPayload(credentials, "s3", self.region).add_auth(request)
        sent = _Sliced(data) if len(data) > _SLICE else data
        async with self._http().put(url, data=sent, headers=dict(request.headers.items())) as resp:
            answer = {k.lower(): v for k, v in resp.headers.items()}
            body = await resp.read()
            if resp.status == 200:
                return answer
        error = _client_error(resp.status, answer, body)
        code = error.response["Error"]["Code"]
        if code in _HAND_OVER:
            log.info("s3: %s answered %s; uploads go through the full client", name, code)
            self.enabled = False
            return None
        raise error

    async def _fallback(
        self, name: str, data: bytes, checksum_b64: str, metadata: Mapping[str, str]
    ) -> None:
        await self.client.put_object(
            Bucket=self.bucket,
            Key=name,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum_b64,
            Metadata=dict(metadata),
        )

    async def _credentials(self) -> Any:
        # refreshable credentials (instance roles, SSO) refresh here when they expire
        if self.credentials is None:
            raise NoCredentialsError()
        return await self.credentials.get_frozen_credentials()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
                auto_decompress=False,
            )
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def credentials_for(session: Any, client_kwargs: Mapping[str, Any]) -> Any:
    """The credentials a client made with ``client_kwargs`` uses: their keys, else
    botocore's chain (variables, profile, instance role) as ``session`` resolves it."""
    if client_kwargs.get("aws_access_key_id"):
        return AioCredentials(
            client_kwargs["aws_access_key_id"],
            client_kwargs.get("aws_secret_access_key"),
            client_kwargs.get("aws_session_token"),
        )
    return await session.get_credentials()


def load_models(session: Any) -> None:
    """botocore's S3 model and endpoint rules, parsed from JSON once per session (~90
    ms): in a thread, so that making the client holds up the event loop ~10 ms."""
    loader = session.get_component("data_loader")
    for kind in ("service-2", "endpoint-rule-set-1"):
        loader.load_service_model("s3", kind)
    for name in ("partitions", "endpoints", "sdk-default-configuration"):
        loader.load_data(name)


def crc32_b64(crc: int) -> str:
    """A CRC-32 (``zlib.crc32``'s value: 0.1-1 ms for an 8 MiB part) as S3's
    ``x-amz-checksum-crc32`` wants it: 4 bytes, big-endian, base64."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


def _client_error(status: int, headers: dict[str, str], body: bytes) -> ClientError:
    text = body.decode("utf-8", "replace")
    code = _tag(text, "Code") or str(status)
    message = _tag(text, "Message") or text[:200] or f"HTTP {status}"
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers},
    }
    return ClientError(response, "PutObject")


def _tag(xml: str, tag: str) -> str | None:
    found = re.search(rf"<{tag}>(.*?)</{tag}>", xml, re.S)
    return found.group(1).strip() if found else None
