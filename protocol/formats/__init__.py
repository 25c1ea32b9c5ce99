"""artisync.protocol.formats: a raw snapshot now, the stored form later, and back.

``snapshot()`` runs on the training loop's thread. It writes the cheapest
snapshot that later mutation cannot change into the spool's ``raw/`` (Arrow
IPC for a DataFrame, an .npy for an array, the pixels of an image, a kernel
copy of a file or folder, or the stored bytes themselves when making them
costs no more than a copy: JSON, text, bytes, pickles) and returns a
``Captured`` for the record. ``encode()`` runs in the daemon, in another
process: the raw snapshot's codec writes the stored form (parquet, npz,
png...), hashing it as it goes, and commits it under its content address.
``load()`` reads a stored payload from the local path of its main blob;
``load_raw()`` reads a raw snapshot not yet encoded; folders and wildcards
are read with ``materialize_tree()`` (stored) or ``materialize_pack()`` (raw).

One module per artifact format, each with its ``snapshot``, its codec (when
the daemon has encoding to do), its preview, its ``load`` and a ``FORMAT``
entry in ``FORMATS`` below
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

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artisync.protocol import Spool

from . import array, binary, dataframe, files, image, text, trees
from ._base import (
    INLINE_MAX,
    LEASE_UNKNOWN,
    NOT_LEASED,
    PREVIEW_MAX,
    SMALL_PAYLOAD,
    Captured,
    Codec,
    Format,
    Leasing,
    PickleInstead,
    Request,
    SerializationError,
    StoredPayload,
    UnpicklingRefused,
    commit_raw,
    linked_blob,
    single_blob,
    write_raw_bytes,
)
from ._packed import in_pack, listing_of, pack_name, read_member
from ._paths import copy_fd, is_pathlike, resolve_path
from .files import LEASE_MIN, copy_leased, file_identity
from .trees import materialize_pack, materialize_tree, read_listing

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
    record_id: str,
    *,
    auto_pickle: bool = True,
    extension_name: str | None = None,
    serialization_function: Callable[[Any], bytes] | None = None,
    preview: Any = None,
    room: Callable[[int], None] | None = None,
    opener: Callable[[], int] | None = None,
    lease: Leasing | None = None,
) -> Captured:
    """Write the raw snapshot of ``obj`` to ``spool.raw_path(record_id)`` now
    (``room(n)`` raises when ``n`` more bytes must not go into the spool; ``opener``,
    when given, makes the raw file instead: a shared daemon's, as a descriptor;
    ``lease``: see ``Request.lease``).

    Nothing is left behind when this raises.

    :raises SerializationError: the object cannot be stored as asked (missing path,
        unsupported extension, not serializable and ``auto_pickle`` is off, ...).
    """
    ext = _norm_ext(extension_name)
    pv = None if preview is None else str(preview)[:PREVIEW_MAX]
    target = resolve_path(obj) if isinstance(obj, str) or is_pathlike(obj) else None
    pool = spool.free if spool.recycle and opener is None else None
    req = Request(
        spool.raw_path(record_id),
        spool.file_mode,
        ext,
        auto_pickle,
        pv,
        target,
        room,
        opener,
        pool,
        None if opener is not None else lease,
    )
    if serialization_function is not None:
        return binary.snapshot_custom(obj, serialization_function, req)
    if ext == ".pkl":
        return binary.snapshot_pickle(obj, ".pkl", req)
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


# Raw snapshots the daemon encodes; "stored" ones are the stored form already.
CODECS: dict[str, Codec] = {
    c.name: c for c in (dataframe.CODEC, array.CODEC, image.CODEC, trees.CODEC)
}
RAW_CODECS = ("stored", *CODECS)


def encode(
    spool: Spool, record: dict[str, Any], linked: str | None = None
) -> tuple[StoredPayload, str | None]:
    """The daemon's step: turn the record's raw snapshot into its stored form, committed
    in ``spool.blobs``; returns the payload and, when the record has none, a preview.
    The raw snapshot is left in place (the daemon removes it once the record is journaled).
    ``linked``: the blob the daemon made the raw snapshot a name of (see ``linked_blob``).

    :raises SerializationError: the raw snapshot is not what its record says.
    :raises OSError: the spool cannot be read or written (e.g. its disk is full).
    """
    spec = record["raw"]
    raw = spool.raw_path(record["record_id"])
    codec = spec["codec"]
    if codec != "stored" and codec not in CODECS:
        raise SerializationError(f"unknown raw codec {codec!r}")
    data = spec.get("data")
    if data is not None and codec == "stored":  # small: inside the record
        if len(data) <= SMALL_PAYLOAD:
            # a payload the record keeps (see SMALL_PAYLOAD) is durable in the journal,
            # read from there, and published inside its record: no blob, no object (a
            # file made and removed for each small dict was most of its daemon's cost)
            return single_blob(hashlib.sha256(data).hexdigest(), len(data)), None
        return single_blob(*spool.write_blob_bytes(data)), None
    if data is not None and not raw.exists():
        write_raw_bytes(raw, data, spool.file_mode)
    if codec == "stored":
        known = linked_blob(spool, raw, linked) if linked else None
        return single_blob(*(known or commit_raw(spool, raw))), None
    return CODECS[codec].encode(spool, record, raw)


def load_raw(record: dict[str, Any], raw: Path | None, *, allow_pickle: bool = False) -> Any:
    """Read an artifact back from its raw snapshot (before the daemon encoded it):
    the file ``raw``, or the bytes inside the record."""
    data = record["raw"].get("data")
    if data is not None:
        fd, name = tempfile.mkstemp(prefix="artisync-raw-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return load_raw(
                {**record, "raw": {**record["raw"], "data": None}},
                Path(name),
                allow_pickle=allow_pickle,
            )
        finally:
            os.unlink(name)
    if raw is None:
        raise FileNotFoundError("no raw snapshot")
    codec = record["raw"]["codec"]
    if codec == "stored":
        return load(record["type"], record["format"], raw, allow_pickle=allow_pickle)
    if codec not in CODECS:
        raise SerializationError(f"unknown raw codec {codec!r}")
    return CODECS[codec].load(record, raw, allow_pickle)


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
    "copy_fd",
    "copy_leased",
    "file_identity",
    "CODECS",
    "LEASE_MIN",
    "FORMATS",
    "INLINE_MAX",
    "LEASE_UNKNOWN",
    "NOT_LEASED",
    "Leasing",
    "SMALL_PAYLOAD",
    "PREVIEW_MAX",
    "RAW_CODECS",
    "Captured",
    "Format",
    "SerializationError",
    "StoredPayload",
    "UnpicklingRefused",
    "encode",
    "in_pack",
    "listing_of",
    "load",
    "load_raw",
    "materialize_pack",
    "materialize_tree",
    "pack_name",
    "read_listing",
    "read_member",
    "snapshot",
]
