"""Previews: what the artifact page shows of a stored payload, read with limits.

Each function takes a verified local copy of the payload (a file in the reader's
cache, downloaded whole and checked against its SHA-256 before any of it is
read) and returns plain data for a template; payloads over :data:`FETCH_LIMIT`
are not fetched for a preview at all. Of that local copy nothing here decodes
more than its limit: a parquet preview decodes the first 500 rows only (its
shape and column statistics come from the footer), a text preview reads its
first bytes, an array preview is skipped past :data:`ARRAY_LIMIT`. Pickles are
never unpickled.
Runs in a worker thread: pandas, pyarrow and numpy are imported here, lazily.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROWS = 500  # table rows shown
# payloads larger than this are not fetched for a preview (storage is read whole into
# the verified cache first): the record's own summary is shown, and the download
FETCH_LIMIT = 512 * 1024 * 1024
TEXT_LIMIT = 256 * 1024  # bytes of text shown before "show all"
TEXT_ALL_LIMIT = 16 * 1024 * 1024  # "show all" stops here too
ARRAY_LIMIT = 256 * 1024 * 1024  # npz payloads larger than this: metadata only
TABLE_LIMIT = 1024 * 1024 * 1024  # csv/feather payloads read whole: only below this
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}
TEXT_EXTENSIONS = {".txt", ".log", ".md", ".json", ".yaml", ".yml", ".toml", ".py", ".cfg", ".ini"}
CSV_EXTENSIONS = {".csv", ".tsv"}


def of_record(
    rec: dict[str, Any], path: Path, *, full: bool = False, parts: Sequence[Path] = ()
) -> dict[str, Any]:
    """The preview of one artifact version: ``{"kind": ..., ...}``. ``parts``: for a
    chunk of a table (the Logger's scalars), every chunk up to this one, in order."""
    type_, fmt = rec.get("type", ""), rec.get("format", "")
    if fmt in ("pickle",) or type_ == "pickle":
        return {"kind": "none", "why": "a pickle: shown by its metadata only, never unpickled"}
    if type_ == "pandas":
        return dataframe(path, fmt)
    if type_ == "numpy":
        return array(path, fmt)
    if type_ == "image":
        return {"kind": "image"}
    if rec.get("name") == "scalars" and fmt == "json":  # the Logger's table: charts
        charts = scalars(parts or [path])
        if charts:
            return {"kind": "charts", "charts": charts}
    if type_ in ("dict", "list", "str") or fmt in ("json", "yaml", "text"):
        return text(path, fmt, full=full)
    if type_ == "file":
        return by_extension(path, rec.get("extension", ""), full=full)
    return {"kind": "none", "why": f"{type_ or 'bytes'} ({fmt}): size and download only"}


def by_extension(path: Path, ext: str, *, full: bool = False) -> dict[str, Any]:
    """A file's preview chosen by its name's extension (a file artifact, a tree member)."""
    ext = ext.lower()
    if ext in IMAGE_EXTENSIONS:
        return {"kind": "image"}
    if ext in CSV_EXTENSIONS or ext == ".csv.gz":
        return dataframe(path, "csv.gz" if ext.endswith(".gz") else "csv", index=False)
    if ext in TEXT_EXTENSIONS:
        return text(path, "json" if ext == ".json" else "text", full=full)
    return {"kind": "none", "why": "no preview for this kind of file: size and download only"}


def text(path: Path, fmt: str, *, full: bool = False) -> dict[str, Any]:
    limit = TEXT_ALL_LIMIT if full else TEXT_LIMIT
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read(limit)
    body = data.decode("utf-8", errors="replace")
    if fmt == "json" and size <= limit:
        try:
            body = json.dumps(json.loads(data), indent=2, ensure_ascii=False)
        except ValueError:
            pass  # shown as it is
    return {"kind": "text", "text": body, "cut": size > limit, "size": size, "full": full}


def dataframe(path: Path, fmt: str, *, index: bool = True) -> dict[str, Any]:
    if fmt == "parquet":
        return _parquet(path)
    if fmt in ("csv", "csv.gz"):
        import pandas as pd

        frame = pd.read_csv(
            path,
            nrows=ROWS,
            index_col=0 if index else None,
            compression="gzip" if fmt == "csv.gz" else None,
        )
        return _table(frame, shape=None, stats=_frame_stats(frame), sample=True)
    if fmt == "feather" and path.stat().st_size <= TABLE_LIMIT:
        import pandas as pd

        frame = pd.read_feather(path)
        return _table(frame.head(ROWS), shape=frame.shape, stats=_frame_stats(frame))
    return {"kind": "none", "why": f"a DataFrame as {fmt}: metadata only"}


def _parquet(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    meta = pf.metadata
    first = next(pf.iter_batches(batch_size=ROWS), None)
    import pandas as pd

    frame = first.to_pandas() if first is not None else pd.DataFrame()
    stats = _footer_stats(pf)
    return _table(frame, shape=(meta.num_rows, len(frame.columns)), stats=stats)


def _footer_stats(pf: Any) -> dict[str, dict[str, Any]]:
    """Per column: nulls, min and max over every row group, from the footer alone."""
    meta = pf.metadata
    out: dict[str, dict[str, Any]] = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            name = col.path_in_schema
            s = out.setdefault(name, {"nulls": 0, "min": None, "max": None})
            st = col.statistics
            if st is None:
                continue
            if st.has_null_count:
                s["nulls"] += st.null_count
            if st.has_min_max:
                s["min"] = st.min if s["min"] is None else min(s["min"], st.min)
                s["max"] = st.max if s["max"] is None else max(s["max"], st.max)
    return out


def _frame_stats(frame: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in frame.columns:
        col = frame[name]
        s: dict[str, Any] = {"nulls": int(col.isna().sum()), "min": None, "max": None}
        try:
            s["min"], s["max"] = col.min(), col.max()
        except (TypeError, ValueError):
            pass  # mixed types: no order
        out[str(name)] = s
    return out


def _table(
    frame: Any,
    *,
    shape: tuple[int, int] | None,
    stats: dict[str, dict[str, Any]],
    sample: bool = False,
) -> dict[str, Any]:
    shown = frame.head(ROWS)
    columns = [str(c) for c in shown.columns]
    dtypes = [str(t) for t in shown.dtypes]
    rows = [
        [_cell(i), *(_cell(v) for v in row)]
        for i, row in zip(shown.index, shown.itertuples(index=False), strict=True)
    ]
    summary = [
        {
            "name": c,
            "dtype": d,
            "nulls": stats.get(c, {}).get("nulls"),
            "min": _cell(stats.get(c, {}).get("min")),
            "max": _cell(stats.get(c, {}).get("max")),
        }
        for c, d in zip(columns, dtypes, strict=True)
    ]
    return {
        "kind": "table",
        "columns": columns,
        "dtypes": dtypes,
        "rows": rows,
        "shape": shape,
        "summary": summary,
        "sample": sample,  # the statistics are of the rows shown, not the whole frame
    }


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, bytes):
        return v[:64].hex()
    return str(v)[:200]


def array(path: Path, fmt: str) -> dict[str, Any]:
    import numpy as np

    if fmt != "npz":
        return text(path, "text") if fmt != "csv.gz" else {"kind": "none", "why": fmt}
    if path.stat().st_size > ARRAY_LIMIT:
        return {"kind": "none", "why": "an array too large to preview: size and download"}
    out = []
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            a = npz[key]
            item: dict[str, Any] = {"key": key, "shape": list(a.shape), "dtype": str(a.dtype)}
            if a.size and np.issubdtype(a.dtype, np.number):
                item.update(min=_cell(a.min()), max=_cell(a.max()), mean=_cell(float(a.mean())))
            head = a[:10] if a.ndim else a
            item["head"] = np.array2string(head, threshold=200, edgeitems=5, precision=5)
            out.append(item)
    return {"kind": "array", "arrays": out}


def tree(listing: list[tuple[str, str, int]]) -> dict[str, Any]:
    files = [{"path": p, "sha256": sha, "size": size} for p, sha, size in listing]
    return {"kind": "tree", "files": files, "total": sum(f["size"] for f in files)}


CHART_W, CHART_H, CHART_POINTS = 640, 200, 400  # an SVG line chart per title


def scalars(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The Logger's scalars table (its chunks, in order) as line charts: one per title,
    a line per series (at most :data:`CHART_POINTS` points each, evenly picked), scaled
    to the chart."""
    if sum(p.stat().st_size for p in paths) > TEXT_ALL_LIMIT * 4:
        return []
    lines: dict[str, dict[str, list[tuple[float, float]]]] = {}
    try:
        for path in paths:
            cols = json.loads(path.read_bytes())
            rows = zip(cols["title"], cols["series"], cols["iteration"], cols["value"], strict=True)
            for title, series, it, value in rows:
                if isinstance(value, int | float) and math.isfinite(value):
                    lines.setdefault(str(title), {}).setdefault(str(series), []).append((it, value))
    except (ValueError, KeyError, TypeError):
        return []
    charts = []
    for title, by_series in sorted(lines.items()):
        pts = [p for series in by_series.values() for p in series]
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        sx = (CHART_W - 20) / ((x1 - x0) or 1)
        sy = (CHART_H - 20) / ((y1 - y0) or 1)
        drawn = []
        for i, (series, points) in enumerate(sorted(by_series.items())):
            points.sort()
            step = max(1, len(points) // CHART_POINTS)
            picked = points[::step] + ([points[-1]] if (len(points) - 1) % step else [])
            coords = " ".join(
                f"{10 + (x - x0) * sx:.1f},{CHART_H - 10 - (y - y0) * sy:.1f}" for x, y in picked
            )
            drawn.append({"series": series, "points": coords, "color": _COLORS[i % len(_COLORS)]})
        charts.append(
            {
                "title": title,
                "lines": drawn,
                "x": (x0, x1),
                "y": (_cell(y0), _cell(y1)),
                "w": CHART_W,
                "h": CHART_H,
                "n": len(pts),
            }
        )
    return charts


_COLORS = ("#2456d6", "#d64524", "#1c9a4f", "#a02ad6", "#d69a24", "#24a7d6")
