"""ClearML's Logger, as a small recorder: calls never raise and never wait.

``report_scalar`` appends a row to a queue (no lock, no I/O). A background thread
stores the rows waiting as the next chunk of the artifact ``scalars`` (columns title,
series, iteration, value; a :class:`~artisync._artifact.ChunkedTable`) every flush
period and whenever :data:`CHUNK_ROWS` rows wait (bounding how long a chunk's JSON holds
the GIL); ``task.flush()`` and ``close()`` store the rest. Single values go to ``single
values``, text lines to ``console``; tables, images, media, plots and figures become
artifacts of their own, ``<kind>: <title> - <series>``. A call that fails (a bad
argument, a full spool) logs a warning and returns.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from . import _artifact

log = logging.getLogger("artisync")

FLUSH_EVERY = 30.0  # seconds between chunks of scalars, by default
CHUNK_ROWS = 20_000  # a chunk is stored once this many rows wait (~20 ms of json.dumps)
TICK = 1.0  # seconds between the flusher's looks at loggers with nothing asked


def _no_task() -> Any:
    return None


# Task.current_task, set by the task module (which sits above this one)
current_task: Callable[[], Any] = _no_task


def _quietly(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: Logger, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:  # a report must never stop training
            log.warning("artisync: Logger.%s failed: %s", fn.__name__, exc)
            return None

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _plot_call(name: str, fields: str) -> Callable[..., Any]:
    """``Logger.<name>(title, series, <fields>)`` (ClearML's, in its order): the arguments
    as JSON (arrays as lists), an artifact ``<kind>: <title> - <series>`` each call."""
    names = fields.split()

    def report(self: Logger, title: str, series: str, *args: Any, **kw: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{name}() takes {len(names) + 2} positional arguments")
        given = {**dict(zip(names, args, strict=False)), **kw}
        if given.get(names[0]) is None:
            raise TypeError(f"{name}() needs {names[0]}")
        iteration = given.pop("iteration", None)
        kind = name.removeprefix("report_").replace("_", " ")
        self._artifact(kind, title, series, iteration, _plain(given))

    report.__name__ = name
    return _quietly(report)


@dataclass
class SeriesInfo:
    """One line of :meth:`Logger.report_line_plot`, as ClearML's ``Logger.SeriesInfo``."""

    name: str
    data: Any
    labels: Any = None


class Logger:
    SeriesInfo = SeriesInfo
    _loggers: ClassVar[dict[str, Logger]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, task: Any) -> None:
        self.task = task
        self._scalars = _artifact.ChunkedTable("scalars", ("title", "series", "iteration", "value"))
        self._rows = self._scalars.rows
        self._last_iteration = 0
        self._single: dict[str, Any] = {}
        self._text: list[str] = []
        self._stored: tuple[dict[str, Any], int] = ({}, 0)  # single values, console lines
        self._period: float | None = FLUSH_EVERY
        self._due = time.monotonic() + FLUSH_EVERY
        self._asked = False
        self._store_lock = threading.Lock()  # one store at a time: chunks in order

    @classmethod
    def for_task(cls, task: Any) -> Logger:
        with cls._lock:
            found = cls._loggers.get(task.id)
            if found is None:
                found = cls._loggers[task.id] = cls(task)
            return found

    @classmethod
    def current_logger(cls) -> Logger | None:
        task = current_task()
        return None if task is None else cls.for_task(task)

    # -- scalars, values, text -------------------------------------------------------------
    @_quietly
    def report_scalar(self, title: str, series: str, value: float, iteration: int) -> None:
        it = int(iteration)
        self._rows.append((str(title), str(series), it, float(value)))
        if it > self._last_iteration:
            self._last_iteration = it
        if not self._asked and (len(self._rows) >= CHUNK_ROWS or time.monotonic() >= self._due):
            self._asked = True
            _flusher.ask(self)

    @_quietly
    def report_single_value(self, name: str, value: float) -> None:
        self._single[str(name)] = float(value)

    @_quietly
    def report_text(
        self, msg: str, level: int = logging.INFO, print_console: bool = True, *args: Any, **kw: Any
    ) -> None:
        """Kept in ``console``; printed to stdout too with ``print_console``, as ClearML's."""
        self._text.append(str(msg))
        if print_console:
            sys.stdout.write(f"{msg}\n")

    # -- artifacts of their own -------------------------------------------------------------
    @_quietly
    def report_table(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        table_plot: Any = None,
        csv: str | None = None,
        url: str | None = None,
        extra_layout: Any = None,
        **kw: Any,
    ) -> None:
        obj = table_plot if table_plot is not None else csv or url
        if obj is None:
            raise ValueError("report_table needs table_plot, csv or url")
        self._artifact("table", title, series, iteration, obj)

    @_quietly
    def report_image(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        local_path: str | None = None,
        image: Any = None,
        matrix: Any = None,
        **kw: Any,
    ) -> None:
        """A path, a PIL image, or an array: a 2-D or 3-D array of uint8, or of floats
        in [0, 1] (scaled by 255, as ClearML does), is stored as a PNG image."""
        obj = local_path or (image if image is not None else matrix)
        if obj is None:
            raise ValueError("report_image needs local_path, image or matrix")
        self._artifact("image", title, series, iteration, _as_image(obj))

    @_quietly
    def report_media(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        local_path: str | None = None,
        stream: Any = None,
        file_extension: str | None = None,
        **kw: Any,
    ) -> None:
        obj = local_path if local_path is not None else stream.read() if stream else None
        if obj is None:
            raise ValueError("report_media needs local_path or stream")
        self._artifact("media", title, series, iteration, obj, extension_name=file_extension)

    @_quietly
    def report_plotly(
        self, title: str, series: str, figure: Any, iteration: int | None = None, **kw: Any
    ) -> None:
        as_dict = figure.to_plotly_json() if hasattr(figure, "to_plotly_json") else dict(figure)
        self._artifact("plotly", title, series, iteration, as_dict)

    @_quietly
    def report_matplotlib_figure(
        self, title: str, series: str, figure: Any, iteration: int | None = None, **kw: Any
    ) -> None:
        fd, path = tempfile.mkstemp(suffix=".png")
        os.close(fd)
        try:
            figure.savefig(path, format="png")
            self._artifact("figure", title, series, iteration, path)
        finally:
            os.unlink(path)  # the snapshot is in the spool once the call returns

    # -- plots: their data as JSON, an artifact each call -------------------------------------
    _HISTOGRAM = "values iteration labels xlabels xaxis yaxis mode data_args extra_layout"
    report_histogram = _plot_call("report_histogram", _HISTOGRAM)
    report_vector = _plot_call("report_vector", _HISTOGRAM.replace(" data_args", ""))
    report_scatter2d = _plot_call(
        "report_scatter2d", "scatter iteration xaxis yaxis labels mode comment extra_layout"
    )
    report_scatter3d = _plot_call(
        "report_scatter3d",
        "scatter iteration xaxis yaxis zaxis labels mode fill comment extra_layout",
    )
    _MATRIX = "matrix iteration xaxis yaxis xlabels ylabels yaxis_reversed comment extra_layout"
    report_confusion_matrix = _plot_call("report_confusion_matrix", _MATRIX)
    report_matrix = _plot_call("report_matrix", _MATRIX.replace(" comment", ""))
    report_surface = _plot_call(
        "report_surface",
        "matrix iteration xaxis yaxis zaxis xlabels ylabels camera comment extra_layout",
    )

    @_quietly
    def report_line_plot(
        self,
        title: str,
        series: Sequence[Any],
        xaxis: str | None = None,
        yaxis: str | None = None,
        mode: str = "lines",
        iteration: int | None = None,
        **kw: Any,
    ) -> None:
        """One artifact, ``line plot: <title>``, a line per ``SeriesInfo`` (or dict)."""
        lines = [vars(s) if isinstance(s, SeriesInfo) else dict(s) for s in series]
        data = {"series": lines, "xaxis": xaxis, "yaxis": yaxis, "mode": mode, **kw}
        self._artifact("line plot", title, "", iteration, _plain(data))

    def _artifact(
        self, kind: str, title: str, series: str, iteration: int | None, obj: Any, **kw: Any
    ) -> None:
        name = f"{kind}: {title}" + (f" - {series}" if series else "")
        meta = None if iteration is None else {"iteration": int(iteration)}
        self.task.upload_artifact(name, obj, metadata=meta, **kw)

    # -- settings ClearML has -------------------------------------------------------------------
    def set_flush_period(self, period: float | None) -> None:
        """Seconds between chunks of scalars (None or 0: at CHUNK_ROWS, flush and close)."""
        self._period = float(period) if period else None
        self._due = time.monotonic() + (self._period or math.inf)

    def get_flush_period(self) -> float | None:
        return self._period

    def set_default_upload_destination(self, uri: str) -> None:
        """Accepted and ignored: images are artifacts, stored at the task's destination."""

    def get_default_upload_destination(self) -> str:
        return str(self.task.output_uri)

    def set_default_debug_sample_history(self, max_history: int) -> None:
        """Accepted and ignored: every reported image is kept, a version each."""

    # -- storing ------------------------------------------------------------------------------
    def flush(self, wait: bool = False) -> bool:
        """What this logger holds into the spool now, then ``task.flush(wait_for_uploads=wait)``."""
        try:
            return bool(self.task.flush(wait_for_uploads=wait))
        except Exception as exc:
            log.warning("artisync: Logger.flush failed: %s", exc)
            return False

    def _changed(self) -> bool:
        return bool(self._rows) or (self._single, len(self._text)) != self._stored

    def _store(self) -> None:
        """Store the rows waiting as the next chunk, and single values and console text
        if they changed (never waits on the network)."""
        with self._store_lock:
            self._due = time.monotonic() + (self._period or math.inf)
            self._asked = False
            self._scalars.store(self.task, last_iteration=self._last_iteration)
            single, lines = dict(self._single), len(self._text)
            if single != self._stored[0]:
                self.task.upload_artifact("single values", single)
            if lines != self._stored[1]:
                self.task.upload_artifact("console", "\n".join(self._text[:lines]) + "\n")
            self._stored = (single, lines)

    @classmethod
    def flush_task(cls, task_id: str) -> None:
        """At ``task.flush()`` and ``close()``."""
        found = cls._loggers.get(task_id)
        if found is not None:
            try:
                found._store()
            except Exception as exc:  # as a report's: logged, never raised
                log.warning("artisync: storing the Logger's reports failed: %s", exc)

    @classmethod
    def last_iteration_of(cls, task: Any) -> int:
        """The highest iteration reported: this process's logger's, else the newest chunk's."""
        found = cls._loggers.get(task.id)
        if found is not None:
            return found._last_iteration
        art = task.artifacts.get("scalars")
        return int((art.metadata if art is not None else {}).get("last_iteration") or 0)


class _Flusher:
    """One thread a process stores loggers' chunks: asked by a report, or when due."""

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._asked: set[Logger] = set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ask(self, logger: Logger) -> None:
        self._asked.add(logger)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._loop, name="artisync-log", daemon=True)
                self._thread = thread
                thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(TICK)
            self._wake.clear()
            now = time.monotonic()
            with Logger._lock:
                due = [lg for lg in Logger._loggers.values() if lg._due <= now and lg._changed()]
            while self._asked:
                due.append(self._asked.pop())
            for logger in set(due):
                try:
                    logger._store()
                except Exception as exc:  # a report's rows stay queued for the next try
                    log.warning("artisync: storing the Logger's scalars failed: %s", exc)


_flusher = _Flusher()


def _versions(art: _artifact.Artifact) -> list[_artifact.Artifact]:
    from ._lookup import versions
    from ._session import Session

    task = {"task_id": art._record["task_id"], "dest": art._record["dest"]}
    return versions(Session.get(), task, art.name, None)


_artifact.find_versions = _versions


def _as_image(obj: Any) -> Any:
    """A 2-D or 3-D uint8 array, or one of floats in [0, 1], as a PIL image."""
    if type(obj).__module__ != "numpy" or obj.ndim not in (2, 3):
        return obj
    import numpy as np

    if obj.dtype.kind == "f" and obj.size and 0.0 <= obj.min() and obj.max() <= 1.0:
        obj = (obj * 255).astype(np.uint8)
    if obj.dtype != np.uint8 or (obj.ndim == 3 and obj.shape[2] not in (1, 3, 4)):
        return obj  # stored as the array it is
    from PIL import Image

    return Image.fromarray(obj[:, :, 0] if obj.ndim == 3 and obj.shape[2] == 1 else obj)


def _plain(value: Any) -> Any:
    """Arrays and tuples as lists, no None values in dicts: what JSON holds."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    return value


def _after_fork_in_child() -> None:
    """A forked child's reports are its own (its chunks too); no flusher thread came along."""
    global _flusher
    Logger._loggers = {}
    Logger._lock = threading.Lock()
    _flusher = _Flusher()


os.register_at_fork(after_in_child=_after_fork_in_child)
