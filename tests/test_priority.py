"""The daemon answers at its ``nice`` and does its bulk work (encoding, hashing,
copying: its worker threads and encode processes) at ``work_nice``
(``daemon.priority``). A real daemon; niceness read from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import DaemonProc, Env, daemon_status, run_py, wait_committed

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
task.flush()  # in the spool: nobody waits on the work (that would boost it, see below)
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
        wait_committed(env, 3)
        threads = _threads(d.proc.pid)
        workers = {kid: _threads(kid) for kid in _encode_workers(d.proc.pid)}
    finally:
        d.stop()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    loop = min(19, base + 5)  # nice = 5 is added to what the daemon was started with
    work = max(loop, 19 if work_nice is None else int(work_nice))
    assert threads[d.proc.pid] == loop, threads  # the event loop's thread
    assert work in threads.values() and set(threads.values()) <= {loop, work, base}, threads
    # at the daemon's own start priority: only the boost threads, made before it
    # lowered itself to nice (idle until a client waits on the work, see below)
    boost = min(32, (os.cpu_count() or 1) + 4)
    assert list(threads.values()).count(base) == boost, threads
    assert workers, "no encode worker process"
    for kid, nices in workers.items():
        assert set(nices.values()) == {work}, (kid, nices)


# a file big enough that hashing and copying it at work_nice take seconds on busy cores
BIG = """
import hashlib, json, os, sys
from artisync import Task
task = Task.init(project_name="priority", task_name="big")
data = os.urandom(64 * 2**20)
with open("big.bin", "wb") as f:
    f.write(data)
task.upload_artifact("big", "big.bin")
if sys.argv[1] == "wait":
    task.flush(wait_for_uploads=True)
print(json.dumps({"task": task.id, "sha": hashlib.sha256(data).hexdigest()}))
"""

STORED = """
import hashlib, sys
from artisync import Task
path = Task.get_task(task_id=sys.argv[1]).artifacts["big"].get()
print(hashlib.sha256(open(path, "rb").read()).hexdigest())
"""


def _reported(env: Env, mode: str) -> dict[str, str]:
    out = run_py(env, f"import sys; sys.argv[1:] = [{mode!r}]\n" + BIG, timeout=300)
    report: dict[str, str] = json.loads(out.stdout)
    return report


def _stored_sha(env: Env, task_id: str) -> str:
    code = f"import sys; sys.argv[1:] = [{task_id!r}]\n" + STORED
    return run_py(env, code, ARTISYNC_SPOOL=str(env.root / "elsewhere")).stdout.strip()


def test_work_a_client_waits_on_is_boosted_and_other_work_never_is(env: Env) -> None:
    """A thread cannot raise its own priority again, so while a client waits on work
    at work_nice, its next pieces run on threads made at the daemon's start priority
    (``daemon.priority.Boost``). The daemon's status counts them."""
    d = DaemonProc(env).wait_ready()
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        # nobody waits: the file is hashed and copied on the work threads only
        quiet = _reported(env, "no wait")
        wait_committed(env, 1)
        assert daemon_status(env)["boosted"] == 0
        # every core busy, then a client waits: the work crawls at nice 19 until the
        # flush arrives (the 64 MiB take ~0.1 s of CPU), and goes on boosted from there
        spin = [sys.executable, "-c", "while True: pass"]
        spinners = [subprocess.Popen(spin) for _ in range(os.cpu_count() or 2)]
        waited = _reported(env, "wait")
        boosted = daemon_status(env)["boosted"]
    finally:
        for s in spinners:
            s.kill()
            s.wait()
        d.stop()
    assert boosted > 0
    for report in (quiet, waited):
        assert _stored_sha(env, report["task"]) == report["sha"]
