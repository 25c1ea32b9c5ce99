"""artisync.protocol: the contract between the SDK and the daemon.

Frame codec, message schemas and validation, the remote layout, the spool
layout and its atomic-write helpers, and settings resolution. Depends on
nothing else of artisync.
"""

from ._errors import (
    AccessDenied,
    ArtisyncError,
    ConnectionBroken,
    ConnectionClosed,
    FrameTooLarge,
    IntegrityError,
    InvalidMessage,
    InvalidName,
    NotFound,
    PermanentStorageError,
    ProtocolError,
    StorageError,
    TransientStorageError,
)
from ._frames import DEFAULT_MAX_FRAME, MAGIC, FrameDecoder, encode, unpack_body
from ._messages import (
    PROTOCOL_VERSION,
    TASK_STATUSES,
    error,
    ok,
    validate_record,
    validate_request,
)
from ._settings import Settings, load_settings
from ._spool import Spool, atomic_write_bytes, copy_file_fast, fsync_dir, hash_file

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAGIC",
    "PROTOCOL_VERSION",
    "TASK_STATUSES",
    "AccessDenied",
    "ArtisyncError",
    "ConnectionBroken",
    "ConnectionClosed",
    "FrameDecoder",
    "FrameTooLarge",
    "IntegrityError",
    "InvalidMessage",
    "InvalidName",
    "NotFound",
    "PermanentStorageError",
    "ProtocolError",
    "Settings",
    "Spool",
    "StorageError",
    "TransientStorageError",
    "atomic_write_bytes",
    "copy_file_fast",
    "encode",
    "error",
    "fsync_dir",
    "hash_file",
    "load_settings",
    "ok",
    "unpack_body",
    "validate_record",
    "validate_request",
]
