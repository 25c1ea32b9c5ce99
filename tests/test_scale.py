"""Reading back costs a fixed number of requests, however long the history.

Buckets are filled by the daemon's own publishing code; lookups run in a fresh
process through the public API and the CLI; requests are counted by SeaweedFS
itself (its Prometheus metrics), below any client. Storage lists 5 keys per page
here (``list_page_size``, a storage option), so anything that read a listing
whole would cost a request per 5 entries of history.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from artisync.daemon.publish import publish_artifacts, publish_task
from artisync.daemon.storage import open_storage
from artisync.protocol import (
    Origin,
    index_keys,
    legacy_index_key,
    legacy_index_prefix,
    new_task_record,
    task_event,
)
from tests.harness import Env, run_py
from tests.storage_fixtures import Backend

PAGE = 5  # keys per LIST request


@pytest.fixture
def s3(storage_uri_factory: Any, env: Env) -> Iterator[Backend]:
    backend: Backend = storage_uri_factory("s3")
    lines = [f"[[storage.override]]\nmatch = {json.dumps(backend.root_uri)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in backend.options.items()]
    lines.append(f"list_page_size = {PAGE}")
    env.config.write_text("\n".join(lines) + "\n")
    env.vars["ARTISYNC_OUTPUT_URI"] = backend.uri
    yield backend


def _task(dest: str, project: str, name: str, started: float, status: str) -> dict[str, Any]:
    """A task's newest event, as the SDK makes it, dated ``started``."""
    rec = new_task_record(
        project=project, name=name, dest=dest, tags=[], origin=Origin("h", "h", 1)
    )
    if status != "in_progress":
        rec = task_event(rec, status=status, event="closed")
    return {**rec, "created": started, "started": started, "ended": None}


def _artifact(task: dict[str, Any], name: str, created: float) -> tuple[dict[str, Any], bytes]:
    body = json.dumps({"name": name}).encode()
    sha = hashlib.sha256(body).hexdigest()
    return {
        "kind": "artifact",
        "record_id": uuid.uuid4().hex,
        "task_id": task["task_id"],
        "created": created,
        "dest": task["dest"],
        "host": "h",
        "user": "u",
        "pid": 1,
        "name": name,
        "type": "dict",
        "format": "json",
        "sha256": sha,
        "size": len(body),
        "blobs": [[sha, len(body)]],
        "metadata": {},
        "preview": "",
    }, body


def fill(backend: Backend, tasks: list[dict[str, Any]], legacy: bool = False) -> None:
    """Publish ``tasks`` as the daemon does; ``legacy``: then move their index entries
    to the previous layout (as an older daemon left them)."""

    async def go() -> None:
        st = open_storage(backend.uri, backend.options)
        gate = asyncio.Semaphore(16)

        async def one(t: dict[str, Any]) -> None:
            async with gate:
                await publish_task(st, t)
                if legacy:
                    key = legacy_index_key(t["project"], t["name"], t["started"], t["task_id"])
                    await st.put_bytes(key, t["task_id"].encode())
                    for k in index_keys(t["project"], t["name"], t["started"], t["task_id"]):
                        await st.delete(k)

        try:
            await asyncio.gather(*(one(t) for t in tasks))
        finally:
            await st.aclose()

    asyncio.run(go())


def history(backend: Backend, runs: int, recent_in_progress: int = 3) -> list[dict[str, Any]]:
    """``runs`` runs of p/train (the newest few still in progress), plus other names."""
    now = time.time() - 10_000
    tasks = [
        _task(
            backend.uri,
            "p",
            "train",
            now + i,
            "completed" if i < runs - recent_in_progress else "in_progress",
        )
        for i in range(runs)
    ]
    tasks += [_task(backend.uri, "p", f"other-{i}", now + i + 0.5, "completed") for i in range(3)]
    return tasks


LOOKUP = """
import json, sys
from artisync import Task
what = json.loads(sys.argv[1])
if what["op"] == "get_task":
    t = Task.get_task(**what["args"])
    print(json.dumps({"id": t.id, "name": t.name, "status": t.status, "started": t._record["started"]}))
elif what["op"] == "get_tasks":
    ts = Task.get_tasks(**what["args"])[: what["n"]]
    print(json.dumps([t.id for t in ts]))
elif what["op"] == "artifacts":
    t = Task.get_task(task_id=what["args"]["task_id"])
    print(json.dumps(sorted(t.artifacts)))
"""


def lookup(
    env: Env, backend: Backend, op: str, n: int = 0, **args: Any
) -> tuple[Any, Counter[str]]:
    """Run one lookup in a fresh process: (its answer, the requests the server saw)."""
    before = backend.server.requests(backend.bucket)
    code = (
        f"import sys; sys.argv[1:] = [{json.dumps(json.dumps({'op': op, 'n': n, 'args': args}))}]\n"
    )
    proc = run_py(env, code + LOOKUP)
    after = backend.server.requests(backend.bucket)
    return json.loads(proc.stdout.strip().splitlines()[-1]), after - before


def newest(tasks: list[dict[str, Any]], status: str | None = None) -> dict[str, Any]:
    pool = [t for t in tasks if t["name"] == "train" and (status is None or t["status"] == status)]
    return max(pool, key=lambda t: t["started"])


def test_lookups_cost_the_same_at_any_history(
    storage_uri_factory: Any, env: Env, s3: Backend
) -> None:
    small_tasks = history(s3, 8)
    fill(s3, small_tasks)
    big = storage_uri_factory("s3")
    big_tasks = history(big, 60)
    fill(big, big_tasks)
    costs = {}
    for label, backend, tasks in (("small", s3, small_tasks), ("big", big, big_tasks)):
        env.vars["ARTISYNC_OUTPUT_URI"] = backend.uri
        env.config.write_text(env.config.read_text().replace(s3.root_uri, backend.root_uri))
        by_name, c1 = lookup(env, backend, "get_task", project_name="p", task_name="train")
        assert by_name["id"] == newest(tasks)["task_id"]
        done, c2 = lookup(
            env,
            backend,
            "get_task",
            project_name="p",
            task_name="train",
            task_filter={"status": ["completed"]},
        )
        assert done["id"] == newest(tasks, "completed")["task_id"]  # skips the 3 newest
        by_id, c3 = lookup(env, backend, "get_task", task_id=by_name["id"])
        assert by_id["id"] == by_name["id"]
        folded, c4 = lookup(env, backend, "get_task", project_name="p", task_name="TRAIN")
        assert folded["id"] == by_name["id"]  # ClearML's case-insensitive fallback
        first, c5 = lookup(
            env, backend, "get_tasks", n=4, project_name="p", task_filter={"page_size": 4}
        )
        expected = sorted(
            (t for t in tasks if t["project"] == "p"), key=lambda t: t["started"], reverse=True
        )[:4]
        assert first == [t["task_id"] for t in expected]
        costs[label] = [c1, c2, c3, c4, c5]
        env.config.write_text(env.config.read_text().replace(backend.root_uri, s3.root_uri))
    small, large = costs["small"], costs["big"]
    assert small == large, (small, large)
    by_name, filtered, by_id, folded, listed = large
    assert sum(by_name.values()) <= 3 and by_name["GET"] == 1, by_name
    assert filtered["GET"] <= 7 and filtered["LIST"] == 2, filtered  # windows of 1, 2, 4
    assert by_id == Counter({"GET": 1}), by_id
    assert sum(folded.values()) <= 6, folded
    assert listed["LIST"] == 2 and listed["GET"] == 4, listed


def test_artifacts_of_a_big_task_are_one_listing_and_parallel_reads(env: Env, s3: Backend) -> None:
    (task,) = [_task(s3.uri, "p", "wide", time.time(), "completed")]
    fill(s3, [task])
    records = [_artifact(task, f"a{i:03d}", time.time() + i) for i in range(40)]

    async def publish() -> None:
        st = open_storage(s3.uri, s3.options)
        try:
            for rec, body in records[:30]:  # each alone: a key each
                await publish_artifacts(st, [(rec, body)])
            await publish_artifacts(st, records[30:])  # ten in one batch
        finally:
            await st.aclose()

    asyncio.run(publish())
    names, cost = lookup(env, s3, "artifacts", task_id=task["task_id"])
    assert names == [f"a{i:03d}" for i in range(40)]
    # task.json; the artifact listing (30 keys, 5 a page) and the batch listing; one
    # GET per artifact published alone and one for the batch
    assert cost["GET"] == 1 + 30 + 1, cost
    assert cost["LIST"] <= 30 // PAGE + 2, cost


def test_previous_layout_is_read_then_migrated(env: Env, s3: Backend) -> None:
    old = history(s3, 12)
    fill(s3, old, legacy=True)
    newer = _task(s3.uri, "p", "train", time.time(), "completed")
    fill(s3, [newer])  # a run by this version: the newest, in the new layout
    found, cost = lookup(
        env,
        s3,
        "get_task",
        project_name="p",
        task_name="train",
        task_filter={"status": ["in_progress"]},
    )
    assert found["id"] == newest(old, "in_progress")["task_id"]  # only in the old layout
    assert cost["LIST"] > 2  # the old entries are read whole until migrated

    cli = [sys.executable, "-m", "artisync.cli", "migrate-index"]
    dry = subprocess.run(cli, env=env.environ(), capture_output=True, text=True, check=True)
    assert f"{len(old)} task index entries in the previous layout" in dry.stdout
    done = subprocess.run(
        [*cli, "--yes"], env=env.environ(), capture_output=True, text=True, check=True
    )
    assert f"moved {len(old)}" in done.stdout

    async def legacy_keys() -> list[str]:
        st = open_storage(s3.uri, s3.options)
        try:
            return [i.key async for i in st.list(legacy_index_prefix())]
        finally:
            await st.aclose()

    assert asyncio.run(legacy_keys()) == []
    found, cost = lookup(env, s3, "get_task", project_name="p", task_name="train")
    assert found["id"] == newer["task_id"]
    assert sum(cost.values()) <= 3, cost
    found, _ = lookup(
        env,
        s3,
        "get_task",
        project_name="p",
        task_name="train",
        task_filter={"status": ["in_progress"]},
    )
    assert found["id"] == newest(old, "in_progress")["task_id"]
    ls = subprocess.run(
        [sys.executable, "-m", "artisync.cli", "ls", "p", "--limit", "3"],
        env=env.environ(),
        capture_output=True,
        text=True,
        check=True,
    )
    lines = ls.stdout.splitlines()
    assert lines[0].split("\t")[1] == newer["task_id"] and lines[-1].startswith("# more")
    assert len(lines) == 4


def test_get_tasks_pages_through_everything_newest_first(env: Env, s3: Backend) -> None:
    tasks = history(s3, 9)
    fill(s3, tasks)
    every, cost = lookup(
        env, s3, "get_tasks", n=100, project_name="p", task_filter={"page_size": 4}
    )
    expected = sorted(tasks, key=lambda t: t["started"], reverse=True)
    assert every == [t["task_id"] for t in expected]
    assert cost["GET"] == len(tasks)  # each task.json read once, page after page
    done, _ = lookup(
        env,
        s3,
        "get_tasks",
        n=100,
        task_name="train",
        task_filter={"status": ["completed"], "page_size": 2},
    )
    assert done == [
        t["task_id"] for t in expected if t["name"] == "train" and t["status"] == "completed"
    ]
