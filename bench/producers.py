"""Many producers on one node: N processes reporting at once to one daemon.

Each producer (a fresh process) reports ``--each`` small artifacts (half dicts,
half 16-element arrays) and times every call; the same producers, in another
round, write the same objects to files with ``json.dump`` / ``np.save`` (the plain
write each call replaces). Printed: per-call blocking p50/p99 and the first call,
both ways, and the daemon's acknowledgement latency under that load (a record's
creation to its journal commit: from then on it survives a power loss too; it
survives the trainer being killed as soon as the call returns), the time until
everything was committed in storage, and what storage holds.

    python bench/producers.py [--producers 64] [--each 50]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Daemon, World, machine, table, world

PRODUCER = """
import json, os, sys, time
import numpy as np
mode, me, each, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
objs = [({"producer": me, "i": i} if i % 2 == 0 else np.full(16, me * 1000 + i), i)
        for i in range(each)]
samples = []
if mode == "artisync":
    from artisync import Task
    t = Task.init(project_name="bench", task_name=f"producer-{me}")
    for obj, i in objs:
        t0 = time.perf_counter()
        t.upload_artifact(f"a{i}", obj)
        samples.append(time.perf_counter() - t0)
    t.close()
else:
    for obj, i in objs:
        t0 = time.perf_counter()
        if isinstance(obj, dict):
            with open(os.path.join(out_dir, f"{me}-{i}.json"), "w") as f:
                json.dump(obj, f)
        else:
            np.save(os.path.join(out_dir, f"{me}-{i}.npy"), obj)
        samples.append(time.perf_counter() - t0)
print(json.dumps(samples))
"""


def run_round(
    w: World, mode: str, producers: int, each: int
) -> tuple[list[float], float, list[float]]:
    """Every call's seconds, the round's wall time, each producer's first call."""
    script = w.root / "producer.py"
    script.write_text(textwrap.dedent(PRODUCER))
    out_dir = w.scratch / mode
    out_dir.mkdir()
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), mode, str(i), str(each), str(out_dir)],
            env=w.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(producers)
    ]
    samples: list[list[float]] = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"producer failed:\n{err}")
        samples.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - start
    return [s for one in samples for s in one], wall, [one[0] for one in samples]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000.0


def ack_latency(spool: Path) -> list[float]:
    """Seconds from each artifact record's creation (in its producer) to its commit
    in the daemon's journal."""
    import msgpack

    db = sqlite3.connect(spool / "journal.db")
    rows = db.execute("SELECT body, received FROM records WHERE kind='artifact'").fetchall()
    db.close()
    return [received - msgpack.unpackb(body, raw=False)["created"] for body, received in rows]


def stored_versions(storage: Path) -> int:
    n = 0
    for path in (storage / "tasks").rglob("*.json"):
        doc: dict[str, Any] = json.loads(path.read_text())
        n += sum(1 for r in doc.get("records", [doc]) if r.get("kind") == "artifact")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--producers", type=int, default=64)
    ap.add_argument("--each", type=int, default=50)
    args = ap.parse_args()
    with world() as w:
        plain, plain_wall, plain_first = run_round(w, "plain", args.producers, args.each)
        d = Daemon(w).wait_ready()
        try:
            calls, wall, first = run_round(w, "artisync", args.producers, args.each)
            d.wait_idle(600)
            committed = time.monotonic()
            acks = ack_latency(w.spool)
        finally:
            d.stop()
        done = wall + (time.monotonic() - committed)
        stored = stored_versions(w.storage)
    expected = args.producers * args.each
    print(f"# {args.producers} producers x {args.each} calls, one daemon ({machine()})\n")
    rows = [
        [
            "artisync upload_artifact",
            f"{pct(calls, 50):.2f}",
            f"{pct(calls, 99):.2f}",
            f"{statistics.median(first) * 1000:.1f}",
            f"{wall:.1f}",
        ],
        [
            "plain json.dump / np.save",
            f"{pct(plain, 50):.2f}",
            f"{pct(plain, 99):.2f}",
            f"{statistics.median(plain_first) * 1000:.1f}",
            f"{plain_wall:.1f}",
        ],
        [
            "ratio",
            f"{pct(calls, 50) / pct(plain, 50):.2f}",
            f"{pct(calls, 99) / pct(plain, 99):.2f}",
            f"{statistics.median(first) / statistics.median(plain_first):.2f}",
            f"{wall / plain_wall:.2f}",
        ],
    ]
    print(table(["per call", "p50 ms", "p99 ms", "first call ms", "all producers s"], rows))
    print()
    ack_rows = [
        [
            "record created -> journaled",
            f"{pct(acks, 50):.1f}",
            f"{pct(acks, 99):.1f}",
            f"{max(acks) * 1000:.1f}",
        ]
    ]
    print(table(["daemon ack latency", "p50 ms", "p99 ms", "max ms"], ack_rows))
    print(f"\ncommitted in storage: {stored} of {expected} versions, {done:.1f} s after start")
    if stored != expected:
        raise SystemExit(f"LOST: {expected - stored} versions")


if __name__ == "__main__":
    main()
