"""Memory: a backlog of big snapshots in the trainer, and one huge DataFrame in the daemon.

    python bench/memory.py [--frames 100] [--frame-mb 16] [--big-gb 2]

1. **Backlog**: ``upload_artifact("snap", df)`` called ``--frames`` times in a row on
   a ``--frame-mb`` DataFrame, a daemon serving. Reported: the trainer's peak RSS
   above its baseline (VmHWM, in a fresh process), the time from the first call
   until everything is in the spool (for artisync, that is when the last call
   returns) and the same loop of plain ``df.to_parquet`` calls into a folder.
2. **Huge frame**: one ``--big-gb`` DataFrame through the daemon: the peak
   anonymous memory (RssAnon + RssShmem, sampled every 20 ms) of the daemon and
   its encode workers while it encodes and uploads it, beside the frame's size.
   Mapped file pages (the raw snapshot, read through mmap) are the kernel's page
   cache, reclaimable, and not counted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Daemon, Proc, World, machine, table, world

MiB = 1024 * 1024

BACKLOG = r"""
import json, os, sys, time
import numpy as np, pandas as pd
n, mb, mode, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
cols = 8
rows = mb * 1024 * 1024 // (8 * cols)
df = pd.DataFrame(np.random.default_rng(0).random((rows, cols)), columns=list("abcdefgh"))
import pyarrow, pyarrow.parquet  # imported before the baseline, for both modes
if mode == "artisync":
    from artisync import Task
    task = Task.init(project_name="bench", task_name="backlog")

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
base = rss("VmRSS:")
t0 = time.perf_counter()
for i in range(n):
    if mode == "artisync":
        task.upload_artifact("snap", df)
    else:
        df.to_parquet(os.path.join(out, f"{i}.parquet"))
    df.iloc[0, 0] = i  # a new version each time
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "peak_over_base": rss("VmHWM:") - base,
                  "frame": int(df.memory_usage(index=True).sum())}))
if mode == "artisync":
    task.close()
"""

BIG = r"""
import sys, time
import numpy as np, pandas as pd
from artisync import Task
gb = float(sys.argv[1])
rows = int(gb * 1024**3) // (8 * 8)
df = pd.DataFrame(np.random.default_rng(1).random((rows, 8)), columns=list("abcdefgh"))
task = Task.init(project_name="bench", task_name="huge")
t0 = time.perf_counter()
task.upload_artifact("huge", df)
print(f"{time.perf_counter() - t0:.3f} {int(df.memory_usage(index=True).sum())}", flush=True)
task.close()
"""


def backlog(w: World, frames: int, mb: int) -> list[list[str]]:
    rows = []
    results = {}
    for mode in ("inline to_parquet", "artisync"):
        out = w.scratch / mode.split()[0]
        out.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", BACKLOG, str(frames), str(mb), mode.split()[0], str(out)],
            env=w.environ(),
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(proc.stdout)
    inline = results["inline to_parquet"]["seconds"]
    for mode, r in results.items():
        rows.append(
            [
                mode,
                f"{r['seconds']:.2f}",
                f"{r['seconds'] / inline:.2f}",
                f"{r['peak_over_base'] / MiB:.0f}",
                f"{r['peak_over_base'] / r['frame']:.2f}",
            ]
        )
    return rows


def huge(w: World, gb: float) -> list[list[str]]:
    d = Daemon(w).wait_ready()
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], Proc.memory(d.proc.pid)[1])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        base = Proc.memory(d.proc.pid)[1]
        sampler.start()
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", BIG, str(gb)],
            env=w.environ(),
            capture_output=True,
            text=True,
            check=True,
        )
        call_s, frame = proc.stdout.split()
        d.wait_idle(timeout=1800)
        total = time.monotonic() - t0
    finally:
        stop.set()
        d.stop()
    return [
        [
            f"{int(frame) / 1024**3:.2f}",
            f"{float(call_s):.2f}",
            f"{total:.1f}",
            f"{base / MiB:.0f}",
            f"{peak[0] / MiB:.0f}",
            f"{(peak[0] - base) / int(frame):.3f}",
        ]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--frame-mb", type=int, default=16)
    ap.add_argument("--big-gb", type=float, default=2.0)
    args = ap.parse_args()
    print(f"# memory ({machine()})\n")
    with world() as w:
        d = Daemon(w).wait_ready()
        try:
            rows = backlog(w, args.frames, args.frame_mb)
        finally:
            d.stop()
    print(f"{args.frames} x upload_artifact of a {args.frame_mb} MiB DataFrame, daemon serving:\n")
    print(
        table(
            [
                "loop",
                "first call to all in spool (s)",
                "vs inline",
                "trainer peak RSS over baseline (MiB)",
                "x frame size",
            ],
            rows,
        )
    )
    with world() as w:
        rows = huge(w, args.big_gb)
    print(f"\none {args.big_gb:g} GiB DataFrame through the daemon (file destination):\n")
    print(
        table(
            [
                "frame (GiB)",
                "upload_artifact (s)",
                "until committed (s)",
                "daemon anon MiB idle",
                "daemon anon MiB peak",
                "peak growth / frame",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
