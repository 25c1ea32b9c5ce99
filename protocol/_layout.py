"""Remote layout and safe names.

Every user-supplied name becomes exactly one path component: NFC-normalised,
then percent-encoded with nothing left unescaped but ``A-Za-z0-9_-~.``, so a
name can never contain ``/`` or climb out of its prefix, on any backend.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote, unquote, urlsplit

MAX_NAME_BYTES = 180  # encoded; leaves room under the common 255-byte component limit


def check_name(name: str, what: str = "name") -> str:
    """Return the NFC form of ``name``; raise ValueError if it cannot be stored."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, not {type(name).__name__}")
    norm = unicodedata.normalize("NFC", name)
    if not norm.strip():
        raise ValueError(f"{what} must not be empty")
    if "\x00" in norm:
        raise ValueError(f"{what} must not contain NUL")
    if norm in (".", ".."):
        raise ValueError(f"{what} must not be '.' or '..'")
    if any(unicodedata.category(c) == "Cc" for c in norm):
        raise ValueError(f"{what} must not contain control characters")
    if len(encode_name(norm)) > MAX_NAME_BYTES:
        raise ValueError(f"{what} is too long once encoded (limit {MAX_NAME_BYTES} bytes)")
    return norm


def encode_name(name: str) -> str:
    norm = unicodedata.normalize("NFC", name)
    enc = quote(norm, safe="")
    if enc.startswith("."):  # no hidden files, no '..'
        enc = "%2E" + enc[1:]
    return enc


def decode_name(component: str) -> str:
    return unquote(component)


def object_key(sha256: str) -> str:
    return f"objects/sha256/{sha256[:2]}/{sha256}"


def task_key(task_id: str) -> str:
    return f"tasks/{task_id}/task.json"


def artifact_prefix(task_id: str, name: str | None = None) -> str:
    base = f"tasks/{task_id}/artifacts/"
    return base if name is None else f"{base}{encode_name(name)}/"


def artifact_version_key(task_id: str, name: str, created: float, record_id: str) -> str:
    """Immutable key of one artifact version; sortable by time, unique per record."""
    return f"{artifact_prefix(task_id, name)}{version_stamp(created, record_id)}.json"


def batch_prefix(task_id: str) -> str:
    return f"tasks/{task_id}/batches/"


def batch_key(task_id: str, created: float, batch_id: str) -> str:
    """Immutable key of a batch of artifact versions published in one object (a burst
    of small artifacts: one PUT for many); sortable by its oldest version's time."""
    return f"{batch_prefix(task_id)}{int(created * 1e6):017d}-{batch_id}.json"


def version_stamp(created: float, record_id: str) -> str:
    """What orders the versions of one artifact, wherever they were published."""
    return f"{int(created * 1e6):017d}-{record_id}"


DESTINATION_SCHEMES = ("file", "s3", "gs", "azure")  # one storage backend each


def parse_destination(uri: str) -> tuple[str, str, str]:
    """A destination URI -> (scheme, bucket-or-root, prefix). A bare absolute path is
    ``file``. Checked by the SDK at ``Task.init`` and by the daemon for every record.

    :raises ValueError: not a destination, with what would be one."""
    if not uri or not isinstance(uri, str):
        raise ValueError("storage URI must be a non-empty string")
    if "://" not in uri:
        if not uri.startswith("/"):
            raise ValueError(f"storage path {uri!r} must be absolute (or a URI)")
        return "file", uri, ""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in DESTINATION_SCHEMES:
        raise ValueError(
            f"unknown storage scheme {scheme!r} in {uri!r}; "
            f"use one of: {', '.join(sorted(DESTINATION_SCHEMES))}"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} must be file:///absolute/path")
        return "file", parts.path, ""
    if not parts.netloc:
        raise ValueError(f"storage URI {uri!r} has no bucket or container")
    return scheme, parts.netloc, parts.path.strip("/")
