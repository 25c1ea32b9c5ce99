"""pandas DataFrames: parquet when pyarrow is there, else csv.gz; also csv, feather, pickle.

=============  ===========================================================
DataFrame      .parquet (if pyarrow is importable, else .csv.gz), .csv.gz,
               .csv, .feather, .pickle
=============  ===========================================================

Output is deterministic (parquet/feather from pyarrow, gzip with mtime 0 and
no name), so the same content uploaded twice is one blob. A frame the default
format cannot round-trip is pickled, as ClearML does. pandas and pyarrow are
imported only once a DataFrame is seen (its class is from pandas, so pandas is
loaded already) or read.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._base import (
    Format,
    Preview,
    Request,
    SerializationError,
    Snapshot,
    check_pickle,
    file_writer,
    gzip_text_writer,
    is_instance_from,
    make_snapshot,
    pick,
)

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


def snapshot(df: Any, req: Request) -> Snapshot | None:
    if not is_instance_from(df, "pandas", "pandas", "DataFrame"):
        return None
    ext = req.ext
    if ext is None:
        fmt = "parquet" if _have_pyarrow() else "csv.gz"
    else:
        fmt = pick(ext, _PANDAS_FORMATS, "a pandas DataFrame")
    if fmt in ("parquet", "feather") and not _have_pyarrow():
        raise SerializationError(f".{fmt} needs pyarrow: pip install pyarrow (or use .csv.gz)")
    # checked on the caller's frame, not the copy: its columns keep their cached hash table
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
    copy = df.copy(deep=True)
    preview: Preview = (
        functools.partial(_frame_preview, copy) if req.preview is None else req.preview
    )
    ext = next(e for e, f in _PANDAS_FORMATS.items() if f == fmt)
    return make_snapshot("pandas", fmt, ext, preview, file_writer(copy, _WRITERS[fmt]))


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
    with gzip_text_writer(path) as f:
        df.to_csv(f, lineterminator="\n")


def _write_pickle(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=5)


_WRITERS: dict[str, Callable[[Any, Path], None]] = {
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
