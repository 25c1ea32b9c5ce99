"""ClearML's Logger, as a small recorder: calls never raise and never wait.

Scalars are appended to an in-memory table (a list append per call) and stored as
one artifact, ``scalars`` (a dict of columns: title, series, iteration, value),
whenever :meth:`Logger.flush` runs: every :data:`FLUSH_EVERY` seconds from a
report, at ``task.flush()`` and when the task closes. Each store is a new version
of the whole table, as a registered DataFrame's would be. Single values go to
``single values``, text lines to ``console``. Tables, images, media, plotly and
matplotlib figures become artifacts of their own, named ``<kind>: <title> - <series>``.
A call that fails (a bad argument, a full spool) logs a warning and returns.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

log = logging.getLogger("artisync")

FLUSH_EVERY = 30.0  # seconds between stores of the scalars table from report calls


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


class Logger:
    _loggers: ClassVar[dict[str, Logger]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, task: Any) -> None:
        self.task = task
        self._scalars: dict[str, list[Any]] = {
            "title": [],
            "series": [],
            "iteration": [],
            "value": [],
        }
        self._single: dict[str, Any] = {}
        self._text: list[str] = []
        self._stored: tuple[int, dict[str, Any], int] = (0, {}, 0)  # as of the last flush
        self._flushed_at = time.monotonic()
        self._rows_lock = threading.Lock()

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
        with self._rows_lock:
            s = self._scalars
            s["title"].append(str(title))
            s["series"].append(str(series))
            s["iteration"].append(int(iteration))
            s["value"].append(float(value))
        self._maybe_flush()

    @_quietly
    def report_single_value(self, name: str, value: float) -> None:
        self._single[str(name)] = float(value)

    @_quietly
    def report_text(
        self, msg: str, level: int = logging.INFO, print_console: bool = True, *args: Any, **kw: Any
    ) -> None:
        self._text.append(str(msg))
        if print_console:
            log.log(level, "%s", msg)

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
        self.task.upload_artifact(_name("table", title, series), obj, metadata=_meta(iteration))

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
        obj = local_path or image
        if obj is None and matrix is not None:
            from PIL import Image

            obj = Image.fromarray(matrix)
        if obj is None:
            raise ValueError("report_image needs local_path, image or matrix")
        self.task.upload_artifact(_name("image", title, series), obj, metadata=_meta(iteration))

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
        self.task.upload_artifact(
            _name("media", title, series),
            obj,
            metadata=_meta(iteration),
            extension_name=file_extension,
        )

    @_quietly
    def report_plotly(
        self, title: str, series: str, figure: Any, iteration: int | None = None, **kw: Any
    ) -> None:
        as_dict = figure.to_plotly_json() if hasattr(figure, "to_plotly_json") else dict(figure)
        self.task.upload_artifact(
            _name("plotly", title, series), as_dict, metadata=_meta(iteration)
        )

    @_quietly
    def report_matplotlib_figure(
        self, title: str, series: str, figure: Any, iteration: int | None = None, **kw: Any
    ) -> None:
        fd, path = tempfile.mkstemp(suffix=".png")
        os.close(fd)
        try:
            figure.savefig(path, format="png")
            self.task.upload_artifact(
                _name("figure", title, series), path, metadata=_meta(iteration)
            )
        finally:
            os.unlink(path)  # the snapshot is in the spool once the call returns

    # -- storing ------------------------------------------------------------------------------
    def _maybe_flush(self) -> None:
        if time.monotonic() - self._flushed_at >= FLUSH_EVERY:
            self.flush()

    @_quietly
    def flush(self, wait: bool = False) -> None:
        """Store what changed since the last flush (never waits on the network)."""
        self._flushed_at = time.monotonic()
        with self._rows_lock:
            scalars = {k: list(v) for k, v in self._scalars.items()}
        now = (len(scalars["value"]), dict(self._single), len(self._text))
        if now[0] != self._stored[0]:
            titles = ", ".join(sorted(set(scalars["title"]))[:10])
            summary = f"scalars: {now[0]} values of {titles}"
            self.task.upload_artifact("scalars", scalars, preview=summary)
        if now[1] != self._stored[1]:
            self.task.upload_artifact("single values", now[1])
        if now[2] != self._stored[2]:
            self.task.upload_artifact("console", "\n".join(self._text[: now[2]]) + "\n")
        self._stored = now

    @classmethod
    def flush_task(cls, task_id: str) -> None:
        """At ``task.flush()`` and ``close()``."""
        with cls._lock:
            found = cls._loggers.get(task_id)
        if found is not None:
            found.flush()


def _name(kind: str, title: str, series: str) -> str:
    return f"{kind}: {title} - {series}"


def _meta(iteration: int | None) -> dict[str, Any] | None:
    return None if iteration is None else {"iteration": int(iteration)}
