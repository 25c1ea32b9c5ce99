"""Preemption: SIGTERM and SIGHUP write out what is queued before they take effect.

Schedulers (SLURM, Kubernetes, most batch systems) send SIGTERM some seconds
before SIGKILL. Python's default action ends the process at once, without
atexit, so snapshots still queued for the writer thread would be lost and the
task would stay ``in_progress``. The handler installed here runs the given
``on_signal`` (mark tasks aborted, drain the queue within a bounded time), then
lets the signal take the effect it would have had: the program's own handler if
it set one, else the default action (the process ends by that signal).
SIGINT is left alone: its ``KeyboardInterrupt`` unwinds through atexit anyway.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("artisync")

SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_installed: set[int] = set()


def install(on_signal: Callable[[int], None], limit: float) -> None:
    """Chain a handler for SIGTERM and SIGHUP (once; main thread only, as Python
    requires; a signal the program ignores stays ignored). ``on_signal`` runs on a
    thread of its own for at most ``limit`` seconds: the handler interrupts the main
    thread wherever it is, perhaps holding a lock that ``on_signal`` needs."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        if sig in _installed:
            continue
        previous = signal.getsignal(sig)
        if previous is signal.SIG_IGN or previous is None:
            continue  # ignored, or set outside Python: leave it be
        signal.signal(sig, _chained(on_signal, previous, limit))
        _installed.add(sig)


def _chained(
    on_signal: Callable[[int], None],
    previous: Callable[[int, FrameType | None], object] | int,
    limit: float,
) -> Callable[[int, FrameType | None], None]:
    def run(signum: int) -> None:
        try:
            on_signal(signum)
        except Exception as exc:  # the signal must still take effect
            log.error("artisync: writing out reports on signal %d failed: %s", signum, exc)

    def handler(signum: int, frame: FrameType | None) -> None:
        worker = threading.Thread(target=run, args=(signum,), name="artisync-signal", daemon=True)
        worker.start()
        worker.join(limit)
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signum, signal.SIG_DFL)  # the default action, as if we were not here
        os.kill(os.getpid(), signum)

    return handler
