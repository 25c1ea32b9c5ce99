"""A burst of small artifacts: payloads inline in their records, records in batches.

Real daemon, file destination; read back from a fresh process that has only the
storage (no daemon socket, no spool, its own cache).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from artisync import Task
from artisync.protocol import artifact_prefix, batch_prefix
from tests.harness import DaemonProc, Env, run_py, stored_objects


def _published(env: Env, task_id: str) -> tuple[list[Path], list[Path]]:
    """(version files published alone, batch files) of a task."""
    alone = sorted((env.storage / artifact_prefix(task_id)).glob("*/*.json"))
    batches = sorted((env.storage / batch_prefix(task_id)).glob("*.json"))
    return alone, batches


def _read_back(env: Env, code: str) -> Any:
    out = run_py(
        env,
        code,
        ARTISYNC_SPOOL=str(env.root / "other-spool"),
        ARTISYNC_SOCKET=str(env.root / "none.sock"),
        XDG_CACHE_HOME=str(env.root / "other-cache"),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_burst_of_small_dicts_is_batched_inline_and_reads_back(
    daemon: DaemonProc, env: Env
) -> None:
    task = Task.init(project_name="burst", task_name="dicts")
    n = 300
    for i in range(n):
        task.upload_artifact(f"d{i}", {"i": i, "tag": "x" * (i % 50)})
    for v in range(3):  # versions of one name in the same burst: the newest wins
        task.upload_artifact("same", {"v": v})
    task.flush(wait_for_uploads=True)
    task.close()

    alone, batches = _published(env, task.id)
    records = [json.loads(p.read_text()) for p in alone]
    for p in batches:
        body = json.loads(p.read_text())
        assert body["version"] == 1
        records += body["records"]
    ids = [r["record_id"] for r in records]
    assert len(ids) == len(set(ids)) == n + 3, "every version published exactly once"
    assert batches, "a burst of 303 small artifacts went up without a single batch"
    assert len(alone) + len(batches) < (n + 3) // 2, (len(alone), len(batches))
    # inline: the payloads are in the records, not objects of their own
    assert all("inline" in r for r in records)
    assert not set(stored_objects(env.storage)) & {r["sha256"] for r in records}

    res = _read_back(
        env,
        """
        import json
        from artisync import Task
        t = Task.get_task(project_name="burst", task_name="dicts")
        a = t.artifacts
        print(json.dumps({"names": len(a), "same": a["same"].get(),
                          "values": [a[f"d{i}"].get() for i in range(300)]}))
        """,
    )
    assert res["names"] == n + 1
    assert res["same"] == {"v": 2}
    assert res["values"] == [{"i": i, "tag": "x" * (i % 50)} for i in range(n)]


def test_inline_payload_that_does_not_match_its_hash_is_refused(
    daemon: DaemonProc, env: Env
) -> None:
    task = Task.init(project_name="burst", task_name="tampered")
    task.upload_artifact("d", {"ok": True})
    task.flush(wait_for_uploads=True)
    task.close()
    (version,) = _published(env, task.id)[0]
    rec = json.loads(version.read_text())
    assert base64.b64decode(rec["inline"]) == b'{"ok": true}'
    rec["inline"] = base64.b64encode(b'{"ok": false}').decode()
    version.write_text(json.dumps(rec))

    res = _read_back(
        env,
        """
        import json
        from artisync import Task
        t = Task.get_task(project_name="burst", task_name="tampered")
        try:
            print(json.dumps({"got": t.artifacts["d"].get()}))
        except Exception as exc:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        """,
    )
    assert "got" not in res, res
    assert res["error"].startswith("IntegrityError") and "does not match its hash" in res["error"]
