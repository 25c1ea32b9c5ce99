"""One training job, many processes: launched workers and launcher ranks share one
task, every version says which rank made it, and what the daemon refuses is raised."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from tests import faults
from tests.harness import DaemonProc, Env, run_py

READER = {"ARTISYNC_SPOOL": "/nonexistent/spool", "ARTISYNC_SOCKET": "/nonexistent/d.sock"}


def _versions(storage: Path, task_id: str) -> list[dict[str, Any]]:
    """Every published artifact version of a task, alone or in a batch."""
    out: dict[str, dict[str, Any]] = {}
    for path in (storage / "tasks" / task_id).rglob("*.json"):
        doc = json.loads(path.read_text())
        for rec in doc.get("records", [doc]):
            if rec.get("kind") == "artifact":
                out[rec["record_id"]] = rec
    return list(out.values())


def _read_back(env: Env, project: str, name: str) -> dict[str, object]:
    """From a fresh process with no spool and no daemon: storage only."""
    out = run_py(
        env,
        f"""
        import json
        from artisync import Task
        t = Task.get_task(project_name={project!r}, task_name={name!r})
        arts = {{n: {{k: a.record.get(k) for k in ("rank", "local_rank", "world_size", "pid")}}
                 for n, a in t.artifacts.items()}}
        arts = {{n: dict(v, value=t.artifacts[n].get()) for n, v in arts.items()}}
        print(json.dumps({{"id": t.id, "status": t.status, "artifacts": arts}}))
        """,
        **READER,
    )
    value: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return value


def _one_task(env: Env, project: str, name: str, task_id: str, records: int) -> dict[str, Any]:
    """Once ``records`` are committed: the task's artifacts, read back from storage."""
    faults.wait_until(lambda: faults.committed_count(env) >= records, 60, "all committed")
    found = _read_back(env, project, name)
    assert found["id"] == task_id and found["status"] == "completed", found
    arts = found["artifacts"]
    assert isinstance(arts, dict)
    return arts


def test_workers_launched_by_a_master_join_its_task(daemon: DaemonProc, env: Env) -> None:
    worker = env.root / "worker.py"
    worker.write_text(
        textwrap.dedent(
            """
            import os, sys
            from artisync import Task
            t = Task.init(project_name="launched", task_name="any name: joins the master's")
            t.upload_artifact(f"worker-{sys.argv[1]}", {"worker": int(sys.argv[1]), "pid": os.getpid()})
            """
        )
    )
    out = run_py(
        env,
        f"""
        import subprocess, sys
        from artisync import Task
        task = Task.init(project_name="launched", task_name="master")
        task.upload_artifact("master", {{"role": "master"}})
        workers = [subprocess.Popen([sys.executable, {str(worker)!r}, str(i)]) for i in range(4)]
        print([w.wait(120) for w in workers])
        task.flush(wait_for_uploads=True, timeout=120)
        task.close()
        print(task.id)
        """,
        timeout=180,
    )
    codes, task_id = out.stdout.splitlines()[:2]
    assert codes == "[0, 0, 0, 0]", out.stderr
    arts = _one_task(env, "launched", "master", task_id, 7)
    assert sorted(arts) == ["master", "worker-0", "worker-1", "worker-2", "worker-3"]
    assert len({arts[f"worker-{i}"]["pid"] for i in range(4)}) == 4  # each its own process
    assert arts["worker-2"]["value"]["worker"] == 2


def _ranks(env: Env, code: str, world: int, **launcher: str) -> list[subprocess.Popen[str]]:
    """``world`` sibling processes with the variables torchrun gives each rank."""
    procs = []
    for rank in range(world):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(code)],
                env=env.environ(
                    RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), **launcher
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=env.root,
            )
        )
    return procs


RANK_CODE = """
import os, time
from artisync import Task
rank = int(os.environ["RANK"])
t = Task.init(project_name="ranks", task_name=os.environ["JOB_NAME"])
t.upload_artifact(f"rank-{rank}", {"rank": rank, "pad": "r" * 5000})
t.upload_artifact("shared", {"from": rank})
if rank == int(os.environ.get("FAILING", "-1")):
    raise RuntimeError("this rank fails")
if rank == 0:
    time.sleep(1.0)  # the others are done: rank 0 closes last
t.flush(wait_for_uploads=True, timeout=120)
print(t.id)
"""


def test_launcher_ranks_share_one_task_and_record_their_rank(daemon: DaemonProc, env: Env) -> None:
    procs = _ranks(env, RANK_CODE, 4, TORCHELASTIC_RUN_ID=uuid.uuid4().hex, JOB_NAME="train")
    ids = set()
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        ids.add(out.strip())
    assert len(ids) == 1, f"one task for the job, not {ids}"
    task_id = ids.pop()
    arts = _one_task(env, "ranks", "train", task_id, 9)
    assert sorted(arts) == ["rank-0", "rank-1", "rank-2", "rank-3", "shared"]
    for rank in range(4):
        assert arts[f"rank-{rank}"]["rank"] == rank
        assert arts[f"rank-{rank}"]["local_rank"] == rank
        assert arts[f"rank-{rank}"]["world_size"] == 4
    # the same name from 4 ranks: 4 immutable versions, get() the newest
    assert len([v for v in _versions(env.storage, task_id) if v["name"] == "shared"]) == 4
    assert arts["shared"]["value"]["from"] == arts["shared"]["rank"]
    every = run_py(
        env,
        f"""
        from artisync import Task
        t = Task.get_task(task_id={task_id!r})
        print(sorted(a.get()["from"] for a in t.get_artifact_versions("shared")))
        print([a.get()["from"] for a in t.get_artifact_versions("shared", rank=2)])
        """,
        **READER,
    ).stdout.split("\n")
    assert every[:2] == ["[0, 1, 2, 3]", "[2]"], every


def test_a_failing_rank_fails_the_task(daemon: DaemonProc, env: Env) -> None:
    procs = _ranks(
        env, RANK_CODE, 3, TORCHELASTIC_RUN_ID=uuid.uuid4().hex, JOB_NAME="fails", FAILING="2"
    )
    codes = [p.wait(180) for p in procs]
    assert codes[2] != 0 and codes[0] == codes[1] == 0
    faults.wait_until(lambda: faults.committed_count(env) >= 7, 60, "all committed")
    deadline = time.monotonic() + 30
    while (status := _read_back(env, "ranks", "fails")["status"]) != "failed":
        assert time.monotonic() < deadline, f"status stays {status}"
        time.sleep(0.5)


def test_a_record_the_daemon_refuses_is_raised_in_the_trainer(env: Env) -> None:
    d = DaemonProc(env, ARTISYNC_ALLOWED_DESTINATIONS=str(env.storage)).wait_ready()
    try:
        elsewhere = env.root / "elsewhere"
        out = run_py(
            env,
            f"""
            from artisync import Task, UploadFailed
            t = Task.init(project_name="p", task_name="refused", output_uri={str(elsewhere)!r})
            try:  # raised by the next call after the refusal: this one, or flush()
                t.upload_artifact("first", {{"x": 1}})
                t.flush()
                print("FLUSHED")
            except UploadFailed as exc:
                print("raised:", exc)
            """,
            check=False,
        )
        assert "raised:" in out.stdout, out.stdout + out.stderr
        assert "allowed_destinations" in out.stdout and str(elsewhere) in out.stdout
        status = faults.cli(env, "status")
        assert status.returncode == 1, status.stdout
        assert "rejected: " in status.stdout and "allowed_destinations" in status.stdout
        assert not elsewhere.exists()
    finally:
        d.stop()


def test_sixty_four_producers_at_once_are_all_delivered(daemon: DaemonProc, env: Env) -> None:
    code = """
    import os, sys, numpy as np
    from artisync import Task
    t = Task.init(project_name="many", task_name="producers")
    me = int(sys.argv[1])
    for i in range(25):
        t.upload_artifact(f"p{me}-d{i}", {"producer": me, "i": i})
        t.upload_artifact(f"p{me}-a{i}", np.full(16, me * 100 + i))
    t.flush(wait_for_uploads=True, timeout=300)
    print(t.id)
    """
    script = env.root / "producer.py"
    script.write_text(textwrap.dedent(code))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i)],
            env=env.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(64)
    ]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        ids.append(out.strip())
    versions = [v for task_id in set(ids) for v in _versions(env.storage, task_id)]
    assert len(versions) == 64 * 50
    names = {v["name"] for v in versions}
    assert names == {f"p{m}-{k}{i}" for m in range(64) for k in "da" for i in range(25)}


def test_every_version_is_there_before_and_after_upload(daemon: DaemonProc, env: Env) -> None:
    out = run_py(
        env,
        """
        from artisync import Task
        t = Task.init(project_name="versions", task_name="three")
        for i in range(3):
            t.upload_artifact("x", {"i": i, "pad": "v" * 5000})
        print([a.get()["i"] for a in t.get_artifact_versions("x")])  # the daemon's journal
        t.flush(wait_for_uploads=True, timeout=60)
        t.close()
        print(t.id)
        """,
    ).stdout.split("\n")
    assert out[0] == "[0, 1, 2]", out
    stored = run_py(
        env,
        f"""
        from artisync import Task
        t = Task.get_task(task_id={out[1]!r})
        print([a.get()["i"] for a in t.get_artifact_versions("x")], t.artifacts["x"].get()["i"])
        """,
        **READER,
    ).stdout.strip()
    assert stored == "[0, 1, 2] 2"
