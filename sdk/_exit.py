"""How a process's tasks end: at interpreter exit (``failed`` when an uncaught
exception ends the program), and on SIGTERM, SIGINT or SIGHUP (``aborted``, within
``exit_timeout``, before the signal takes its usual effect)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType

from . import _signals
from ._session import Session, on_shutdown

_uncaught: list[BaseException] = []  # what ended the program, if anything did


def install(close_all: Callable[[str | None, float | None], None]) -> None:
    """Call ``close_all(status, timeout)`` when the process ends; once per process."""
    on_shutdown(lambda: close_all("failed" if _uncaught else None, None))
    limit = Session.get().settings.exit_timeout
    _signals.install(lambda _: close_all("aborted", limit), limit + 1)
    previous = sys.excepthook

    def hook(et: type[BaseException], ev: BaseException, tb: TracebackType | None) -> None:
        _uncaught.append(ev)
        previous(et, ev, tb)

    sys.excepthook = hook
