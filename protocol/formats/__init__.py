"""artisync.protocol.formats: snapshot an object now, write its payload later, read it back.

``snapshot()`` runs on the training loop's thread. It captures the object so
that later mutation cannot change what is stored (a deep copy, or the
serialized bytes when serializing is about as cheap as copying, or a kernel
copy of a file into the spool) and returns a ``Snapshot`` whose ``write()``
runs in a background thread: it serializes into a spool temp file and commits
it under its content address. ``load()`` is the inverse, from the local path
of the main blob; folders and wildcards are read with ``materialize_tree()``.

One module per artifact format, each with its ``snapshot``, its writer, its
preview, its ``load`` and a ``FORMAT`` entry in ``FORMATS`` below
(``extension_name`` picks the stored form; the first listed is the default):

=============  ===========================================================
``files``      a path to a file: the file as it is
``trees``      a folder, or a wildcard: a tree of files plus a listing
``dataframe``  .parquet (if pyarrow is importable, else .csv.gz), .csv.gz,
               .csv, .feather, .pickle
``array``      .npz, .csv.gz (1-D/2-D numeric)
``image``      .png, .jpg/.jpeg, .webp, .bmp, .tif/.tiff, .gif
``text``       a str that is no path: .txt; a dict or list: .json, .yaml (.yml)
``binary``     bytes: any extension; a serialization_function's bytes; and
               anything else: pickle (.pkl / .pickle) when auto_pickle
=============  ===========================================================

Which ``str`` is a path is decided once, in ``_paths``, before the formats
are asked. Nothing heavy is imported here: pandas, numpy, PIL, pyarrow and
yaml are imported inside the functions that need them, and an object is
recognised by the modules of its class before anything is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from artisync.protocol import Spool

from . import array, binary, dataframe, files, image, text, trees
from ._base import (
    PREVIEW_MAX,
    Format,
    PickleInstead,
    Request,
    SerializationError,
    Snapshot,
    StoredPayload,
    UnpicklingRefused,
)
from ._paths import is_pathlike, resolve_path
from .trees import materialize_tree

# Asked in order: the first whose snapshot() takes the object stores it, the first
# whose loads() accepts a record reads it. binary stays last: it reads any type's
# pickles and bytes. A new format is one module and one line here.
FORMATS: tuple[Format, ...] = (
    files.FORMAT,
    trees.FORMAT,
    dataframe.FORMAT,
    array.FORMAT,
    image.FORMAT,
    text.FORMAT,
    binary.FORMAT,
)


def snapshot(
    obj: Any,
    spool: Spool,
    *,
    auto_pickle: bool = True,
    extension_name: str | None = None,
    serialization_function: Callable[[Any], bytes] | None = None,
    preview: Any = None,
) -> Snapshot:
    """Capture ``obj`` now (cheaply); its payload is written later by ``Snapshot.write``.

    :raises SerializationError: the object cannot be stored as asked (missing path,
        unsupported extension, not serializable and ``auto_pickle`` is off, ...).
    """
    ext = _norm_ext(extension_name)
    pv = None if preview is None else str(preview)[:PREVIEW_MAX]
    if serialization_function is not None:
        return binary.snapshot_custom(obj, serialization_function, ext, pv)
    if ext == ".pkl":
        return binary.snapshot_pickle(obj, ".pkl", pv)
    target = resolve_path(obj) if isinstance(obj, str) or is_pathlike(obj) else None
    req = Request(spool, ext, auto_pickle, pv, target)
    try:
        for fmt in FORMATS:
            snap = fmt.snapshot(obj, req)
            if snap is not None:
                return snap
        instead = PickleInstead(f"{type(obj).__name__} objects", ext)
    except PickleInstead as exc:
        instead = exc
    return binary.pickle_instead(obj, instead, req)


def _norm_ext(ext: str | None) -> str | None:
    if ext is None or ext == "":
        return None
    if not isinstance(ext, str):
        raise SerializationError(f"extension_name must be a string like '.json', not {ext!r}")
    ext = ext.strip().lower()
    return ext if ext.startswith(".") else "." + ext


def load(
    type: str,
    format: str,
    path: Path,
    *,
    allow_pickle: bool = False,
    deserialization_function: Callable[[bytes], Any] | None = None,
) -> Any:
    """Read an artifact back from the local path of its main blob.

    Files come back as the path itself (a ``str``). Trees (folder, wildcard) are
    not loaded here: use ``materialize_tree``.

    :raises UnpicklingRefused: the payload is a pickle and ``allow_pickle`` is False.
    :raises SerializationError: unknown type or format.
    """
    path = Path(path)
    if trees.FORMAT.loads(type, format):  # refused even with a deserialization_function
        return trees.FORMAT.load(type, format, path, allow_pickle)
    if deserialization_function is not None:
        return deserialization_function(path.read_bytes())
    for fmt in FORMATS:
        if fmt.loads(type, format):
            return fmt.load(type, format, path, allow_pickle)
    raise SerializationError(f"unknown artifact type/format {type!r}/{format!r}")


__all__ = [
    "FORMATS",
    "PREVIEW_MAX",
    "Format",
    "SerializationError",
    "Snapshot",
    "StoredPayload",
    "UnpicklingRefused",
    "load",
    "materialize_tree",
    "snapshot",
]
