"""The journal keeps committed history for ``journal_keep`` seconds, then compacts
it away: status still counts it, lookups through the daemon still see it (storage
has it), and an outstanding record of the same task keeps its task alive."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

from tests.faults import FileTarget
from tests.harness import DaemonProc, Env, run_py


def _status(env: Env) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "artisync.cli", "status", "--json"],
        env=env.environ(),
        capture_output=True,
        text=True,
    )
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def _rows(env: Env) -> int:
    with sqlite3.connect(env.spool / "journal.db") as db:
        return int(db.execute("SELECT count(*) FROM records").fetchone()[0])


def test_compacted_history_still_counts_and_reads(env: Env) -> None:
    share = FileTarget(env.root / "nfs")  # a folder behind a mount point that can vanish
    env.vars["ARTISYNC_OUTPUT_URI"] = share.uri
    fast = {"ARTISYNC_RETRY_MAX_ELAPSED": "1", "ARTISYNC_OFFLINE_MAX_BACKOFF": "1"}
    d = DaemonProc(env, **fast).wait_ready()
    try:
        (env.root / "gone").symlink_to(env.root / "nfs" / "unmounted")
        task_id = run_py(
            env,
            f"""
            import os, time
            from artisync import Task
            t = Task.init(project_name="long", task_name="history")
            t.upload_artifact("a1", {{"v": 1}})
            t.upload_artifact("a2", {{"v": 2}})
            t.flush(wait_for_uploads=True, timeout=60)
            os.replace({str(env.root / "gone")!r}, {share.uri!r})  # the share goes away
            t.upload_artifact("a3", {{"v": 3}})             # waits in the journal
            t.flush()
            print(t.id)
            """,
        ).stdout.split()[-1]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _status(env)["online"]:
            time.sleep(0.2)
        assert not _status(env)["online"]
    finally:
        d.stop()
    before = _rows(env)
    time.sleep(1.5)
    d = DaemonProc(env, ARTISYNC_JOURNAL_KEEP="1", **fast).wait_ready()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "compacted 2 committed records" not in d.output():
            time.sleep(0.2)
        # a1 and a2 went; the task's events stay while a3 (and its close) wait
        notes = [ln for ln in d.output().splitlines() if "journal" in ln or "Error" in ln]
        assert "compacted 2 committed records" in d.output(), notes
        assert _rows(env) == before - 2, (before, _rows(env))
        share.network(up=True)  # the share is back: a3 goes up
        run_py(
            env,
            "import subprocess, sys; subprocess.run([sys.executable, '-m', "
            "'artisync.cli', 'wait', '--timeout', '60'], check=True)",
        )
        status = _status(env)
        assert status["committed"]["records"] == 5, status  # type: ignore[index]
        seen = run_py(
            env,
            f"""
            from artisync import Task
            t = Task.get_task(task_id={task_id!r})
            print(sorted((n, a.get()["v"]) for n, a in t.artifacts.items()))
            """,
        ).stdout.strip()
        assert seen == "[('a1', 1), ('a2', 2), ('a3', 3)]", seen
    finally:
        d.stop()
