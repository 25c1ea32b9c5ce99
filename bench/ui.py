"""The artifacts view at scale: a project of 10,000 tasks, pages timed end to end.

    python bench/ui.py [--tasks 10000] [--artifacts 300] [--reps 7]

SeaweedFS (S3) on loopback holds a bucket filled by the daemon's own publishing
code: ``--tasks`` tasks in one project, and one task with ``--artifacts``
artifacts (kept in ``bench/.cache/`` and reused). ``artisync ui`` runs as its own
process; each page is fetched over HTTP: the first request of a fresh server
process (cold: storage client set-up included), then the median of ``--reps``.
The baseline is what the first page costs at the storage itself, with boto3:
one LIST of 50 index keys and the 50 task.json GETs it needs, 16 at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import scale
from _common import machine, table

from artisync.protocol import parse_newest_first, task_key, tasks_prefix
from tests.servers import SeaweedFS, find_weed

PROJECT = "vision"


def _fill(endpoint: str, tasks: int, artifacts: int) -> None:
    scale._create_bucket(endpoint, "view")
    todo = scale.plan("s3://view/runs", tasks, tasks, 1)  # one project, one name
    asyncio.run(scale._fill(endpoint, "view", todo, artifacts))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return (time.perf_counter() - t0) * 1000, body


def _serve(root: Path, endpoint: str) -> tuple[subprocess.Popen[bytes], str]:
    config = root / "view.toml"
    lines = ["[storage.s3]"] + [
        f"{k} = {json.dumps(v)}" for k, v in scale._options(endpoint).items()
    ]
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTISYNC_")}
    env.update(
        ARTISYNC_CONFIG=str(config),
        ARTISYNC_SPOOL=str(root / "spool"),
        ARTISYNC_SOCKET=str(root / "none.sock"),  # no daemon: storage alone
        ARTISYNC_AUTOSTART="0",
        XDG_CACHE_HOME=str(root / "cache"),
    )
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "artisync.cli",
        "ui",
        "--uri",
        "s3://view/runs",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, base
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("artisync ui did not start")


def _baseline(endpoint: str, reps: int) -> tuple[float, float]:
    """The first page's storage reads, with boto3: (first in a fresh client, median)."""
    import boto3

    opts = scale._options(endpoint)
    prefix = "runs/" + tasks_prefix(PROJECT)

    def page(s3: Any) -> None:
        keys = s3.list_objects_v2(Bucket="view", Prefix=prefix, MaxKeys=50)["Contents"]
        ids = [parse_newest_first(k["Key"][len(prefix) :]) for k in keys]
        with ThreadPoolExecutor(16) as pool:
            gets = [("runs/" + task_key(p[1])) for p in ids if p is not None]
            list(pool.map(lambda k: s3.get_object(Bucket="view", Key=k)["Body"].read(), gets))

    t0 = time.perf_counter()
    s3 = boto3.client(
        "s3",
        endpoint_url=opts["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id=opts["access_key_id"],
        aws_secret_access_key=opts["secret_access_key"],
    )
    page(s3)
    first = (time.perf_counter() - t0) * 1000
    warm = []
    for _ in range(reps):
        t0 = time.perf_counter()
        page(s3)
        warm.append((time.perf_counter() - t0) * 1000)
    return first, statistics.median(warm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--artifacts", type=int, default=300)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    weed = find_weed()
    if weed is None:
        raise SystemExit("SeaweedFS not installed (scripts/setup --servers)")
    data, filled, root = scale.cached(f"ui-{scale.LAYOUT}-{args.tasks}-{args.artifacts}")
    print(f"# bench/ui — {machine()}\n")
    with SeaweedFS(
        data / "weed", weed=weed, access_key=scale.KEY, secret_key=scale.SECRET
    ) as server:
        if not filled:
            t0 = time.monotonic()
            print(f"filling: {args.tasks:,} tasks", file=sys.stderr, flush=True)
            _fill(server.endpoint, args.tasks, args.artifacts)
            (data / "filled").write_text(f"{time.monotonic() - t0:.0f} s\n")
        proc, base = _serve(root, server.endpoint)
        try:
            rows = _pages(base, args.reps)
        finally:
            proc.terminate()
            proc.wait(10)
        first, warm = _baseline(server.endpoint, args.reps)
    rows.append(["boto3: LIST 50 + 50 GETs (16 threads)", f"{first:.0f}", f"{warm:.1f}", "1.00"])
    for row in rows[:-1]:  # only the first page reads what the baseline reads
        row.append(f"{float(row[2]) / warm:.2f}" if row[0].startswith("project page 1") else "")
    head = ["page", "first ms (fresh server)", f"median ms ({args.reps})", "page 1 / boto3"]
    print(f"SeaweedFS on loopback, one project of {args.tasks:,} tasks\n")
    print(table(head, rows))


def _pages(base: str, reps: int) -> list[list[Any]]:
    project = f"{base}/p/{quote(PROJECT)}"
    first_ms, body = _get(project)
    task_id = body.split(b'name="t" value="', 1)[1][:32].decode()
    wide = _get(f"{base}/p/wide")[1].decode()
    many = re.search(r'/t/([0-9a-f]{32})">alone<', wide).group(1)  # type: ignore[union-attr]
    pages = {
        "project page 1 (50 newest of all)": project,
        "project page 20 (950 skipped)": project + "?page=20",
        "one task": f"{project}/t/{task_id}",
        "artifact count (lazy cell)": f"{project}/t/{task_id}/count",
        "a task of N artifacts, each published alone": f"{base}/p/wide/t/{many}",
    }
    rows = []
    for label, url in pages.items():
        first = first_ms if label.startswith("project page 1") else _get(url)[0]
        warm = statistics.median(_get(url)[0] for _ in range(reps))
        rows.append([label, f"{first:.0f}", f"{warm:.1f}"])
    return rows


if __name__ == "__main__":
    main()
