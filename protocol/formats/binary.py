"""Bytes, pickles, and the bytes a caller's ``serialization_function`` returns.

=============  ===========================================================
bytes          any extension (opaque); default .bin
custom         any extension; the bytes serialization_function returned
anything else  pickle (.pkl / .pickle) when auto_pickle
=============  ===========================================================

``extension_name=".pkl"`` pickles any object (as ClearML does). This module's
registry entry comes last: it reads pickles and bytes of any record type.
"""

from __future__ import annotations

import pickle
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._base import (
    PREVIEW_MAX,
    Captured,
    Format,
    PickleInstead,
    Request,
    SerializationError,
    check_pickle,
)


def snapshot(obj: Any, req: Request) -> Captured | None:
    if not isinstance(obj, bytes | bytearray | memoryview):
        return None
    data = bytes(obj)
    preview = req.preview or _bytes_preview(data)
    return req.stored("bytes", "bytes", req.ext or ".bin", data, preview)


def snapshot_custom(obj: Any, fn: Callable[[Any], bytes], req: Request) -> Captured:
    """The bytes ``fn(obj)`` returns, stored as they are."""
    try:
        data = fn(obj)
    except Exception as exc:
        raise SerializationError(f"serialization_function raised {exc!r}") from exc
    if not isinstance(data, bytes | bytearray):
        raise SerializationError(
            f"serialization_function must return bytes, not {type(data).__name__}"
        )
    data = bytes(data)
    return req.stored("custom", "bytes", req.ext or "", data, req.preview or _safe_repr(obj))


def snapshot_pickle(obj: Any, ext: str, req: Request) -> Captured:
    try:
        data = pickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {type(obj).__name__}: {exc}") from exc
    return req.stored("pickle", "pickle", ext, data, req.preview or _safe_repr(obj))


def pickle_instead(obj: Any, instead: PickleInstead, req: Request) -> Captured:
    """Pickle an object no format holds (``instead.why`` says which), if allowed."""
    ext = instead.ext
    if not req.auto_pickle:
        raise SerializationError(
            f"{instead.why} cannot be stored without pickle and auto_pickle is off; pass "
            "auto_pickle=True, or a serialization_function returning bytes"
        )
    if ext not in (None, ".pkl", ".pickle"):
        raise SerializationError(
            f"{type(obj).__name__} is stored as a pickle; extension_name={ext!r} is not "
            "allowed (allowed: .pkl, .pickle)"
        )
    return snapshot_pickle(obj, ext or ".pkl", req)


def _safe_repr(obj: Any) -> str:
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlevel = 200, PREVIEW_MAX, 3
    try:
        return r.repr(obj)[:PREVIEW_MAX]
    except Exception:  # a broken __repr__ must not stop the upload
        return f"<{type(obj).__name__}>"


def _bytes_preview(data: bytes) -> str:
    return f"{len(data)} bytes: {data[:32].hex(' ')}{' ...' if len(data) > 32 else ''}"


def _loads(type_: str, format_: str) -> bool:
    return format_ in ("pickle", "bytes")


def load(type_: str, format_: str, path: Path, allow_pickle: bool) -> Any:
    if format_ == "bytes":
        return path.read_bytes()
    check_pickle(allow_pickle)
    with open(path, "rb") as f:
        return pickle.load(f)


FORMAT = Format("binary", snapshot, _loads, load)
