"""The gs backend's resumable uploads: one session per large object, fed in chunks.

A session is opened with a POST that names the object; each chunk is PUT with a
``Content-Range``; the service answers 308 ("resume incomplete") until the last
chunk, then the object resource. A chunk that fails is retried under
:data:`~._common.PART_RETRY`: the retry first asks the session how many bytes it
holds, then sends only the rest. A session that expired answers 404/410: the
whole upload starts over (a transient error for the caller's retry).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import aiohttp

from ._common import PART_RETRY
from .base import TransientStorageError
from .retry import Backoff, retry_transient

log = logging.getLogger("artisync.daemon.storage.gs")

OCTET = "application/octet-stream"
JSON = "application/json; charset=UTF-8"
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
Resource = dict[str, Any]


class ResumableUpload:
    """One resumable upload of ``key`` (``size`` bytes) to GCS.

    :param http: the gcloud-aio session (raises for error statuses).
    :param session: the plain aiohttp session under it (for the cancelling DELETE).
    :param auth: the request headers that authenticate (none for an emulator).
    :param errors: the backend's translation of client errors into ours, per op and key.
    :param backend: the backend's URI, for errors and logs.
    """

    def __init__(
        self,
        *,
        http: Any,
        session: aiohttp.ClientSession,
        auth: Callable[[], Awaitable[dict[str, str]]],
        errors: Callable[[str, str], AbstractContextManager[None]],
        backend: str,
        key: str,
        size: int,
    ) -> None:
        self.http, self.session, self.auth, self.errors = http, session, auth, errors
        self.backend, self.key, self.size = backend, key, size
        self.url = ""

    async def start(self, upload_url: str, name: str, sha256: str) -> None:
        """Open the session for object ``name``, recording ``sha256`` in its metadata."""
        meta = {"name": name, "contentType": OCTET, "metadata": {"sha256": sha256}}
        with self.errors("put", self.key):
            headers = {**await self.auth(), "Content-Type": JSON, "X-Upload-Content-Type": OCTET}
            resp = await self.http.post(
                upload_url,
                headers={**headers, "X-Upload-Content-Length": str(self.size)},
                data=json.dumps(meta),
                params={"uploadType": "resumable", "name": name},
                timeout=TIMEOUT,
            )
            self.url = resp.headers["Location"]
            resp.release()

    async def send(self, data: bytes, offset: int, last: bool) -> Resource | None:
        """PUT one chunk; after a transient failure ask the session how much it holds
        and send only the rest. Returns the object resource once the upload is done."""
        end = offset + len(data)

        async def attempt(number: int) -> Resource | None:
            pos = offset
            if number > 1:
                done, pos, resource = await self._query()
                if done:
                    return resource
                if not offset <= pos <= end:
                    message = f"resumable session holds {pos} bytes, expected {offset}..{end}"
                    raise TransientStorageError(
                        message, op="put", key=self.key, backend=self.backend
                    )
                if pos == end and not last:
                    return None
            return await self._put_range(data[pos - offset :], pos, last)

        def report(backoff: Backoff, exc: TransientStorageError, delay: float) -> None:
            fields = {"backend": self.backend, "key": self.key, "offset": offset}
            log.warning(
                "gcs chunk upload failed, resuming in %.2fs: %s",
                delay,
                exc,
                extra={**fields, "attempt": backoff.failures},
            )

        return await retry_transient(PART_RETRY, attempt, on_retry=report)

    async def _put_range(self, chunk: bytes, pos: int, last: bool) -> Resource | None:
        span = f"bytes {pos}-{pos + len(chunk) - 1}" if chunk else "bytes *"
        total = self.size if last else "*"
        headers = {**await self.auth(), "Content-Type": OCTET, "Content-Range": f"{span}/{total}"}
        with self.errors("put", self.key), self._session_gone():
            resp = await self.http.request(
                "PUT", self.url, headers=headers, data=chunk, timeout=TIMEOUT, allow_redirects=False
            )
            if resp.status == 308:  # "resume incomplete": the chunk is in, send the next
                resp.release()
                return None
            resource: Resource = await resp.json(content_type=None)
        return resource

    async def _query(self) -> tuple[bool, int, Resource | None]:
        """(done, bytes the session holds, the object resource when done)."""
        headers = {**await self.auth(), "Content-Range": f"bytes */{self.size}"}
        with self.errors("put", self.key), self._session_gone():
            resp = await self.http.request(
                "PUT", self.url, headers=headers, data=b"", timeout=TIMEOUT, allow_redirects=False
            )
            if resp.status != 308:
                return True, self.size, await resp.json(content_type=None)
            held = resp.headers.get("Range", "")  # "bytes=0-N"; absent when nothing arrived
            resp.release()
        return False, int(held.rsplit("-", 1)[1]) + 1 if held else 0, None

    @contextmanager
    def _session_gone(self) -> Iterator[None]:
        """A resumable session that expired (or was cancelled) answers 404/410: that is
        not a missing bucket, the whole upload just has to start over."""
        try:
            yield
        except aiohttp.ClientResponseError as exc:
            if exc.status not in (404, 410):
                raise
            message = f"resumable upload session gone (HTTP {exc.status})"
            raise TransientStorageError(
                message, op="put", key=self.key, backend=self.backend
            ) from exc

    async def cancel(self) -> None:
        """Best effort: an abandoned session expires after a week anyway."""
        try:
            (await self.session.delete(self.url, timeout=TIMEOUT)).release()
        except Exception as exc:
            log.debug("gcs resumable session cancel failed: %s", type(exc).__name__)
