"""Real daemon processes and real SDK processes for the tests.

Paths live under a short /tmp directory: pytest's tmp_path can exceed the
~108-byte AF_UNIX path limit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from artisync.protocol import PROTOCOL_VERSION, FrameDecoder, encode, iter_logs, read_log

REPO = Path(__file__).resolve().parent.parent


class Env:
    """An isolated artisync world: spool, socket, storage folder, config, cache."""

    def __init__(self, root: Path, output_uri: str | None = None) -> None:
        self.root = root
        self.spool = root / "spool"
        self.socket = root / "run" / "d.sock"
        self.storage = root / "storage"
        self.config = root / "config.toml"
        self.config.write_text("")
        self.output_uri = output_uri or str(self.storage)
        self.vars = {
            "ARTISYNC_SPOOL": str(self.spool),
            "ARTISYNC_SOCKET": str(self.socket),
            "ARTISYNC_OUTPUT_URI": self.output_uri,
            "ARTISYNC_CONFIG": str(self.config),
            "ARTISYNC_AUTOSTART": "0",
            "ARTISYNC_GC_GRACE": "2",
            "ARTISYNC_GC_INTERVAL": "0.5",
            # the outbox read at most every 0.1 s while records stream in (0.5 s by
            # default): the batching is the same, the suite waits less for it
            "ARTISYNC_INGEST_WINDOW": "0.1",
            "XDG_CACHE_HOME": str(root / "cache"),
        }

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARTISYNC_")}
        env.update(self.vars)
        env.update(extra)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        return env


@contextlib.contextmanager
def short_tmpdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="as-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class DaemonProc:
    def __init__(self, env: Env, *args: str, **extra_env: str) -> None:
        self.env = env
        self.log = env.root / f"daemon-{time.monotonic_ns()}.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "artisync.daemon", "--log-level", "DEBUG", *args],
            env=env.environ(**extra_env),
            stdout=self._logf,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20.0) -> DaemonProc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with Conn(self.env.socket) as c:
                    c.hello()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"daemon not ready:\n{self.output()}")

    def wait_warm(self, timeout: float = 30.0) -> DaemonProc:
        """Until the daemon's first request to its default destination (made at start)
        is done: a fault injected after this meets the records' requests, not that one."""
        deadline = time.monotonic() + timeout
        while True:
            with Conn(self.env.socket) as c:
                c.hello()
                if c.call("status")["status"].get("warm"):
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon not warm after {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        if not self._logf.closed:
            self._logf.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._logf.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._logf.close()


class Conn:
    """A raw protocol connection, for tests that speak frames directly."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder()
        self.next_id = 0
        self.pending: list[Any] = []

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Any:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def call(self, op: str, **fields: Any) -> Any:
        self.next_id += 1
        self.sock.sendall(encode({"op": op, "id": self.next_id, **fields}))
        return self.recv()

    def hello(self) -> Any:
        return self.call("hello", version=PROTOCOL_VERSION)


def run_py(
    env: Env, code: str, timeout: float = 120, check: bool = True, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a fresh process with the env's settings."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env.environ(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=env.root,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snippet failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def stored_objects(storage: Path) -> dict[str, int]:
    """sha256 -> size of every object in a file-backend storage folder."""
    out = {}
    root = storage / "objects" / "sha256"
    if root.is_dir():
        for p in root.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                out[p.name] = p.stat().st_size
    return out


def unpack_file(path: Path) -> Any:
    return msgpack.unpackb(path.read_bytes(), raw=False)


def kill_quietly(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def outbox_records(spool: Path) -> list[dict[str, Any]]:
    """The records waiting in a spool's outbox, read below the SDK: its record files,
    and what its logs hold beyond the offsets the daemon's journal keeps (if any)."""
    outbox = spool / "outbox"
    if not outbox.is_dir():
        return []
    out = [msgpack.unpackb(p.read_bytes()) for p in sorted(outbox.glob("*.rec"))]
    offsets: dict[str, int] = {}
    if (spool / "journal.db").exists():
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(
                sqlite3.connect(f"file:{spool / 'journal.db'}?mode=ro", uri=True, timeout=5)
            ) as db,
        ):
            offsets = dict(db.execute("SELECT name, offset FROM outbox_logs").fetchall())
    for path in iter_logs(outbox):
        got = read_log(path, offsets.get(path.name, 0), 1 << 30, True)
        out.extend(msgpack.unpackb(body) for _, body in got.frames)
    return out


def daemon_status(env: Env) -> dict[str, Any]:
    """The daemon's ``status`` reply, asked over its socket."""
    with Conn(env.socket) as c:
        c.hello()
        status: dict[str, Any] = c.call("status")["status"]
        return status


def wait_committed(env: Env, n: int, timeout: float = 120) -> None:
    """Until the daemon has committed ``n`` records and has none left to send."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = daemon_status(env)
        if st["committed"]["records"] >= n and st["backlog"]["records"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"not committed in {timeout} s: {st}")
