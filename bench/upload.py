"""Upload speed: artisync against each storage's own tools, same data, same server, same run.

    python bench/upload.py [--backends s3,gs,azure] [--reps 3] [--big-mib 1024]
                           [--files 2000] [--dicts 1000] [--only NAME] [--tools a,b]

For each backend it starts the server on loopback (SeaweedFS for S3, fake-gcs-server
for GCS, Azurite for Azure Blob, one after the other) and, for each workload and each
rep, runs every tool as a fresh process into a fresh bucket (container), in an order
that rotates from rep to rep. Times are end to end, from the user's data on local
disk to the last object committed at the server: for artisync,
``Task.init(output_uri=s3://...)`` (``gs://``, ``azure://``) + ``upload_artifact`` +
``flush(wait_for_uploads=True)`` against a running daemon on a fresh spool (started
before, untimed), so the spool copy, encoding, hashing, journal and upload are all
inside the time.

| workload | boto3 (s3) | rclone (s3) | google-cloud-storage (gs) | azure-storage-blob (azure) | artisync |
| --- | --- | --- | --- | --- | --- |
| one file | ``upload_file`` (TransferManager, 8 MiB parts, 10 threads) | ``rclone copyto`` | ``upload_from_filename``, chunk_size 8 MiB (one resumable upload) | ``upload_blob(max_concurrency=8)`` | ``upload_artifact(path)`` |
| folder of small files | 32 threads of ``upload_file`` | ``rclone copy --transfers 32`` | 32 threads of ``upload_from_filename`` | 32 threads of ``upload_blob`` | ``upload_artifact(folder)`` |
| small dicts | 32 threads of ``put_object(json.dumps(d))`` | ``rclone copy --transfers 32`` of the dicts as JSON files | 32 threads of ``upload_from_string`` | 32 threads of ``upload_blob`` | one ``upload_artifact(name, d)`` per dict |

The official clients run as their users write them, with the libraries' default
connection pools; the GCS one with ``AnonymousCredentials`` and
``client_options={"api_endpoint": ...}``, the Azure one with the api_version the
tests pin for Azurite. ``transfer_manager.upload_chunks_concurrently`` is not used:
it needs GCS's XML multipart API, which fake-gcs-server does not serve (probed at
start and said under the table). rclone runs on S3 only.

CPU seconds are counted per process: the client (the tool's own process, with
its children), the daemon (with its encode workers) and the server (weed, the
fake-gcs-server binary, Azurite's node); the daemon's peak resident memory (with
its workers) is sampled every 50 ms (``--big-mib 4096`` for the 4 GiB case).
Reported, one table per backend: median time, MB/s or objects/s, median CPU
seconds, each tool's time as a ratio to the fastest other tool (artisync's
``vs best`` above 1.0 means faster), and the objects in the bucket after the run.
Every run is checked before its bucket is deleted: the other tools' objects must
be exactly the data (names and sizes); artisync's task must read back with the
expected artifacts (the file's SHA-256; every dict equal to its source), and the
bucket must hold the payload objects (the file, each file of the folder) at their
SHA-256 keys with their sizes. A failed check is printed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import Daemon, Proc, World, machine, run_child, table, world  # noqa: E402
from _upload_backends import BACKENDS, PREFIX, Backend  # noqa: E402

from artisync.protocol import object_key  # noqa: E402

MiB = 1024 * 1024

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

# reads the task back from storage (the daemon stopped): its artifacts' hashes, and
# the names of the dicts that are missing, extra or not equal to their source
VERIFY = r"""
import json, sys
from artisync import Task
kind, uri, src = sys.argv[1], sys.argv[2], sys.argv[3]
arts = Task.get_task(project_name="bench", task_name="upload", output_uri=uri).artifacts
wrong = []
if kind == "dicts":
    want = {f"d{i}": d for i, d in enumerate(json.load(open(src)))}
    wrong = sorted(n for n in set(want) | set(arts) if n not in want or n not in arts
                   or arts[n].get() != want[n])
print(json.dumps({"hashes": {n: a.hash for n, a in arts.items()}, "wrong": wrong}))
"""


class Data:
    """The three workloads' inputs on local disk, and what each upload must store."""

    def __init__(self, scratch: Path, big_mib: int, files: int, dicts: int) -> None:
        self.big = scratch / "big.bin"
        sha = hashlib.sha256()
        with open(self.big, "wb") as f:
            for _ in range(big_mib):
                chunk = os.urandom(MiB)
                sha.update(chunk)
                f.write(chunk)
        self.big_sha = sha.hexdigest()
        self.folder = scratch / "folder"
        self.folder.mkdir()
        self.folder_shas: dict[str, str] = {}
        for i in range(files):
            body = os.urandom(64 * 1024)
            (self.folder / f"f{i:05d}.bin").write_bytes(body)
            self.folder_shas[f"f{i:05d}.bin"] = hashlib.sha256(body).hexdigest()
        rows = [
            {
                "step": i,
                "loss": 1.0 / (i + 1),
                "tag": f"run-{i}",
                "values": list(range(i % 50, i % 50 + 40)),
            }
            for i in range(dicts)
        ]
        self.dicts = scratch / "dicts.json"
        self.dicts.write_text(json.dumps(rows))
        self.dict_files = scratch / "dicts"  # the same dicts, one JSON file each (rclone)
        self.dict_files.mkdir()
        for i, d in enumerate(rows):
            (self.dict_files / f"d{i}.json").write_text(json.dumps(d))
        self.expect = {  # key -> size, for the other tools
            "file": {"big": big_mib * MiB},
            "folder": dict.fromkeys(self.folder_shas, 64 * 1024),
            "dicts": {f"d{i}.json": len(json.dumps(d).encode()) for i, d in enumerate(rows)},
        }

    def source(self, tool: str, kind: str) -> Path:
        if kind == "file":
            return self.big
        if kind == "folder":
            return self.folder
        return self.dict_files if tool == "rclone" else self.dicts

    def problems(self, kind: str, held: dict[str, int], read: dict | None) -> list[str]:
        """What is wrong with a bucket after a run (``read``: artisync's task read back)."""
        if read is None:
            want = self.expect[kind]
            missing = [k for k in want if held.get(k) != want[k]]
            extra = [k for k in held if k not in want]
            return [f"{len(missing)} missing or of the wrong size"] * bool(missing) + [
                f"{len(extra)} unexpected objects"
            ] * bool(extra)
        out = [f"artifacts not as sent: {read['wrong'][:5]}"] if read["wrong"] else []
        hashes = read["hashes"]
        if kind != "dicts":
            if set(hashes) != {"data"}:
                return [*out, f"artifacts {sorted(hashes)[:5]}, not ['data']"]
            if f"{PREFIX}/{object_key(hashes['data'])}" not in held:
                out.append("the artifact's object is missing")
        payloads = {
            "file": {self.big_sha: self.expect["file"]["big"]},
            "folder": {sha: 64 * 1024 for sha in self.folder_shas.values()},
            "dicts": {},
        }[kind]
        if kind == "file" and hashes.get("data") != self.big_sha:
            out.append("the file's SHA-256 differs")
        lost = [s for s, size in payloads.items() if held.get(f"{PREFIX}/{object_key(s)}") != size]
        if lost:
            out.append(f"{len(lost)} payload objects missing or of the wrong size")
        return out


class Bench:
    def __init__(self, w: World, backend: Backend, data: Data) -> None:
        self.w, self.backend, self.data = w, backend, data
        self.n = 0
        self.base_env = {**w.environ(), **backend.env()}
        w.config.write_text(backend.config())

    def bucket(self) -> str:
        self.n += 1
        name = f"bench-{self.n}"
        self.backend.create(name)
        return name

    def server_cpu(self) -> float:
        assert self.backend.server.proc is not None
        return Proc.cpu(self.backend.server.proc.pid)

    def run(self, tool: str, kind: str) -> dict:
        bucket = self.bucket()
        daemon = None
        env = dict(self.base_env)
        src = self.data.source(tool, kind)
        if tool == "artisync":
            shutil.rmtree(self.w.spool, ignore_errors=True)
            env["ARTISYNC_OUTPUT_URI"] = self.backend.uri(bucket)
            # configured with the destination, as a node's daemon is: it loads the
            # backend at start, not when the first record waits for it
            daemon = Daemon(self.w, ARTISYNC_OUTPUT_URI=env["ARTISYNC_OUTPUT_URI"])
            daemon.wait_ready().wait_warm()
            cmd = [sys.executable, "-c", ARTISYNC, kind, str(src)]
        else:
            cmd = self.backend.command(tool, kind, src, bucket)
        if tool == "rclone":
            env.update(self.backend.rclone_env())  # type: ignore[attr-defined]
            # rclone 1.60 cannot apply a CA bundle to its transport (plain http here)
            env.pop("AWS_CA_BUNDLE", None)
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
            wall, client, _ = run_child(cmd, env)
        finally:
            stop.set()
            sampler.join()
        server = self.server_cpu() - s0
        daemon_cpu, span, read = 0.0, 0.0, None
        if daemon is not None:
            daemon_cpu = Proc.cpu(daemon.proc.pid) - d0
            daemon.stop()
            span = committing_span(self.w.spool / "journal.db")
            verify = [sys.executable, "-c", VERIFY, kind, self.backend.uri(bucket), str(src)]
            read = json.loads(run_child(verify, self.base_env)[2])
        held = self.backend.drop(bucket)
        return {
            "wall": wall,
            "client": client,
            "daemon": daemon_cpu,
            "server": server,
            "objects": len(held),
            "daemon_rss": peak[0],
            "daemon_anon": peak[1],
            "span": span,
            "problems": self.data.problems(kind, held, read),
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


HEADERS = [
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
    "check",
]


def rows_for(title: str, kind: str, amount: float, unit: str, samples: dict) -> list[list[str]]:
    tools = list(samples)
    med = {t: statistics.median(s["wall"] for s in samples[t]) for t in tools}
    rows = []
    for tool in tools:
        runs = samples[tool]
        best_other = min((med[t] for t in tools if t != tool), default=med[tool])
        rate = amount / med[tool]
        ours = tool == "artisync"
        failed = sum(bool(s["problems"]) for s in runs)
        rows.append(
            [
                title,
                tool,
                f"{med[tool]:.2f}",
                f"{rate / 1e6:.0f}" if unit == "MB/s" else f"{rate:.0f}",
                unit,
                *(
                    f"{statistics.median(s[k] for s in runs):.1f}"
                    for k in ("client", "daemon", "server")
                ),
                f"{best_other / med[tool]:.2f}",
                f"{max(s['daemon_rss'] for s in runs) / MiB:.0f}"
                f" / {max(s['daemon_anon'] for s in runs) / MiB:.0f}"
                if ours
                else "-",
                f"{amount / statistics.median(s['span'] for s in runs):.0f}"
                if ours and kind != "file" and all(s["span"] for s in runs)
                else "-",
                f"{int(statistics.median(s['objects'] for s in runs))}",
                f"FAIL {failed}/{len(runs)}" if failed else "ok",
            ]
        )
    return rows


def bench_backend(backend: Backend, w: World, data: Data, args: argparse.Namespace) -> bool:
    """Runs and prints one backend's table; False when a check failed."""
    tools = [t for t in backend.tools if not args.tools or t in args.tools.split(",")]
    workloads = [
        (f"one {args.big_mib} MiB file", "file", args.big_mib * MiB, "MB/s"),
        (f"folder, {args.files} x 64 KiB", "folder", args.files, "files/s"),
        (f"{args.dicts} dicts of ~1 KB", "dicts", args.dicts, "records/s"),
    ]
    rows, ok = [], True
    with backend.start(w.root / "servers"):
        notes = backend.probe()
        bench = Bench(w, backend, data)
        for title, kind, amount, unit in workloads:
            if args.only and args.only not in kind:
                continue
            samples: dict[str, list[dict]] = {t: [] for t in tools}
            for rep in range(args.reps):
                for tool in tools[rep % len(tools) :] + tools[: rep % len(tools)]:
                    r = bench.run(tool, kind)
                    samples[tool].append(r)
                    print(f"{backend.name} {kind} {tool} rep {rep}: {r}", file=sys.stderr)
                    for p in r["problems"]:
                        ok = False
                        print(f"CHECK FAILED: {backend.name} {kind} {tool} rep {rep}: {p}")
            rows += rows_for(title, kind, amount, unit, samples)
        versions = backend.versions()
    print(f"\nUpload speed, {backend.label}, median of {args.reps}; {machine()}; {versions}\n")
    print(table(HEADERS, rows))
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="s3,gs,azure")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--dicts", type=int, default=1000)
    ap.add_argument("--only", default="", help="workloads whose kind contains this")
    ap.add_argument("--tools", default="", help="only these tools (comma-separated)")
    args = ap.parse_args()
    names = [b for b in args.backends.split(",") if b]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        sys.exit(f"--backends: {unknown or names} not among {', '.join(BACKENDS)}")
    backends = [BACKENDS[b]() for b in names]
    missing = [f"{b.name}: {m}" for b in backends if (m := b.missing())]
    if missing:
        sys.exit(f"missing ({'; '.join(missing)}); bench/upload installs them")
    ok = True
    with world() as w:
        data = Data(w.scratch, args.big_mib, args.files, args.dicts)
        for backend in backends:
            ok = bench_backend(backend, w, data, args) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
