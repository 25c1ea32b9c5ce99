"""Prune at bucket scale: a destination of 1,000,000 objects, half referenced.

    python bench/prune.py [--objects 1000000] [--per-batch 100]

A folder destination is filled directly in the remote layout (objects named by
their SHA-256, version records in batch objects of ``--per-batch`` records that
reference every other object; every object's time set two days back), then
``artisync prune`` runs as its own process: a dry run, then ``--yes``. Printed:
time, objects per second, and the peak RSS of the prune process, beside a
``find -delete`` of exactly the unreferenced objects (given the list: the floor
for removing that many files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table


def fill(root: Path, n: int, per_batch: int) -> list[Path]:
    """The destination; returns the unreferenced objects' paths (for the baseline)."""
    old = time.time() - 2 * 86400
    unreferenced = []
    refs: list[str] = []
    for i in range(n):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        path = root / "objects" / "sha256" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (old, old))
        (refs.append(sha) if i % 2 == 0 else unreferenced.append(path))
    for b in range(0, len(refs), per_batch):
        task = f"{b // per_batch // 100:032x}"
        records = [
            {
                "kind": "artifact",
                "task_id": task,
                "record_id": f"{b + j:032x}",
                "name": f"a{b + j}",
                "created": old,
                "sha256": sha,
                "size": 1,
                "blobs": [[sha, 1]],
            }
            for j, sha in enumerate(refs[b : b + per_batch])
        ]
        key = root / "tasks" / task / "batches" / f"{b:017d}-{b:032x}.json"
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(json.dumps({"version": 1, "records": records}))
    return unreferenced


# the prune process's own peak (VmHWM: per address space; ru_maxrss would carry the
# bench process's size over from before exec)
PEAK = (
    "import sys; from artisync.cli import main; rc = main(sys.argv[1:]); "
    "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')), "
    "file=sys.stderr); sys.exit(rc)"
)


def run_prune(root: Path, apply: bool) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, what it printed) of one prune process."""
    cmd = [sys.executable, "-c", PEAK, "prune", "--uri", str(root), *(["--yes"] if apply else [])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTISYNC_")}
    env["ARTISYNC_CONFIG"] = os.devnull
    t0 = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if out.returncode:
        raise SystemExit(f"prune failed ({out.returncode}): {out.stderr}")
    kib = int(out.stderr.split("VmHWM:")[1].split()[0])
    return seconds, kib / 1024, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--per-batch", type=int, default=100)
    args = ap.parse_args()
    print(f"# bench/prune — {machine()}\n")
    with tempfile.TemporaryDirectory(prefix="prune-bench-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "dest"
        t0 = time.monotonic()
        gone = fill(root, args.objects, args.per_batch)
        print(f"filled {args.objects:,} objects in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        copy = Path(tmp) / "copy"
        shutil.copytree(root / "objects", copy, copy_function=os.link)  # for the baseline
        dry_s, dry_rss, dry_out = run_prune(root, apply=False)
        real_s, real_rss, real_out = run_prune(root, apply=True)
        listed = Path(tmp) / "list"
        listed.write_text("\n".join(str(copy / p.relative_to(root / "objects")) for p in gone))
        t0 = time.monotonic()
        subprocess.run(["xargs", "-a", str(listed), "-d", "\n", "rm", "-f"], check=True)
        rm_s = time.monotonic() - t0
    left = len(gone)
    n = args.objects
    rows = [
        ["prune (dry run)", f"{dry_s:.1f}", f"{n / dry_s:,.0f}", f"{dry_rss:.0f}", ""],
        [
            "prune --yes",
            f"{real_s:.1f}",
            f"{n / real_s:,.0f}",
            f"{real_rss:.0f}",
            f"{real_s / rm_s:.1f}x",
        ],
        [
            f"xargs rm of the {left:,} unreferenced",
            f"{rm_s:.1f}",
            f"{left / rm_s:,.0f}",
            "",
            "1.0x",
        ],
    ]
    print(
        f"{n:,} objects, {n - left:,} referenced by {(n - left) // args.per_batch:,} batch records\n"
    )
    print(table(["run", "seconds", "objects/s", "peak RSS MiB", "vs rm"], rows))
    print("\n" + real_out.strip())


if __name__ == "__main__":
    main()
