"""pandas DataFrames: parquet when pyarrow is there, else csv.gz; also csv, feather, pickle.

=============  ===========================================================
DataFrame      .parquet (if pyarrow is importable, else .csv.gz), .csv.gz,
               .csv, .feather, .pickle
=============  ===========================================================

The caller pays for an Arrow IPC file only (the frame's columns written as
they are, no compression: memory speed); the daemon's ``arrow`` codec encodes
it, streaming record batches (parquet row groups of up to ``_GROUP_ROWS``
rows), so a frame of many GB never has to fit in the daemon's memory. CSV is
made from the whole frame at once. Without pyarrow, and for pickles, the
stored form is made by the caller. Output is deterministic (pyarrow's
writers, gzip with mtime 0 and no name), so the same content uploaded twice
is one blob. A frame the default format cannot round-trip is pickled, as
ClearML does. pandas and pyarrow are imported only once a DataFrame is seen
(its class is from pandas, so pandas is loaded already) or read.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from artisync.protocol import Spool

from ._base import (
    Captured,
    Codec,
    Format,
    Request,
    SerializationError,
    StoredPayload,
    check_pickle,
    encode_to_blob,
    gzip_text_writer,
    is_instance_from,
    pick,
    single_blob,
)
from ._numeric_frames import numeric_table

_BATCH_ROWS = 65_536  # rows per IPC record batch: feather's chunk size
_GROUP_ROWS = 1_048_576  # rows per parquet row group at most: pyarrow's default
_GROUP_BYTES = 128 * 1024 * 1024  # ... or this much column data, whichever comes first

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


def snapshot(df: Any, req: Request) -> Captured | None:
    if not is_instance_from(df, "pandas", "pandas", "DataFrame"):
        return None
    ext = req.ext
    if ext is None:
        fmt = "parquet" if _have_pyarrow() else "csv.gz"
    else:
        fmt = pick(ext, _PANDAS_FORMATS, "a pandas DataFrame")
    if fmt in ("parquet", "feather") and not _have_pyarrow():
        raise SerializationError(f".{fmt} needs pyarrow: pip install pyarrow (or use .csv.gz)")
    # checked on the caller's frame, not a copy: its columns keep their cached hash table
    problem = _pandas_problem(df, fmt)
    if problem and ext is not None:
        raise SerializationError(
            f"this DataFrame cannot be stored as .{fmt}: {problem}; use extension_name='.pickle'"
        )
    if problem:  # the default format cannot hold it: pickle it, as ClearML does
        if not req.auto_pickle:
            raise SerializationError(
                f"this DataFrame cannot be stored as .{fmt} ({problem}) "
                "and auto_pickle is off; pass extension_name='.pickle'"
            )
        fmt = "pickle"
    ext = next(e for e, f in _PANDAS_FORMATS.items() if f == fmt)
    arrow = fmt in ("parquet", "feather") or (
        fmt in ("csv", "csv.gz") and _have_pyarrow() and _pandas_problem(df, "parquet") is None
    )
    hint = _size_hint(df)
    if arrow:
        raw = req.raw_written("arrow", functools.partial(_write_ipc, df), hint)
        return Captured("pandas", fmt, ext, raw, req.preview)
    # no Arrow form: the stored form is made here, as the inline write would
    raw = req.raw_written("stored", functools.partial(_WRITERS[fmt], df), hint)
    preview = req.preview or _frame_preview(df.iloc[:_HEAD_ROWS], df.shape)
    return Captured("pandas", fmt, ext, raw, preview)


def _size_hint(df: Any) -> int:
    """About the frame's bytes: 8 a cell (a pointer for an object column, not its
    contents) plus 4 KiB. ``memory_usage`` would cost a Series per column (~1 ms)."""
    try:
        return int(df.size) * 8 + 4096
    except Exception:
        return 1 << 30  # unknown: into a file


def _write_ipc(df: Any, f: BinaryIO) -> None:
    import pyarrow as pa

    # nthreads=1: with more, pyarrow starts (and joins) a thread pool on every call,
    # which costs the trainer more than converting the columns
    table = numeric_table(df)  # the common case, without pyarrow's per-column work
    if table is None:
        table = pa.Table.from_pandas(df, preserve_index=None, nthreads=1)
    with pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table, max_chunksize=_BATCH_ROWS)


def _open_ipc(path: Path) -> Any:
    import pyarrow as pa

    try:
        return pa.ipc.open_file(pa.memory_map(str(path)))
    except pa.ArrowInvalid as exc:
        raise SerializationError(
            f"raw snapshot {path.name} is not an Arrow IPC file: {exc}"
        ) from exc


def _batches(reader: Any) -> Iterator[Any]:
    for i in range(reader.num_record_batches):
        yield reader.get_batch(i)


def _row_groups(reader: Any) -> Iterator[Any]:
    """Tables of whole batches, each up to a row group's size (mapped, not copied)."""
    import pyarrow as pa

    group: list[Any] = []
    rows = nbytes = 0
    for batch in _batches(reader):
        if group and (rows + batch.num_rows > _GROUP_ROWS or nbytes > _GROUP_BYTES):
            yield pa.Table.from_batches(group, reader.schema)
            group, rows, nbytes = [], 0, 0
        group.append(batch)
        rows += batch.num_rows
        nbytes += batch.nbytes
    if group or rows == 0:
        yield pa.Table.from_batches(group, reader.schema)


def _encode_arrow(spool: Spool, rec: dict[str, Any], raw: Path) -> tuple[StoredPayload, str | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fmt = rec["format"]
    reader = _open_ipc(raw)

    def write(f: BinaryIO) -> None:
        if fmt == "parquet":
            with pq.ParquetWriter(f, reader.schema) as w:
                for table in _row_groups(reader):
                    w.write_table(table, row_group_size=_GROUP_ROWS)
        elif fmt == "feather":  # feather v2 is an IPC file, lz4-compressed as pyarrow writes it
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            with pa.ipc.new_file(f, reader.schema, options=options) as w:
                for batch in _batches(reader):
                    w.write_batch(batch)
        elif fmt in ("csv", "csv.gz"):
            _WRITERS[fmt](reader.read_pandas(), f)
        else:
            raise SerializationError(f"the arrow codec does not write {fmt!r}")

    payload = single_blob(*encode_to_blob(spool, write))
    return payload, None if rec.get("preview") else _arrow_preview(reader)


def _arrow_preview(reader: Any) -> str:
    import pyarrow as pa

    head = [reader.get_batch(0).slice(0, _HEAD_ROWS)] if reader.num_record_batches else []
    frame = pa.Table.from_batches(head, reader.schema).to_pandas()
    rows = sum(batch.num_rows for batch in _batches(reader))
    return _frame_preview(frame, (rows, frame.shape[1]))


def _load_arrow(rec: dict[str, Any], raw: Path, allow_pickle: bool) -> Any:
    import pyarrow as pa

    with pa.OSFile(str(raw)) as f:  # read, not mapped: the raw file goes once encoded
        return pa.ipc.open_file(f).read_pandas()


CODEC = Codec("arrow", _encode_arrow, _load_arrow)


_HEAD_ROWS, _HEAD_COLS, _CELL_MAX, _ELLIPSIS = 5, 20, 40, "..."


def _frame_preview(df: Any, shape: tuple[int, int]) -> str:
    """Shape and the head ``df``. Formatted here: ``DataFrame.to_string`` takes ~1 ms
    even for five rows, more than copying a 10,000-row frame."""
    title = f"DataFrame {shape[0]} rows x {shape[1]} columns"
    try:
        head = df.iloc[:_HEAD_ROWS]  # a row slice is cheap; [:, :20] costs 8x as much
        if shape[1] > _HEAD_COLS:
            head = head.iloc[:, :_HEAD_COLS]
        more = [_ELLIPSIS] if shape[1] > _HEAD_COLS else []
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


def _write_parquet(df: Any, f: BinaryIO) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(df, preserve_index=None), f)


def _write_feather(df: Any, f: BinaryIO) -> None:
    import pyarrow as pa
    import pyarrow.feather as pf

    pf.write_feather(pa.Table.from_pandas(df, preserve_index=None), f)


def _write_csv(df: Any, f: BinaryIO) -> None:
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    try:
        df.to_csv(text, lineterminator="\n")
        text.flush()
    finally:
        text.detach()  # the caller closes the file


def _write_csv_gz(df: Any, f: BinaryIO) -> None:
    with gzip_text_writer(f) as text:
        df.to_csv(text, lineterminator="\n")


def _write_pickle(obj: Any, f: BinaryIO) -> None:
    pickle.dump(obj, f, protocol=5)


_WRITERS: dict[str, Callable[[Any, BinaryIO], None]] = {
    "parquet": _write_parquet,
    "feather": _write_feather,
    "csv": _write_csv,
    "csv.gz": _write_csv_gz,
    "pickle": _write_pickle,
}


def load(type_: str, fmt: str, path: Path, allow_pickle: bool) -> Any:
    import pandas as pd

    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "feather":
        return pd.read_feather(path)
    if fmt in ("csv", "csv.gz"):
        return pd.read_csv(path, index_col=0, compression="gzip" if fmt == "csv.gz" else None)
    if fmt == "pickle":
        check_pickle(allow_pickle)
        return pd.read_pickle(path, compression=None)
    raise SerializationError(f"unknown pandas format {fmt!r}")


FORMAT = Format("pandas", snapshot, lambda type_, format_: type_ == "pandas", load)
