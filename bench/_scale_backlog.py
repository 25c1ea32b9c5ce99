"""bench/scale's backlog parts: a big outbox ingested at start, a long journal compacted."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import Daemon, World, call, process_tree, table

FILL = r"""
import os, sys
from artisync import Task
n, part = int(sys.argv[1]), sys.argv[2]
t = Task.init(project_name="offline", task_name=f"rig-{part}")
for i in range(n):
    t.upload_artifact(f"metrics-{i % 100}", {"step": i, "loss": 1.0 / (i + 1)})
os._exit(0)  # leave the task open, as a rig that lost power would
"""


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        except (FileNotFoundError, StopIteration):
            pass
    return total / 1024


def _journaled(spool: Path) -> int:
    try:
        with sqlite3.connect(f"file:{spool / 'journal.db'}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT coalesce(sum(n), 0) FROM totals").fetchone()[0])
    except sqlite3.Error:
        return 0


def bench_ingest(w: World, records: int) -> str:
    """``records`` waiting in the outbox (written by the SDK with no daemon: two
    processes, half each), then a daemon started on it: time until all are
    journaled, the daemon's peak RSS, and ``hello`` round trips meanwhile."""
    t0 = time.monotonic()
    half = records // 2
    procs = [
        subprocess.Popen([sys.executable, "-c", FILL, str(n), str(i)], env=w.environ())
        for i, n in enumerate((half, records - half))
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("filling the outbox failed")
    fill_s = time.monotonic() - t0
    expected = records + 2  # and the two tasks' start events
    started = time.monotonic()
    d = Daemon(w)
    hellos: list[float] = []
    peak = 0.0
    done = threading.Event()

    def ping() -> None:
        while not done.is_set():
            h0 = time.monotonic()
            try:
                call(w.socket, {"op": "hello"}, timeout=30)
                hellos.append(time.monotonic() - h0)
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    try:
        while _journaled(w.spool) < expected:
            if d.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{d.log.read_text(errors='replace')}")
            peak = max(peak, _rss_mib(process_tree(d.proc.pid)))
            time.sleep(0.2)
        ingest_s = time.monotonic() - started
    finally:
        done.set()
        pinger.join()
        d.stop()
    rows = [
        [
            f"{records:,}",
            f"{fill_s:.0f}",
            f"{ingest_s:.1f}",
            f"{records / ingest_s:,.0f}",
            f"{peak:.0f}",
            f"{len(hellos)}",
            f"{statistics.median(hellos) * 1e3:.1f}" if hellos else "-",
            f"{max(hellos) * 1e3:.0f}" if hellos else "-",
        ]
    ]
    head = [
        "records in the outbox",
        "fill s (SDK, no daemon)",
        "ingest s",
        "records/s",
        "daemon peak RSS MiB",
        "hellos meanwhile",
        "hello p50 ms",
        "hello max ms",
    ]
    return "outbox backlog ingested at start\n\n" + table(head, rows)


def _fill_journal(path: Path, rows: int, old: float) -> None:
    """A journal of ``rows`` committed records over ``rows // 100`` tasks (the daemon's
    own schema, its counters kept as the daemon keeps them), all last changed at ``old``."""
    import msgpack

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from artisync.daemon._journal_schema import count_inserted
    from artisync.daemon.journal import Journal

    asyncio.run(_open_close(Journal(path)))
    body = msgpack.packb(
        {
            "kind": "artifact",
            "name": "metrics",
            "type": "dict",
            "format": "json",
            "sha256": "0" * 64,
            "size": 40,
            "metadata": {},
            "preview": "{'loss': 0.1}",
        }
    )
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    task = uuid.uuid4().hex
    for start in range(0, rows, 100_000):
        db.execute("BEGIN")
        batch = []
        for i in range(start, min(rows, start + 100_000)):
            if i % 100 == 0:
                task = uuid.uuid4().hex
            batch.append(
                (
                    uuid.uuid4().hex,
                    "task" if i % 100 == 0 else "artifact",
                    task,
                    "/storage",
                    body,
                    40,
                    "committed",
                    old,
                    old,
                )
            )
        db.executemany(
            "INSERT INTO records(record_id, kind, task_id, dest, body, size, state, received,"
            " updated) VALUES (?,?,?,?,?,?,?,?,?)",
            batch,
        )
        db.execute("COMMIT")
    count_inserted(db, 0)  # counted as the daemon counts what it inserts
    db.close()


async def _open_close(journal: Any) -> None:
    await journal.open()
    await journal.close()


def bench_journal(w: World, rows: int) -> str:
    """``status`` and compaction on a journal of ``rows`` committed records a month old."""
    from artisync.daemon.journal import Journal

    path = w.root / "journal.db"
    t0 = time.monotonic()
    _fill_journal(path, rows, time.time() - 30 * 86400)
    fill_s = time.monotonic() - t0
    size_before = _size(path)

    async def measure() -> tuple[float, float, float, int]:
        journal = Journal(path)
        await journal.open()
        s0 = time.perf_counter()
        stats = await journal.stats()
        status_ms = (time.perf_counter() - s0) * 1e3
        assert stats["records"]["committed"][0] == rows, stats["records"]
        c0 = time.monotonic()
        gone = await journal.compact(time.time() - 7 * 86400)
        compact_s = time.monotonic() - c0
        s0 = time.perf_counter()
        after = await journal.stats()
        after_ms = (time.perf_counter() - s0) * 1e3
        assert after["records"]["committed"][0] == rows, after["records"]
        await journal.close()
        return status_ms, compact_s, after_ms, gone

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak below is the compaction's, not the fill's
    rss0 = _rss_mib([os.getpid()])
    status_ms, compact_s, after_ms, gone = asyncio.run(measure())
    peak = _peak_rss_mib()
    rows_out = [
        [
            f"{rows:,}",
            f"{fill_s:.0f}",
            f"{size_before / 2**20:,.0f}",
            f"{status_ms:.1f}",
            f"{compact_s:.0f}",
            f"{gone:,}",
            f"{_size(path) / 2**20:,.1f}",
            f"{after_ms:.1f}",
            f"{peak - rss0:.0f}",
        ]
    ]
    head = [
        "committed records",
        "fill s",
        "journal MiB",
        "status ms",
        "compaction s",
        "records compacted",
        "journal MiB after",
        "status ms after",
        "peak RSS +MiB",
    ]
    return "journal: a month of committed history, journal_keep = 7 days\n\n" + table(
        head, rows_out
    )


def _size(path: Path) -> int:
    return sum(
        p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
