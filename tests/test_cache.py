"""The local object cache: bounded by cache_limit (least recently used go first), and
``force_download`` fetching again what the cache holds."""

from __future__ import annotations

import json

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
        for name in ("b0", "b1", "b2", "b3"):
            t.artifacts[name].get()
            time.sleep(0.05)  # distinct times of use
        held = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
        size = sum(p.stat().st_size for p in cache.iterdir() if p.is_file())
        # a cached copy that went bad is what the cache gives back, until forced
        sha = t.artifacts["b3"].hash
        (cache / sha).write_bytes(b"rotten")
        stale = t.artifacts["b3"].get()
        fresh = t.artifacts["b3"].get(force_download=True)
        print(json.dumps({{"held": held, "size": size, "stale": len(stale), "fresh": len(fresh)}}))
        """,
        ARTISYNC_CACHE_LIMIT="3200000",
        XDG_CACHE_HOME=str(env.root / "reader-cache"),
    )
    got = json.loads(read.stdout.splitlines()[-1])
    assert got["size"] <= 3_200_000
    assert got["held"] == sorted([hashes["b2"], hashes["b3"]])  # b0, b1: least recent, gone
    assert (got["stale"], got["fresh"]) == (len(b"rotten"), 1_500_000)
