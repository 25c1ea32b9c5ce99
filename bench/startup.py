"""What artisync adds to a process: ``import artisync`` + ``Task.init`` + ``close()`` of
an empty task, as a whole process, against a bare ``python -c pass``.

    python bench/startup.py [--reps 10]

Measured twice: with a daemon running (records acknowledged over the socket)
and with none (autostart off: records go to the spool's outbox). Each rep
times the whole ``subprocess.run`` of a fresh interpreter; the cases take
turns within a round, after one untimed warm-up round. Goal: the median
under 150 ms above the bare interpreter's median.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Daemon, World, machine, median_ms, table, world

GOAL_MS = 150.0

INIT_CLOSE = (
    "from artisync import Task\n"
    "task = Task.init(project_name='bench', task_name='startup')\n"
    "task.close()\n"
)


def timed(code: str, w: World) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=w.environ(), cwd=w.root, capture_output=True
    )
    took = time.perf_counter() - t0
    if proc.returncode != 0 or proc.stderr:
        raise RuntimeError(f"{code!r} failed ({proc.returncode}):\n{proc.stderr.decode()}")
    return took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=10, help="runs of each case (median)")
    args = p.parse_args(argv)
    with world() as served, world() as alone:
        daemon = Daemon(served).wait_ready()
        try:
            cases = [
                ("python -c pass", "pass", alone, None),
                ("import artisync", "import artisync", alone, None),
                ("import + Task.init + close, daemon running", INIT_CLOSE, served, daemon),
                ("import + Task.init + close, no daemon", INIT_CLOSE, alone, None),
            ]
            samples: dict[str, list[float]] = {name: [] for name, *_ in cases}
            for rnd in range(args.reps + 1):  # round 0 warms caches and .pyc files
                for name, code, w, d in cases:
                    took = timed(code, w)
                    if d is not None:
                        d.wait_idle()  # its uploads must not slow the next case
                    if rnd:
                        samples[name].append(took)
        finally:
            daemon.stop()
    base = median_ms(samples["python -c pass"])
    rows = []
    for name, *_ in cases:
        m = median_ms(samples[name])
        extra = m - base
        if "Task.init" in name:
            verdict = "ok" if extra < GOAL_MS else f"FAIL (goal < {GOAL_MS:.0f} ms above)"
        else:
            verdict = "-"
        rows.append([name, f"{m:.1f}", f"{extra:+.1f}", verdict])
    print(f"whole-process time, median of {args.reps} runs; {machine()}")
    print(table(["process", "wall (ms, median)", "above bare python (ms)", "verdict"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
