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
from ._layout import (
    MAX_NAME_BYTES,
    artifact_prefix,
    artifact_version_key,
    check_name,
    decode_name,
    encode_name,
    index_key,
    object_key,
    parse_index_key,
    project_prefix,
    task_key,
)
from ._messages import (
    PROTOCOL_VERSION,
    error,
    ok,
    validate_request,
)
from ._records import (
    MAX_METADATA_BYTES,
    TASK_STATUSES,
    ArtifactRecord,
    Origin,
    Record,
    TaskRecord,
    new_artifact_record,
    new_id,
    new_task_record,
    task_event,
    validate_record,
)
from ._settings import Settings, load_settings
from ._sizes import format_size, parse_size
from ._spool import Spool, atomic_write_bytes, copy_file_fast, fsync_dir, hash_file

__all__ = [
    "MAX_METADATA_BYTES",
    "ArtifactRecord",
    "Origin",
    "Record",
    "TaskRecord",
    "new_artifact_record",
    "new_id",
    "new_task_record",
    "task_event",
    "DEFAULT_MAX_FRAME",
    "MAGIC",
    "MAX_NAME_BYTES",
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
    "artifact_prefix",
    "artifact_version_key",
    "atomic_write_bytes",
    "check_name",
    "copy_file_fast",
    "decode_name",
    "encode",
    "encode_name",
    "error",
    "format_size",
    "fsync_dir",
    "hash_file",
    "index_key",
    "load_settings",
    "object_key",
    "ok",
    "parse_size",
    "parse_index_key",
    "project_prefix",
    "task_key",
    "unpack_body",
    "validate_record",
    "validate_request",
]
