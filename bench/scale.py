"""Scale: reading back from a bucket with 100,000 tasks costs what it does with 10.

    python bench/scale.py [--tasks 100000] [--runs 10000] [--names 2000] [--artifacts 1000]
                          [--reps 5] [--only reads|ingest|journal]

**reads**: SeaweedFS (S3) on loopback holds two buckets filled by the daemon's own
publishing code (``publish_task``, ``publish_artifacts``): a big one (``--tasks``
tasks: one name with ``--runs`` runs, the rest spread over ``--names`` names in
20 projects) and a small one (10 tasks), each with a task of ``--artifacts``
artifacts published one by one and another with as many published in batches of
100. Each read runs in a fresh process through the public API (``Task.get_task``,
``Task.get_tasks``, ``task.artifacts``): the first call (cold: client set-up, TLS
included in the first read) and the median of ``--reps`` more. Requests are counted by the
server itself (its Prometheus metrics), per read. The filled big bucket is kept
in ``bench/.cache/`` and reused by later runs (filling it takes minutes).

**ingest**: ``--records`` records waiting in an outbox (an offline rig back after
a week), ingested by a daemon at start; time, the daemon's peak RSS, and how long
a client waits meanwhile for ``hello``.

**journal**: a journal of ``--journal-rows`` committed records; how long
``status`` takes, the journal's size before and after compaction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, table, world
from _scale_backlog import bench_ingest, bench_journal

from artisync.protocol import Origin, new_task_record, task_event
from tests.servers import SeaweedFS, find_weed

CACHE = Path(__file__).resolve().parent / ".cache"
LAYOUT = "index-v2"  # bump when the remote layout changes: a cached bucket is refilled
KEY, SECRET = "benchkey", "benchsecret"


def cached(name: str) -> tuple[Path, bool, Path]:
    """``bench/.cache/<name>``: (its folder, whether a bucket was filled there, a fresh
    scratch folder inside it); a folder never finished is started afresh."""
    data = CACHE / name
    filled = (data / "filled").exists()
    if not filled:
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
    root = data / "run"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    return data, filled, root


def _task(dest: str, project: str, name: str, started: float, status: str) -> dict[str, Any]:
    """A task's newest event, as the SDK makes it, dated ``started``."""
    rec = new_task_record(
        project=project, name=name, dest=dest, tags=[], origin=Origin("bench", "bench", 1)
    )
    if status != "in_progress":
        rec = task_event(rec, status=status, event="closed")
    return {**rec, "created": started, "started": started, "ended": None}


def _artifact(task: dict[str, Any], i: int) -> tuple[dict[str, Any], bytes]:
    import hashlib

    body = json.dumps({"step": i, "loss": 1.0 / (i + 1)}).encode()
    sha = hashlib.sha256(body).hexdigest()
    rec = {
        "kind": "artifact",
        "record_id": uuid.uuid4().hex,
        "task_id": task["task_id"],
        "created": task["started"] + i,
        "dest": task["dest"],
        "host": "bench",
        "user": "bench",
        "pid": 1,
        "name": f"metrics-{i:04d}",
        "type": "dict",
        "format": "json",
        "sha256": sha,
        "size": len(body),
        "blobs": [[sha, len(body)]],
        "metadata": {},
        "preview": "",
    }
    return rec, body


def plan(dest: str, tasks: int, runs: int, names: int) -> list[dict[str, Any]]:
    """The tasks of one bucket: ``runs`` of vision/train (the 3 newest in progress),
    the rest over ``names`` names in 20 projects; start times over the past year."""
    now = time.time() - 3600
    year = 365 * 86400.0
    out = []
    for i in range(runs):
        status = "in_progress" if i >= runs - 3 else "completed"
        out.append(_task(dest, "vision", "train", now - year + year * i / runs, status))
    for i in range(tasks - runs):
        name = f"exp-{i % names:04d}"
        project = f"proj-{i % names % 20:02d}"
        out.append(_task(dest, project, name, now - year + year * i / (tasks - runs), "completed"))
    return out


async def _fill(endpoint: str, bucket: str, tasks: list[dict[str, Any]], artifacts: int) -> None:
    from artisync.daemon.publish import publish_artifacts, publish_task
    from artisync.daemon.storage import open_storage

    uri = f"s3://{bucket}/runs"
    st = open_storage(uri, _options(endpoint))
    gate = asyncio.Semaphore(64)
    done = 0

    async def one(coro: Any) -> None:
        nonlocal done
        async with gate:
            await coro
        done += 1
        if done % 5000 == 0:
            print(f"  filled {done:,}", file=sys.stderr, flush=True)

    wide = [_task(uri, "wide", n, time.time() - 60, "completed") for n in ("alone", "batched")]
    try:
        await asyncio.gather(*(one(publish_task(st, t)) for t in [*tasks, *wide]))
        alone = [_artifact(wide[0], i) for i in range(artifacts)]
        await asyncio.gather(*(one(publish_artifacts(st, [a])) for a in alone))
        batched = [_artifact(wide[1], i) for i in range(artifacts)]
        await asyncio.gather(
            *(one(publish_artifacts(st, batched[i : i + 100])) for i in range(0, artifacts, 100))
        )
    finally:
        await st.aclose()


def _options(endpoint: str) -> dict[str, Any]:
    return {
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "access_key_id": KEY,
        "secret_access_key": SECRET,
    }


def _create_bucket(endpoint: str, bucket: str) -> None:
    import botocore.session

    c = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )
    c.create_bucket(Bucket=bucket)
    c.close()


READER = r"""
import json, statistics, sys, time, urllib.request
from artisync import Task
metrics, bucket, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])

def requests():
    text = urllib.request.urlopen(metrics, timeout=10).read().decode()
    n = 0
    for line in text.splitlines():
        if line.startswith("SeaweedFS_s3_request_seconds_count{") and f'bucket="{bucket}"' in line:
            n += int(float(line.rsplit(" ", 1)[1]))
    return n

ids = {}
def wide(name):
    if name not in ids:
        ids[name] = Task.get_task(project_name="wide", task_name=name).id
    return ids[name]

READS = {
    "get_task(project, name)": lambda: Task.get_task(project_name="vision", task_name="train"),
    "get_task(..., status filter)": lambda: Task.get_task(
        project_name="vision", task_name="train", task_filter={"status": ["completed"]}),
    "get_task(project, NAME) (case-insensitive)": lambda: Task.get_task(
        project_name="vision", task_name="TRAIN"),
    "get_task(task_name=...) (any project)": lambda: Task.get_task(task_name="train"),
    "get_task(task_id)": lambda: Task.get_task(task_id=ids["train"]),
    "get_tasks() first page (10)": lambda: Task.get_tasks(task_filter={"page_size": 10})[:10],
    "get_tasks(project) first page (10)": lambda: Task.get_tasks(
        project_name="vision", task_filter={"page_size": 10})[:10],
    "artifacts, 1,000 published alone": lambda: dict(Task.get_task(task_id=wide("alone")).artifacts),
    "artifacts, 1,000 in batches of 100": lambda: dict(Task.get_task(task_id=wide("batched")).artifacts),
}
out = {}
first_read = True
for label, read in READS.items():
    before = requests()
    t0 = time.perf_counter(); read(); first = time.perf_counter() - t0
    n = requests() - before
    warm = []
    for _ in range(reps):
        t0 = time.perf_counter(); read(); warm.append(time.perf_counter() - t0)
    out[label] = {"requests": n, "first_ms": first * 1e3, "median_ms": statistics.median(warm) * 1e3}
    if first_read:  # the first read of a fresh process: includes setting up the client
        first_read = False
        ids["train"] = Task.get_task(project_name="vision", task_name="train").id
        wide("alone"); wide("batched")
print(json.dumps(out))
"""


def _reads(server: SeaweedFS, bucket: str, reps: int, root: Path) -> dict[str, dict[str, float]]:
    config = root / f"{bucket}.toml"
    lines = [f'[[storage.override]]\nmatch = "s3://{bucket}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in _options(server.endpoint).items()]
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTISYNC_")}
    env.update(
        ARTISYNC_CONFIG=str(config),
        ARTISYNC_OUTPUT_URI=f"s3://{bucket}/runs",
        ARTISYNC_SOCKET=str(root / "none.sock"),
        ARTISYNC_SPOOL=str(root / "spool"),
        ARTISYNC_AUTOSTART="0",
        XDG_CACHE_HOME=str(root / "cache"),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    metrics = f"http://127.0.0.1:{server.port + 5}/metrics"
    proc = subprocess.run(
        [sys.executable, "-c", READER, metrics, bucket, str(reps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"reader failed:\n{proc.stderr}")
    result: dict[str, dict[str, float]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_reads(args: argparse.Namespace) -> str:
    weed = find_weed()
    if weed is None:
        raise SystemExit("SeaweedFS not installed (scripts/setup --servers)")
    key = f"{LAYOUT}-{args.tasks}-{args.runs}-{args.names}-{args.artifacts}"
    data, filled, root = cached("scale-" + key)
    with SeaweedFS(data / "weed", weed=weed, access_key=KEY, secret_key=SECRET) as server:
        fill_s = 0.0
        if not filled:
            t0 = time.monotonic()
            for bucket, tasks in (("big", args.tasks), ("small", 10)):
                _create_bucket(server.endpoint, bucket)
                runs = args.runs if bucket == "big" else 8
                names = args.names if bucket == "big" else 2
                print(f"filling {bucket}: {tasks:,} tasks", file=sys.stderr, flush=True)
                todo = plan(f"s3://{bucket}/runs", tasks, runs, names)
                asyncio.run(_fill(server.endpoint, bucket, todo, args.artifacts))
            fill_s = time.monotonic() - t0
            (data / "filled").write_text(f"{fill_s:.0f} s\n")
        big = _reads(server, "big", args.reps, root)
        small = _reads(server, "small", args.reps, root)
    rows = []
    for label in big:
        b, s = big[label], small[label]
        rows.append(
            [
                label,
                f"{s['requests']:.0f}",
                f"{b['requests']:.0f}",
                f"{s['first_ms']:.0f}",
                f"{b['first_ms']:.0f}",
                f"{s['median_ms']:.1f}",
                f"{b['median_ms']:.1f}",
                f"{b['median_ms'] / max(s['median_ms'], 1e-3):.2f}",
            ]
        )
    head = [
        "read",
        "requests (10 tasks)",
        f"requests ({args.tasks:,})",
        "first ms (10)",
        f"first ms ({args.tasks:,})",
        "median ms (10)",
        f"median ms ({args.tasks:,})",
        "big / small",
    ]
    note = f"filled in {fill_s:.0f} s" if fill_s else f"bucket from {data} (cached)"
    return (
        f"reads, SeaweedFS on loopback, {args.tasks:,} tasks ({args.runs:,} runs of one name) "
        f"vs 10; {note}\n\n" + table(head, rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=2_000)
    ap.add_argument("--artifacts", type=int, default=1_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--journal-rows", type=int, default=10_000_000)
    ap.add_argument("--only", choices=["reads", "ingest", "journal"])
    args = ap.parse_args()
    print(f"# bench/scale — {machine()}\n")
    if args.only in (None, "reads"):
        print(bench_reads(args), "\n", flush=True)
    if args.only in (None, "ingest"):
        with world() as w:
            print(bench_ingest(w, args.records), "\n", flush=True)
    if args.only in (None, "journal"):
        with world() as w:
            print(bench_journal(w, args.journal_rows), "\n", flush=True)


if __name__ == "__main__":
    main()
