"""The trainer writes raw snapshots; the daemon encodes them (issue: the trainer pays
only for a copy). Real SDK processes, real daemons, real SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artisync.protocol import Spool
from tests.harness import (
    DaemonProc,
    Env,
    daemon_status,
    outbox_records,
    run_py,
    stored_objects,
    wait_committed,
)

# Reports one of each kind, then kills itself the instant the last call returned:
# nothing may be left in memory, in a thread, or in an atexit handler.
REPORT_AND_DIE = """
import os, signal, sys
import numpy as np, pandas as pd
from PIL import Image
from artisync import Task

task = Task.init(project_name="raw", task_name="killed")
rng = np.random.default_rng(7)
task.upload_artifact("frame", pd.DataFrame({"a": np.arange(50_000), "b": rng.random(50_000)}))
task.upload_artifact("array", np.arange(200_000, dtype=np.float32).reshape(400, 500))
task.upload_artifact("image", Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)))
task.upload_artifact("file", sys.argv[1])
task.upload_artifact("folder", sys.argv[2])
print(task.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _inputs(env: Env) -> tuple[Path, Path]:
    f = env.root / "weights.bin"
    f.write_bytes(os.urandom(3 * 1024 * 1024))
    folder = env.root / "samples"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    return f, folder


def _run_killed(env: Env, f: Path, folder: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", REPORT_AND_DIE, str(f), str(folder)],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=env.root,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc.stdout.strip()


def _check_delivered(env: Env, task_id: str, f: Path, folder: Path) -> None:
    """Read back from storage alone, in a process with no spool."""
    code = f"""
    import json, sys
    import numpy as np, pandas as pd
    from artisync import Task
    t = Task.get_task(task_id={task_id!r})
    a = t.artifacts
    rng = np.random.default_rng(7)
    want = pd.DataFrame({{"a": np.arange(50_000), "b": rng.random(50_000)}})
    pd.testing.assert_frame_equal(a["frame"].get(), want)
    assert (a["array"].get() == np.arange(200_000, dtype=np.float32).reshape(400, 500)).all()
    img = a["image"].get()
    assert img.size == (80, 60) and img.mode == "RGB"
    assert (np.asarray(img) == rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).all()
    assert open(a["file"].get(), "rb").read() == open({str(f)!r}, "rb").read()
    import os
    got = a["folder"].get()
    assert open(os.path.join(got, "sub", "b.txt")).read() == "beta"
    print(json.dumps(sorted(a)))
    """
    out = run_py(env, code, ARTISYNC_SPOOL=str(env.root / "elsewhere"))
    assert json.loads(out.stdout) == ["array", "file", "folder", "frame", "image"]


def test_trainer_sigkilled_right_after_the_calls_loses_nothing(env: Env) -> None:
    """A daemon is serving: it may not even have seen the records when the trainer dies."""
    f, folder = _inputs(env)
    d = DaemonProc(env).wait_ready()
    try:
        task_id = _run_killed(env, f, folder)
        wait_committed(env, 5 + 1)  # five artifacts and the task's start
    finally:
        d.stop()
    _check_delivered(env, task_id, f, folder)
    assert list(Spool(env.spool).raw.iterdir()) == []  # encoded, then removed


def test_no_daemon_at_all_the_snapshots_wait_and_a_later_daemon_delivers_them(
    env: Env,
) -> None:
    f, folder = _inputs(env)
    task_id = _run_killed(env, f, folder)
    spool = Spool(env.spool)
    # the frame, the array, the file and the folder's pack; the image's pixels (14 KiB)
    # travel inside its record
    assert len(list(spool.raw.iterdir())) == 4  # raw snapshots, not yet encoded
    assert len(outbox_records(env.spool)) == 6
    assert stored_objects(env.storage) == {}
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(180) == 0, d.output()[-3000:]
    _check_delivered(env, task_id, f, folder)
    assert list(spool.raw.iterdir()) == []


def test_get_before_the_daemon_encoded_returns_an_equal_object(env: Env) -> None:
    from artisync import Task

    f, folder = _inputs(env)
    task = Task.init(project_name="raw", task_name="early read")
    frame = pd.DataFrame({"x": np.arange(1000), "y": np.linspace(0, 1, 1000)})
    frame.index = frame.index * 3  # not a RangeIndex from 0: it must survive too
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = Image.new("P", (7, 5), 3)
    image.putpalette([i % 256 for i in range(768)])
    task.upload_artifact("frame", frame)
    task.upload_artifact("array", array)
    task.upload_artifact("image", image)
    task.upload_artifact("dict", {"k": [1, 2.5, None]})
    task.upload_artifact("file", f)
    task.upload_artifact("folder", folder)
    frame.loc[0, "x"] = -1  # the snapshot is taken: later changes do not count
    array[0, 0, 0] = 99
    # no daemon, nothing encoded: the file and the folder's pack are raw files, the rest
    # small enough to travel inside their records
    assert len(list(Spool(env.spool).raw.iterdir())) == 2
    assert len(outbox_records(env.spool)) == 7
    arts = task.artifacts
    got = arts["frame"].get()
    pd.testing.assert_frame_equal(
        got, pd.DataFrame({"x": np.arange(1000), "y": np.linspace(0, 1, 1000)}, index=got.index)
    )
    assert list(got.index[:3]) == [0, 3, 6]
    assert arts["array"].get()[0, 0, 0] == 0 and arts["array"].get().dtype == np.int16
    back = arts["image"].get()
    assert back.mode == "P" and back.tobytes() == image.tobytes()
    assert back.getpalette() == image.getpalette()
    assert arts["dict"].get() == {"k": [1, 2.5, None]}
    assert Path(arts["file"].get()).read_bytes() == f.read_bytes()
    assert (Path(arts["folder"].get()) / "sub" / "b.txt").read_text() == "beta"
    import zipfile

    archive = arts["folder"].get_local_copy(extract_archive=False, raise_on_error=True)
    with zipfile.ZipFile(str(archive)) as zf:  # a zip, as ClearML gives a folder unextracted
        assert zf.read("sub/b.txt") == b"beta"
    task.close()


def test_the_hash_of_an_artifact_comes_from_the_daemon_once_encoded(
    env: Env, daemon: DaemonProc
) -> None:
    from artisync import Task

    task = Task.init(project_name="raw", task_name="hash")
    frame = pd.DataFrame({"a": np.random.default_rng(0).random(3000)})  # an object, not inline
    task.upload_artifact("frame", frame)
    art = task.artifacts["frame"]
    sha = art.hash  # waits for the daemon to encode it
    assert len(sha) == 64 and art.size > 0
    assert Path(Spool(env.spool).blob_path(sha)).exists() or sha in stored_objects(env.storage)
    assert "DataFrame 3000 rows x 1 columns" in art.preview
    task.flush(wait_for_uploads=True, timeout=60)
    assert sha in stored_objects(env.storage)
    task.close()


def test_a_daemon_killed_mid_encode_encodes_again_at_restart(env: Env) -> None:
    """SIGKILL the daemon while it encodes a big frame: the raw snapshot stays, and the
    next daemon encodes and delivers it."""
    code = """
    import numpy as np, pandas as pd
    from artisync import Task
    t = Task.init(project_name="raw", task_name="mid-encode")
    rng = np.random.default_rng(1)
    t.upload_artifact("big", pd.DataFrame(rng.random((2_000_000, 8)), columns=list("abcdefgh")))
    t.close()
    print(t.id)
    """
    task_id = run_py(env, code).stdout.strip()
    d = DaemonProc(env).wait_ready()
    deadline = time.monotonic() + 60
    while daemon_status(env)["encoding"]["in_flight"] == 0:
        assert time.monotonic() < deadline, "the encoder never claimed the record"
        time.sleep(0.02)
    time.sleep(0.3)
    d.kill()
    spool = Spool(env.spool)
    assert len(list(spool.raw.iterdir())) == 1, "the raw snapshot must outlive the kill"
    d2 = DaemonProc(env, "--exit-when-idle")
    assert d2.wait_exit(180) == 0, d2.output()[-3000:]
    out = run_py(
        env,
        f"""
        from artisync import Task
        df = Task.get_task(task_id={task_id!r}).artifacts["big"].get()
        print(df.shape)
        """,
        ARTISYNC_SPOOL=str(env.root / "elsewhere"),
    )
    assert out.stdout.strip() == "(2000000, 8)"
    assert list(spool.raw.iterdir()) == []


def test_a_raw_snapshot_that_cannot_be_encoded_fails_its_record_with_the_reason(
    env: Env,
) -> None:
    from artisync import Task, UploadFailed

    task = Task.init(project_name="raw", task_name="corrupt")
    task.upload_artifact("frame", pd.DataFrame({"a": np.arange(100_000.0)}))  # a raw file
    rec = task.artifacts["frame"]._record
    raw = Spool(env.spool).raw_path(rec["record_id"])
    size = raw.stat().st_size
    # overwritten in place (same size: it passes the checks at ingest), then a daemon
    with open(raw, "r+b") as fh:
        fh.write(b"\0" * size)
    d = DaemonProc(env).wait_ready()
    try:
        with pytest.raises(UploadFailed):
            task.flush(wait_for_uploads=True, timeout=60)
        failed = daemon_status(env)["failed"]
    finally:
        d.stop()
    assert failed["records"] == 1
    assert "encoding" in failed["items"][0]["reason"]
    assert "Arrow IPC" in failed["items"][0]["reason"]
    assert raw.exists()  # kept with the failed record: `artisync retry` encodes it again


def _delayed(path: Path) -> bool:
    """Some of the file is only in the page cache: its blocks are not even allocated
    (delayed allocation), or allocated but not written yet (a preallocated file), as
    FIEMAP reports it."""
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True)
    return "delalloc" in out.stdout or "unwritten" in out.stdout


def test_flush_puts_the_raw_snapshots_not_yet_encoded_on_disk(env: Env) -> None:
    """flush() says the artifacts are safe from a power loss: that takes their raw
    snapshots on disk too, not only their records in the journal."""
    from artisync import Task, UploadFailed

    task = Task.init(project_name="raw", task_name="flush")
    task.upload_artifact("frame", pd.DataFrame({"a": np.arange(100_000.0)}))  # a raw file
    raw = Spool(env.spool).raw_path(task.artifacts["frame"]._record["record_id"])
    with open(raw, "r+b") as fh:  # it cannot be encoded: it stays in raw/, as it was
        fh.write(b"\0" * raw.stat().st_size)
    if not _delayed(raw):
        pytest.skip(f"{env.spool}'s filesystem shows no unwritten blocks to look for")
    d = DaemonProc(env).wait_ready()
    try:
        task.flush()
        assert raw.exists() and not _delayed(raw)
        with pytest.raises(UploadFailed):
            task.flush(wait_for_uploads=True, timeout=60)
    finally:
        d.stop()
