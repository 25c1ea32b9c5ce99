"""Raw snapshot files recycled (protocol._recycle): a private daemon keeps encoded raw
files in the spool's ``free/``, the SDK writes new snapshots over them. Real SDK
processes and a real daemon; what is stored is read back from storage alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from artisync.protocol import Spool, recycle
from tests.harness import DaemonProc, Env, run_py
from tests.records import task_record

N = 24
ROWS = "300 + (i % 6) * 100 if i % 4 < 2 else 900 - (i % 5) * 100"  # of the i-th

# Arrays and DataFrames of falling and rising sizes (so that a snapshot is written
# over a bigger file, to be cut, and over a smaller one, to grow)
MADE = f"""
import numpy as np, pandas as pd

def made(i):
    rows = {ROWS}
    arr = np.full((rows, 256), i, dtype=np.float64)
    return arr if i % 2 else pd.DataFrame(arr, columns=[f"c{{k}}" for k in range(256)])

def same(got, want):
    if isinstance(want, np.ndarray):
        return got.shape == want.shape and (got == want).all()
    pd.testing.assert_frame_equal(got, want)
    return True
"""

# Each is read back at once from the spool; says how many were written over a
# recycled file. Each call after the first waits until the pool holds a file.
REPORT = f"""
import json, os, time
from artisync import Task
{MADE}
task = Task.init(project_name="recycle", task_name="arrays")
free = os.path.join(os.environ["ARTISYNC_SPOOL"], "free")
reused = 0
for i in range({N}):
    deadline = time.monotonic() + 30
    while i and not os.listdir(free):
        assert time.monotonic() < deadline, "the daemon gave no file back"
        time.sleep(0.01)
    task.upload_artifact(f"a{{i}}", made(i))
    art = task.artifacts[f"a{{i}}"]
    reused += "reused" in art._record["raw"]
    assert same(art.get(), made(i)), i
    time.sleep(0.05)
task.flush(wait_for_uploads=True)
print(json.dumps({{"task": task.id, "reused": reused}}))
"""


def _check_stored(env: Env, task_id: str) -> None:
    """Every version, read back from storage in a process with no spool."""
    code = f"""
from artisync import Task
{MADE}
a = Task.get_task(task_id={task_id!r}).artifacts
for i in range({N}):
    assert same(a[f"a{{i}}"].get(), made(i)), i
print(len(a))
"""
    out = run_py(env, code, ARTISYNC_SPOOL=str(env.root / "elsewhere"))
    assert out.stdout.strip() == str(N)


def test_encoded_raw_files_are_written_over_and_every_version_reads_back_right(
    env: Env,
) -> None:
    d = DaemonProc(env).wait_ready()
    try:
        out = json.loads(run_py(env, REPORT).stdout)
        pool = sorted(Spool(env.spool).free.iterdir())
    finally:
        d.stop()
    # the first snapshots are new files; most of the later ones are written over
    # each call of 300-500 rows finds a file that fits whatever the pool holds then
    # (500 rows: 1.0 MB; the pool's files are 0.6-1.9 MB); bigger ones may not
    fits = [i for i in range(1, N) if eval(ROWS, {"i": i}) <= 500]
    assert out["reused"] >= len(fits) == 7, out
    assert 0 < len(pool) <= recycle.MAX_FILES
    _check_stored(env, out["task"])


def test_no_daemon_means_no_recycled_file_is_written_over(env: Env) -> None:
    """Offline, the snapshot may wait for days (and a restart): always a new file."""
    d = DaemonProc(env).wait_ready()
    try:
        run_py(env, REPORT)
    finally:
        d.stop()
    pool = Spool(env.spool).free
    before = {p.name: p.stat().st_ino for p in pool.iterdir()}
    assert before
    code = """
    import numpy as np
    from artisync import Task
    task = Task.init(project_name="recycle", task_name="offline")
    task.upload_artifact("a", np.ones((800, 256)))
    assert "reused" not in task.artifacts["a"]._record["raw"]
    """
    run_py(env, code, ARTISYNC_AUTOSTART="0")
    assert {p.name: p.stat().st_ino for p in pool.iterdir()} == before


def _plant(pool: Path, outside: Path) -> list[Path]:
    """Files a trainer must never write over: a hard link to a file elsewhere, a
    symlink to it, a FIFO, someone else's file, and one readable by others."""
    size = 800 * 256 * 8 + 128
    planted = []
    for i, make in enumerate(("link", "symlink", "fifo", "nobody", "0644")):
        path = pool / f"{size:013d}.planted{i}"
        if make == "link":
            os.link(outside, path)
        elif make == "symlink":
            path.symlink_to(outside)
        elif make == "fifo":
            os.mkfifo(path, 0o600)
        else:
            path.write_bytes(b"\0" * size)
            os.chmod(path, 0o644 if make == "0644" else 0o600)
            if make == "nobody":
                os.chown(path, 65534, 65534)
        planted.append(path)
    return planted


def test_a_file_planted_in_the_pool_is_never_written_into(env: Env) -> None:
    d = DaemonProc(env).wait_ready()
    try:
        pool = Spool(env.spool).free
        for p in pool.iterdir():  # only the planted ones to choose from
            p.unlink()
        outside = env.root / "secret.bin"
        outside.write_bytes(b"secret" * 1000)
        _plant(pool, outside)
        code = """
        import numpy as np
        from artisync import Task
        task = Task.init(project_name="recycle", task_name="planted")
        for i in range(3):
            task.upload_artifact(f"a{i}", np.full((800, 256), i, dtype=np.float64))
            assert "reused" not in task.artifacts[f"a{i}"]._record["raw"], i
            assert (task.artifacts[f"a{i}"].get() == i).all()
        """
        run_py(env, code)
    finally:
        d.stop()
    assert outside.read_bytes() == b"secret" * 1000
    assert not any(p.name.startswith(f"{800 * 256 * 8 + 128:013d}.planted") for p in pool.iterdir())


def test_a_reused_snapshot_written_before_a_restart_is_refused_with_the_reason(
    env: Env,
) -> None:
    """Its file may hold older bytes after a power loss: never taken as the snapshot."""
    spool = Spool(env.spool).ensure()
    arr = np.arange(100_000, dtype=np.float64)
    raw = spool.raw_path(uuid.uuid4().hex)
    with open(raw, "wb") as f:
        np.lib.format.write_array(f, arr)
    dest = f"file://{env.storage}"
    task = task_record(dest)
    rec = {
        "kind": "artifact",
        "record_id": raw.name,
        "task_id": task["task_id"],
        "created": time.time(),
        "dest": dest,
        "host": "h",
        "user": "u",
        "pid": os.getpid(),
        "name": "a",
        "type": "numpy",
        "format": "npz",
        "extension": ".npz",
        "metadata": {},
        "raw": {"codec": "npy", "size": raw.stat().st_size, "reused": str(uuid.uuid4())},
    }
    spool.append_outbox(task)
    spool.append_outbox(rec)
    spool.close_outbox_log()
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(60) == 0, d.output()[-3000:]
    why = (spool.rejected / f"{raw.name}.why").read_text()
    assert "restarted" in why and "report it again" in why, why


# Four processes of one job report at once: each takes files from the same pool
RANK = """
import json, sys, time
from artisync import Task
{made}
rank = int(sys.argv[1])
task = Task.init(project_name="recycle", task_name=f"rank {{rank}}")
reused = 0
for i in range(12):
    k = rank * 100 + i
    task.upload_artifact(f"a{{i}}", made(k))
    reused += "reused" in task.artifacts[f"a{{i}}"]._record["raw"]
    assert same(task.artifacts[f"a{{i}}"].get(), made(k)), k
task.flush(wait_for_uploads=True)
print(json.dumps({{"task": task.id, "reused": reused}}))
"""


def test_processes_reporting_at_once_never_share_a_recycled_file(env: Env) -> None:
    d = DaemonProc(env).wait_ready()
    try:
        run_py(env, REPORT)  # fills the pool
        assert any(Spool(env.spool).free.iterdir())
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RANK.format(made=MADE), str(rank)],
                env=env.environ(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=env.root,
            )
            for rank in range(4)
        ]
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        d.stop()
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    ranks = [json.loads(out) for out, _ in outs]
    # how many calls find a file depends on how fast the daemon gives them back; at
    # least one does (every pool file fits the 300-row ones, and nothing else takes
    # them). What this test is about is that the processes' takes never collide: a
    # file two of them wrote into would fail the reads below.
    assert sum(r["reused"] for r in ranks) >= 1, ranks
    code = f"""
from artisync import Task
{MADE}
for rank, task_id in enumerate({[r["task"] for r in ranks]!r}):
    a = Task.get_task(task_id=task_id).artifacts
    for i in range(12):
        assert same(a[f"a{{i}}"].get(), made(rank * 100 + i)), (rank, i)
print("ok")
"""
    out = run_py(env, code, ARTISYNC_SPOOL=str(env.root / "elsewhere"))
    assert out.stdout.strip() == "ok"


# A file reported twice as it is: the second snapshot's raw file is not its blob (the
# first one's is), so the daemon gives it back; the next, different, file is copied
# over it. Sizes: smaller (the rest cut), then bigger (grown). Each read back at once.
FILES = """
import hashlib, json, os, time
from artisync import Task
task = Task.init(project_name="recycle", task_name="files")
free = os.path.join(os.environ["ARTISYNC_SPOOL"], "free")
path = os.path.join(os.getcwd(), "weights.bin")
out = {"task": task.id, "reused": [], "sha": {}}
for k, size in enumerate((512 << 10, 400 << 10, 600 << 10)):
    data = bytes([k + 1]) * 1000 + os.urandom(size - 1000)
    with open(path, "wb") as f:
        f.write(data)
    for again in ("", "-again"):
        if k and not again:
            deadline = time.monotonic() + 30
            while not os.listdir(free):
                assert time.monotonic() < deadline, "the daemon gave no file back"
                time.sleep(0.01)
        name = f"f{k}{again}"
        task.upload_artifact(name, path)
        if "reused" in task.artifacts[name]._record["raw"]:
            out["reused"].append(name)
        with open(task.artifacts[name].get(), "rb") as f:
            assert f.read() == data, name
        task.flush()
    out["sha"][f"f{k}"] = hashlib.sha256(data).hexdigest()
task.flush(wait_for_uploads=True)
print(json.dumps(out))
"""


def test_a_file_is_copied_over_a_recycled_raw_file_and_stored_exactly(env: Env) -> None:
    if recycle.fs_type(env.root) not in recycle.PREALLOCATED:
        pytest.skip(f"files are copied over recycled ones on ext4 only; {env.root} is not")
    d = DaemonProc(env).wait_ready()
    try:
        out = json.loads(run_py(env, FILES).stdout)
    finally:
        d.stop()
    assert out["reused"] == ["f1", "f2"], out  # the first, and the repeats, find none
    code = f"""
import hashlib
from artisync import Task
a = Task.get_task(task_id={out["task"]!r}).artifacts
for name, sha in {out["sha"]!r}.items():
    for version in (name, name + "-again"):
        with open(a[version].get(), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha, version
print("ok")
"""
    got = run_py(env, code, ARTISYNC_SPOOL=str(env.root / "elsewhere"))
    assert got.stdout.strip() == "ok"
