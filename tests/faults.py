"""The fault matrix: scenarios shared by the tests (short sizes) and ``bench/faults``
(long sizes). Everything runs for real: daemon and trainer processes, SIGKILL, a
loopback fault proxy in front of SeaweedFS, a storage folder that vanishes.

Each scenario takes a :class:`Size` and a :class:`Target` (``file`` or ``s3``),
asserts the invariants it is about (offline CPU, status output, no orphans...)
and returns a :class:`Result`: artifacts acknowledged, delivered, verified, lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artisync.protocol import (
    Spool,
    artifact_prefix,
    artifact_version_key,
    batch_prefix,
    encode,
    object_key,
    task_key,
)
from tests.faultproxy import FaultProxy, _drain_body, _Fault
from tests.harness import Conn, DaemonProc, Env, outbox_records, run_py
from tests.records import record_for_blob
from tests.storage_fixtures import _s3_admin

MiB = 1024 * 1024
CLI = "import sys; from artisync.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass(frozen=True)
class Size:
    name: str
    network_down: int = 1000  # tiny artifacts submitted in bulk
    offline_seconds: float = 4.0  # how long the network stays down
    flaky_small: int = 300
    flaky_large: int = 2  # multipart on S3
    kills: int = 20
    kill_window: tuple[float, float] = (0.2, 1.0)  # seconds a daemon lives before SIGKILL
    trainer_kills: int = 4
    trainer_file_mb: int = 24
    trainer_df_rows: int = 200_000
    no_daemon: int = 60
    permanent: int = 40
    quota_artifacts: int = 16
    multi_writer: int = 15  # versions per writer


SHORT = Size("short")
LONG = Size(
    "long",
    network_down=5000,
    offline_seconds=20.0,
    flaky_small=1000,
    flaky_large=8,
    kills=50,
    kill_window=(0.2, 2.5),
    trainer_kills=12,
    trainer_file_mb=200,
    trainer_df_rows=2_000_000,
    no_daemon=1000,
    permanent=500,
    quota_artifacts=100,
    multi_writer=100,
)


@dataclass
class Result:
    fault: str
    backend: str
    acknowledged: int = 0
    delivered: int = 0
    verified: int = 0
    recover_s: float | None = None  # from the fault's end to everything delivered
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.acknowledged - self.verified

    def check(self) -> Result:
        assert self.acknowledged > 0, f"{self.fault}: nothing was acknowledged"
        assert self.lost == 0, f"{self.fault} ({self.backend}): {self.lost} artifacts lost"
        assert self.delivered == self.acknowledged, f"{self.fault}: not all delivered"
        return self


# --------------------------------------------------------------------------- targets


class Target:
    """Where the daemon uploads; can take the network (or the mount) away."""

    name = "?"
    uri = ""

    def toml(self) -> str:
        return ""

    def network(self, up: bool) -> None:
        raise NotImplementedError

    def sha256_of(self, key: str) -> str | None:
        """SHA-256 of the stored object, None if it is missing."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def read(self, key: str) -> bytes | None:
        """The stored object's bytes, None if it is missing."""
        raise NotImplementedError

    def keys(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def incomplete_uploads(self) -> list[str]:
        """Unfinished multipart uploads (S3) or temp files (file) left at the destination."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FileTarget(Target):
    """A storage folder reached through a symlink (a mount point): taking the network
    down points the symlink at nothing, as when an NFS share disappears."""

    name = "file"

    def __init__(self, root: Path) -> None:
        self.real = root / "storage-real"
        self.real.mkdir(parents=True)
        self.link = root / "storage"
        self.link.symlink_to(self.real)
        self.uri = str(self.link)

    def toml(self) -> str:
        return f'[[storage.override]]\nmatch = "{self.uri}"\nfsync = false\n'

    def network(self, up: bool) -> None:
        tmp = self.link.with_name(f".flip-{secrets.token_hex(4)}")
        tmp.symlink_to(self.real if up else self.link.with_name("unmounted"))
        os.replace(tmp, self.link)

    def sha256_of(self, key: str) -> str | None:
        path = self.real / key
        try:
            with open(path, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return (self.real / key).is_file()

    def read(self, key: str) -> bytes | None:
        try:
            return (self.real / key).read_bytes()
        except FileNotFoundError:
            return None

    def keys(self, prefix: str) -> list[str]:
        base = self.real / prefix.rpartition("/")[0]
        found = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                key = os.path.relpath(os.path.join(dirpath, name), self.real)
                if key.startswith(prefix) and not name.endswith(".tmp"):
                    found.append(key)
        return sorted(found)

    def incomplete_uploads(self) -> list[str]:
        return [
            os.path.join(d, n)
            for d, _, files in os.walk(self.real)
            for n in files
            if n.endswith(".tmp")
        ]


class S3Target(Target):
    """A fresh SeaweedFS bucket; the daemon reaches it through a fault proxy."""

    name = "s3"

    def __init__(
        self, server: Any, proxy: FaultProxy | None = None, *, secret: str | None = None
    ) -> None:
        self.server = server
        self.bucket = f"fx-{secrets.token_hex(6)}"
        self.admin = _s3_admin(server, max_attempts=2)
        self.admin.create_bucket(Bucket=self.bucket)
        self.proxy = (proxy or FaultProxy(("127.0.0.1", int(server.port)))).start()
        self.prefix = "runs"
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self.secret = secret or server.secret_key

    def toml(self) -> str:
        return (
            f'[[storage.override]]\nmatch = "s3://{self.bucket}"\n'
            f'endpoint_url = "{self.proxy.endpoint}"\nregion = "us-east-1"\n'
            f'access_key_id = "{self.server.access_key}"\n'
            f'secret_access_key = "{self.secret}"\n'
            f"part_size = {5 * MiB}\nmultipart_threshold = {5 * MiB + 1}\npart_concurrency = 2\n"
        )

    def network(self, up: bool) -> None:
        self.proxy.set("pass" if up else "refuse")
        self.proxy.drop_connections()

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def sha256_of(self, key: str) -> str | None:
        try:
            body = self.admin.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
        except self.admin.exceptions.NoSuchKey:
            return None
        h = hashlib.sha256()
        for chunk in iter(lambda: body.read(MiB), b""):
            h.update(chunk)
        return h.hexdigest()

    def exists(self, key: str) -> bool:
        try:
            self.admin.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception:
            return False
        return True

    def read(self, key: str) -> bytes | None:
        try:
            body = self.admin.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
        except self.admin.exceptions.NoSuchKey:
            return None
        data: bytes = body.read()
        return data

    def keys(self, prefix: str) -> list[str]:
        out = []
        for page in self.admin.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._name(prefix)
        ):
            out += [o["Key"][len(self.prefix) + 1 :] for o in page.get("Contents", [])]
        return sorted(out)

    def incomplete_uploads(self) -> list[str]:
        uploads = self.admin.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in uploads]

    def close(self) -> None:
        self.proxy.stop()
        with contextlib.suppress(Exception):
            for up in self.admin.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []):
                self.admin.abort_multipart_upload(
                    Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                )
            for page in self.admin.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                for obj in page.get("Contents", []):
                    self.admin.delete_object(Bucket=self.bucket, Key=obj["Key"])
            self.admin.delete_bucket(Bucket=self.bucket)
        self.admin.close()


class ChaosProxy(FaultProxy):
    """Injects a random fault into a share of new connections: 503 with Retry-After,
    500, a reset before anything, a cut in the middle of the body, a slow start."""

    def __init__(self, target: tuple[str, int], rate: float = 0.3, seed: int = 0) -> None:
        super().__init__(target)
        self.rate = rate
        self.rng = random.Random(seed)
        self.log: list[tuple[float, str]] = []  # (monotonic time, mode) per connection
        self.chaos = True

    def _take(self) -> _Fault:
        with self._lock:
            fixed = self._fault.mode != "pass"
        if fixed or not self.chaos:  # a fault set explicitly (with its count) wins
            fault = super()._take()
            self.log.append((time.monotonic(), fault.mode))
            return fault
        with self._lock:
            self.connections += 1
            mode = "pass"
            if self.rng.random() < self.rate:
                mode = self.rng.choice(["503", "503", "500", "close", "cut", "delay"])
            self.log.append((time.monotonic(), mode))
            if mode == "pass":
                return _Fault()
            self.faults += 1
            return _Fault(
                mode,
                None,
                retry_after=round(self.rng.uniform(0.2, 1.0), 1) if mode == "503" else None,
                delay=self.rng.uniform(0.2, 1.5),
                cuts=[self.rng.randrange(1, 3 * MiB)],
            )

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: _Fault
    ) -> None:
        """Like FaultProxy's, but a HEAD gets no body (else the client sees a framing
        error instead of the status and its Retry-After)."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() != "100-continue":
            await _drain_body(reader, headers)
        code = {"503": "SlowDown", "500": "InternalError"}[fault.mode]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            "<Message>injected</Message></Error>"
        ).encode()
        if lines[0].startswith("HEAD "):
            body = b""
        extra = f"Retry-After: {fault.retry_after:g}\r\n" if fault.retry_after is not None else ""
        writer.write(
            f"HTTP/1.1 {fault.mode} Injected\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()


# --------------------------------------------------------------------------- helpers


def make_env(root: Path, target: Target, extra_toml: str = "") -> Env:
    env = Env(root, output_uri=target.uri)
    env.config.write_text(target.toml() + extra_toml)
    return env


def quick_blob(spool: Spool, data: bytes) -> tuple[str, int]:
    """A payload in the spool without the SDK's fsyncs (setting up thousands is slow)."""
    sha = hashlib.sha256(data).hexdigest()
    tmp = spool.tmp / f"{os.getpid()}.{secrets.token_hex(8)}.part"
    tmp.write_bytes(data)
    os.replace(tmp, spool.blob_path(sha))
    return sha, len(data)


def artifact(spool: Spool, dest: str, data: bytes, task_id: str, name: str = "a") -> dict[str, Any]:
    sha, size = quick_blob(spool, data)
    return record_for_blob(sha, size, dest, name, task_id, extension=".bin")


def task_event(dest: str, task_id: str, status: str = "in_progress") -> dict[str, Any]:
    now = time.time()
    return {
        "kind": "task",
        "event": "started" if status == "in_progress" else "closed",
        "record_id": uuid.uuid4().hex,
        "task_id": task_id,
        "created": now,
        "dest": dest,
        "host": "h",
        "user": "u",
        "pid": os.getpid(),
        "project": "faults",
        "name": f"run-{task_id[:6]}",
        "status": status,
        "started": now,
        "ended": None,
    }


def submit_all(env: Env, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pipeline submissions on one connection; return the acknowledged records."""
    acked = []
    with Conn(env.socket, timeout=60) as c:
        c.hello()
        for start in range(0, len(records), 500):
            chunk = records[start : start + 500]
            c.sock.sendall(
                b"".join(
                    encode({"op": "submit", "id": i, "record": r}) for i, r in enumerate(chunk)
                )
            )
            replies = {}
            while len(replies) < len(chunk):
                msg = c.recv()
                replies[msg["id"]] = msg
            acked += [r for i, r in enumerate(chunk) if replies[i].get("ok")]
    return acked


def journal(env: Env, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(env.spool / "journal.db", timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def states(env: Env) -> dict[str, str]:
    return dict(journal(env, "SELECT record_id, state FROM records"))


def committed_count(env: Env) -> int:
    return int(journal(env, "SELECT count(*) FROM records WHERE state='committed'")[0][0])


def wait_until(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - start


def cli(env: Env, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        env=env.environ(**extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def status_json(env: Env) -> dict[str, Any]:
    out = cli(env, "status", "--json")
    result: dict[str, Any] = json.loads(out.stdout)
    result["exit_code"] = out.returncode
    return result


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, seconds: float) -> float:
    """Share of one core the process used over ``seconds``."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - t0)


def published_versions(target: Target, task_ids: set[str]) -> dict[str, dict[str, Any]]:
    """record_id -> published artifact version, from the tasks' batches (the versions
    published alone are read by key, in :func:`verify`)."""
    out: dict[str, dict[str, Any]] = {}
    for task_id in task_ids:
        for key in target.keys(batch_prefix(task_id)):
            for rec in json.loads(target.read(key) or b"{}").get("records", []):
                out[rec["record_id"]] = rec
    return out


def published_copies(target: Target, task_id: str) -> dict[str, list[dict[str, Any]]]:
    """record id -> every published copy of that artifact version (alone or batched)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key in target.keys(artifact_prefix(task_id)):
        if key.endswith(".json"):
            rec = json.loads(target.read(key) or b"{}")
            out.setdefault(rec["record_id"], []).append(rec)
    for key in target.keys(batch_prefix(task_id)):
        for rec in json.loads(target.read(key) or b"{}").get("records", []):
            out.setdefault(rec["record_id"], []).append(rec)
    return out


def version_ids(target: Target, task_id: str, name: str) -> set[str]:
    """The record ids of every published version of one artifact, alone or batched."""
    prefix = artifact_prefix(task_id, name)
    alone = {k[len(prefix) :].removesuffix(".json").partition("-")[2] for k in target.keys(prefix)}
    batched = published_versions(target, {task_id})
    return alone | {rid for rid, rec in batched.items() if rec["name"] == name}


def verify(target: Target, records: list[dict[str, Any]]) -> tuple[int, int]:
    """(delivered, verified) over the artifact records: delivered = the version record
    and every payload are in storage (an object, or inline in the record); verified =
    and every payload's SHA-256 matches."""
    delivered = verified = 0
    checked: dict[str, bool] = {}
    artifacts = [rec for rec in records if rec["kind"] == "artifact"]
    batched = published_versions(target, {rec["task_id"] for rec in artifacts})
    for rec in artifacts:
        key = artifact_version_key(rec["task_id"], rec["name"], rec["created"], rec["record_id"])
        if rec["record_id"] in batched:
            rec = batched[rec["record_id"]]
        elif target.exists(key):
            rec = json.loads(target.read(key) or b"{}")  # as the daemon published it
        else:
            continue
        if not rec.get("blobs"):
            continue
        if "inline" in rec:
            ok = hashlib.sha256(base64.b64decode(rec["inline"])).hexdigest() == rec["sha256"]
            delivered += 1
            verified += ok
            continue
        ok = present = True
        for sha, _ in rec["blobs"]:
            if sha not in checked:
                checked[sha] = target.sha256_of(object_key(sha)) == sha
            present = present and (checked[sha] or target.exists(object_key(sha)))
            ok = ok and checked[sha]
        delivered += present
        verified += ok
    return delivered, verified


def assert_no_leftovers(env: Env, target: Target) -> None:
    left = target.incomplete_uploads()
    assert not left, f"unfinished uploads left at the destination: {left[:5]}"
    temps = [p.name for p in (env.spool / "tmp").iterdir()]
    assert not temps, f"temp files left in the spool: {temps[:5]}"
    outbox_tmp = [p.name for p in (env.spool / "outbox").iterdir() if p.name.endswith(".tmp")]
    assert not outbox_tmp, f"outbox temp files left: {outbox_tmp[:5]}"


def drain(env: Env, timeout: float = 180) -> DaemonProc:
    """Run a daemon until the backlog is empty."""
    d = DaemonProc(env, "--exit-when-idle")
    rc = d.wait_exit(timeout)
    assert rc == 0, f"daemon exited {rc}:\n{d.output()[-3000:]}"
    return d


@contextlib.contextmanager
def running(env: Env, *args: str, **extra: str) -> Iterator[DaemonProc]:
    d = DaemonProc(env, *args, **extra).wait_ready().wait_warm()
    try:
        yield d
    finally:
        d.stop()


FAST_RETRY = {"ARTISYNC_RETRY_MAX_ELAPSED": "1", "ARTISYNC_OFFLINE_MAX_BACKOFF": "2"}


# ------------------------------------------------------------------------- scenarios


def network_down(size: Size, target: Target, root: Path) -> Result:
    """The storage becomes unreachable mid-run and comes back: the daemon goes offline,
    probes cheaply, shows it in status, and resumes by itself."""
    res = Result("network down", target.name)
    env = make_env(root, target)
    spool = Spool(env.spool).ensure()
    tid = uuid.uuid4().hex
    records = [task_event(target.uri, tid)] + [
        artifact(spool, target.uri, os.urandom(64) + i.to_bytes(4, "big"), tid, f"a{i % 50}")
        for i in range(size.network_down)
    ]
    late = [
        artifact(spool, target.uri, os.urandom(64) + b"late" + i.to_bytes(4, "big"), tid, f"l{i}")
        for i in range(20)
    ]
    with running(env, ARTISYNC_CONCURRENCY="8", ARTISYNC_GC_INTERVAL="5", **FAST_RETRY) as d:
        acked = submit_all(env, records)
        wait_until(lambda: committed_count(env) >= len(acked) // 5, 120, "some uploads")
        target.network(False)
        # and more reported during the outage: the daemon cannot have sent them all
        # before the storage went away (a fast daemon had, and never went offline)
        acked += submit_all(env, late)
        res.acknowledged = sum(r["kind"] == "artifact" for r in acked)
        wait_until(lambda: not status_json(env)["online"], 60, "the daemon to go offline")
        assert committed_count(env) < len(acked), "everything went up before the outage"
        share = cpu_share(d.proc.pid, 3.0)
        res.notes.append(f"offline CPU {share:.1%}")
        assert share < 0.05, f"daemon used {share:.1%} of a core while offline"
        st = cli(env, "status")
        assert st.returncode == 2 and "OFFLINE" in st.stdout, st.stdout + st.stderr
        time.sleep(max(0.0, size.offline_seconds - 3.0))
        target.network(True)
        res.recover_s = wait_until(
            lambda: committed_count(env) == len(acked), 300, "recovery", step=0.2
        )
        assert status_json(env)["online"]
    res.delivered, res.verified = verify(target, acked)
    assert_no_leftovers(env, target)
    return res


def flaky_network(size: Size, target: Target, root: Path) -> Result:
    """Random 5xx, throttling with Retry-After, resets, cuts and slow answers (S3), or a
    storage mount that flaps (file). Every artifact arrives; retries back off with
    jitter; a failed multipart part is sent again alone."""
    res = Result("flaky network", target.name)
    env = make_env(root, target)
    spool = Spool(env.spool).ensure()
    tid = uuid.uuid4().hex
    rng = random.Random(7)
    records = [task_event(target.uri, tid)]
    records += [
        artifact(spool, target.uri, os.urandom(rng.randrange(100, 200_000)), tid, f"s{i}")
        for i in range(size.flaky_small)
    ]
    records += [
        artifact(spool, target.uri, os.urandom(rng.randrange(11, 16) * MiB), tid, f"L{i}")
        for i in range(size.flaky_large)
    ]
    stop = threading.Event()

    def flap() -> None:
        while not stop.wait(rng.uniform(0.05, 0.4)):
            if isinstance(target, FileTarget):
                target.network(False)
                time.sleep(rng.uniform(0.02, 0.3))
                target.network(True)
            elif isinstance(target, S3Target):
                target.proxy.drop_connections()  # resets: new connections meet the chaos

    flapper = threading.Thread(target=flap, daemon=True)
    flapper.start()
    start = time.monotonic()
    try:
        with running(
            env,
            ARTISYNC_CONCURRENCY="6",
            ARTISYNC_RETRY_MAX_ELAPSED="20",
            ARTISYNC_OFFLINE_MAX_BACKOFF="4",  # the chaos may take it offline: probe often
        ) as d:
            acked = submit_all(env, records)
            res.acknowledged = sum(r["kind"] == "artifact" for r in acked)
            wait_until(lambda: committed_count(env) == len(acked), 240, "all uploads", step=0.3)
    finally:
        stop.set()
        flapper.join()
        target.network(True)
    res.recover_s = time.monotonic() - start
    log = d.output()
    delays = [float(m) for m in re.findall(r"(?:retry \d+|retrying the part) in ([\d.]+)s", log)]
    res.notes.append(f"{len(delays)} retries")
    if isinstance(target, S3Target) and isinstance(target.proxy, ChaosProxy):
        res.notes.append(f"{target.proxy.faults} faults injected")
        assert target.proxy.faults > 0
    if isinstance(target, FileTarget):  # (botocore absorbs many single faults on S3)
        assert delays, f"no retry happened: the fault injection did not bite ({res.notes})"
    if len(delays) >= 4:  # jitter: the delays (logged to 0.1 s) are spread, not a fixed ladder
        assert len(set(delays)) >= 2, f"retry delays without jitter: {delays}"
    res.delivered, res.verified = verify(target, acked)
    if isinstance(target, FileTarget):
        # a write whose folder vanished between creating its temp file and renaming it
        # cannot remove the temp file either: invisible to readers, noted, not asserted
        stray = target.incomplete_uploads()
        res.notes.append(f"{len(stray)} stray temp files from vanished-mount writes")
        for path in stray:
            os.unlink(path)
    assert_no_leftovers(env, target)
    return res


def daemon_killed(size: Size, target: Target, root: Path) -> Result:
    """SIGKILL the daemon at random moments while a client keeps submitting (falling
    back to the outbox, like the SDK), restart it each time."""
    res = Result("daemon SIGKILL", target.name)
    env = make_env(root, target)
    spool = Spool(env.spool).ensure()
    rng = random.Random(11)
    tid = uuid.uuid4().hex
    large = 6 * MiB if isinstance(target, S3Target) else 2 * MiB
    acked: list[dict[str, Any]] = []
    stop = threading.Event()
    daemon_env = {"ARTISYNC_CONCURRENCY": "4", "ARTISYNC_RETRY_MAX_ELAPSED": "5"}

    def produce() -> None:
        i = 0
        conn: Conn | None = None
        while not stop.is_set():
            i += 1
            if i % 40 == 1:
                rec = task_event(target.uri, tid)
            else:
                n = large + rng.randrange(MiB) if i % 9 == 0 else rng.randrange(10, 50_000)
                rec = artifact(spool, target.uri, os.urandom(n), tid, f"k{i % 13}")
            try:
                conn = conn or _hello(env)
                reply = conn.call("submit", record=rec)
                assert reply["ok"] or reply["error"] == "draining", reply
                if not reply["ok"]:
                    raise ConnectionError("draining")
            except (OSError, ConnectionError):
                if conn is not None:
                    conn.sock.close()
                conn = None
                spool.write_outbox(rec)  # what the SDK does when no daemon answers
            acked.append(rec)
            time.sleep(0.01)
        if conn is not None:
            conn.sock.close()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    kills = 0
    for _ in range(size.kills):
        d = DaemonProc(env, **daemon_env)
        with contextlib.suppress(TimeoutError):
            d.wait_ready(30)
        time.sleep(rng.uniform(*size.kill_window))
        d.kill()
        kills += 1
    stop.set()
    producer.join()
    start = time.monotonic()
    drain(env)
    logs = "".join(p.read_text(errors="replace") for p in env.root.glob("daemon-*.log"))
    swept = sum(int(n) for n in re.findall(r"aborted (\d+) unfinished multipart", logs))
    res.notes.append(f"{kills} kills, {swept} orphaned multipart uploads aborted")
    res.recover_s = time.monotonic() - start
    res.acknowledged = sum(r["kind"] == "artifact" for r in acked)
    final = states(env)
    missing = [r["record_id"] for r in acked if final.get(r["record_id"]) != "committed"]
    assert not missing, f"{len(missing)} acknowledged records not committed"
    rows = journal(env, "SELECT count(*), count(DISTINCT record_id) FROM records")[0]
    assert rows[0] == rows[1] == len(acked), f"journal rows {rows}, acknowledged {len(acked)}"
    # a version published again after a kill lands under its own key again, or in
    # another batch: a copy, identical, that readers take once
    published = published_copies(target, tid)
    acked_ids = {r["record_id"] for r in acked if r["kind"] == "artifact"}
    assert set(published) == acked_ids, "missing or unexpected version records"
    assert all(len({json.dumps(c, sort_keys=True) for c in cs}) == 1 for cs in published.values())
    assert target.exists(task_key(tid))
    res.delivered, res.verified = verify(target, acked)
    assert_no_leftovers(env, target)
    return res


def _hello(env: Env) -> Conn:
    c = Conn(env.socket, timeout=30)
    try:
        c.hello()
    except BaseException:
        c.sock.close()
        raise
    return c


TRAINER = """
import sys
import numpy as np, pandas as pd
from artisync import Task
rows, path = int(sys.argv[1]), sys.argv[2]
t = Task.init(project_name="faults", task_name="trainer")
rng = np.random.default_rng(5)
y = rng.integers(0, 1000, rows)
df = pd.DataFrame({"x": rng.random(rows), "y": y, "s": y.astype(str)})
print("ready", flush=True)
i = 0
while True:
    i += 1
    t.upload_artifact("big file", artifact_object=path)
    t.upload_artifact("frame", df)
    t.upload_artifact(f"small {i % 5}", {"i": i})
"""


def trainer_killed(size: Size, target: Target, root: Path) -> Result:
    """SIGKILL a training process in the middle of upload_artifact (a large file, a
    large DataFrame). Nothing partial is uploaded or recorded; temp files go away."""
    import pandas as pd

    res = Result("trainer SIGKILL", target.name)
    env = make_env(root, target)
    big = root / "big.bin"
    with open(big, "wb") as f:
        for _ in range(size.trainer_file_mb):
            f.write(os.urandom(MiB))
    big_sha = hashlib.sha256(big.read_bytes()).hexdigest()
    rng = random.Random(3)
    script = root / "trainer.py"
    script.write_text(TRAINER)
    with running(env, ARTISYNC_CONCURRENCY="4") as d:
        for _ in range(size.trainer_kills):
            proc = subprocess.Popen(
                [sys.executable, str(script), str(size.trainer_df_rows), str(big)],
                env=env.environ(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=root,
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.1, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        start = time.monotonic()
        wait_until(
            lambda: (
                journal(env, "SELECT count(*) FROM records WHERE state!='committed'")[0][0] == 0
                and not outbox_records(env.spool)
            ),
            300,
            "the backlog to drain",
        )
        wait_until(lambda: not list((env.spool / "tmp").iterdir()), 30, "temp files to go")
        res.recover_s = time.monotonic() - start
        assert d.proc.poll() is None
    import msgpack

    recs = [msgpack.unpackb(b) for (b,) in journal(env, "SELECT body FROM records")]
    arts = [r for r in recs if r["kind"] == "artifact"]
    res.acknowledged = len(arts)
    res.delivered, res.verified = verify(target, arts)
    for rec in arts:  # whole, and what the trainer meant
        if rec["name"] == "big file":
            assert rec["sha256"] == big_sha and rec["size"] == big.stat().st_size
    frames = [r for r in arts if r["name"] == "frame"]
    if frames:
        dest = root / "frame.parquet"
        obj = object_key(frames[-1]["sha256"])
        dest.write_bytes(_read(target, obj))
        assert len(pd.read_parquet(dest)) == size.trainer_df_rows
    for blob in Spool(env.spool).blobs.iterdir():  # no partial payload under a final name
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    res.notes.append(
        f"{size.trainer_kills} kills, {len([r for r in arts if r['name'] == 'big file'])} "
        f"big files, {len(frames)} frames recorded"
    )
    assert_no_leftovers(env, target)
    return res


def _read(target: Target, key: str) -> bytes:
    if isinstance(target, FileTarget):
        return (target.real / key).read_bytes()
    assert isinstance(target, S3Target)
    body = target.admin.get_object(Bucket=target.bucket, Key=target._name(key))["Body"]
    data: bytes = body.read()
    return data


NO_DAEMON = """
import os, sys
import pandas as pd
from artisync import Task
n = int(sys.argv[1])
t = Task.init(project_name="faults", task_name="offline rig")
for i in range(n):
    kind = i % 4
    obj = ({"i": i} if kind == 0 else pd.DataFrame({"i": [i] * 10}) if kind == 1
           else os.urandom(1000 + i) if kind == 2 else f"text {i}")
    t.upload_artifact(f"a{i}", obj)
t.close()
print(t.id)
"""


def no_daemon(size: Size, target: Target, root: Path) -> Result:
    """A whole training run with no daemon (an offline rig); a daemon started later
    uploads everything."""

    res = Result("no daemon", target.name)
    env = make_env(root, target)
    out = run_py(env, NO_DAEMON.replace("sys.argv[1]", str(size.no_daemon)), timeout=600)
    tid = out.stdout.split()[-1]
    recs = outbox_records(env.spool)
    arts = [r for r in recs if r["kind"] == "artifact"]
    res.acknowledged = len(arts)
    assert res.acknowledged == size.no_daemon and len(recs) == size.no_daemon + 2
    assert not target.keys("tasks/")
    start = time.monotonic()
    drain(env)
    res.recover_s = time.monotonic() - start
    res.delivered, res.verified = verify(target, arts)
    assert json.loads(_read(target, task_key(tid)))["status"] == "completed"
    assert_no_leftovers(env, target)
    return res


def permanent_errors(
    size: Size, target: Target, root: Path, cause: str, fix: str = "retry"
) -> Result:
    """Wrong credentials / a missing bucket (S3), a read-only mount (file): records stay
    with the reason, status says so and exits non-zero, and after the fix `artisync
    retry` (``fix="retry"``) or a restart (``"restart"``) delivers everything.
    ``cause``: "credentials", "bucket" or "readonly"."""
    res = Result(f"permanent: {cause}, {fix}", target.name)
    undo = _break(target, root, cause)
    env = make_env(root, target)
    spool = Spool(env.spool).ensure()
    tid = uuid.uuid4().hex
    records = [task_event(target.uri, tid)] + [
        artifact(spool, target.uri, os.urandom(2000), tid, f"p{i}") for i in range(size.permanent)
    ]
    with running(env, ARTISYNC_RETRY_MAX_ELAPSED="2") as d:
        acked = submit_all(env, records)
        res.acknowledged = sum(r["kind"] == "artifact" for r in acked)
        wait_until(
            lambda: status_json(env)["failed"]["records"] == len(acked), 120, "records to fail"
        )
        st = cli(env, "status")
        assert st.returncode == 1, st.stdout
        text = st.stdout.lower()
        expected = {
            "credentials": "access denied",
            "bucket": "does not exist",
            "readonly": "read-only",
        }[cause]
        assert expected in text and "artisync retry" in text, st.stdout
        assert len(set(Spool(env.spool).blobs.iterdir())) >= size.permanent  # kept
        if isinstance(target, S3Target):
            for secret in (target.server.secret_key, target.secret):
                assert secret not in st.stdout + d.output()
        undo(env)
        start = time.monotonic()
        if fix == "retry":
            retried = cli(env, "retry")
            assert retried.returncode == 0, retried.stdout + retried.stderr
            wait_until(lambda: committed_count(env) == len(acked), 120, "delivery after the fix")
            assert cli(env, "status").returncode == 0
    if fix == "restart":
        drain(env)
    res.recover_s = time.monotonic() - start
    assert committed_count(env) == len(acked)
    res.delivered, res.verified = verify(target, acked)
    return res


def _break(target: Target, root: Path, cause: str) -> Callable[[Env], None]:
    if cause == "credentials":
        assert isinstance(target, S3Target)
        good = target.secret
        target.secret = "not-the-secret"

        def fix_credentials(env: Env) -> None:
            target.secret = good
            env.config.write_text(target.toml())

        return fix_credentials
    if cause == "bucket":
        assert isinstance(target, S3Target)
        real = target.bucket
        target.bucket = f"fx-missing-{secrets.token_hex(4)}"
        target.uri = f"s3://{target.bucket}/{target.prefix}"

        def create_bucket(env: Env) -> None:
            target.admin.create_bucket(Bucket=target.bucket)
            target.admin.delete_bucket(Bucket=real)

        return create_bucket
    assert cause == "readonly" and isinstance(target, FileTarget)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(target.real)], check=True
    )
    subprocess.run(["mount", "-o", "remount,ro", str(target.real)], check=True)

    def remount(env: Env) -> None:
        subprocess.run(["mount", "-o", "remount,rw", str(target.real)], check=True)

    target.close = lambda: subprocess.run(["umount", "-l", str(target.real)], check=False)  # type: ignore[method-assign]
    return remount


def can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path(f"/tmp/as-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(probe)], check=False)
        return ok
    finally:
        probe.rmdir()


QUOTA_TRAINER = """
import os, sys, time
from artisync import Task, SpoolFull
n, each = int(sys.argv[1]), int(sys.argv[2])
t = Task.init(project_name="faults", task_name="quota")
stored = refused = 0
for i in range(n):
    try:
        t.upload_artifact(f"q{i}", os.urandom(each))
        stored += 1
    except SpoolFull as exc:
        refused += 1
        print("refused:", exc, file=sys.stderr)
t.flush()
print(stored, refused, t.id)
"""


def spool_quota(size: Size, target: Target, root: Path) -> Result:
    """A spool_limit: "error" refuses at once (nothing half-recorded), "wait" waits for
    the daemon to free room; blobs leave the spool only after their records commit."""
    import msgpack

    res = Result("spool quota", target.name)
    env = make_env(root, target)
    each, limit = 300_000, 2_000_000
    script = root / "quota.py"
    script.write_text(QUOTA_TRAINER)
    argv = [sys.executable, str(script), str(size.quota_artifacts), str(each)]
    quota = {"ARTISYNC_SPOOL_LIMIT": str(limit)}
    # 1. no daemon, "error": refused once full; what was taken is whole
    out = subprocess.run(
        argv,
        env=env.environ(**quota, ARTISYNC_SPOOL_FULL="error"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    stored, refused, _ = out.stdout.split()
    assert int(refused) > 0 and "spool_limit" in out.stderr, out.stderr
    assert Spool(env.spool).usage() <= limit
    recs = outbox_records(env.spool)
    arts = [r for r in recs if r["kind"] == "artifact"]
    assert len(arts) == int(stored)
    for r in arts:  # each record names a whole raw snapshot, for the daemon to encode
        raw = Spool(env.spool).raw_path(r["record_id"])
        assert raw.stat().st_size == r["raw"]["size"] == each
    # 2. "wait" with a short timeout and no daemon: a clear error
    t0 = time.monotonic()
    out = subprocess.run(
        [*argv[:2], "1", str(each)],
        env=env.environ(**quota, ARTISYNC_SPOOL_FULL="wait", ARTISYNC_SPOOL_WAIT_TIMEOUT="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.split()[:2] == ["0", "1"] and "waiting" in out.stderr, out.stderr
    assert 1.0 <= time.monotonic() - t0 < 30
    # 3. "wait" with a daemon: every artifact is taken, the spool stays under the limit,
    #    and no blob leaves the spool before its records are committed
    peak = [0]
    early: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        spool = Spool(env.spool)
        while not stop.wait(0.05):
            peak[0] = max(peak[0], spool.usage())
            with contextlib.suppress(sqlite3.Error, FileNotFoundError):
                present = {p.name for p in spool.blobs.iterdir()}
                for sha, state in journal(
                    env,
                    "SELECT refs.sha256, min(records.state='committed') FROM refs "
                    "JOIN records USING(seq) GROUP BY refs.sha256",
                ):
                    if sha not in present and not state:
                        early.append(sha)

    watcher = threading.Thread(target=watch, daemon=True)
    with running(env, ARTISYNC_GC_GRACE="600", ARTISYNC_GC_INTERVAL="30", **quota):
        watcher.start()
        out = subprocess.run(
            argv,
            env=env.environ(**quota, ARTISYNC_SPOOL_FULL="wait"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[:2] == [str(size.quota_artifacts), "0"], out.stdout + out.stderr
        wait_until(
            lambda: (
                journal(env, "SELECT count(*) FROM records WHERE state!='committed'")[0][0] == 0
            ),
            120,
            "delivery",
        )
        stop.set()
        watcher.join()
    assert not early, f"blobs removed before their records were committed: {early[:3]}"
    assert peak[0] <= limit + each, f"spool reached {peak[0]} bytes, limit {limit}"
    res.notes.append(f"peak spool {peak[0] / 1e6:.1f} MB of {limit / 1e6:.1f} MB")
    recs = [msgpack.unpackb(b) for (b,) in journal(env, "SELECT body FROM records")]
    arts = [r for r in recs if r["kind"] == "artifact"]
    res.acknowledged = len(arts)
    res.delivered, res.verified = verify(target, arts)
    return res


MULTI_WRITER = """
import os, sys
from artisync import Task
tid, n, who = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = Task.get_task(task_id=tid)
for i in range(n):
    t.upload_artifact("shared", {"writer": who, "i": i})
    t.upload_artifact("same bytes", b"identical in every writer")
t.flush(wait_for_uploads=True, timeout=300)
"""


def multi_writer(size: Size, target: Target, root: Path) -> Result:
    """Two processes on one task through one daemon, then two daemons on two spools
    writing the same task into the same storage: no version is lost."""
    import msgpack

    res = Result("multi-writer", target.name)
    (root / "a").mkdir()
    (root / "b").mkdir()
    env = make_env(root / "a", target)
    script = root / "mw.py"
    script.write_text(MULTI_WRITER)
    with running(env):
        out = run_py(
            env,
            "from artisync import Task\n"
            "t = Task.init(project_name='faults', task_name='mw')\nt.flush()\nprint(t.id)",
        )
        tid = out.stdout.split()[-1]
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), tid, str(size.multi_writer), who],
                env=env.environ(),
                cwd=root,
            )
            for who in ("rank0", "rank1")
        ]
        assert all(p.wait(600) == 0 for p in procs)
    # two daemons, two spools, the same storage and task
    env_b = make_env(root / "b", target)
    spool_a, spool_b = Spool(env.spool), Spool(env_b.spool).ensure()
    recs_a = [
        artifact(spool_a, target.uri, os.urandom(5000), tid, "two daemons")
        for _ in range(size.multi_writer)
    ]
    recs_b = [
        artifact(spool_b, target.uri, os.urandom(5000), tid, "two daemons")
        for _ in range(size.multi_writer)
    ]
    same = b"the same payload from both spools" * 1000
    recs_a.append(artifact(spool_a, target.uri, same, tid, "two daemons"))
    recs_b.append(artifact(spool_b, target.uri, same, tid, "two daemons"))
    for e, recs in ((env, recs_a), (env_b, recs_b)):
        for r in recs:
            Spool(e.spool).write_outbox(r)
    daemons = [DaemonProc(e, "--exit-when-idle") for e in (env, env_b)]
    for dp in daemons:
        assert dp.wait_exit(300) == 0, dp.output()[-2000:]
    arts = [
        r
        for r in (msgpack.unpackb(b) for (b,) in journal(env, "SELECT body FROM records"))
        if r["kind"] == "artifact"
    ] + recs_b
    res.acknowledged = len(arts)
    shared = version_ids(target, tid, "shared")
    assert len(shared) == 2 * size.multi_writer, f"{len(shared)} versions of 'shared'"
    both = version_ids(target, tid, "two daemons")
    assert len(both) == len(recs_a) + len(recs_b), f"{len(both)} versions from two daemons"
    res.delivered, res.verified = verify(target, arts)
    return res


SCENARIOS: dict[str, Callable[..., Result]] = {
    "network down": network_down,
    "flaky network": flaky_network,
    "daemon SIGKILL": daemon_killed,
    "trainer SIGKILL": trainer_killed,
    "no daemon": no_daemon,
    "spool quota": spool_quota,
    "multi-writer": multi_writer,
}
