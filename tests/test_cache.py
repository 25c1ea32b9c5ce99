"""The local object cache: bounded by cache_limit (least recently used go first), and
``force_download`` fetching again what the cache holds."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.harness import DaemonProc, Env, run_py


def test_cache_stays_under_its_limit_and_force_download_fetches_again(
    daemon: DaemonProc, env: Env
) -> None:
    made = run_py(
        env,
        """
        import json, os
        from artisync import Task
        t = Task.init(project_name="cache", task_name="blobs")
        for i in range(4):
            t.upload_artifact(f"b{i}", os.urandom(1_500_000))
        t.flush(wait_for_uploads=True)
        print(json.dumps({n: a.hash for n, a in t.artifacts.items()}), t.id)
        t.close()
        """,
    )
    hashes_json, task_id = made.stdout.split("\n")[-2].rsplit(" ", 1)
    hashes = json.loads(hashes_json)
    read = run_py(
        env,
        f"""
        import json, os, time
        from pathlib import Path
        from artisync import Task
        cache = Path(os.environ["XDG_CACHE_HOME"]) / "artisync" / "objects"
        t = Task.get_task(task_id={task_id!r})
        def held():
            return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
        def use(*names):
            for name in names:
                t.artifacts[name].get()
                time.sleep(0.05)  # distinct times of use
        use("b0", "b1", "b0")  # b0 used again: b1 is now the least recently used
        use("b2")  # over the limit: b1 goes (first in, first out would drop b0)
        after_b2 = held()
        use("b0", "b3")  # b2 goes
        size = sum(p.stat().st_size for p in cache.iterdir() if p.is_file())
        # a cached copy that went bad is what the cache gives back, until forced
        sha = t.artifacts["b3"].hash
        (cache / sha).write_bytes(b"rotten")
        stale = t.artifacts["b3"].get()
        fresh = t.artifacts["b3"].get(force_download=True)
        print(json.dumps({{
            "after_b2": after_b2, "held": held(), "size": size,
            "stale": len(stale), "fresh": len(fresh),
        }}))
        """,
        ARTISYNC_CACHE_LIMIT="3200000",
        XDG_CACHE_HOME=str(env.root / "reader-cache"),
    )
    got = json.loads(read.stdout.splitlines()[-1])
    assert got["size"] <= 3_200_000
    assert got["after_b2"] == sorted([hashes["b0"], hashes["b2"]])
    assert got["held"] == sorted([hashes["b0"], hashes["b3"]])
    assert (got["stale"], got["fresh"]) == (len(b"rotten"), 1_500_000)


def test_force_download_in_the_writing_process_fetches_again(daemon: DaemonProc, env: Env) -> None:
    """The writer's own artifact has no hash in its record until asked: forcing must
    find the cached copy all the same."""
    from artisync import Task

    task = Task.init(project_name="cache", task_name="writer")
    task.upload_artifact("weights", b"w" * 100_000)
    task.flush(wait_for_uploads=True)
    cached = Path(str(task.get_artifact_versions("weights")[0].get_local_copy()))
    cached.write_bytes(b"rotten")  # the reader's cached copy went bad
    mine = task.artifacts["weights"]
    fresh = mine.get_local_copy(force_download=True)
    assert fresh is not None and Path(fresh).read_bytes() == b"w" * 100_000
    task.close()


def test_a_hit_on_a_folder_renews_its_time_of_use(daemon: DaemonProc, env: Env) -> None:
    """A materialised folder (``<sha>.d``) is a cache entry of its own: reading it again
    must keep it from being the first to go."""
    from artisync import Task

    folder = env.root / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    task = Task.init(project_name="cache", task_name="folder")
    task.upload_artifact("data", str(folder))
    task.flush(wait_for_uploads=True)
    art = task.get_artifact_versions("data")[0]
    tree = Path(str(art.get_local_copy()))
    assert tree.name.endswith(".d") and (tree / "sub" / "a.txt").read_text() == "a"
    os.utime(tree, (1_000_000, 1_000_000))  # used long ago
    assert art.get_local_copy() == str(tree)
    assert tree.stat().st_mtime > time.time() - 60
    task.close()
