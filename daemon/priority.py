"""CPU priority: the daemon's bulk work runs only on CPU the trainers leave.

The daemon has two kinds of work. Answering clients and journaling what they
hand over (the event loop, the journal's thread) must stay prompt: a trainer may
wait on it (``Task.init``, ``flush``). Encoding, hashing and copying (the
default executor's threads, the encode worker processes) can wait: nothing
accepted depends on when they run. So the first runs at ``nice`` (5 by default)
and the second at ``work_nice`` (19: the lowest priority there is). On two cores
that a training loop keeps busy, a 16 MiB file every 60 ms slowed the loop by
+45 % with the daemon's hashing at nice 5, and by +3 % at 19 (the inline copy:
+2.5 %); a DataFrame +11 % against +10 % (inline +28 %), a dict +12 % against +5 %
(``bench/training_loop.py --placement shared``, best of 5). The cost: a node whose trainers
keep every core busy all the time leaves the daemon ~1.5 % of a core for that
work, so its backlog grows in the spool until they pause (between epochs,
waiting on the GPU) and the spool quota applies. ``work_nice`` trades that back.

Linux gives each thread its own niceness: a thread created inherits its
creator's, and :func:`lower_this_thread` changes only the calling one.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def lower_this_thread(nice: int) -> None:
    """Make the calling thread at least this nice (never less nice than it is)."""
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        pass  # not allowed here (a seccomp profile...): the work runs at the daemon's


def work_executor(nice: int) -> ThreadPoolExecutor:
    """The threads the daemon's bulk work runs on (``asyncio.to_thread``)."""
    return ThreadPoolExecutor(
        thread_name_prefix="artisync-work", initializer=lower_this_thread, initargs=(nice,)
    )


async def with_work_priority(coro: Coroutine[Any, Any, T], nice: int) -> T:
    """Run ``coro`` with the loop's default executor at ``nice`` (see above)."""
    asyncio.get_running_loop().set_default_executor(work_executor(nice))
    return await coro
