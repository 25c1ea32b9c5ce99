"""Read-your-writes from another process while storage is unreachable, when what
the daemon holds for a task is more than one reply can carry.

Until they are uploaded, records keep their payloads (a dict's JSON, up to 64 KiB),
so 300 versions of a 62 kB dict are 19 MB: more than a frame (16 MiB). The daemon
answers such a query in pages; a real daemon, real processes, an S3 endpoint that
refuses connections."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from artisync.protocol import PAGE_BYTES, page_of
from tests.harness import DaemonProc, Env, run_py

VERSIONS = 300  # of ~62 kB each
UNREACHABLE = "s3://nowhere/runs"

REPORT = """
import json
from artisync import Task
task = Task.init(project_name="pages", task_name="offline")
for i in range({n}):
    payload = {{f"k{{j}}": [i, j, "x" * 8] for j in range(1900)}}  # 62 kB of JSON
    task.upload_artifact("metrics", payload)  # one artifact, {n} versions
    task.upload_artifact(f"m{{i}}", payload)  # {n} artifacts
task.flush()
print(json.dumps(task.id))
"""

READ = """
import json, sys
from artisync import Task
task = Task.get_task(task_id={task_id!r})
versions = [v.get()["k0"][0] for v in task.get_artifact_versions("metrics")]
names = {{name: a.get()["k0"][0] for name, a in task.artifacts.items()}}
print(json.dumps({{"versions": versions, "names": names}}))
"""


@pytest.fixture
def offline_daemon(env: Env, monkeypatch: pytest.MonkeyPatch) -> DaemonProc:
    env.config.write_text(
        '[storage.s3]\nendpoint_url = "http://127.0.0.1:9"\n'
        'access_key_id = "k"\nsecret_access_key = "s"\n'
        "[daemon]\ndrain_timeout = 1\n"  # (its uploads are bound to fail)
    )
    monkeypatch.setenv("ARTISYNC_OUTPUT_URI", UNREACHABLE)
    return DaemonProc(env, ARTISYNC_OUTPUT_URI=UNREACHABLE).wait_ready()


def test_hundreds_of_pending_payloads_read_back_from_another_process(
    env: Env, offline_daemon: DaemonProc
) -> None:
    try:
        task_id = json.loads(
            run_py(env, REPORT.format(n=VERSIONS), 300, ARTISYNC_OUTPUT_URI=UNREACHABLE).stdout
        )
        out = run_py(env, READ.format(task_id=task_id), 300, ARTISYNC_OUTPUT_URI=UNREACHABLE)
    finally:
        offline_daemon.stop()
    got = json.loads(out.stdout)
    assert got["versions"] == list(range(VERSIONS))  # every version, in order, each its own
    assert not any(env.storage.rglob("*.json"))  # (none was uploaded: read from the daemon)
    assert got["names"] == {**{f"m{i}": i for i in range(VERSIONS)}, "metrics": VERSIONS - 1}
    # storage was asked for the versions it may hold, and the reader was told it is away
    assert "the versions of 'metrics' are those this node's daemon holds" in out.stderr


def test_pages_hold_every_record_once_in_order_and_each_fits(tmp_path: Path) -> None:
    records = [{"i": i, "data": b"x" * (i * 7919 % 70_000)} for i in range(400)]
    records.append({"i": 400, "data": b"y" * (PAGE_BYTES + 1)})  # alone over the bound
    records.append({"i": 401, "data": b""})
    seen: list[dict[str, object]] = []
    after: int | None = 0
    while after is not None:
        page, after = page_of(records, after)
        assert page, "a page holds one record at least"
        packed = sum(len(msgpack.packb(r, use_bin_type=True)) for r in page)
        assert packed <= PAGE_BYTES or len(page) == 1
        seen += page
    assert [r["i"] for r in seen] == list(range(402))
    assert page_of(records, len(records)) == ([], None)
