"""The Arrow table of a plain numeric DataFrame, made without pyarrow's per-column
Python work.

``pa.Table.from_pandas`` spends ~0.9 ms on a 10-column frame in Python (a Series
per column, its metadata, type inference), in the training process, on every
call: more than writing the frame's 800 KB. For the common shape of a reported
frame (one numeric dtype throughout, string column names, a default
``RangeIndex``), the columns are the frame's own block, read as arrays without a
copy, and the schema (with the pandas metadata ``to_pandas`` needs) is what
``from_pandas`` makes: computed once per shape of frame (names, dtype, index
range) and reused. The table is the one ``from_pandas`` would make, so the stored
parquet is the same bytes (NaN is null, as there: ``from_pandas=True``). Any other
frame returns None and takes ``from_pandas``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

_KEEP = 64  # schemas remembered (a training loop reports a handful of frame shapes)
_lock = threading.Lock()
_schemas: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def numeric_table(df: Any) -> Any | None:
    """``pa.Table.from_pandas(df, preserve_index=None)`` for a frame of one numeric
    dtype under a default index; None for any other frame."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    index, columns = df.index, df.columns
    if type(index) is not pd.RangeIndex or index.name is not None or columns.nlevels != 1:
        return None
    names = tuple(columns)
    if not names or not all(type(n) is str for n in names) or len(set(names)) != len(names):
        return None
    dtypes = set(df.dtypes)
    if len(dtypes) != 1:
        return None
    dtype = next(iter(dtypes))
    if not isinstance(dtype, np.dtype) or dtype.kind not in ("b", "i", "u", "f"):
        return None  # pandas' own dtypes (nullable, categorical...) and the rest
    key = (names, str(dtype), index.start, index.stop, index.step, columns.name)
    with _lock:
        schema = _schemas.get(key)
    if schema is None:
        schema = pa.Schema.from_pandas(df, preserve_index=None)
        with _lock:
            _schemas[key] = schema
            while len(_schemas) > _KEEP:
                _schemas.popitem(last=False)
    block = df.to_numpy()  # the frame's own block (a view) when it has one
    arrays = [pa.array(block[:, i], from_pandas=True) for i in range(len(names))]
    return pa.Table.from_arrays(arrays, schema=schema)
