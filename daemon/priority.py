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
creator's, and :func:`lower_this_thread` changes only the calling one. A thread
may lower its priority but never raise it again (without CAP_SYS_NICE), so while
a client waits on the work (``flush(wait_for_uploads=True)``, ``wait_on_upload``,
``get()`` of an artifact being encoded), :class:`Boost` runs that work on threads
made before the daemon lowered its priority to ``nice``: at a trainer's own
priority, as if the trainer did that work itself (see ``protocol._pieces``). With
a process spinning on each of 2 cores, a 64 MiB file's upload and flush took 6.3 s
at ``work_nice = 19`` without it, 0.26 s with it (0.27 s at ``work_nice = 5``:
``bench/flush_busy.py``). The encode worker processes are not boosted: a process
cannot hand its work over as a thread can.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from artisync.protocol import set_runner

T = TypeVar("T")


def _nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def lower_this_thread(nice: int) -> None:
    """Make the calling thread at least this nice (never less nice than it is)."""
    try:
        if _nice_of_this_thread() < nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        pass  # not allowed here (a seccomp profile...): the work runs at the daemon's


class WorkExecutor(ThreadPoolExecutor):
    """The threads the daemon's bulk work runs on (``asyncio.to_thread``), at ``nice``;
    while a client waits on the work, a job submitted runs on a boost thread instead
    (see :class:`Boost`): its own first steps, and any it makes outside a loop (an
    fsync, a rename), would otherwise wait for a thread that busy cores rarely run."""

    def __init__(self, nice: int) -> None:
        super().__init__(
            thread_name_prefix="artisync-work", initializer=lower_this_thread, initargs=(nice,)
        )

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        boost = BOOST
        if boost is not None and boost.waiting:
            return boost.submit(functools.partial(fn, *args, **kwargs))
        return super().submit(fn, *args, **kwargs)


class Boost:
    """Threads made at the creating thread's priority, that run the bulk work while a
    client waits on it: the jobs submitted meanwhile (:class:`WorkExecutor`), and the
    rest of any loop under way on a thread of lower priority (installed as the
    process's runner of loops, ``protocol.set_runner``, by :func:`start_boost`)."""

    def __init__(self, threads: int) -> None:
        try:
            self.nice = _nice_of_this_thread()  # the boost threads inherit it
        except OSError:  # not allowed to ask (a seccomp profile...): never boost
            self.nice = 40
        self.waiting = 0  # clients waiting on the work (changed on the event loop)
        self.waited_on = asyncio.Event()  # set while any does
        self.handed = 0  # jobs and loops run on boost threads since the start (in status)
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]
        self._queue = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._serve, name=f"artisync-boost-{i}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            piece, done = self._queue.get()
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(piece())
                except BaseException as exc:  # handed back to the thread that waits
                    done.set_exception(exc)

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Run ``job`` on a boost thread."""
        done: Future[T] = Future()
        self._queue.put((job, done))
        self.handed += 1
        return done

    def __call__(self, step: Callable[[], bool]) -> None:
        """Call ``step()`` until it returns False: here, or while a client waits, on
        a boost thread (the rest of the loop at once, see ``protocol._pieces``)."""
        while True:
            if self.waiting and self._low():
                if not self.submit(lambda: self._while_waited(step)).result():
                    return
            elif not step():
                return

    def _low(self) -> bool:
        """Does the calling thread run below the boost threads' priority?"""
        try:
            return _nice_of_this_thread() > self.nice
        except OSError:
            return False

    def _while_waited(self, step: Callable[[], bool]) -> bool:
        """On a boost thread: the steps while a client waits; is there more to do?"""
        while self.waiting:
            if not step():
                return False
        return True

    @contextlib.contextmanager
    def waiter(self) -> Iterator[None]:
        """While a client waits on the work (on the event loop's thread)."""
        self.waiting += 1
        self.waited_on.set()
        try:
            yield
        finally:
            self.waiting -= 1
            if not self.waiting:
                self.waited_on.clear()


BOOST: Boost | None = None  # this daemon's, once :func:`start_boost` made it


def client_waiting() -> bool:
    """Does a client wait on the daemon's work now (its jobs then run on boost threads)?"""
    return BOOST is not None and BOOST.waiting > 0


async def until_client_waits() -> None:
    """Return once a client waits on the daemon's work (never, without boost threads)."""
    if BOOST is None:
        await asyncio.Event().wait()
    else:
        await BOOST.waited_on.wait()


def start_boost() -> Boost:
    """Make the boost threads, at the calling thread's priority (the daemon's main
    thread, before it lowers its own to ``nice``: boosted work then runs as a
    trainer's own would), and run the process's pieces through them."""
    global BOOST
    # as many as the work executor has (ThreadPoolExecutor's default): its jobs
    # (a folder's files written and fsynced) move to them while a client waits
    BOOST = Boost(min(32, (os.cpu_count() or 1) + 4))
    set_runner(BOOST)
    return BOOST


def client_waits() -> contextlib.AbstractContextManager[None]:
    """A client waits on the work meanwhile: boost it (see :class:`Boost`)."""
    return BOOST.waiter() if BOOST is not None else contextlib.nullcontext()


async def with_work_priority(coro: Coroutine[Any, Any, T], nice: int) -> T:
    """Run ``coro`` with the loop's default executor at ``nice`` (see above)."""
    asyncio.get_running_loop().set_default_executor(WorkExecutor(nice))
    return await coro
