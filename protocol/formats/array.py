"""numpy arrays: .npz (one array, key ``array``), or .csv.gz (1-D/2-D numeric).

The caller pays for an .npy file only (``np.save``: header and bytes); the
daemon's ``npy`` codec maps it and encodes it in chunks. Output is
deterministic (npz with fixed zip timestamps, gzip with mtime 0 and no name),
so the same array uploaded twice is one blob (by daemons with the same deflater:
ISA-L's bytes differ from zlib's, see ``_deflate_with_isal``). Object arrays and
ndarray subclasses (masked arrays, ...) carry state .npz would drop: they are
pickled when ``auto_pickle``. numpy is imported only once an array is seen or read.
"""

from __future__ import annotations

import gzip
import mmap
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from artisync.protocol import Spool

from ._base import (
    Captured,
    Codec,
    Format,
    PickleInstead,
    Request,
    SerializationError,
    StoredPayload,
    cut_preview,
    encode_to_blob,
    gzip_text_writer,
    is_instance_from,
    pick,
    single_blob,
)

NPZ_KEY = "array"
NPZ_LEVEL = 1  # deflate level of the stored .npz where zlib deflates it
ISAL_LEVEL = 1  # ISA-L's level (0-3) where isal deflates it (see _deflate_with_isal)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: same array, same bytes
PAGE = mmap.PAGESIZE
TOUCH_MIN = 1 << 20  # arrays whose pages are read before writing (see _touch_pages)


def snapshot(arr: Any, req: Request) -> Captured | None:
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
    _touch_pages(arr)
    raw = req.raw_written(
        "npy", lambda f: np.lib.format.write_array(f, arr, allow_pickle=False), arr.nbytes + 128
    )
    return Captured("numpy", fmt, "." + fmt, raw, req.preview)


def _touch_pages(arr: Any) -> None:
    """Read one byte of each page of a big contiguous array before it is written.

    A page of an array that was never written (``np.zeros``; half of ``np.eye(1000)``'s
    8 MB) is not mapped yet. ``write()`` then faults it in page by page from inside
    the kernel's copy, which on this kind of memory costs several times a read of one
    byte per page from here: ``np.eye(1000)`` written over a cached raw file took 2.2-3.6
    ms, 1.6-2.1 with this first (its strided read 0.2-0.5 ms); an array whose pages are
    all mapped pays ~0.1 ms for it. Reading maps the kernel's shared zero page: no
    memory is added."""
    if arr.nbytes < TOUCH_MIN or not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        return
    flat = arr.reshape(-1, order="A").view("u1")  # a view in memory order, no copy
    flat[::PAGE].max()


def _preview(arr: Any) -> str:
    import numpy as np

    body = np.array2string(arr, threshold=50, edgeitems=3, max_line_width=100)
    return f"ndarray shape={arr.shape} dtype={arr.dtype}\n{body}"


def _open_npy(raw: Path) -> Any:
    import numpy as np

    try:
        return np.load(raw, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise SerializationError(f"raw snapshot {raw.name} is not an .npy file: {exc}") from exc


def _encode_npy(spool: Spool, rec: dict[str, Any], raw: Path) -> tuple[StoredPayload, str | None]:
    arr = _open_npy(raw)  # mapped: written out in chunks, never whole in memory
    fmt = rec["format"]
    if fmt not in ("npz", "csv.gz"):
        raise SerializationError(f"the npy codec does not write {fmt!r}")
    writer = _write_npz if fmt == "npz" else _write_csv_gz
    payload = single_blob(*encode_to_blob(spool, lambda f: writer(arr, f)))
    return payload, None if rec.get("preview") else cut_preview(_preview(arr))


def _load_npy(rec: dict[str, Any], raw: Path, allow_pickle: bool) -> Any:
    import numpy as np

    return np.load(raw, allow_pickle=False)


CODEC = Codec("npy", _encode_npy, _load_npy)


def _write_npz(arr: Any, f: BinaryIO) -> None:
    import numpy as np

    info = zipfile.ZipInfo(NPZ_KEY + ".npy", date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    # ISA-L where installed (see _deflate_with_isal); else zlib level 1, not 6: 3-5x
    # less of the daemon's CPU (np.eye(1000): 28 -> 8 ms; 1 M ints: 205 -> 40 ms) for
    # 1-10 % more bytes (named ``compress_level`` from Python 3.13, which keeps this
    # name as an alias)
    info._compresslevel = NPZ_LEVEL  # type: ignore[attr-defined]
    with (
        zipfile.ZipFile(f, "w", allowZip64=True) as zf,
        zf.open(info, "w", force_zip64=True) as out,
    ):
        _deflate_with_isal(out)
        np.lib.format.write_array(out, arr, allow_pickle=False)


def _deflate_with_isal(member: Any) -> None:
    """Deflate the zip member with ISA-L instead of zlib, when isal is installed.

    The daemon's CPU is the trainer's neighbour: on cores that share a physical one,
    every millisecond it spends encoding shows in the training loop. ISA-L's level 1
    deflates np.eye(1000) in 0.8 ms (zlib level 1: 8 ms) into 30 kB (zlib: 37 kB), and
    incompressible bytes 20x faster. The stream is plain deflate: any .npz reader reads
    it. ``zipfile`` has no public hook for the compressor; without the attribute (or
    without isal) zlib's stays, which is slower, not wrong.
    """
    try:
        from isal import isal_zlib
    except ImportError:
        return
    if getattr(member, "_compressor", None) is not None:
        member._compressor = isal_zlib.compressobj(ISAL_LEVEL, isal_zlib.DEFLATED, -15)


def _write_csv_gz(arr: Any, raw: BinaryIO) -> None:
    import numpy as np

    fmt = "%.17g" if arr.dtype.kind == "f" else "%d"
    shape = ",".join(str(n) for n in arr.shape)
    with gzip_text_writer(raw) as f:
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
