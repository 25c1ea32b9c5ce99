"""Progress of long CLI work (``artisync wait``, ``get``): a bar on a terminal,
plain lines elsewhere, nothing with ``--quiet``.

On a terminal the bar is rich's (bytes done, rate, time left); when stderr is not
a terminal (a log file, CI), one plain line every :data:`PLAIN_EVERY` seconds and
one at the end, so logs stay readable. rich is imported only when a bar is shown.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from artisync.protocol import format_size

PLAIN_EVERY = 5.0  # seconds between plain progress lines


class Progress:
    def __init__(self, label: str, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.label = label
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._said = -PLAIN_EVERY
        self._bar: Any = None
        self._task: Any = None
        self._last: tuple[int, int, str] = (0, 0, "")
        if not quiet and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=None)

    def update(self, done: int, total: int, note: str = "") -> None:
        """``done`` of ``total`` bytes; ``note``: what else to say (records left...)."""
        self._last = (done, total, note)
        if self.quiet:
            return
        if self._bar is not None:
            desc = f"{self.label} {note}".strip()
            self._bar.update(self._task, completed=done, total=total or None, description=desc)
            return
        now = time.monotonic()
        if now - self._said >= PLAIN_EVERY:
            self._said = now
            self._plain(done, total, note)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif not self.quiet and self._said >= 0:
            self._plain(*self._last)

    def _plain(self, done: int, total: int, note: str) -> None:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        of = f" of {format_size(total)}" if total else ""
        extra = f", {note}" if note else ""
        self.stream.write(
            f"{self.label}: {format_size(done)}{of} ({format_size(int(rate))}/s, "
            f"{elapsed:.0f} s){extra}\n"
        )
        self.stream.flush()
