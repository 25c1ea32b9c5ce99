"""What reporting costs a training loop: no reporting, the plain write inline, artisync.

    python bench/training_loop.py [--reps 3] [--steps 300] [--every 20] [--only DataFrame] [--fs xfs]
        [--file-mib 16]

A stand-in training loop (numpy matrix work plus pure-Python work, ~3 ms a step)
reports one artifact every ``--every`` steps. Each run is a fresh process (so the
first call in a process is included), the daemon is a real one, and the three
modes of one artifact type run interleaved, rep after rep. Two placements:

- ``shared``: trainer and daemon float over both cores (the daemon competes);
- ``pinned``: the trainer on core 0, the daemon on core 1, every thread and process of it from its start (``sched_setaffinity``).

The table prints each mode's best loop time of the reps and its slowdown against
no reporting measured in the same run (on a shared machine, noise only ever adds
time: the best of several reps is the closest to what the mode itself costs; the
median is printed too), the slowdown of the CPU time the trainer process used in
its loop (all its threads: what reporting takes from the trainer, whatever its
neighbours do), reporting's own time (the calls' blocking time plus the CPU of
any artisync thread in the trainer, against the loop without reporting: what
reporting itself costs the loop, which run-to-run noise of the loop hides in the
differences), the slowdown measured within one process (median over the reps),
the per-step p99, the first call's blocking time, and the CPU the daemon (with its
encode workers) spent per report (median over the reps; it also answers the
trainer's start and end).

One process runs the same loop a few percent faster or slower than the next
(where its memory lands), which the best of a few reps does not average out. So
each trainer, after its first loop (the one the other columns time, first call
included), runs three more: without reporting, with it, without it again; the
"same process" slowdown is the reporting loop against the mean of the two around
it. It includes everything reporting costs the loop (the calls, the daemon's work
on the other core, caches the calls emptied) and nothing of the process's luck;
in the ``none`` rows all three loops are quiet, and what it shows is the noise.
With ``pinned``, it also prints
how much a busy core 1 slows a loop on core 0 on the machine at hand: on virtual
cores that share a physical one, CPU the daemon spends on its core shows in the
trainer's loop however little the trainer itself does.

Files: ``file`` reports the same 16 MiB file each time (its stored copy is kept
once: the spool's copy is written over a recycled one), ``checkpoint`` rewrites
its first 8 bytes before each report (in every mode), so that each report is new.
``--file-mib`` sets their size: 16 MiB every 60 ms is 267 MB/s of files, far more
than the DataFrame row's 0.8 MB; where a copy is the snapshot (ext4), its cost is
proportional to the size.

``--fs xfs`` runs spool and files on an XFS made for the run (reflinks: a file's
snapshot shares its extents instead of copying them); root and xfsprogs needed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FILESYSTEMS, Daemon, Proc, World, machine, table, world

MODES = ("none", "inline", "artisync")
# files: artisync with its read leases off too (ARTISYNC_FILE_LEASE=0): the caller copies
NO_LEASE = "artisync, no lease"
# "file": the same 16 MiB file each time; "checkpoint": the file with new bytes each time
KINDS = ("DataFrame", "ndarray", "image", "dict", "file", "checkpoint")

# The trainer: one fresh interpreter per run; prints one JSON line.
TRAINER = r"""
import json, os, sys, time
kind, mode, steps, every, scratch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
file_bytes = int(sys.argv[6])
import numpy as np

def make():
    if kind == "DataFrame":
        import pandas as pd
        rng = np.random.default_rng(0)
        return pd.DataFrame(rng.standard_normal((10_000, 10)), columns=[f"c{i}" for i in range(10)])
    if kind == "ndarray":
        return np.eye(1000)
    if kind == "image":
        from PIL import Image
        return Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8))
    if kind == "dict":
        return {f"key{i}": [i, i * 0.5, str(i)] for i in range(2000)}
    path = os.path.join(scratch, "weights.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(file_bytes))
    return path

def plain(obj, i):
    out = os.path.join(scratch, f"inline-{i}")
    if kind == "DataFrame":
        obj.to_parquet(out)
    elif kind == "ndarray":
        np.save(out, obj)
    elif kind == "image":
        obj.save(out + ".png")
    elif kind == "dict":
        with open(out, "w") as f:
            json.dump(obj, f)
    else:
        import shutil
        shutil.copyfile(obj, out)

obj = make()
task = None
# The same globals, bound in the same order, in every mode: the loop's Python part
# looks its names up in this module's dict, and in one process the same loop ran 5 %
# faster once ``Task`` was bound (the dict's layout changed)
if mode == "artisync":
    from artisync import Task
    task = Task.init(project_name="bench", task_name=f"loop-{kind}")
else:
    Task = None
a = np.random.default_rng(1).standard_normal((120, 120))

# The first loop is the one the table times (first call included). Then, in the same
# process: quiet, reporting, quiet; against the mean of the quiet two, the reporting
# loop's slowdown owes nothing to where this process's memory landed (in the "none"
# runs all three are quiet: what is left is noise). The loops run at the top level,
# as a script's do (a function's locals would make their Python part twice as fast).
loops = []
reports = 0
cpu0 = time.process_time()
for label, report in (("first", mode != "none"), ("", False), ("again", mode != "none"), ("", False)):
    step_times, call_times = [], []
    start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        b = a @ a.T                      # the "GPU" part
        s = 0
        for j in range(30_000):          # the Python part: data loading, logging...
            s += j * j % 7
        if step % every == 0 and kind == "checkpoint":  # new bytes (every mode: same cost)
            with open(obj, "r+b") as f:
                f.write(step.to_bytes(8, "little"))
        if step % every == 0 and report:
            c0 = time.perf_counter()
            if mode == "inline":
                plain(obj, f"{label}-{step}")  # a new file each call
            else:
                task.upload_artifact(f"{kind}-{label}-{step}", obj)
            call_times.append(time.perf_counter() - c0)
            reports += 1
        step_times.append(time.perf_counter() - t0)
    loops.append(time.perf_counter() - start)
    if label == "first":
        cpu = time.process_time() - cpu0
        first_steps, first_calls = step_times, call_times
loop, quiet1, again, quiet2 = loops
step_times, call_times = first_steps, first_calls
import threading
background = 0.0  # CPU of artisync's own threads in this process, if it started any
for t in threading.enumerate():
    if t.name.startswith("artisync") and t.ident is not None:
        try:
            background += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except OSError:
            pass
if task is not None:
    task.close()
step_times.sort()
print(json.dumps({
    "loop": loop,
    "cpu": cpu,
    "p99": step_times[int(0.99 * (len(step_times) - 1))],
    "paired": again / ((quiet1 + quiet2) / 2) - 1,
    "first_call": call_times[0] if call_times else 0.0,
    "calls": sum(call_times),
    "background": background,
    "reports": reports,
    "loops": loops,
}))
"""


def run_trainer(w: World, kind: str, mode: str, args: argparse.Namespace, cpu: int | None) -> Any:
    scratch = w.scratch / f"{kind}-{mode}".replace(" ", "").replace(",", "-")
    scratch.mkdir(exist_ok=True)
    env = w.environ(ARTISYNC_FILE_LEASE="0") if mode == NO_LEASE else w.environ()
    mode = "artisync" if mode == NO_LEASE else mode
    cmd = [sys.executable, "-c", TRAINER, kind, mode, str(args.steps), str(args.every)]
    out = subprocess.run(
        [*cmd, str(scratch), str(int(args.file_mib * 2**20))],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
    )
    for child in scratch.iterdir():
        child.unlink()
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(kind: str, placement: str, args: argparse.Namespace) -> list[list[str]]:
    pinned = placement == "pinned" and (os.cpu_count() or 1) > 1
    with world(args.fs) as w:
        daemon = Daemon(w, cpus={1} if pinned else None).wait_ready()
        modes = (*MODES, NO_LEASE) if kind in ("file", "checkpoint") else MODES
        runs: dict[str, list[Any]] = {m: [] for m in modes}
        try:
            for _ in range(args.reps):
                for mode in modes:
                    cpu0 = Proc.cpu(daemon.proc.pid)
                    run = run_trainer(w, kind, mode, args, 0 if pinned else None)
                    daemon.wait_idle()
                    run["daemon"] = (Proc.cpu(daemon.proc.pid) - cpu0) / max(1, run["reports"])
                    runs[mode].append(run)
        finally:
            daemon.stop()
    base = min(r["loop"] for r in runs["none"])
    base_median = statistics.median(r["loop"] for r in runs["none"])
    base_cpu = min(r["cpu"] for r in runs["none"])
    rows = []
    for mode in modes:
        loop = min(r["loop"] for r in runs[mode])
        median = statistics.median(r["loop"] for r in runs[mode])
        cpu = min(r["cpu"] for r in runs[mode])
        paired = statistics.median(r["paired"] for r in runs[mode])
        p99 = statistics.median(r["p99"] for r in runs[mode])
        first = statistics.median(r["first_call"] for r in runs[mode])
        own = statistics.median(r["calls"] + r["background"] for r in runs[mode])
        daemon_cpu = statistics.median(r["daemon"] for r in runs[mode])
        rows.append(
            [
                kind,
                placement,
                mode,
                f"{loop * 1000:.0f}",
                f"{(loop / base - 1) * 100:+.1f}",
                f"{(median / base_median - 1) * 100:+.1f}",
                f"{(cpu / base_cpu - 1) * 100:+.1f}",
                "-" if mode == "none" else f"{own / base_median * 100:.1f}",
                f"{paired * 100:+.1f}",
                f"{p99 * 1000:.1f}",
                "-" if mode == "none" else f"{first * 1000:.1f}",
                "-" if mode in ("none", "inline") else f"{daemon_cpu * 1000:.1f}",
            ]
        )
    return rows


NEIGHBOURS = {  # what runs on core 1 while the loop runs alone on core 0
    "idle": None,
    "spinning": "while True: pass",
    # hashing, encoding and copying are like this: they stream through memory
    "copying 64 MB": (
        "import numpy as np\na = np.ones(8 << 20); b = np.empty_like(a)\n"
        "while True: np.copyto(b, a)"
    ),
}


def neighbour_cost(args: argparse.Namespace) -> str:
    """How much a busy core 1 slows the loop on core 0 on this machine (virtual cores
    may share a physical one, or a host's CPU quota; real ones share the memory
    bandwidth and the last cache): the part of a pinned slowdown that the daemon's
    work causes, however little the trainer itself pays."""
    best: dict[str, float] = {}
    with world() as w:
        for _ in range(args.reps):
            for name, code in NEIGHBOURS.items():
                neighbour = None
                if code is not None:
                    neighbour = subprocess.Popen(
                        [sys.executable, "-c", code],
                        preexec_fn=lambda: os.sched_setaffinity(0, {1}),
                    )
                    time.sleep(0.3)  # numpy imported, the copying started
                try:
                    loop = run_trainer(w, "dict", "none", args, 0)["loop"]
                finally:
                    if neighbour is not None:
                        neighbour.kill()
                        neighbour.wait()
                best[name] = min(best.get(name, loop), loop)
    idle = best["idle"]
    others = ", ".join(
        f"{(best[name] / idle - 1) * 100:+.0f} % with a process {name} there"
        for name in NEIGHBOURS
        if name != "idle"
    )
    return (
        f"this machine: a loop pinned to core 0 takes {idle * 1000:.0f} ms with core 1 idle; "
        f"{others} (best of each)"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--only", choices=KINDS, action="append")
    p.add_argument("--placement", choices=("shared", "pinned"), action="append")
    p.add_argument("--fs", choices=FILESYSTEMS, default="host", help="where spool and files live")
    p.add_argument("--file-mib", type=float, default=16, help="size of file and checkpoint")
    args = p.parse_args()
    rows = []
    for kind in args.only or KINDS:
        for placement in args.placement or ("shared", "pinned"):
            rows += measure(kind, placement, args)
    where = "" if args.fs == "host" else f", spool and files on {args.fs}"
    if args.file_mib != 16 and {"file", "checkpoint"} & set(args.only or KINDS):
        where += f", files of {args.file_mib:g} MiB"
    print(
        f"training loop, {args.steps} steps, one artifact every {args.every} ({machine()}{where})"
    )
    headers = ["artifact", "cores", "reporting", f"loop ms (best of {args.reps})", "slowdown %"]
    headers += ["slowdown % (medians)", "CPU slowdown %", "own time % of loop"]
    headers += ["slowdown % (same process)", "p99 step ms"]
    headers += ["first call ms", "daemon CPU ms a report"]
    print(table(headers, rows))
    if "pinned" in (args.placement or ("pinned",)) and (os.cpu_count() or 1) > 1:
        print(neighbour_cost(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
