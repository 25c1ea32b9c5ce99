"""The SDK against a real daemon process and the file backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artisync import InvalidName, Task, UploadTimeout
from artisync.protocol import artifact_prefix, batch_prefix
from tests.harness import Conn, DaemonProc, Env, outbox_records, run_py, stored_objects


def _versions(env: Env, task: Task, name: str) -> list[dict]:
    """Every published version of ``name``, oldest first: alone or in batches."""
    d = env.storage / artifact_prefix(task.id, name)
    out = [json.loads(p.read_text()) for p in d.glob("*.json")] if d.is_dir() else []
    for p in (env.storage / batch_prefix(task.id)).glob("*.json"):
        out += [r for r in json.loads(p.read_text())["records"] if r["name"] == name]
    return sorted(out, key=lambda r: (r["created"], r["record_id"]))


def _make_samples(root: Path) -> Path:
    folder = root / "samples"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.bin").write_bytes(os.urandom(5000))
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"img{i}.jpg")
    return folder


def test_every_type_round_trips_in_process_and_from_another(daemon: DaemonProc, env: Env) -> None:
    folder = _make_samples(env.root)
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}, index=[10, 20, 30])
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    img = Image.new("RGB", (16, 9), (1, 2, 3))
    task = Task.init(project_name="rt", task_name="types")
    task.upload_artifact("df", df)
    task.upload_artifact("dict", {"k": [1, 2], "s": "v"})
    task.upload_artifact("list", [1, "two", 3.0])
    task.upload_artifact("arr", arr)
    task.upload_artifact("img", img)
    task.upload_artifact("file", str(folder / "a.txt"))
    task.upload_artifact("folder", str(folder))
    task.upload_artifact("wild", str(folder / "*.jpg"))
    task.upload_artifact("text", "just words")
    task.flush(wait_for_uploads=True, timeout=60)
    # in this process
    pd.testing.assert_frame_equal(task.artifacts["df"].get(), df)
    assert task.artifacts["dict"].get() == {"k": [1, 2], "s": "v"}
    np.testing.assert_array_equal(task.artifacts["arr"].get(), arr)
    assert task.artifacts["img"].get().tobytes() == img.tobytes()
    assert Path(task.artifacts["file"].get()).read_text() == "alpha"
    task.close()
    # from a fresh process that has only the storage (no daemon socket, no spool)
    out = run_py(
        env,
        """
        import json
        from pathlib import Path
        from artisync import Task
        t = Task.get_task(project_name="rt", task_name="types")
        a = t.artifacts
        res = {
            "status": t.status,
            "df": a["df"].get().to_dict(),
            "dict": a["dict"].get(),
            "list": a["list"].get(),
            "arr": a["arr"].get().tolist(),
            "img": [a["img"].get().size, a["img"].get().getpixel((0, 0))],
            "file": Path(a["file"].get()).read_text(),
            "folder": sorted(str(p.relative_to(a["folder"].get()))
                             for p in Path(a["folder"].get()).rglob("*") if p.is_file()),
            "wild": sorted(p.name for p in Path(a["wild"].get()).iterdir()),
            "text": a["text"].get(),
            "meta": [a["df"].type, a["df"].size > 0, len(a["df"].hash)],
        }
        print(json.dumps(res))
    """,
        ARTISYNC_SPOOL=str(env.root / "other-spool"),
        ARTISYNC_SOCKET=str(env.root / "none.sock"),
        XDG_CACHE_HOME=str(env.root / "other-cache"),
    )
    res = json.loads(out.stdout)
    assert res["status"] == "completed"
    assert res["df"] == {"a": {"10": 1, "20": 2, "30": 3}, "b": {"10": "x", "20": "y", "30": "z"}}
    assert res["dict"] == {"k": [1, 2], "s": "v"}
    assert res["list"] == [1, "two", 3.0]
    assert res["arr"] == arr.tolist()
    assert res["img"] == [[16, 9], [1, 2, 3]]
    assert res["file"] == "alpha"
    assert res["folder"] == sorted(["a.txt", "sub/b.bin", "img0.jpg", "img1.jpg", "img2.jpg"])
    assert res["wild"] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert res["text"] == "just words"
    assert res["meta"] == ["pandas", True, 64]


def test_snapshot_is_immune_to_later_mutation(daemon: DaemonProc, env: Env) -> None:
    f = env.root / "data.bin"
    f.write_bytes(b"original")
    df = pd.DataFrame({"a": [1, 2]})
    arr = np.zeros(4)
    d = {"k": [1]}
    task = Task.init(project_name="mut", task_name="m")
    task.upload_artifact("df", df)
    task.upload_artifact("arr", arr)
    task.upload_artifact("dict", d)
    task.upload_artifact("file", str(f))
    df.loc[0, "a"] = 99
    arr[:] = 7
    d["k"].append(2)
    f.write_bytes(b"changed!")
    task.flush(wait_for_uploads=True, timeout=60)
    assert task.artifacts["df"].get()["a"].tolist() == [1, 2]
    assert task.artifacts["arr"].get().tolist() == [0, 0, 0, 0]
    assert task.artifacts["dict"].get() == {"k": [1]}
    assert Path(task.artifacts["file"].get()).read_bytes() == b"original"
    task.close()


def test_registered_dataframe_versions_only_on_change(
    daemon: DaemonProc, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = Task.init(project_name="track", task_name="t")
    changed = pd.DataFrame({"a": range(1000)})
    still = pd.DataFrame({"b": range(1000)})
    task.register_artifact("changed", changed, metadata={"m": 1})
    task.register_artifact("still", still)
    assert task.get_registered_artifacts()["changed"] is changed
    tracker = Task._tracker_instance()
    for item in tracker.of_task(task.id):  # a check with no change stores nothing
        assert tracker.check(item) is False
    changed.loc[5, "a"] = -1  # in place
    item = next(i for i in tracker.of_task(task.id) if i.name == "changed")
    assert tracker.check(item) is True
    assert tracker.check(item) is False
    task.close()  # final check: nothing new
    task.flush(wait_for_uploads=True, timeout=60)
    v_changed = _versions(env, task, "changed")
    v_still = _versions(env, task, "still")
    assert len(v_changed) == 2 and len(v_still) == 1
    assert v_changed[0]["metadata"] == {"m": 1}
    assert v_changed[0]["sha256"] != v_changed[1]["sha256"]


def test_background_tracker_picks_up_change(daemon: DaemonProc, env: Env) -> None:
    out = run_py(
        env,
        """
        import time
        import pandas as pd
        from artisync import Task
        t = Task.init(project_name="track", task_name="bg")
        df = pd.DataFrame({"a": range(10)})
        t.register_artifact("df", df)
        df.loc[3, "a"] = 42
        time.sleep(1.5)   # tracker interval is 0.3 s here
        print(Task._tracker_instance().items[(t.id, "df")].versions)
    """,
        ARTISYNC_TRACK_INTERVAL="0.3",
    )
    assert out.stdout.strip() == "2"


def test_pickle_refused_by_default(daemon: DaemonProc, env: Env) -> None:
    task = Task.init(project_name="pk", task_name="p")
    task.upload_artifact("obj", {1, 2, 3})  # a set: not JSON, pickled (auto_pickle)
    task.flush(wait_for_uploads=True, timeout=60)
    with pytest.raises(Exception, match="allow_pickle"):
        task.artifacts["obj"].get()
    assert task.artifacts["obj"].get(allow_pickle=True) == {1, 2, 3}
    task.close()


def test_bad_input_is_refused_before_anything_is_written(env: Env) -> None:
    task = Task.init(project_name="bad", task_name="b")
    task.flush()
    before = outbox_records(env.spool)
    blobs_before = sorted(p.name for p in (env.spool / "blobs").iterdir())
    with pytest.raises(Exception, match="does not exist"):
        task.upload_artifact("f", str(env.root / "missing.csv"))
    with pytest.raises(InvalidName):
        task.upload_artifact("", 1)
    with pytest.raises(InvalidName):
        task.upload_artifact("..", 1)
    with pytest.raises(InvalidName):
        task.upload_artifact("a\x00b", 1)
    with pytest.raises(InvalidName):
        task.upload_artifact("x" * 500, 1)
    with pytest.raises(ValueError, match="JSON"):
        task.upload_artifact("m", 1, metadata={"f": object()})
    with pytest.raises(ValueError):
        task.upload_artifact("np", object(), auto_pickle=False)
    with pytest.raises(TypeError):
        task.register_artifact("r", [1, 2])
    task.flush()
    assert outbox_records(env.spool) == before
    assert sorted(p.name for p in (env.spool / "blobs").iterdir()) == blobs_before
    assert list((env.spool / "tmp").iterdir()) == []


def test_unknown_destination_scheme_is_refused_at_init(env: Env) -> None:
    with pytest.raises(ValueError, match=r"unknown storage scheme 'gcs'.*azure, file, gs, s3"):
        Task.init(project_name="typo", task_name="t", output_uri="gcs://bucket/runs")
    assert Task.current_task() is None
    assert not (env.spool / "outbox").exists() or list((env.spool / "outbox").iterdir()) == []


def test_wait_without_daemon_raises_clear_error(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTISYNC_WAIT_TIMEOUT", "1")
    from artisync._session import Session

    Session.reset()
    task = Task.init(project_name="nod", task_name="n")
    with pytest.raises(UploadTimeout, match="no daemon"):
        task.upload_artifact("x", {"a": 1}, wait_on_upload=True)
    assert task.upload_artifact("y", {"b": 2}) is True  # still works offline
    task.close()
    assert len(outbox_records(env.spool)) == 4


def test_delete_after_upload_only_after_commit(env: Env) -> None:
    f = env.root / "big.bin"
    f.write_bytes(os.urandom(10_000))
    task = Task.init(project_name="del", task_name="d")
    task.upload_artifact("f", str(f), delete_after_upload=True)
    task.close()
    assert f.exists()  # no daemon yet: not committed, not deleted
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(60) == 0, d.output()
    assert not f.exists()
    assert len(stored_objects(env.storage)) == 1


def test_status_failed_on_uncaught_exception(daemon: DaemonProc, env: Env) -> None:
    run_py(
        env,
        """
        from artisync import Task
        t = Task.init(project_name="st", task_name="boom")
        t.upload_artifact("x", 1)
        raise RuntimeError("training diverged")
    """,
        check=False,
    )
    run_py(
        env,
        """
        from artisync import Task
        t = Task.init(project_name="st", task_name="fine")
    """,
    )
    out = run_py(
        env,
        """
        from artisync import Task
        print(Task.get_task(project_name="st", task_name="boom").status,
              Task.get_task(project_name="st", task_name="fine").status)
        try:
            Task.get_task(project_name="st", task_name="boom",
                          task_filter={"status": ["completed"]})
        except ValueError as exc:
            print("none", "completed" in str(exc))
    """,
    )
    assert out.stdout.split() == ["failed", "completed", "none", "True"]


def test_import_is_cheap() -> None:
    code = (
        "import sys, artisync; heavy = [m for m in ('pandas', 'numpy', 'PIL', 'botocore', "
        "'aiobotocore', 'aiohttp', 'azure', 'gcloud', 'pyarrow', 'artisync.daemon') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_daemon_killed_mid_run_loses_nothing(env: Env) -> None:
    """SIGKILL the daemon while a training process reports: every artifact is either
    acknowledged (journaled) or in the outbox, and all of it is committed in the end."""
    import signal
    import subprocess
    import time

    d = DaemonProc(env).wait_ready()
    trainer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom artisync import Task\n"
            "t = Task.init(project_name='kill', task_name='k')\n"
            "for i in range(150):\n"
            "    t.upload_artifact(f'a{i}', {'i': i})\n"
            "    time.sleep(0.01)\n"
            "t.close()\nprint(t.id)\n",
        ],
        env=env.environ(ARTISYNC_ACK_TIMEOUT="2"),
        stdout=subprocess.PIPE,
        text=True,
    )
    for _ in range(3):
        time.sleep(0.4)
        d.stop(signal.SIGKILL)
        time.sleep(0.2)
        d = DaemonProc(env).wait_ready()
    out, _ = trainer.communicate(timeout=120)
    assert trainer.returncode == 0
    task_id = out.strip()
    d.stop()
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(120) == 0, d.output()
    alone = env.storage / "tasks" / task_id / "artifacts"  # versions published alone
    names = {p.name for p in alone.iterdir()} if alone.is_dir() else set()
    for batch in (env.storage / batch_prefix(task_id)).glob("*.json"):  # and in batches
        names |= {r["name"] for r in json.loads(batch.read_text())["records"]}
    assert len(names) == 150
    got = run_py(
        env,
        f"""
        from artisync import Task
        t = Task.get_task(task_id="{task_id}")
        print(sorted(a.get()["i"] for a in t.artifacts.values()) == list(range(150)), t.status)
        """,
    )
    assert got.stdout.split() == ["True", "completed"]


def test_forked_children_report_and_flush_into_the_parents_task(
    daemon: DaemonProc, env: Env
) -> None:
    """Children forked (multiprocessing's default on Linux) while the parent's writer
    thread is busy report into the parent's task and flush without hanging; the task
    is completed by the parent alone."""
    out = run_py(
        env,
        """
        import multiprocessing as mp
        import numpy as np
        from artisync import Task

        task = Task.init(project_name="fork", task_name="workers")
        for i in range(20):  # keep the writer thread and its locks busy across the fork
            task.upload_artifact(f"parent-{i}", np.full((200, 200), i))

        def child(i):
            t = Task.current_task()
            assert t is not None and t.id == task.id
            t.upload_artifact(f"child-{i}", {"worker": i})
            t.flush()

        procs = [mp.get_context("fork").Process(target=child, args=(i,)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        print([p.exitcode for p in procs])
        task.flush(wait_for_uploads=True, timeout=60)
        task.close()
        print(task.id)
        """,
        timeout=150,
    )
    exitcodes, task_id = out.stdout.split("\n")[:2]
    assert exitcodes == "[0, 0]", out.stderr
    found = run_py(
        env,
        f"""
        from artisync import Task
        t = Task.get_task(task_id={task_id!r})
        print(t.status, sorted(t.artifacts))
        print(t.artifacts["child-1"].get())
        """,
    ).stdout.splitlines()
    names = sorted([f"parent-{i}" for i in range(20)] + ["child-0", "child-1"])
    assert found[0] == f"completed {names}"
    assert found[1] == "{'worker': 1}"


def test_sigterm_writes_out_queued_snapshots_and_marks_the_task_aborted(
    daemon: DaemonProc, env: Env
) -> None:
    """A scheduler's SIGTERM (Python's default action: die at once, no atexit) lands
    while 50 snapshots still wait for the writer thread: all 50 are delivered, the
    task is ``aborted``, and the process still ends by the signal."""
    import signal

    proc = run_py(
        env,
        """
        import os, signal
        import numpy as np, pandas as pd
        from artisync import Task

        task = Task.init(project_name="preempt", task_name="job")
        print(task.id, flush=True)
        df = pd.DataFrame(np.random.default_rng(0).standard_normal((100_000, 8)))
        for i in range(50):
            df.iloc[0, 0] = i  # every version differs
            task.upload_artifact(f"snap-{i}", df)
        os.kill(os.getpid(), signal.SIGTERM)
        print("not reached", flush=True)
        """,
        check=False,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    task_id = proc.stdout.split()[0]
    assert "not reached" not in proc.stdout
    with Conn(env.socket, timeout=90) as conn:
        conn.hello()
        reply = conn.call("wait", task_id=task_id, timeout=60)
    assert reply["ok"] and reply["failed"] == 0, reply
    found = run_py(
        env,
        f"""
        from artisync import Task
        t = Task.get_task(task_id={task_id!r})
        print(t.status, len(t.artifacts), t.artifacts["snap-49"].get().iloc[0, 0])
        """,
    ).stdout.split()
    assert found == ["aborted", "50", "49.0"]


def test_a_long_wait_says_what_is_left_every_ten_seconds() -> None:
    """flush(wait_for_uploads=True) stays quiet for a short wait; a long one logs a line
    every 10 s with what is left (and which destination is offline)."""
    from tests import faults
    from tests.harness import short_tmpdir

    with short_tmpdir() as root:
        target = faults.FileTarget(root)
        env = faults.make_env(root, target)
        d = DaemonProc(env, ARTISYNC_RETRY_MAX_ELAPSED="1").wait_ready()
        try:
            target.network(False)
            out = run_py(
                env,
                """
                from artisync import Task, UploadTimeout
                t = Task.init(project_name="slow", task_name="wait")
                t.upload_artifact("a", {"pad": "w" * 6000})
                try:
                    t.flush(wait_for_uploads=True, timeout=14)
                except UploadTimeout:
                    print("timed out")
                """,
            )
        finally:
            d.stop()
    lines = [ln for ln in out.stderr.splitlines() if "left to upload" in ln]
    assert out.stdout.strip() == "timed out", out.stderr
    assert len(lines) == 1, out.stderr
    assert "2 records" in lines[0] and f"offline: {target.uri}" in lines[0], lines


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_folder_not_yet_in_storage_reads_back_from_its_pack(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's small files stay in its pack in the spool (one file, not one each):
    read back on the node before its upload (the destination refuses connections), it
    comes from there, whole; big members have blob files of their own."""
    folder = _make_samples(env.root)
    (folder / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    unreachable = "s3://nowhere/runs"
    env.config.write_text(
        '[storage.s3]\nendpoint_url = "http://127.0.0.1:9"\n'
        'access_key_id = "k"\nsecret_access_key = "s"\n'
        "[daemon]\ndrain_timeout = 1\n"  # (its uploads are bound to fail)
    )
    monkeypatch.setenv("ARTISYNC_OUTPUT_URI", unreachable)
    d = DaemonProc(env, ARTISYNC_OUTPUT_URI=unreachable).wait_ready()
    try:
        task = Task.init(project_name="packs", task_name="offline", output_uri=unreachable)
        task.upload_artifact("folder", str(folder))
        got = Path(task.artifacts["folder"].get_local_copy())
        assert _tree(got) == _tree(folder)
        spooled = sorted(p.name for p in (env.spool / "blobs").iterdir())
        packs = [n for n in spooled if n.endswith(".pack")]
        assert len(packs) == 1, spooled
        # the listing, the pack, the 3 MiB member: not a file per small member
        assert len(spooled) == 3, spooled
        assert os.path.getsize(env.spool / "blobs" / packs[0]) == sum(
            len(b) for b in _tree(folder).values()
        )
        time.sleep(3)  # past the spool's collection grace (2 s here): still needed, kept
        assert (env.spool / "blobs" / packs[0]).is_file()
    finally:
        d.stop()


def test_a_folders_pack_goes_once_it_is_committed(daemon: DaemonProc, env: Env) -> None:
    folder = _make_samples(env.root)
    task = Task.init(project_name="packs", task_name="committed")
    task.upload_artifact("folder", str(folder))
    task.flush(wait_for_uploads=True, timeout=60)
    deadline = time.monotonic() + 30
    while any(p.suffix == ".pack" for p in (env.spool / "blobs").iterdir()):
        assert time.monotonic() < deadline, "the committed folder's pack stayed in the spool"
        time.sleep(0.2)
    out = run_py(
        env,
        f"""
        import os
        from pathlib import Path
        from artisync import Task
        root = Path(Task.get_task(task_id={task.id!r}).artifacts["folder"].get_local_copy())
        print(sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()))
        """,
    ).stdout
    assert out.strip() == str(sorted(_tree(folder)))
