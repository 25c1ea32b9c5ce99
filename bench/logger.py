"""What ``Logger.report_scalar`` costs a training loop: 10,000 steps, one scalar each.

    python bench/logger.py [--steps 10000] [--reps 5]

Each variant runs in a fresh process (median of ``--reps``): the loop alone (a
small numpy step), the loop appending each scalar to a list and writing it once
as JSON at the end (the floor: what any recorder must do), and artisync's
``report_scalar`` each step plus ``task.close()`` (the table into the spool; no
daemon: nothing waits on one). Printed: loop time, the extra per call, the
ratio to the floor, and the first ``report_scalar`` of the process.
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


def run(mode: str, steps: int, root: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTISYNC_")}
    env.update(
        ARTISYNC_SPOOL=str(root / "spool"),
        ARTISYNC_SOCKET=str(root / "none.sock"),
        ARTISYNC_AUTOSTART="0",
        ARTISYNC_OUTPUT_URI=str(root / "store"),
        ARTISYNC_CONFIG=os.devnull,
    )
    out = subprocess.run(
        [sys.executable, "-c", LOOP, mode, str(steps), str(root / "rows.json")],
        env=env,
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
    args = ap.parse_args()
    print(f"# bench/logger — {machine()}\n")
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
