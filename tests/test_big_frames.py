"""A 2 GiB DataFrame through a real daemon: encoded by row groups from its raw Arrow
snapshot, so that the daemon (with its encode worker) never holds the frame."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.parquet as pq

from bench._common import Proc
from tests.harness import DaemonProc, Env, run_py, stored_objects, wait_committed

ROWS = 1 << 24  # x 16 float64 columns: 2 GiB
COLUMNS = 16
FRAME = ROWS * COLUMNS * 8
BOUND = FRAME // 8  # the daemon's anonymous memory may grow by this much at most

REPORT = f"""
import numpy as np, pandas as pd
from artisync import Task

base = np.arange({ROWS}, dtype=np.float64)
frame = pd.DataFrame({{f"c{{k}}": base + k for k in range({COLUMNS})}})
task = Task.init(project_name="big", task_name="2 GiB")
task.upload_artifact("frame", frame)
print(task.id)
"""


def _anon(pid: int) -> int:
    return Proc.memory(pid)[1]


@contextmanager
def _peak_anon(pid: int) -> Iterator[list[int]]:
    """[baseline, peak] of the anonymous memory (RssAnon + RssShmem: what the processes
    hold themselves, not the page cache of files they map) of ``pid`` and its
    descendants, sampled every 20 ms while in the block (as ``bench/memory.py``)."""
    seen = [_anon(pid), 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen[1] = max(seen[1], _anon(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        stop.set()
        sampler.join()


def test_a_2_gib_dataframe_goes_through_with_the_daemons_memory_bounded(env: Env) -> None:
    d = DaemonProc(env).wait_ready()
    try:
        with _peak_anon(d.proc.pid) as seen:
            run_py(env, REPORT, timeout=300)
            wait_committed(env, 2, 600)  # the task and the frame
    finally:
        d.stop()
    base, peak = seen
    print(f"daemon anonymous memory: {base >> 20} MiB at rest, {peak >> 20} MiB at peak")
    assert peak - base < BOUND, f"daemon grew by {(peak - base) >> 20} MiB for a 2 GiB frame"
    # stored as parquet, every row there: the largest object is the frame
    objects = stored_objects(env.storage)
    sha = max(objects, key=lambda s: objects[s])
    path = next((env.storage / "objects" / "sha256").rglob(sha))
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_rows == ROWS
    assert parquet.metadata.num_columns == COLUMNS  # the default RangeIndex is metadata
    assert parquet.metadata.num_row_groups > 1  # encoded by row groups, not whole
    last = parquet.read_row_group(parquet.metadata.num_row_groups - 1, columns=["c15"])
    assert last.column(0)[-1].as_py() == ROWS - 1 + 15
