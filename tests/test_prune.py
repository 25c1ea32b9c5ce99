"""`artisync prune` against storage filled by the real SDK and daemon, with a writer
committing new versions (sharing objects with pruned ones) while it runs.

The reuse window is 2 s here (``ARTISYNC_REUSE_WINDOW``, the same for the daemon,
the writers and prune), so objects count as old after ~6 s rather than 12 hours.
After every run, every record left in storage must point to objects that exist
and match their SHA-256: checked by reading storage directly, below our reader.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faultproxy import FaultProxy
from tests.harness import DaemonProc, Env, run_py, short_tmpdir
from tests.storage_fixtures import Backend, _make

WINDOW = "2"  # seconds
OLD_AFTER = 7.0  # 2 x window + margin, and a little more

TRAINER = """
import os, sys
import pandas as pd
from artisync import Task
project, name = sys.argv[1], sys.argv[2]
shared = open(sys.argv[3], "rb").read()
t = Task.init(project_name=project, task_name=name)
t.upload_artifact("shared", shared)                   # the same bytes in several tasks
t.upload_artifact("own", os.urandom(300_000))        # this task's alone
for i in range(5):                                     # 5 versions of "tracked"
    t.upload_artifact("tracked", pd.DataFrame({"x": range(i + 1)}))
    t.flush(wait_for_uploads=True)
t.close()
print(t.id)
"""

WRITER = """
import os, sys, time
from artisync import Task
shared, seconds = open(sys.argv[1], "rb").read(), float(sys.argv[2])
t = Task.init(project_name="live", task_name="writer")
end, i = time.monotonic() + seconds, 0
while time.monotonic() < end:
    t.upload_artifact(f"reuse-{i}", shared)           # an object the pruned task had
    t.upload_artifact(f"new-{i}", os.urandom(50_000))
    t.flush(wait_for_uploads=True)
    i += 1
print(t.id, i)
"""


def _env(root: Path, backend: Backend) -> Env:
    env = Env(root, backend.uri)
    if backend.name != "file":
        lines = [f"[storage.{backend.name}]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in backend.options.items()]
        env.config.write_text("\n".join(lines) + "\n")
    env.vars["ARTISYNC_REUSE_WINDOW"] = WINDOW
    return env


def _cli(env: Env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "artisync.cli", *args],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _stored(backend: Backend) -> dict[str, bytes]:
    """Every key of the destination and its bytes (objects: their SHA-256 only)."""

    async def go() -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        async with backend.opened() as st:
            async for info in st.list(""):
                data = await st.get_bytes(info.key)
                if info.key.startswith("objects/"):
                    data = hashlib.sha256(data).hexdigest().encode()
                out[info.key] = data
        return out

    return asyncio.run(go())


def _records(stored: dict[str, bytes]) -> list[dict[str, Any]]:
    out = []
    for key, data in stored.items():
        if "/artifacts/" in key and key.endswith(".json"):
            out.append(json.loads(data))
        elif "/batches/" in key and key.endswith(".json"):
            out.extend(json.loads(data)["records"])
    return out


def _check_every_record(stored: dict[str, bytes]) -> None:
    """Each record's objects are there, with their content's SHA-256 (inline ones aside)."""
    for rec in _records(stored):
        for sha, _size in rec.get("blobs") or [[rec["sha256"], rec["size"]]]:
            if "inline" in rec and sha == rec["sha256"]:
                continue
            key = f"objects/sha256/{sha[:2]}/{sha}"
            assert key in stored, f"{rec['name']} of task {rec['task_id']}: {sha[:12]} missing"
            assert stored[key] == sha.encode(), f"{key} does not match its name"


@pytest.mark.parametrize("backend_name", ["file", "s3"])
def test_prune_with_a_writer_running(backend_name: str, request: pytest.FixtureRequest) -> None:
    with short_tmpdir() as root:
        backend = _make(backend_name, request, root)
        env = _env(root, backend)
        shared = os.urandom(2 * 2**20)  # large enough to be looked for before it is sent
        daemon = DaemonProc(env).wait_ready()
        try:
            doomed = _trainer(env, "old", "run-1", shared)
            kept = _trainer(env, "keep", "run-2", os.urandom(2 * 2**20))
            before = _stored(backend)
            _check_every_record(before)
            time.sleep(OLD_AFTER)  # everything so far is old enough to collect
            cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 1))
            # a dry run counts and deletes nothing
            dry = _cli(env, "prune", "--project", "old", "--before", cutoff)
            assert dry.returncode == 0, dry.stderr
            assert "would delete 1 tasks (old/run-1)" in dry.stdout, dry.stdout
            assert "would delete 2 unreferenced objects" in dry.stdout, dry.stdout
            assert _stored(backend) == before
            first = _cli(env, "prune", "--project", "old", "--before", cutoff, "--yes")
            assert first.returncode == 0, first.stderr
            assert "deleted 1 tasks (old/run-1)" in first.stdout, first.stdout
            # a writer now reuses run-1's big object, gone from storage but known to the
            # daemon (it sent it), while prune runs again, twice
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(_bytes_file(root, shared)), "10"],
                env=env.environ(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(2.0)
            second = _cli(env, "prune", "--keep-versions", "2", "--yes")
            assert second.returncode == 0, second.stderr
            time.sleep(OLD_AFTER - 2.0)  # the writer's first objects are old by now
            third = _cli(env, "prune", "--keep-versions", "2", "--yes")
            assert third.returncode == 0, third.stderr
            out, err = writer.communicate(timeout=120)
            assert writer.returncode == 0, err
            live, rounds = out.split()
            assert int(rounds) >= 3
            assert _cli(env, "wait", "--timeout", "60", "-q").returncode == 0
            # again, now that every writer's record is in: nothing it needs may go
            last = _cli(env, "prune", "--keep-versions", "2", "--yes")
            assert last.returncode == 0, last.stderr
        finally:
            daemon.stop()
        after = _stored(backend)
        _check_every_record(after)
        assert not any(doomed in key for key in after), "run-1 left something behind"
        assert not any(key.startswith("prune/") for key in after)
        recs = _records(after)
        tracked = [r for r in recs if r["task_id"] == kept and r["name"] == "tracked"]
        assert (
            len(tracked) == 2
            and len(
                [r for r in _records(before) if r["task_id"] == kept and r["name"] == "tracked"]
            )
            == 5
        )
        reused = [r for r in recs if r["task_id"] == live and r["name"].startswith("reuse-")]
        assert len(reused) == int(rounds)
        # run-1's own object went; its shared one stays, the writer's records need it
        own = next(r for r in _records(before) if r["task_id"] == doomed and r["name"] == "own")
        assert f"objects/sha256/{own['sha256'][:2]}/{own['sha256']}" not in after
        sha = hashlib.sha256(shared).hexdigest()
        assert f"objects/sha256/{sha[:2]}/{sha}" in after
        # and the SDK reads what is left, from a fresh process
        code = f"""
            from artisync import Task
            t = Task.get_task(task_id={kept!r})
            print(len(t.artifacts), t.artifacts["tracked"].get().shape)
            assert len(Task.get_tasks(project_name="old")) == 0
        """
        assert run_py(env, code).stdout.split()[0] == "3"


def test_a_renewal_never_lands_between_prunes_look_and_its_delete(
    request: pytest.FixtureRequest,
) -> None:
    """An old, unreferenced object is doomed; prune looks at it and sends its delete,
    which the network holds for 12 s; meanwhile a writer needs the same bytes again.
    The writer must not renew the object and publish its record inside that moment:
    once the delete lands, its record would point to nothing."""
    with short_tmpdir() as root:
        backend = _make("s3", request, root)
        env = _env(root, backend)
        server = request.getfixturevalue("seaweedfs")
        host, port = server.endpoint.removeprefix("http://").split(":")
        shared = os.urandom(2 * 2**20)
        daemon = DaemonProc(env).wait_ready()
        try:
            doomed = _trainer(env, "old", "run-1", shared)
            time.sleep(OLD_AFTER)
            cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 1))
            first = _cli(env, "prune", "--before", cutoff, "--no-objects", "--yes")
            assert "deleted 1 tasks" in first.stdout, first.stdout + first.stderr
            with FaultProxy((host, int(port))) as proxy:
                slow = root / "slow.toml"
                slow.write_text(env.config.read_text().replace(server.endpoint, proxy.endpoint))
                proxy.hold(b"?delete", 12.0)  # S3 DeleteObjects: POST /<bucket>?delete
                pruner = subprocess.Popen(
                    [sys.executable, "-m", "artisync.cli", "prune", "--yes"],
                    env=env.environ(ARTISYNC_CONFIG=str(slow)),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                assert proxy.held.wait(120), "prune sent no delete"
                writer = run_py(
                    env,
                    f"""
                    from artisync import Task
                    t = Task.init(project_name="live", task_name="writer")
                    t.upload_artifact("again", open({str(_bytes_file(root, shared))!r}, "rb").read())
                    t.flush(wait_for_uploads=True)
                    t.close()
                    print(t.id)
                    """,
                    timeout=180,
                )
                out, err = pruner.communicate(timeout=120)
            assert pruner.returncode == 0, err
            assert "deleted 2 unreferenced objects" in out, out  # run-1's two payloads
            assert _cli(env, "wait", "--timeout", "60", "-q").returncode == 0
        finally:
            daemon.stop()
        after = _stored(backend)
        _check_every_record(after)
        live = writer.stdout.split()[-1]
        assert [r["name"] for r in _records(after) if r["task_id"] == live] == ["again"]
        assert not any(doomed in key for key in after)
        assert not any(key.startswith("prune/") for key in after)


def _trainer(env: Env, project: str, name: str, shared: bytes) -> str:
    path = str(_bytes_file(env.root, shared))
    out = run_py(env, f"import sys; sys.argv = ['t', {project!r}, {name!r}, {path!r}]\n" + TRAINER)
    return out.stdout.split()[-1]


def _wide_task(env: Env, n: int) -> str:
    """A closed task "old/wide" of ``n`` artifacts, each published alone (a key each
    to delete), all in storage; returns its id."""
    daemon = DaemonProc(env).wait_ready()
    try:
        code = f"""
            from artisync import Task
            t = Task.init(project_name="old", task_name="wide")
            for i in range({n}):
                t.upload_artifact(f"a{{i:03d}}", {{"i": i, "pad": "x" * 5000}})
                t.flush(wait_for_uploads=True)
            t.close()
            print(t.id)
        """
        doomed = run_py(env, code, timeout=180).stdout.split()[-1]
        assert _cli(env, "wait", "--timeout", "60", "-q").returncode == 0
    finally:
        daemon.stop()
    return doomed


def _bytes_file(root: Path, data: bytes) -> Path:
    path = root / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def test_a_killed_prune_leaves_readable_data_and_a_rerun_finishes(
    request: pytest.FixtureRequest,
) -> None:
    """SIGKILL right after the tombstone appears; readers still work; a rerun ends it."""
    with short_tmpdir() as root:
        backend = _make("file", request, root)
        env = _env(root, backend)
        doomed = _wide_task(env, 400)
        tombstones = Path(backend.uri) / "prune" / "tasks"
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 1))
        proc = subprocess.Popen(
            [sys.executable, "-m", "artisync.cli", "prune", "--before", cutoff, "--yes"],
            env=env.environ(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not (tombstones.is_dir() and any(tombstones.glob("*.json"))):
            assert proc.poll() is None and time.monotonic() < deadline, "no tombstone seen"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert any(tombstones.glob("*.json")), "prune finished before it was killed"
        half = _stored(backend)
        _check_every_record(half)  # what is left is whole
        reader = """
            import sys
            from artisync import Task
            try:
                t = Task.get_task(task_id=sys.argv[1])
            except ValueError:
                print("gone")
            else:
                print(len(t.artifacts))
        """
        shown = run_py(env, f"import sys; sys.argv = ['r', {doomed!r}]\n" + textwrap.dedent(reader))
        assert shown.stdout.split()[-1] == "gone" or int(shown.stdout.split()[-1]) <= 400
        rerun = _cli(env, "prune", "--yes")
        assert rerun.returncode == 0, rerun.stderr
        assert "finished 1 task deletions" in rerun.stdout, rerun.stdout
        after = _stored(backend)
        assert not any(doomed in key for key in after)
        assert not any(key.startswith(("prune/", "index/tasks/", "index/all/")) for key in after)


@pytest.mark.parametrize("point", ["versions", "task.json"])
def test_a_prune_killed_mid_delete_on_s3_leaves_readable_data(
    point: str, request: pytest.FixtureRequest
) -> None:
    """SIGKILL while prune's delete of the task's versions (DeleteObjects), or of its
    task.json, is held on the way to S3: what is left reads whole, a rerun ends it."""
    with short_tmpdir() as root:
        backend = _make("s3", request, root)
        env = _env(root, backend)
        server = request.getfixturevalue("seaweedfs")
        host, port = server.endpoint.removeprefix("http://").split(":")
        doomed = _wide_task(env, 20)
        bucket, _, prefix = backend.uri.removeprefix("s3://").partition("/")
        pattern = (
            b"?delete"
            if point == "versions"
            else f"DELETE /{bucket}/{prefix}/tasks/{doomed}/task.json ".encode()
        )
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 1))
        with FaultProxy((host, int(port))) as proxy:
            slow = root / "slow.toml"
            slow.write_text(env.config.read_text().replace(server.endpoint, proxy.endpoint))
            proxy.hold(pattern, 60.0)
            proc = subprocess.Popen(
                [sys.executable, "-m", "artisync.cli", "prune", "--before", cutoff, "--yes"],
                env=env.environ(ARTISYNC_CONFIG=str(slow)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                assert proxy.held.wait(60), f"prune never deleted the {point}"
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            proxy.hold(None)
        half = _stored(backend)
        assert f"prune/tasks/{doomed}.json" in half, "no tombstone while deleting"
        _check_every_record(half)  # what is left is whole
        versions = [k for k in half if k.startswith(f"tasks/{doomed}/artifacts/")]
        assert len(versions) == (20 if point == "versions" else 0)
        reader = f"""
            from artisync import Task
            try:
                t = Task.get_task(task_id={doomed!r})
            except ValueError:
                print("gone")
            else:
                print(sorted(a.get()["i"] for a in t.artifacts.values()))
        """
        shown = run_py(env, reader).stdout.strip().splitlines()[-1]
        expected = str(list(range(20))) if point == "versions" else "[]"
        assert shown in ("gone", expected), shown
        rerun = _cli(env, "prune", "--yes")
        assert rerun.returncode == 0, rerun.stderr
        assert "finished 1 task deletions" in rerun.stdout, rerun.stdout
        after = _stored(backend)
        assert not any(doomed in key for key in after)
        assert not any(key.startswith("prune/") for key in after)


def test_the_daemon_prunes_on_its_schedule(request: pytest.FixtureRequest) -> None:
    with short_tmpdir() as root:
        backend = _make("file", request, root)
        env = _env(root, backend)
        env.config.write_text('[prune]\nevery = "2s"\nolder_than = "1s"\nkeep_versions = 1\n')
        daemon = DaemonProc(env).wait_ready()
        try:
            code = """
                from artisync import Task
                t = Task.init(project_name="sched", task_name="short")
                t.upload_artifact("cfg", {"a": 1})
                t.close()
                print(t.id)
            """
            task_id = run_py(env, code).stdout.split()[-1]
            assert _cli(env, "wait", "--timeout", "60", "-q").returncode == 0
            deadline = time.monotonic() + 30
            while any(task_id in key for key in _stored(backend)):
                assert time.monotonic() < deadline, "the scheduled prune never ran"
                time.sleep(0.5)
        finally:
            daemon.stop()
        assert "scheduled prune" not in daemon.output()  # no failed run was logged


def test_keep_versions_keeps_every_chunk_of_the_loggers_scalars(
    request: pytest.FixtureRequest,
) -> None:
    """The Logger stores its scalars as chunks (versions of one artifact, each with its
    new rows): they are parts of one table, not older versions, and all stay."""
    with short_tmpdir() as root:
        backend = _make("file", request, root)
        env = _env(root, backend)
        daemon = DaemonProc(env).wait_ready()
        try:
            code = """
                from artisync import Task
                t = Task.init(project_name="logs", task_name="chunks")
                log = t.get_logger()
                for chunk in range(3):
                    for i in range(100):
                        log.report_scalar("loss", "train", 1.0 / (i + 1), chunk * 100 + i)
                    log.flush(wait=True)
                for v in range(3):
                    t.upload_artifact("cfg", {"v": v})
                t.close()
                print(t.id)
            """
            task_id = run_py(env, code).stdout.split()[-1]
            assert _cli(env, "wait", "--timeout", "60", "-q").returncode == 0
            pruned = _cli(env, "prune", "--keep-versions", "1", "--no-objects", "--yes")
            assert pruned.returncode == 0, pruned.stderr
            assert "deleted 2 older artifact versions" in pruned.stdout, pruned.stdout
        finally:
            daemon.stop()
        _check_every_record(_stored(backend))
        read = f"""
            from artisync import Task
            t = Task.get_task(task_id={task_id!r})
            print(len(t.artifacts["scalars"].get()["value"]), t.artifacts["cfg"].get()["v"])
        """
        assert run_py(env, read).stdout.split() == ["300", "2"]


def test_a_bad_prune_table_stops_the_daemon_at_start() -> None:
    with short_tmpdir() as root:
        env = Env(root)
        env.config.write_text('[prune]\nolder_than = "soon"\n')
        out = subprocess.run(
            [sys.executable, "-m", "artisync.daemon"],
            env=env.environ(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2
        assert "configuration error" in out.stderr and "not a duration" in out.stderr
