"""How long a trainer waits in ``flush(wait_for_uploads=True)`` on a node whose cores
are all busy, against the same copy done inline.

    python bench/flush_busy.py [--reps 3] [--mib 64]

Each rep: a fresh world and daemon, one process spinning on each core (as data
loader workers would), then a fresh trainer process that writes a ``--mib`` file,
reports it and waits for it to be stored in the world's folder destination. Timed in
the trainer, from ``upload_artifact`` to ``flush``'s return. Rows: the daemon as
shipped (bulk work at ``work_nice = 19``, boosted while a client waits), the same
with ``work_nice = 5`` (no boost needed), and a plain ``shutil.copyfile`` plus fsync
into the same folder by the trainer itself (what the upload does, without
hashing or checking). The idle row is the same as shipped, without the spinners.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Daemon, machine, table, world

TRAINER = r"""
import json, os, shutil, sys, time
mode, mib, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open("big.bin", "wb") as f:
    f.write(os.urandom(mib << 20))
if mode == "plain":
    t0 = time.perf_counter()
    shutil.copyfile("big.bin", os.path.join(dest, "big.bin"))
    fd = os.open(os.path.join(dest, "big.bin"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
else:
    from artisync import Task
    task = Task.init(project_name="bench", task_name="flush")
    t0 = time.perf_counter()
    task.upload_artifact("big", "big.bin")
    task.flush(wait_for_uploads=True)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

CASES = {  # name: (busy cores, daemon settings, trainer mode)
    "artisync, idle cores": (False, {}, "artisync"),
    "artisync (work_nice 19, boosted while waited on)": (True, {}, "artisync"),
    "artisync, work_nice 5": (True, {"ARTISYNC_WORK_NICE": "5"}, "artisync"),
    "plain copyfile + fsync": (True, {}, "plain"),
}


def one(busy: bool, extra: dict[str, str], mode: str, mib: int) -> float:
    with world() as w:
        daemon = Daemon(w, **extra).wait_ready().wait_warm()
        spinners = []
        try:
            if busy:
                spin = [sys.executable, "-c", "while True: pass"]
                spinners = [subprocess.Popen(spin) for _ in range(os.cpu_count() or 1)]
            dest = w.storage / "plain"
            dest.mkdir(parents=True, exist_ok=True)
            out = subprocess.run(
                [sys.executable, "-c", TRAINER, mode, str(mib), str(dest)],
                env=w.environ(),
                cwd=w.scratch,
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            for s in spinners:
                s.kill()
                s.wait()
            daemon.stop()
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--mib", type=int, default=64)
    args = p.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.reps):  # interleaved: drift evens out
        for name, (busy, extra, mode) in CASES.items():
            times[name].append(one(busy, extra, mode, args.mib))
    plain = statistics.median(times["plain copyfile + fsync"])
    rows = [
        [
            name,
            f"{statistics.median(ts):.2f}",
            " ".join(f"{t:.2f}" for t in ts),
            f"{statistics.median(ts) / plain:.2f}",
        ]
        for name, ts in times.items()
    ]
    print(f"upload_artifact + flush(wait_for_uploads=True) of a {args.mib} MiB file, every core")
    print(f"busy but the first row's ({machine()})")
    print(table(["case", "seconds (median)", "each rep", "vs plain copy on busy cores"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
