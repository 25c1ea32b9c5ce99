"""Where a long CPU-bound loop runs (hashing, copying, checking a copy): step by step.

On the calling thread, unless the process installed a runner (:func:`set_runner`).
The daemon does: its bulk work runs at the lowest CPU priority, and while a client
waits on that work, the runner moves the rest of the loop to a thread at a
trainer's priority (``daemon.priority.Boost``). A thread cannot raise its own
priority again, so work already under way could not be sped up otherwise; cut into
steps of a few MiB, a loop changes pace within one step. The rest of the loop
moves as a whole: handing each step over would wake the slow thread between steps,
and on busy cores a thread at the lowest priority waits long to wake.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Runner(Protocol):
    def __call__(self, step: Callable[[], bool]) -> None: ...


_runner: Runner | None = None


def run_steps(step: Callable[[], bool]) -> None:
    """Call ``step()`` until it returns False, where the process wants it to run."""
    runner = _runner
    if runner is not None:
        runner(step)
        return
    while step():
        pass


def run(piece: Callable[[], T]) -> T:
    """``piece()`` as a loop of one step (an fsync: the writeback is work too)."""
    out: list[T] = []

    def step() -> bool:
        out.append(piece())
        return False

    run_steps(step)
    return out[0]


def set_runner(runner: Runner | None) -> None:
    """Run every loop through ``runner`` from now on (None: on the calling thread)."""
    global _runner
    _runner = runner
