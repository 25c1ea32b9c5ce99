"""The daemon answers at its ``nice`` and does its bulk work (encoding, hashing,
copying: its worker threads and encode processes) at ``work_nice``
(``daemon.priority``). A real daemon; niceness read from /proc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness import DaemonProc, Env, run_py

# a DataFrame goes to an encode worker process, a file is hashed on a work thread
REPORT = """
import os
import pandas as pd
from artisync import Task
task = Task.init(project_name="priority", task_name="t")
with open("f.bin", "wb") as f:
    f.write(os.urandom(200_000))
task.upload_artifact("frame", pd.DataFrame({"a": range(1000)}))
task.upload_artifact("file", "f.bin")
task.flush(wait_for_uploads=True)
"""


def _nice(stat: Path) -> int:
    return int(stat.read_text().rsplit(")", 1)[1].split()[16])  # field 19: nice


def _threads(pid: int) -> dict[int, int]:
    """Thread id -> niceness, for every thread of the process."""
    return {int(t.name): _nice(t / "stat") for t in Path(f"/proc/{pid}/task").iterdir()}


def _encode_workers(pid: int) -> list[int]:
    """The daemon's encode worker processes (not multiprocessing's resource tracker)."""
    kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


@pytest.mark.parametrize("work_nice", [None, "12"])
def test_bulk_work_runs_at_work_nice_and_the_loop_at_nice(env: Env, work_nice: str | None) -> None:
    extra = {} if work_nice is None else {"ARTISYNC_WORK_NICE": work_nice}
    d = DaemonProc(env, **extra).wait_ready()
    try:
        run_py(env, REPORT)
        threads = _threads(d.proc.pid)
        workers = {kid: _threads(kid) for kid in _encode_workers(d.proc.pid)}
    finally:
        d.stop()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    loop = min(19, base + 5)  # nice = 5 is added to what the daemon was started with
    work = max(loop, 19 if work_nice is None else int(work_nice))
    assert threads[d.proc.pid] == loop, threads  # the event loop's thread
    assert work in threads.values() and set(threads.values()) <= {loop, work}, threads
    assert workers, "no encode worker process"
    for kid, nices in workers.items():
        assert set(nices.values()) == {work}, (kid, nices)
