"""Artifact serializers: snapshot an object now, write its payload later, read it back.

``snapshot()`` runs on the training loop's thread. It captures the object so
that later mutation cannot change what is stored (a deep copy, or the
serialized bytes when serializing is about as cheap as copying, or a kernel
copy of a file into the spool) and returns a ``Snapshot`` whose ``write()``
runs in a background thread: it serializes into a spool temp file and commits
it under its content address. ``load()`` is the inverse, from the local path
of the main blob; folders and wildcards are read with ``materialize_tree()``.

Format rules (``extension_name`` picks; first one is the default):

=============  ===========================================================
DataFrame      .parquet (if pyarrow is importable, else .csv.gz), .csv.gz,
               .csv, .feather, .pickle
dict / list    .json, .yaml (.yml)
ndarray        .npz (one array, key ``array``), .csv.gz (1-D/2-D numeric)
PIL Image      .png, .jpg/.jpeg, .webp, .bmp, .tif/.tiff, .gif
str (text)     .txt
bytes          any extension (opaque); default .bin
custom         any extension; the bytes serialization_function returned
anything else  pickle (.pkl / .pickle) when auto_pickle
=============  ===========================================================

``extension_name=".pkl"`` pickles any object (as ClearML does). Paths
(files, folders, wildcards) and the ``str`` rule are in ``_trees``.

Output is deterministic where that is cheap (parquet/feather from pyarrow,
gzip with mtime 0 and no name, npz with fixed zip timestamps, JSON in the
dict's own order, on one line: only unindented JSON has a C encoder, cheap
enough for the caller's thread), so the same content uploaded twice is one blob. JSON has
JSON's semantics, as in ClearML: non-str keys become strings, tuples lists,
and NaN/Infinity are written as the non-standard tokens Python reads back.
A dict or list JSON (or YAML) cannot hold is pickled when ``auto_pickle``.

Nothing heavy is imported here at module level: pandas, numpy, PIL, pyarrow
and yaml are imported inside the functions that need them, and an object is
recognised by the modules of its class before anything is imported.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib.util
import io
import itertools
import json
import pickle
import reprlib
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artisync.protocol import ArtisyncError, Spool

PREVIEW_MAX = 2000
NPZ_KEY = "array"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: same array, same bytes


class SerializationError(ArtisyncError, ValueError):
    """The object cannot be stored as asked; the message says why and what to do."""


class UnpicklingRefused(ArtisyncError, PermissionError):
    """The payload is a pickle and unpickling was not allowed."""


@dataclass
class StoredPayload:
    sha256: str  # the main blob (the payload, or the tree listing)
    size: int  # size of the main blob (for trees: total size of all files)
    blobs: list[tuple[str, int]]  # every blob the record needs uploaded, main included


Preview = str | Callable[[], str]  # the text, or how to make it from the captured copy


class Snapshot:
    """A captured artifact; call exactly one of ``write(spool)`` or ``discard()``.

    ``preview`` is made on first access when it needs formatting (a DataFrame's
    head, an array's corners), from the captured copy: read first on the writer
    thread, it costs the caller nothing.
    """

    def __init__(
        self,
        type: str,
        format: str,
        extension: str,
        preview: Preview,
        write: Callable[[Spool], StoredPayload],
        discard: Callable[[], None],
        filename: str | None = None,
    ) -> None:
        self.type = type
        self.format = format
        self.extension = extension
        self._preview = preview
        self._preview_lock = threading.Lock()
        self.write = write
        self.discard = discard
        self.filename = filename  # original file or folder name, for path artifacts

    @property
    def preview(self) -> str:
        with self._preview_lock:
            if not isinstance(self._preview, str):
                try:
                    self._preview = self._preview()[:PREVIEW_MAX]
                except Exception:  # a preview must never fail the upload
                    self._preview = f"{self.type} ({self.format})"
            return self._preview

    def __repr__(self) -> str:
        return f"<Snapshot {self.type} {self.format} {self.extension!r}>"


class _Once:
    """Runs the writer at most once; temp files never outlive write() or discard()."""

    def __init__(self, fn: Callable[[Spool], StoredPayload], temps: list[Path]) -> None:
        self._fn: Callable[[Spool], StoredPayload] | None = fn
        self._temps = temps
        self._state = "ready"
        self._lock = threading.Lock()

    def write(self, spool: Spool) -> StoredPayload:
        with self._lock:
            if self._state != "ready" or self._fn is None:
                raise RuntimeError(f"snapshot already {self._state}")
            fn, self._fn, self._state = self._fn, None, "written"
        try:
            return fn(spool)
        finally:
            self._cleanup()  # committed temps were renamed away; the rest go

    def discard(self) -> None:
        with self._lock:
            if self._state != "ready":
                return
            self._fn, self._state = None, "discarded"
        self._cleanup()

    def _cleanup(self) -> None:
        for tmp in self._temps:
            tmp.unlink(missing_ok=True)
        self._temps = []


def make_snapshot(
    type_: str,
    format_: str,
    extension: str,
    preview: Preview,
    fn: Callable[[Spool], StoredPayload],
    temps: list[Path] | None = None,
    filename: str | None = None,
) -> Snapshot:
    once = _Once(fn, temps or [])
    if isinstance(preview, str):
        preview = preview[:PREVIEW_MAX]
    return Snapshot(type_, format_, extension, preview, once.write, once.discard, filename)


def _single(sha: str, size: int) -> StoredPayload:
    return StoredPayload(sha, size, [(sha, size)])


def write_bytes_blob(spool: Spool, data: bytes) -> tuple[str, int]:
    """Like ``Spool.write_blob_bytes``, but the temp file goes if the commit fails too."""
    sha = hashlib.sha256(data).hexdigest()
    f, tmp = spool.open_temp()
    try:
        with f:
            f.write(data)
        return spool.commit_temp(tmp, sha)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _bytes_writer(data: bytes) -> Callable[[Spool], StoredPayload]:
    return lambda spool: _single(*write_bytes_blob(spool, data))


def _file_writer(
    obj: Any, serialize: Callable[[Any, Path], None]
) -> Callable[[Spool], StoredPayload]:
    """Serialize ``obj`` into a spool temp path, then commit it (hash, fsync, rename)."""
    holder = [obj]

    def write(spool: Spool) -> StoredPayload:
        f, tmp = spool.open_temp()
        f.close()
        try:
            serialize(holder.pop(), tmp)
            return _single(*spool.commit_temp(tmp))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    return write


# ---------------------------------------------------------------------------- snapshot


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
        return _snap_custom(obj, serialization_function, ext, pv)
    if ext == ".pkl":
        return _snap_pickle(obj, ".pkl", pv)
    if isinstance(obj, str) or _is_pathlike(obj):
        from ._trees import snapshot_path

        snap = snapshot_path(obj, spool, ext, pv)
        if snap is not None:
            return snap
        return _snap_text(obj, ext, auto_pickle, pv)
    if isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        return make_snapshot(
            "bytes", "bytes", ext or ".bin", pv or _bytes_preview(data), _bytes_writer(data)
        )
    if _from(obj, "pandas") and _isinstance_lazy(obj, "pandas", "DataFrame"):
        return _snap_pandas(obj, ext, auto_pickle, pv)
    if _from(obj, "numpy") and _isinstance_lazy(obj, "numpy", "ndarray"):
        return _snap_numpy(obj, ext, auto_pickle, pv)
    if _from(obj, "PIL") and _isinstance_lazy(obj, "PIL.Image", "Image"):
        return _snap_image(obj, ext, pv)
    if isinstance(obj, dict | list):
        return _snap_json_like(obj, ext, auto_pickle, pv)
    return _fallback_pickle(obj, ext, auto_pickle, pv, f"{type(obj).__name__} objects")


def _norm_ext(ext: str | None) -> str | None:
    if ext is None or ext == "":
        return None
    if not isinstance(ext, str):
        raise SerializationError(f"extension_name must be a string like '.json', not {ext!r}")
    ext = ext.strip().lower()
    return ext if ext.startswith(".") else "." + ext


def _pick(ext: str | None, table: dict[str, str], what: str) -> str:
    """The format for ``ext`` (the table's first entry when None)."""
    if ext is None:
        return next(iter(table.values()))
    if ext not in table:
        raise SerializationError(
            f"{what} cannot be stored with extension_name={ext!r}; allowed: {', '.join(table)}"
        )
    return table[ext]


def _is_pathlike(obj: Any) -> bool:
    return hasattr(type(obj), "__fspath__")


def _from(obj: Any, package: str) -> bool:
    """Is ``obj``'s class (or a base) defined in ``package``? Imports nothing."""
    if package not in sys.modules:
        return False
    return any(c.__module__.split(".", 1)[0] == package for c in type(obj).__mro__)


def _isinstance_lazy(obj: Any, module: str, name: str) -> bool:
    return isinstance(obj, getattr(importlib.import_module(module), name))


def _safe_repr(obj: Any) -> str:
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlevel = 200, PREVIEW_MAX, 3
    try:
        return r.repr(obj)[:PREVIEW_MAX]
    except Exception:  # a broken __repr__ must not stop the upload
        return f"<{type(obj).__name__}>"


def _bytes_preview(data: bytes) -> str:
    return f"{len(data)} bytes: {data[:32].hex(' ')}{' ...' if len(data) > 32 else ''}"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _snap_custom(obj: Any, fn: Callable[[Any], bytes], ext: str | None, pv: str | None) -> Snapshot:
    try:
        data = fn(obj)
    except Exception as exc:
        raise SerializationError(f"serialization_function raised {exc!r}") from exc
    if not isinstance(data, bytes | bytearray):
        raise SerializationError(
            f"serialization_function must return bytes, not {type(data).__name__}"
        )
    data = bytes(data)
    return make_snapshot("custom", "bytes", ext or "", pv or _safe_repr(obj), _bytes_writer(data))


def _snap_pickle(obj: Any, ext: str, pv: str | None) -> Snapshot:
    try:
        data = pickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {type(obj).__name__}: {exc}") from exc
    return make_snapshot("pickle", "pickle", ext, pv or _safe_repr(obj), _bytes_writer(data))


def _fallback_pickle(
    obj: Any, ext: str | None, auto_pickle: bool, pv: str | None, why: str
) -> Snapshot:
    if not auto_pickle:
        raise SerializationError(
            f"{why} cannot be stored without pickle and auto_pickle is off; pass "
            "auto_pickle=True, or a serialization_function returning bytes"
        )
    if ext not in (None, ".pkl", ".pickle"):
        raise SerializationError(
            f"{type(obj).__name__} is stored as a pickle; extension_name={ext!r} is not "
            "allowed (allowed: .pkl, .pickle)"
        )
    return _snap_pickle(obj, ext or ".pkl", pv)


def _snap_text(text: str, ext: str | None, auto_pickle: bool, pv: str | None) -> Snapshot:
    _pick(ext, {".txt": "text"}, "text (a str that is not a path)")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return _fallback_pickle(text, None, auto_pickle, pv, "a str that is not valid UTF-8")
    return make_snapshot("str", "text", ".txt", pv or text[:200], _bytes_writer(data))


# -------------------------------------------------------------------------- dict / list


def _snap_json_like(
    obj: dict[Any, Any] | list[Any], ext: str | None, auto_pickle: bool, pv: str | None
) -> Snapshot:
    kind = "dict" if isinstance(obj, dict) else "list"
    fmt = _pick(ext, {".json": "json", ".yaml": "yaml", ".yml": "yaml"}, kind)
    try:
        data = _dump_json(obj) if fmt == "json" else _dump_yaml(obj)
    except _NotRepresentable as exc:
        return _fallback_pickle(obj, None, auto_pickle, pv, f"this {kind} ({exc})")
    ext = ".json" if fmt == "json" else (ext or ".yaml")
    return make_snapshot(kind, fmt, ext, pv or _json_like_preview(obj, data), _bytes_writer(data))


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


# ---------------------------------------------------------------------------- pandas


_PANDAS_FORMATS = {
    ".parquet": "parquet",
    ".csv.gz": "csv.gz",
    ".csv": "csv",
    ".feather": "feather",
    ".pickle": "pickle",
}


@functools.cache
def _have_pyarrow() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _snap_pandas(df: Any, ext: str | None, auto_pickle: bool, pv: str | None) -> Snapshot:
    if ext is None:
        fmt = "parquet" if _have_pyarrow() else "csv.gz"
    else:
        fmt = _pick(ext, _PANDAS_FORMATS, "a pandas DataFrame")
    if fmt in ("parquet", "feather") and not _have_pyarrow():
        raise SerializationError(f".{fmt} needs pyarrow: pip install pyarrow (or use .csv.gz)")
    # checked on the caller's frame, not the copy: its columns keep their cached hash table
    problem = _pandas_problem(df, fmt)
    if problem and ext is not None:
        raise SerializationError(
            f"this DataFrame cannot be stored as .{fmt}: {problem}; use extension_name='.pickle'"
        )
    if problem:  # the default format cannot hold it: pickle it, as ClearML does
        if not auto_pickle:
            raise SerializationError(
                f"this DataFrame cannot be stored as .{fmt} ({problem}) "
                "and auto_pickle is off; pass extension_name='.pickle'"
            )
        fmt = "pickle"
    copy = df.copy(deep=True)
    preview: Preview = functools.partial(_frame_preview, copy) if pv is None else pv
    ext = next(e for e, f in _PANDAS_FORMATS.items() if f == fmt)
    return make_snapshot("pandas", fmt, ext, preview, _file_writer(copy, _PANDAS_WRITERS[fmt]))


_HEAD_ROWS, _HEAD_COLS, _CELL_MAX, _ELLIPSIS = 5, 20, 40, "..."


def _frame_preview(df: Any) -> str:
    """Shape and head. Formatted here: ``DataFrame.to_string`` takes ~1 ms even for
    five rows, more than copying a 10,000-row frame, and this may run on the caller."""
    title = f"DataFrame {df.shape[0]} rows x {df.shape[1]} columns"
    try:
        head = df.iloc[:_HEAD_ROWS]  # a row slice is cheap; [:, :20] costs 8x as much
        if df.shape[1] > _HEAD_COLS:
            head = head.iloc[:, :_HEAD_COLS]
        more = [_ELLIPSIS] if df.shape[1] > _HEAD_COLS else []
        grid = [["", *map(_cell, head.columns.tolist()), *more]]
        for label, row in zip(
            head.index.tolist(), head.to_numpy(dtype=object).tolist(), strict=True
        ):
            grid.append([_cell(label), *map(_cell, row), *more])
    except Exception:  # an exotic frame must not stop the upload: the title will do
        return title
    widths = [max(len(r[j]) for r in grid) for j in range(len(grid[0]))]
    lines = [
        "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )
        for r in grid
    ]
    return "\n".join([title, *(line.rstrip() for line in lines)])


def _cell(value: Any) -> str:
    text = format(value, ".6g") if isinstance(value, float) else str(value)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= _CELL_MAX else text[: _CELL_MAX - 3] + _ELLIPSIS


def _pandas_problem(df: Any, fmt: str) -> str | None:
    """Why ``fmt`` cannot round-trip ``df`` (checked cheaply), or None."""
    import pandas as pd

    if fmt == "pickle":
        return None
    if not df.columns.is_unique:
        return "duplicate column names"
    if fmt in ("csv", "csv.gz"):
        if isinstance(df.index, pd.MultiIndex) or isinstance(df.columns, pd.MultiIndex):
            return "CSV cannot round-trip a MultiIndex"
        return None
    odd = [i for i, dtype in enumerate(_dtypes(df)) if not _arrow_native(dtype)]
    if not odd:  # pyarrow (not yet imported, maybe) is not needed to know
        return None
    import pyarrow as pa

    for i in odd:  # object, complex, sparse, categorical... columns: try them
        column = df.iloc[:, i]
        if column.dtype == object and pd.api.types.infer_dtype(column) in _ARROW_PLAIN:
            continue  # one C scan tells; converting the column would cost ~50x more
        try:
            pa.array(column, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            return f"column {df.columns[i]!r}: {exc}"
    return None


# What infer_dtype says of object columns Arrow always holds: all str (or all bytes,
# floats, bools; missing values allowed)
_ARROW_PLAIN = frozenset({"string", "bytes", "floating", "boolean", "empty"})


def _dtypes(df: Any) -> list[Any]:
    """The columns' dtypes. ``DataFrame.dtypes`` builds a Series, which costs as much as
    copying 10,000 rows when caches are cold; the frame's block manager (private,
    hence the fallback) lists them in a tenth of the time."""
    try:
        dtypes = list(df._mgr.get_dtypes())
        if len(dtypes) == df.shape[1]:
            return dtypes
    except Exception:
        pass
    return list(df.dtypes.tolist())


def _arrow_native(dtype: Any) -> bool:
    import numpy as np
    import pandas as pd

    if isinstance(dtype, np.dtype):
        return dtype.kind in "biufmM"
    return isinstance(dtype, pd.StringDtype | pd.DatetimeTZDtype)


def _write_parquet(df: Any, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(df, preserve_index=None), str(path))


def _write_feather(df: Any, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.feather as pf

    pf.write_feather(pa.Table.from_pandas(df, preserve_index=None), str(path))


def _write_csv(df: Any, path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        df.to_csv(f, lineterminator="\n")


def _write_csv_gz(df: Any, path: Path) -> None:
    with _gzip_text_writer(path) as f:
        df.to_csv(f, lineterminator="\n")


def _write_pickle(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=5)


@contextlib.contextmanager
def _gzip_text_writer(path: Path) -> Iterator[io.TextIOWrapper]:
    # mtime=0 and no file name in the header: same content, same bytes, same sha256
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="") as text,
    ):
        yield text


_PANDAS_WRITERS: dict[str, Callable[[Any, Path], None]] = {
    "parquet": _write_parquet,
    "feather": _write_feather,
    "csv": _write_csv,
    "csv.gz": _write_csv_gz,
    "pickle": _write_pickle,
}


def _load_pandas(fmt: str, path: Path, allow_pickle: bool) -> Any:
    import pandas as pd

    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "feather":
        return pd.read_feather(path)
    if fmt in ("csv", "csv.gz"):
        return pd.read_csv(path, index_col=0, compression="gzip" if fmt == "csv.gz" else None)
    if fmt == "pickle":
        _check_pickle(allow_pickle)
        return pd.read_pickle(path, compression=None)
    raise SerializationError(f"unknown pandas format {fmt!r}")


# ----------------------------------------------------------------------------- numpy


def _snap_numpy(arr: Any, ext: str | None, auto_pickle: bool, pv: str | None) -> Snapshot:
    import numpy as np

    if type(arr) not in (np.ndarray, np.memmap) or arr.dtype.hasobject:
        # object arrays and subclasses (masked arrays, ...) carry state .npz would drop
        return _fallback_pickle(
            arr, ext, auto_pickle, pv, f"{type(arr).__name__} of dtype {arr.dtype}"
        )
    fmt = _pick(ext, {".npz": "npz", ".csv.gz": "csv.gz"}, "a numpy array")
    if fmt == "csv.gz" and (arr.ndim not in (1, 2) or arr.dtype.kind not in "biuf"):
        raise SerializationError(
            f".csv.gz holds 1-D or 2-D bool/int/float arrays, not {arr.ndim}-D {arr.dtype}; "
            "use .npz"
        )
    copy = np.array(arr, copy=True)
    preview: Preview = functools.partial(_array_preview, copy) if pv is None else pv
    writer = _write_npz if fmt == "npz" else _write_array_csv_gz
    return make_snapshot("numpy", fmt, "." + fmt, preview, _file_writer(copy, writer))


def _array_preview(arr: Any) -> str:
    import numpy as np

    body = np.array2string(arr, threshold=50, edgeitems=3, max_line_width=100)
    return f"ndarray shape={arr.shape} dtype={arr.dtype}\n{body}"


def _write_npz(arr: Any, path: Path) -> None:
    import numpy as np

    info = zipfile.ZipInfo(NPZ_KEY + ".npy", date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    with (
        zipfile.ZipFile(path, "w", allowZip64=True) as zf,
        zf.open(info, "w", force_zip64=True) as out,
    ):
        np.lib.format.write_array(out, arr, allow_pickle=False)


def _write_array_csv_gz(arr: Any, path: Path) -> None:
    import numpy as np

    fmt = "%.17g" if arr.dtype.kind == "f" else "%d"
    shape = ",".join(str(n) for n in arr.shape)
    with _gzip_text_writer(path) as f:
        np.savetxt(
            f,
            arr.astype(np.uint8) if arr.dtype.kind == "b" else arr,
            fmt=fmt,
            delimiter=",",
            header=f"artisync shape={shape} dtype={arr.dtype.str}",
        )


def _load_numpy(fmt: str, path: Path) -> Any:
    import numpy as np

    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            keys = [NPZ_KEY] if NPZ_KEY in z.files else z.files
            if len(keys) != 1:
                raise SerializationError(f"{path} holds {len(z.files)} arrays, expected one")
            return z[keys[0]]
    if fmt != "csv.gz":
        raise SerializationError(f"unknown numpy format {fmt!r}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = f.readline()
        shape, dtype = _parse_array_header(header)
        if shape is None:
            f.seek(0)
            return np.loadtxt(f, delimiter=",")
        if 0 in shape:
            return np.empty(shape, dtype=dtype)
        parse_as = np.uint8 if dtype.kind == "b" else dtype
        return np.loadtxt(f, delimiter=",", dtype=parse_as, ndmin=2).reshape(shape).astype(dtype)


def _parse_array_header(line: str) -> tuple[tuple[int, ...] | None, Any]:
    import numpy as np

    fields = dict(p.split("=", 1) for p in line.lstrip("# ").split() if "=" in p)
    if not line.startswith("# artisync ") or "shape" not in fields or "dtype" not in fields:
        return None, None
    shape = tuple(int(n) for n in fields["shape"].split(",") if n)
    return shape, np.dtype(fields["dtype"])


# ----------------------------------------------------------------------------- images


_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def _snap_image(img: Any, ext: str | None, pv: str | None) -> Snapshot:
    from PIL import Image

    Image.preinit()  # PNG, JPEG, BMP, GIF; every plugin (WebP, TIFF) costs 20 ms more, once
    if ext is not None and ext not in Image.EXTENSION:
        Image.init()
    known = Image.EXTENSION
    table = {e: known[e] for e in _IMAGE_EXTS if known.get(e) in Image.SAVE}
    pil_format = _pick(ext, table, "a PIL Image")
    try:
        copy = img.copy()  # loads a lazily opened image, then copies its pixels
    except Exception as exc:
        raise SerializationError(f"cannot read the image's pixels: {exc}") from exc
    try:  # encode one pixel now, so that a mode the format cannot hold fails here
        copy.crop((0, 0, 1, 1)).save(io.BytesIO(), format=pil_format)
    except (OSError, ValueError, KeyError) as exc:
        raise SerializationError(
            f"{pil_format} cannot store this mode {copy.mode} image ({exc}); convert it "
            "first, e.g. img.convert('RGB'), or use .png"
        ) from exc
    pv = pv or f"PIL Image mode={copy.mode} size={copy.width}x{copy.height}"

    def save(im: Any, path: Path) -> None:
        im.save(path, format=pil_format)

    return make_snapshot("image", pil_format.lower(), ext or ".png", pv, _file_writer(copy, save))


def _load_image(path: Path) -> Any:
    from PIL import Image

    im = Image.open(path)
    try:
        im.load()
    except BaseException:
        im.close()
        raise
    if getattr(im, "fp", None) is None:  # single frame: the file is closed already
        return im
    try:  # multi-frame formats keep the file open: keep the current frame, close it
        return im.copy()
    finally:
        im.close()


# ------------------------------------------------------------------------------- load


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
    if type in ("folder", "wildcard") or format == "tree":
        raise SerializationError("folders and wildcards are read with materialize_tree()")
    if deserialization_function is not None:
        return deserialization_function(path.read_bytes())
    if type == "file":
        return str(path)
    if type == "pandas":
        return _load_pandas(format, path, allow_pickle)
    if type == "numpy":
        return _load_numpy(format, path)
    if type == "image":
        return _load_image(path)
    if type in ("dict", "list") and format in ("json", "yaml"):
        return _load_json_like(format, path)
    if format == "pickle":
        _check_pickle(allow_pickle)
        with open(path, "rb") as f:
            return pickle.load(f)
    if type == "str" and format == "text":
        return path.read_text(encoding="utf-8")
    if format == "bytes":
        return path.read_bytes()
    raise SerializationError(f"unknown artifact type/format {type!r}/{format!r}")


def _load_json_like(fmt: str, path: Path) -> Any:
    if fmt == "json":
        return json.loads(path.read_bytes())
    try:
        import yaml
    except ImportError:
        raise SerializationError(
            "reading .yaml artifacts needs PyYAML: pip install pyyaml"
        ) from None
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _check_pickle(allow_pickle: bool) -> None:
    if not allow_pickle:
        raise UnpicklingRefused(
            "this artifact is a pickle, and unpickling runs code chosen by whoever wrote it; "
            "if you trust its source, call get(allow_pickle=True) or set "
            "allow_pickle = true in the [artisync] table of the config file"
        )


def materialize_tree(
    listing_path: Path, fetch: Callable[[str], Path], dest_dir: Path, *, link: bool = False
) -> Path:
    """Recreate a folder/wildcard artifact under ``dest_dir``; see ``_trees``."""
    from ._trees import materialize_tree as impl

    return impl(listing_path, fetch, dest_dir, link=link)
