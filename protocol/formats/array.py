"""numpy arrays: .npz (one array, key ``array``), or .csv.gz (1-D/2-D numeric).

Output is deterministic (npz with fixed zip timestamps, gzip with mtime 0 and
no name), so the same array uploaded twice is one blob. Object arrays and
ndarray subclasses (masked arrays, ...) carry state .npz would drop: they are
pickled when ``auto_pickle``. numpy is imported only once an array is seen or read.
"""

from __future__ import annotations

import functools
import gzip
import zipfile
from pathlib import Path
from typing import Any

from ._base import (
    Format,
    PickleInstead,
    Preview,
    Request,
    SerializationError,
    Snapshot,
    file_writer,
    gzip_text_writer,
    is_instance_from,
    make_snapshot,
    pick,
)

NPZ_KEY = "array"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: same array, same bytes


def snapshot(arr: Any, req: Request) -> Snapshot | None:
    if not is_instance_from(arr, "numpy", "numpy", "ndarray"):
        return None
    import numpy as np

    if type(arr) not in (np.ndarray, np.memmap) or arr.dtype.hasobject:
        raise PickleInstead(f"{type(arr).__name__} of dtype {arr.dtype}", req.ext)
    fmt = pick(req.ext, {".npz": "npz", ".csv.gz": "csv.gz"}, "a numpy array")
    if fmt == "csv.gz" and (arr.ndim not in (1, 2) or arr.dtype.kind not in "biuf"):
        raise SerializationError(
            f".csv.gz holds 1-D or 2-D bool/int/float arrays, not {arr.ndim}-D {arr.dtype}; "
            "use .npz"
        )
    copy = np.array(arr, copy=True)
    preview: Preview = functools.partial(_preview, copy) if req.preview is None else req.preview
    writer = _write_npz if fmt == "npz" else _write_csv_gz
    return make_snapshot("numpy", fmt, "." + fmt, preview, file_writer(copy, writer))


def _preview(arr: Any) -> str:
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


def _write_csv_gz(arr: Any, path: Path) -> None:
    import numpy as np

    fmt = "%.17g" if arr.dtype.kind == "f" else "%d"
    shape = ",".join(str(n) for n in arr.shape)
    with gzip_text_writer(path) as f:
        np.savetxt(
            f,
            arr.astype(np.uint8) if arr.dtype.kind == "b" else arr,
            fmt=fmt,
            delimiter=",",
            header=f"artisync shape={shape} dtype={arr.dtype.str}",
        )


def load(type_: str, fmt: str, path: Path, allow_pickle: bool) -> Any:
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
        shape, dtype = _parse_header(header)
        if shape is None:
            f.seek(0)
            return np.loadtxt(f, delimiter=",")
        if 0 in shape:
            return np.empty(shape, dtype=dtype)
        parse_as = np.uint8 if dtype.kind == "b" else dtype
        return np.loadtxt(f, delimiter=",", dtype=parse_as, ndmin=2).reshape(shape).astype(dtype)


def _parse_header(line: str) -> tuple[tuple[int, ...] | None, Any]:
    import numpy as np

    fields = dict(p.split("=", 1) for p in line.lstrip("# ").split() if "=" in p)
    if not line.startswith("# artisync ") or "shape" not in fields or "dtype" not in fields:
        return None, None
    shape = tuple(int(n) for n in fields["shape"].split(",") if n)
    return shape, np.dtype(fields["dtype"])


FORMAT = Format("numpy", snapshot, lambda type_, format_: type_ == "numpy", load)
