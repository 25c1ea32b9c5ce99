"""Text: a ``str`` that is not a path (UTF-8 .txt), and a dict or list (JSON or YAML).

=============  ===========================================================
dict / list    .json, .yaml (.yml)
str (text)     .txt
=============  ===========================================================

JSON is written in the dict's own order, on one line: only unindented JSON has
a C encoder, cheap enough for the caller's thread; the same content uploaded
twice is one blob. JSON has JSON's semantics, as in ClearML: non-str keys
become strings, tuples lists, and NaN/Infinity are written as the non-standard
tokens Python reads back. A dict or list JSON (or YAML) cannot hold, or a str
that is not valid UTF-8, is pickled when ``auto_pickle``. yaml is imported
only when a YAML artifact is written or read.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from ._base import (
    PREVIEW_MAX,
    Captured,
    Format,
    PickleInstead,
    Request,
    SerializationError,
    pick,
)

_JSON_LIKE = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def snapshot(obj: Any, req: Request) -> Captured | None:
    if isinstance(obj, str) and req.path is None:
        return _snap_text(obj, req)
    if isinstance(obj, dict | list):
        return _snap_json_like(obj, req)
    return None


def _snap_text(text: str, req: Request) -> Captured:
    pick(req.ext, {".txt": "text"}, "text (a str that is not a path)")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise PickleInstead("a str that is not valid UTF-8", None) from None
    return req.stored("str", "text", ".txt", data, req.preview or text[:200])


def _snap_json_like(obj: dict[Any, Any] | list[Any], req: Request) -> Captured:
    kind = "dict" if isinstance(obj, dict) else "list"
    fmt = pick(req.ext, _JSON_LIKE, kind)
    try:
        data = _dump_json(obj) if fmt == "json" else _dump_yaml(obj)
    except _NotRepresentable as exc:
        raise PickleInstead(f"this {kind} ({exc})", None) from None
    ext = ".json" if fmt == "json" else (req.ext or ".yaml")
    preview = req.preview or _json_like_preview(obj, data)
    return req.stored(kind, fmt, ext, data, preview[:PREVIEW_MAX])


class _NotRepresentable(Exception):
    pass


def _dump_json(obj: Any) -> bytes:
    # No indent: only then does json use its C encoder, 3x faster than the Python one
    # (and than copy.deepcopy), which matters since the snapshot is taken on the caller
    try:
        try:
            return json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escape them
            return json.dumps(obj, ensure_ascii=True).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise _NotRepresentable(f"not JSON-serializable: {exc}") from exc


def _dump_yaml(obj: Any) -> bytes:
    try:
        import yaml
    except ImportError:
        raise SerializationError(".yaml artifacts need PyYAML: pip install pyyaml") from None
    try:
        text: str = yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _NotRepresentable(f"not YAML-serializable: {exc}") from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _NotRepresentable(f"not valid UTF-8: {exc}") from exc


def _json_like_preview(obj: dict[Any, Any] | list[Any], data: bytes) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(map(repr, itertools.islice(obj, 20))) + (", ..." if len(obj) > 20 else "")
        head = f"dict, {len(obj)} keys: {keys}"
    else:
        head = f"list, {len(obj)} items"
    return f"{head}\n{data[:1500].decode('utf-8', 'ignore')}"


def _loads(type_: str, format_: str) -> bool:
    if type_ in ("dict", "list"):
        return format_ in ("json", "yaml")
    return type_ == "str" and format_ == "text"


def load(type_: str, format_: str, path: Path, allow_pickle: bool) -> Any:
    if format_ == "text":
        return path.read_text(encoding="utf-8")
    if format_ == "json":
        return json.loads(path.read_bytes())
    try:
        import yaml
    except ImportError:
        raise SerializationError(
            "reading .yaml artifacts needs PyYAML: pip install pyyaml"
        ) from None
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


FORMAT = Format("text", snapshot, _loads, load)
