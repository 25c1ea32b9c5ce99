"""One classifier for the cloud services' HTTP errors (s3, gs, azure).

Every service answers with an HTTP status and, most of the time, an error code of
its own (``NoSuchKey``, ``BlobNotFound``...). :meth:`HttpErrors.classify` turns
the pair into one :class:`Verdict`, the same way for all of them; what differs
between services is only the table: which codes mean what, which statuses mean
"not found" and "denied", what a status that is neither 4xx nor 5xx means, and the
words of the messages (:meth:`HttpErrors.error`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import (
    AccessDenied,
    IntegrityError,
    NotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)

RETRYABLE_STATUS = frozenset({408, 429})  # request timeout, too many requests (and 5xx)


class Verdict(enum.Enum):
    CONTAINER_MISSING = "container missing"  # the bucket or container itself: AccessDenied
    NOT_FOUND = "not found"
    ACCESS_DENIED = "access denied"
    INTEGRITY = "integrity"
    TRANSIENT = "transient"  # retry, not sooner than Retry-After
    PERMANENT = "permanent"  # any other client error
    UNCLASSIFIED = "unclassified"  # neither a 4xx nor a 5xx: ``HttpErrors.unclassified``


@dataclass(frozen=True)
class HttpErrors:
    """One service's table.

    :param container_missing: message when the bucket/container does not exist;
        ``{name}`` and ``{text}`` (the status or code and the server's message) are
        filled in.
    :param container_hint: the operator hint that goes with it.
    :param denied_hint: the hint for denied access (where credentials come from).
    :param thing: what the service stores ("object", "blob").
    :param service: who rejected a checksum ("server", "service").
    :param unclassified: the error for a status that is neither 4xx nor 5xx.
    """

    container_missing: str
    container_hint: str
    denied_hint: str
    thing: str = "object"
    service: str = "server"
    missing_codes: frozenset[str] = frozenset()
    not_found_codes: frozenset[str] = frozenset()
    denied_codes: frozenset[str] = frozenset()
    integrity_codes: frozenset[str] = frozenset()
    transient_codes: frozenset[str] = frozenset()
    not_found_status: frozenset[int] = frozenset({404})
    denied_status: frozenset[int] = frozenset({401, 403})
    unclassified: type[StorageError] = TransientStorageError

    def classify(self, status: int, code: str) -> Verdict:
        if code in self.missing_codes:
            return Verdict.CONTAINER_MISSING
        if code in self.not_found_codes or status in self.not_found_status:
            return Verdict.NOT_FOUND
        if code in self.denied_codes or status in self.denied_status:
            return Verdict.ACCESS_DENIED
        if code in self.integrity_codes:
            return Verdict.INTEGRITY
        if code in self.transient_codes or status in RETRYABLE_STATUS or status >= 500:
            return Verdict.TRANSIENT
        if 400 <= status < 500:
            return Verdict.PERMANENT
        return Verdict.UNCLASSIFIED

    def error(
        self,
        status: int,
        code: str,
        text: str,
        ctx: Mapping[str, Any],
        *,
        container: str,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> StorageError:
        """The error to raise for a response with ``status`` and ``code``.

        :param text: short description of the response (code or status, message).
        :param ctx: op, key and backend, for the error's context.
        :param container: the bucket or container name, for the "missing" message.
        :param retry_after: the server's Retry-After, in seconds, for a transient error.
        :param detail: appended to the message of a permanent client error."""
        verdict = self.classify(status, code)
        if verdict is Verdict.CONTAINER_MISSING:
            message = self.container_missing.format(name=container, text=text)
            return AccessDenied(message, **ctx, hint=self.container_hint)
        if verdict is Verdict.NOT_FOUND:
            return NotFound(f"no such {self.thing} ({text})", **ctx)
        if verdict is Verdict.ACCESS_DENIED:
            return AccessDenied(f"access denied ({text})", **ctx, hint=self.denied_hint)
        if verdict is Verdict.INTEGRITY:
            return IntegrityError(f"checksum rejected by the {self.service} ({text})", **ctx)
        if verdict is Verdict.TRANSIENT:
            return TransientStorageError(text, retry_after=retry_after, **ctx)
        if verdict is Verdict.PERMANENT:
            return PermanentStorageError(f"{text}: {detail}" if detail else text, **ctx)
        return self.unclassified(text, **ctx)
