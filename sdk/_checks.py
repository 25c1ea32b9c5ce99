"""Checks of what a caller passes in, done before anything is written."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from artisync.protocol import MAX_METADATA_BYTES, InvalidName, check_name, parse_destination


def checked_name(name: str) -> str:
    try:
        return check_name(name, "artifact name")
    except ValueError as exc:
        raise InvalidName(str(exc)) from None


def checked_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON round trip of ``metadata``: what will be stored, exactly."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    try:
        text = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from None
    if len(text) > MAX_METADATA_BYTES:
        raise ValueError("metadata is larger than 1 MB once serialised")
    checked: dict[str, Any] = json.loads(text)
    return checked


def delete_spec(obj: Any) -> dict[str, Any] | None:
    """For ``delete_after_upload``: the file, as it is now (the daemon deletes it
    only if it is still unchanged and owned by the submitting user)."""
    if not isinstance(obj, str | os.PathLike):
        return None
    path = os.path.abspath(os.fspath(obj))
    if not os.path.isfile(path):
        return None
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def resolve_destination(uri: str) -> str:
    """A bare path becomes absolute, so every process means the same folder.

    :raises ValueError: not a destination URI (an unknown scheme, say ``gcs://``)."""
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    parse_destination(uri)
    return uri


def is_dataframe(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and type(obj).__name__ == "DataFrame"
