"""CPU share of registered-DataFrame tracking, as a training process sees it.

A "training loop" runs for a fixed time in the main thread while a DataFrame
of N rows is registered; every few seconds the loop changes it in place. The
tracker thread's own CPU time (read from /proc for that thread) is compared
with the wall time. "detection share" is the CPU spent noticing changes (the
goal: about 1 %, also for a 1-million-row frame); "total share" adds storing
the changed versions, which is work the user asked for.

    python bench/tracking.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Daemon, machine, table, world


def thread_cpu(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(rows: int, seconds: float, change_every: float) -> list[str]:
    import numpy as np
    import pandas as pd

    from artisync import Task
    from artisync._session import Session

    Session.reset()
    task = Task.init(project_name="bench", task_name=f"tracking {rows}")
    df = pd.DataFrame(np.random.default_rng(0).random((rows, 10)), columns=list("abcdefghij"))
    task.register_artifact("frame", df)
    tracker = Task._tracker_instance()
    thread = next(t for t in threading.enumerate() if t.name == "artisync-tracker")
    assert thread.native_id is not None
    cpu0, wall0, checks0 = thread_cpu(thread.native_id), time.monotonic(), tracker.checks
    hashed0 = tracker.hash_seconds
    next_change, changes = wall0 + change_every, 0
    x = 0.0
    while (now := time.monotonic()) - wall0 < seconds:
        x += sum(i * 0.5 for i in range(10_000))  # the "training"
        if now >= next_change:
            df.iloc[changes % rows, 0] = -1.0 - changes
            changes += 1
            next_change = now + change_every
    wall = time.monotonic() - wall0
    cpu = thread_cpu(thread.native_id) - cpu0
    checks = tracker.checks - checks0
    hashed = tracker.hash_seconds - hashed0
    item = tracker.items[(task.id, "frame")]
    task.close()
    per_check = tracker.hash_seconds / max(tracker.checks, 1) * 1000
    return [
        f"{rows:,}",
        f"{wall:.1f}",
        str(checks),
        f"{per_check:.1f}",
        f"{tracker.interval:.1f}",
        str(changes),
        str(item.versions - 1),
        f"{cpu:.2f}",
        f"{100 * hashed / wall:.2f} %",
        f"{100 * cpu / wall:.2f} %",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--change-every", type=float, default=4.0)
    args = p.parse_args()
    rows = []
    with world() as w:
        w.apply()
        daemon = Daemon(w).wait_ready()
        try:
            for n in (10_000, 1_000_000):
                rows.append(run(n, args.seconds, args.change_every))
        finally:
            daemon.stop()
    print(f"registered-DataFrame tracking ({machine()})")
    print(
        table(
            [
                "rows",
                "wall s",
                "checks",
                "hash ms/check",
                "interval s",
                "changes",
                "versions",
                "tracker CPU s",
                "detection share",
                "total share",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
