"""The error taxonomy shared by the SDK, the daemon and the storage backends."""

from __future__ import annotations


class ArtisyncError(Exception):
    """Base of every error artisync raises on purpose."""


class ProtocolError(ArtisyncError):
    """A bad frame or message; the connection that sent it is answered or dropped."""


class FrameTooLarge(ProtocolError):
    """A frame header announced more bytes than the decoder accepts."""


class InvalidMessage(ProtocolError):
    """A frame decoded, but its message is unknown or its fields are wrong."""


class ConnectionClosed(ProtocolError):
    """We closed the connection."""


class ConnectionBroken(ProtocolError):
    """The peer vanished in the middle of a conversation."""


class InvalidName(ArtisyncError, ValueError):
    """A project, task or artifact name that cannot be stored safely."""


class StorageError(ArtisyncError):
    """A storage operation failed."""

    def __init__(
        self, message: str, *, op: str = "", key: str = "", backend: str = "", hint: str = ""
    ) -> None:
        super().__init__(message)
        self.op = op
        self.key = key
        self.backend = backend
        self.hint = hint

    def __str__(self) -> str:
        parts = [super().__str__()]
        where = " ".join(p for p in (self.backend, self.op, self.key) if p)
        if where:
            parts.append(f"({where})")
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return " ".join(parts)


class TransientStorageError(StorageError):
    """Connection, timeout, 5xx, throttling: retry later.

    ``retry_after`` carries the server's Retry-After in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        op: str = "",
        key: str = "",
        backend: str = "",
        hint: str = "",
    ) -> None:
        super().__init__(message, op=op, key=key, backend=backend, hint=hint)
        self.retry_after = retry_after


class PermanentStorageError(StorageError):
    """Retrying will not help until something is changed; shown in status."""


class NotFound(PermanentStorageError):
    """The key does not exist."""


class AccessDenied(PermanentStorageError):
    """Bad credentials, missing permission, or a missing bucket/container."""


class IntegrityError(PermanentStorageError):
    """The bytes stored or read do not match the expected size or SHA-256."""
