"""What ``Logger.report_scalar`` costs a training loop: 10,000 steps, one scalar each.

    python bench/logger.py [--steps 10000] [--reps 5]
    python bench/logger.py --long 300000 [--flush-period 0.5] [--reps 3]

Each variant runs in a fresh process (median of ``--reps``): the loop alone (a
small numpy step), the loop appending each scalar to a list and writing it once
as JSON at the end (the floor: what any recorder must do), and artisync's
``report_scalar`` each step plus ``task.close()`` (the table into the spool; no
daemon: nothing waits on one). Printed: loop time, the extra per call, the
ratio to the floor, and the first ``report_scalar`` of the process.

``--long N``: a long run instead, N steps with a short flush period, so that the
logger stores many chunks while the loop runs; each step is timed on its own, and
the median, the 99th percentile and the worst step are printed, against the same
loop appending to a list (``chunks``: how many the run stored, the last at close).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table

LOOP = r"""
import json, sys, time
import numpy as np
mode, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
w = np.ones((32, 32))
if mode == "artisync":
    from artisync import Task
    task = Task.init(project_name="bench", task_name="logger")
    logger = task.get_logger()
rows = []
first = 0.0
t0 = time.perf_counter()
for i in range(steps):
    loss = float((w @ w).sum()) / (i + 1)  # the training step
    if mode == "list":
        rows.append(("loss", "train", i, loss))
    elif mode == "artisync":
        if i == 0:
            f0 = time.perf_counter()
        logger.report_scalar("loss", "train", loss, iteration=i)
        if i == 0:
            first = time.perf_counter() - f0
if mode == "list":
    with open(out, "w") as f:
        json.dump(rows, f)
elif mode == "artisync":
    task.close()
print(json.dumps({"s": time.perf_counter() - t0, "first": first}))
"""


LONG = r"""
import json, sys, time
import numpy as np
mode, steps, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
w = np.ones((32, 32))
if mode == "artisync":
    from artisync import Task
    task = Task.init(project_name="bench", task_name="logger long")
    logger = task.get_logger()
    logger.set_flush_period(period)
    report = logger.report_scalar
rows = []
took = np.empty(steps)
clock = time.perf_counter
for i in range(steps):
    t0 = clock()
    loss = float((w @ w).sum()) / (i + 1)  # the training step
    if mode == "list":
        rows.append(("loss", "train", i, loss))
    else:
        report("loss", "train", loss, i)
    took[i] = clock() - t0
chunks = 0
if mode == "artisync":
    task.close()
    chunks = logger._scalars.chunk
print(json.dumps({
    "p50": float(np.percentile(took, 50)), "p99": float(np.percentile(took, 99)),
    "worst": float(took.max()), "chunks": chunks,
}))
"""


def environ(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTISYNC_")}
    env.update(
        ARTISYNC_SPOOL=str(root / "spool"),
        ARTISYNC_SOCKET=str(root / "none.sock"),
        ARTISYNC_AUTOSTART="0",
        ARTISYNC_OUTPUT_URI=str(root / "store"),
        ARTISYNC_CONFIG=os.devnull,
    )
    return env


def run_long(mode: str, steps: int, period: float, root: Path) -> dict[str, float]:
    args = [sys.executable, "-c", LONG, mode, str(steps), str(period)]
    out = subprocess.run(args, env=environ(root), capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


def long_run(steps: int, period: float, reps: int) -> None:
    samples: dict[str, list[dict[str, float]]] = {"list": [], "artisync": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(reps):
            for mode in samples:
                samples[mode].append(run_long(mode, steps, period, Path(tmp)))
    rows = []
    for mode, rs in samples.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "worst", "chunks")}
        label = "list.append" if mode == "list" else "Logger.report_scalar"
        rows.append(
            [
                label,
                f"{med['p50'] * 1e6:.1f}",
                f"{med['p99'] * 1e6:.1f}",
                f"{med['worst'] * 1e3:.2f}",
                f"{med['chunks']:.0f}" if mode == "artisync" else "",
            ]
        )
    print(f"{steps:,} steps, flush period {period} s, median of {reps} fresh processes\n")
    print(table(["variant", "step p50 µs", "step p99 µs", "worst step ms", "chunks"], rows))


def run(mode: str, steps: int, root: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", LOOP, mode, str(steps), str(root / "rows.json")],
        env=environ(root),
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--long", type=int, default=0, help="steps of a long run (0: none)")
    ap.add_argument("--flush-period", type=float, default=0.5)
    args = ap.parse_args()
    print(f"# bench/logger — {machine()}\n")
    if args.long:
        long_run(args.long, args.flush_period, args.reps)
        return
    samples: dict[str, list[dict[str, float]]] = {"none": [], "list": [], "artisync": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.reps):  # interleaved: the machine's noise hits all alike
            for mode in samples:
                samples[mode].append(run(mode, args.steps, Path(tmp)))
    med = {m: statistics.median(r["s"] for r in rs) * 1000 for m, rs in samples.items()}
    first = statistics.median(r["first"] for r in samples["artisync"]) * 1e6
    per = {m: (med[m] - med["none"]) * 1000 / args.steps for m in med}
    rows = [
        ["loop alone", f"{med['none']:.0f}", "", ""],
        ["list.append + one json.dump", f"{med['list']:.0f}", f"{per['list']:.2f}", "1.00"],
        [
            "Logger.report_scalar + close()",
            f"{med['artisync']:.0f}",
            f"{per['artisync']:.2f}",
            f"{(med['artisync'] - med['none']) / max(med['list'] - med['none'], 1e-9):.2f}",
        ],
    ]
    print(f"{args.steps:,} steps, median of {args.reps} fresh processes\n")
    print(table(["variant", "loop ms", "extra µs a step", "extra vs list"], rows))
    print(f"\nfirst report_scalar in a fresh process: {first:.0f} µs")


if __name__ == "__main__":
    main()
